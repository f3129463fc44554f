//! A tiny HTTP/1.1 client (one request per connection, `Connection: close`) and a parser for the
//! Prometheus text exposition format.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// An HTTP response: status code, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr`; panics on any transport or parse error (bounded by [`TIMEOUT`]).
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path).await
}

/// `method path` without a body on `addr`; panics on any transport or parse error (bounded by
/// [`TIMEOUT`]).
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    );
    let raw = tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    })
    .await
    .unwrap_or_else(|_| panic!("HTTP {method} {path} on {addr} timed out"))
    .unwrap_or_else(|e| panic!("HTTP {method} {path} on {addr} failed: {e}"));
    parse_response(&raw).unwrap_or_else(|e| {
        panic!(
            "HTTP {method} {path}: unparsable response ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// `method path` on `addr` with extra `headers` and a `body` (sent with its Content-Length);
/// panics on any transport or parse error (bounded by [`TIMEOUT`]).
pub async fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let raw = tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&bytes).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    })
    .await
    .unwrap_or_else(|_| panic!("HTTP {method} {path} on {addr} timed out"))
    .unwrap_or_else(|e| panic!("HTTP {method} {path} on {addr} failed: {e}"));
    parse_response(&raw).unwrap_or_else(|e| {
        panic!(
            "HTTP {method} {path}: unparsable response ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// `GET path` on `addr` with a blocking socket (for code outside an async runtime), bounded by
/// [`TIMEOUT`] for each of connect, write and read.
pub fn get_blocking(addr: SocketAddr, path: &str) -> Result<Response, String> {
    use std::io::{Read, Write};
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        if body.len() < len {
            return Err(format!(
                "body shorter ({}) than content-length {len}",
                body.len()
            ));
        }
        body.truncate(len);
    }
    let body = String::from_utf8(body).map_err(|e| format!("body not UTF-8: {e}"))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|e| e.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// One sample of a Prometheus text exposition: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses a series selector such as `coolpy7_messages_received_total{qos="1"}` (label order is
/// irrelevant) into a name and a label set.
pub fn parse_series(series: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let series = series.trim();
    let Some(open) = series.find('{') else {
        return Ok((series.to_string(), BTreeMap::new()));
    };
    let name = series[..open].trim().to_string();
    let rest = &series[open + 1..];
    let close = rest
        .rfind('}')
        .ok_or_else(|| format!("no '}}' in {series:?}"))?;
    let mut labels = BTreeMap::new();
    let mut inner = &rest[..close];
    loop {
        inner = inner.trim_start_matches([',', ' ']);
        if inner.is_empty() {
            break;
        }
        let eq = inner
            .find('=')
            .ok_or_else(|| format!("bad labels in {series:?}"))?;
        let key = inner[..eq].trim().to_string();
        let after = inner[eq + 1..].trim_start();
        let after = after
            .strip_prefix('"')
            .ok_or_else(|| format!("label value not quoted in {series:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated label value in {series:?}"))?;
        labels.insert(key, value);
        inner = &after[end + 1..];
    }
    Ok((name, labels))
}

/// Parses every sample line of a Prometheus text exposition (comments and blank lines skipped).
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The value follows the series (whose label values may contain spaces) after the
        // closing brace, if any; an optional timestamp may follow the value.
        let (series, rest) = match line.rfind('}') {
            Some(close) => (&line[..=close], &line[close + 1..]),
            None => match line.split_once(char::is_whitespace) {
                Some((series, rest)) => (series, rest),
                None => return Err(format!("no value in line {line:?}")),
            },
        };
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("no value in line {line:?}"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .map_err(|_| format!("bad value {v:?} in line {line:?}"))?,
        };
        let (name, labels) = parse_series(series)?;
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of `series` (e.g. `coolpy7_messages_dropped_total{reason="queue_full"}`) in a
/// Prometheus text exposition, if present.
pub fn find_metric(text: &str, series: &str) -> Result<Option<f64>, String> {
    let (name, labels) = parse_series(series)?;
    let samples = parse_prometheus(text)?;
    Ok(samples
        .into_iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP coolpy7_connections Open MQTT connections.\n\
        # TYPE coolpy7_connections gauge\n\
        coolpy7_connections 2\n\
        # TYPE coolpy7_messages_received counter\n\
        coolpy7_messages_received_total{qos=\"0\"} 0\n\
        coolpy7_messages_received_total{qos=\"1\"} 3\n\
        coolpy7_messages_dropped_total{reason=\"queue_full\",x=\"a b\"} 5 1700000000\n\
        # EOF\n";

    #[test]
    fn finds_series_by_name_and_labels() {
        assert_eq!(find_metric(TEXT, "coolpy7_connections"), Ok(Some(2.0)));
        assert_eq!(
            find_metric(TEXT, "coolpy7_messages_received_total{qos=\"1\"}"),
            Ok(Some(3.0))
        );
        assert_eq!(
            find_metric(
                TEXT,
                "coolpy7_messages_dropped_total{x=\"a b\", reason=\"queue_full\"}"
            ),
            Ok(Some(5.0))
        );
        assert_eq!(
            find_metric(TEXT, "coolpy7_messages_received_total"),
            Ok(None)
        );
        assert_eq!(find_metric(TEXT, "coolpy7_sessions"), Ok(None));
    }

    #[test]
    fn parses_chunked_and_plain_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let r = parse_response(plain).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(chunked).unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "abcde"));
        assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    }
}
