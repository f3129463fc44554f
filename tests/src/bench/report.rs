//! `/proc` readings, percentiles and resource limits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde_json::{json, Value};

/// `VmRSS` of process `pid` in kB, if readable.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmRSS:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Bytes that the other end of each connection has not read yet, for `(local, remote)` pairs
/// of this process's TCP connections: what waits in our send queue (`tx_queue` of the socket
/// `local -> remote` in `/proc/net/tcp`, not yet taken by the peer's kernel) plus what waits in
/// the peer's receive queue (`rx_queue` of `remote -> local`, visible when the peer runs on this
/// machine, in this network namespace). `None` when `/proc/net/tcp` cannot be read.
pub fn unread_bytes(pairs: &[(SocketAddr, SocketAddr)]) -> Option<Vec<u64>> {
    let mut queues: HashMap<(SocketAddr, SocketAddr), (u64, u64)> = HashMap::new();
    let mut readable = false;
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(path) else {
            continue;
        };
        readable = true;
        for line in table.lines().skip(1) {
            if let Some((local, remote, tx, rx)) = parse_tcp_line(line) {
                queues.insert((local, remote), (tx, rx));
            }
        }
    }
    if !readable {
        return None;
    }
    Some(
        pairs
            .iter()
            .map(|&(local, remote)| {
                let ours = queues.get(&(local, remote)).map_or(0, |q| q.0);
                let theirs = queues.get(&(remote, local)).map_or(0, |q| q.1);
                ours + theirs
            })
            .collect(),
    )
}

/// One line of `/proc/net/tcp(6)`: `sl local remote st tx_queue:rx_queue ...`, addresses as the
/// kernel prints them (each 32-bit word of the address in host order, the port in hex).
fn parse_tcp_line(line: &str) -> Option<(SocketAddr, SocketAddr, u64, u64)> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_proc_addr(fields.next()?)?;
    let remote = parse_proc_addr(fields.next()?)?;
    let _state = fields.next()?;
    let (tx, rx) = fields.next()?.split_once(':')?;
    Some((
        local,
        remote,
        u64::from_str_radix(tx, 16).ok()?,
        u64::from_str_radix(rx, 16).ok()?,
    ))
}

fn parse_proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// User + system CPU time of process `pid` (or this process for `None`) in seconds.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((utime + stime) as f64 / tck)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_nofile_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some(lim.rlim_cur as u64)
    }
}

/// Exact percentiles (nearest rank) of latency samples in nanoseconds, as microseconds.
pub fn latency_json(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |p: f64| -> f64 {
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1] as f64 / 1000.0
    };
    let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64 / 1000.0;
    json!({
        "count": n,
        "min": round1(samples[0] as f64 / 1000.0),
        "mean": round1(mean),
        "p50": round1(at(0.50)),
        "p90": round1(at(0.90)),
        "p99": round1(at(0.99)),
        "p999": round1(at(0.999)),
        "max": round1(samples[n - 1] as f64 / 1000.0),
    })
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let v = latency_json(&mut samples);
        assert_eq!(v["p50"], 500.0);
        assert_eq!(v["p90"], 900.0);
        assert_eq!(v["p99"], 990.0);
        assert_eq!(v["p999"], 999.0);
        assert_eq!(v["max"], 1000.0);
        assert_eq!(v["count"], 1000);
    }

    #[test]
    fn proc_net_tcp_lines() {
        let line = "   3: 0100007F:4D6B 0100007F:E1A2 01 0000012C:00000010 00:00000000 00000000 \
                    0        0 123 1 0000000000000000 20 4 30 10 -1";
        let (local, remote, tx, rx) = parse_tcp_line(line).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(local, "127.0.0.1:19819".parse().unwrap());
            assert_eq!(remote, "127.0.0.1:57762".parse().unwrap());
        }
        assert_eq!((tx, rx), (300, 16));
        assert!(parse_tcp_line("  sl  local_address rem_address   st tx_queue rx_queue").is_none());
    }

    #[tokio::test]
    async fn unread_bytes_of_a_loopback_connection() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let (_server, _) = listener.accept().await.unwrap();
        client.write_all(&[7u8; 1000]).await.unwrap();
        let local = client.local_addr().unwrap();
        // The server never reads: the 1,000 bytes wait in one of the two queues.
        let mut unread = 0;
        for _ in 0..100 {
            unread = unread_bytes(&[(local, server_addr)]).unwrap()[0];
            if unread == 1000 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(unread, 1000);
    }

    #[test]
    fn own_process_readings() {
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(cpu_secs(None).is_some());
    }
}
