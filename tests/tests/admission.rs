//! What a connection may take before CONNECT, and how a full broker refuses: a first packet
//! that is not CONNECT and a CONNECT above `-mcl` are closed from their fixed header (long before
//! `-nt`), the read buffers of all handshakes share the `-mhb` budget, `-mc` is derived from
//! the open-files limit, and a broker whose descriptors are spoken for refuses new MQTT clients
//! (CONNACK 0x03 or a close) while `/healthz` still answers. The HTTP API serves one request per
//! connection, closes requests whose headers do not arrive within `-hto`, and makes room beyond
//! `-hmc` by closing the oldest connection, so that it cannot take the descriptors MQTT needs and
//! a few connections cannot shut the probes out.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::raw::RecvError;
use coolpy7_tests::{assert_healthy, unique_id, Broker, RawClient, TIMEOUT};

/// Longer than any test below runs: a connection closed before it was closed for the
/// CONNECT timeout.
const LONG_CONNECT_TIMEOUT: &str = "60";

/// A fixed header announcing the largest packet the protocol can express (256 MB).
fn announcing_256_mb(first_byte: u8) -> Vec<u8> {
    vec![first_byte, 0xff, 0xff, 0xff, 0x7f]
}

/// A 3.1.1 CONNECT of exactly `total` bytes (the password fills it up).
fn connect_of_size(client_id: &str, total: usize) -> Vec<u8> {
    for password_len in (0..total).rev() {
        let bytes = Connect::v311(client_id)
            .username("u")
            .password(&vec![b'p'; password_len])
            .encode();
        if bytes.len() == total {
            return bytes;
        }
    }
    panic!("no CONNECT of {total} bytes");
}

/// Closed (true) or still open (false) after `quiet`; panics if the broker sends anything.
async fn closed_within(client: &mut RawClient, quiet: Duration) -> bool {
    match client.try_recv(quiet).await {
        Err(RecvError::Closed(_)) => true,
        Err(RecvError::Timeout) => false,
        Ok(packet) => panic!("the broker answered a partial CONNECT with {packet:?}"),
        Err(RecvError::Invalid(msg)) => panic!("invalid bytes from the broker: {msg}"),
    }
}

#[tokio::test]
async fn a_first_packet_that_is_not_connect_is_closed_from_its_fixed_header() {
    let mut broker = Broker::start(&["-nt", LONG_CONNECT_TIMEOUT]);
    // PUBLISH (QoS 0 and 1), SUBSCRIBE, UNSUBSCRIBE announcing 256 MB, and a PUBLISH's first
    // byte alone: none of them is CONNECT, whatever would follow.
    let cases = [
        announcing_256_mb(0x30),
        announcing_256_mb(0x32),
        announcing_256_mb(0x82),
        announcing_256_mb(0xa2),
        vec![0x30],
    ];
    for first in &cases {
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        let started = Instant::now();
        let _ = client.try_send(first).await;
        client.expect_closed_silently(TIMEOUT).await;
        assert!(
            started.elapsed() < TIMEOUT,
            "{first:02x?} closed after {:?}",
            started.elapsed()
        );
    }
    let refused = broker
        .metric("coolpy7_admission_refused_total{reason=\"not_connect\"}")
        .await;
    assert_eq!(refused, cases.len() as f64);
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn a_connect_above_the_connect_limit_is_closed_from_its_fixed_header() {
    let mut broker = Broker::start(&["-nt", LONG_CONNECT_TIMEOUT]);
    // The default CONNECT limit (64 KiB) is far below 256 MB, though -mpl allows 1 MiB.
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    let _ = client.try_send(&announcing_256_mb(0x10)).await;
    client.expect_closed_silently(TIMEOUT).await;
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    let mut header = vec![0x10];
    header.extend(packets::remaining_length(64 * 1024));
    let _ = client.try_send(&header).await;
    client.expect_closed_silently(TIMEOUT).await;
    assert_eq!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"connect_too_large\"}")
            .await,
        2.0
    );
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn the_connect_limit_counts_the_whole_packet() {
    let mut broker = Broker::start(&["-mcl", "1024", "-nt", LONG_CONNECT_TIMEOUT]);
    let mut fits = RawClient::connect(broker.mqtt_addr()).await;
    fits.send(&connect_of_size(&unique_id("fits"), 1024)).await;
    assert_eq!(
        fits.recv(TIMEOUT).await,
        Packet::ConnAck {
            session_present: false,
            code: 0
        },
        "a CONNECT of exactly -mcl bytes is accepted"
    );
    fits.ping().await;

    let mut over = RawClient::connect(broker.mqtt_addr()).await;
    let bytes = connect_of_size(&unique_id("over"), 1025);
    // Only the fixed header: the broker must not wait for the body to refuse it.
    let _ = over.try_send(&bytes[..3]).await;
    over.expect_closed_silently(TIMEOUT).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn connections_announcing_256_mb_do_not_grow_the_broker() {
    let mut broker = Broker::start(&["-nt", LONG_CONNECT_TIMEOUT]);
    assert_healthy(&mut broker).await;
    let rss_before = broker.rss_kb();

    // 50 connections announce 256 MB (half as PUBLISH, half as CONNECT) and send 1 MB of it
    // each: 50 MB if the broker buffers what it is sent before CONNECT.
    const CONNECTIONS: usize = 50;
    const SENT: usize = 1024 * 1024;
    let body = vec![0u8; SENT];
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        let first = if i % 2 == 0 { 0x30 } else { 0x10 };
        let _ = client.try_send(&announcing_256_mb(first)).await;
        // The broker may close the connection (and reset it) while this is being written.
        let _ = client.try_send(&body).await;
        clients.push(client);
    }
    // Give the broker time to read what it was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.assert_running();
    let rss_after = broker.rss_kb();
    let growth_mb = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!("VmRSS {rss_before} kB -> {rss_after} kB with {CONNECTIONS} connections announcing 256 MB and sending 1 MB each");
    assert!(
        growth_mb < 10,
        "VmRSS grew by {growth_mb} MB ({rss_before} kB -> {rss_after} kB)"
    );
    for client in &mut clients {
        client.expect_closed(TIMEOUT).await;
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn the_memory_of_all_handshakes_is_bounded_by_mhb() {
    const BUDGET: usize = 64 * 1024;
    const CONNECT_LIMIT: usize = 16 * 1024;
    const SENT: usize = 12_000;
    let mut broker = Broker::start(&[
        "-nt",
        LONG_CONNECT_TIMEOUT,
        "-mcl",
        &CONNECT_LIMIT.to_string(),
        "-mhb",
        &BUDGET.to_string(),
    ]);
    // Eight CONNECTs within -mcl, each sent up to 12,000 bytes and never finished: together
    // more than the budget.
    let remaining = CONNECT_LIMIT - 1 - packets::remaining_length(CONNECT_LIMIT).len();
    let mut header = vec![0x10];
    header.extend(packets::remaining_length(remaining));
    let mut partial = header.clone();
    partial.resize(SENT, b'x');
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        let _ = client.try_send(&partial).await;
        // Let the broker read it before the next one comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        clients.push(client);
    }
    let held = broker.metric("coolpy7_handshake_buffer_bytes").await;
    assert!(
        held <= BUDGET as f64,
        "handshakes hold {held} bytes, more than -mhb {BUDGET}"
    );
    let mut open = 0;
    for client in &mut clients {
        if !closed_within(client, Duration::from_millis(300)).await {
            open += 1;
        }
    }
    assert!(
        open <= BUDGET / SENT,
        "{open} connections hold {SENT} bytes each before CONNECT, more than -mhb {BUDGET} allows"
    );
    assert!(open >= 1, "the budget holds at least one partial CONNECT");
    assert!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"handshake_memory\"}")
            .await
            >= (8 - open) as f64
    );

    // The budget is given back when they go.
    drop(clients);
    broker
        .wait_metric(
            "coolpy7_handshake_buffer_bytes",
            "0 once the partial CONNECTs are closed",
            TIMEOUT,
            |v| v == 0.0,
        )
        .await;
    assert_healthy(&mut broker).await;
}

/// The `-mc` the start log names, with how it was chosen.
fn logged_max_connections(broker: &Broker) -> (usize, String) {
    let logs = broker.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("connection limits:"))
        .unwrap_or_else(|| panic!("no 'connection limits' line in the start log:\n{logs}"));
    let after = line
        .split("-mc ")
        .nth(1)
        .unwrap_or_else(|| panic!("no -mc in {line:?}"));
    let (number, rest) = after.split_once(' ').unwrap_or((after, ""));
    let max = number
        .parse()
        .unwrap_or_else(|e| panic!("-mc in {line:?}: {e}"));
    (max, rest.to_string())
}

#[tokio::test]
async fn the_start_log_names_the_max_connections_derived_from_the_fd_limit() {
    let broker = Broker::start(&[]);
    let (max, how) = logged_max_connections(&broker);
    assert!(how.contains("derived from the open-files limit"), "{how}");
    assert!(max > 0);
    let given = Broker::start(&["-mc", "7"]);
    let (max, how) = logged_max_connections(&given);
    assert_eq!(max, 7);
    assert!(how.contains("given"), "{how}");
}

#[tokio::test]
async fn a_broker_at_its_fd_limit_refuses_mqtt_cleanly_and_still_answers_healthz() {
    const FD_LIMIT: usize = 256;
    let mut broker = Broker::start_with_prefix(
        &["prlimit", &format!("--nofile={FD_LIMIT}:{FD_LIMIT}")],
        &["-nt", LONG_CONNECT_TIMEOUT],
        &[],
    );
    let (max, how) = logged_max_connections(&broker);
    assert!(how.contains("derived from the open-files limit"), "{how}");
    assert!(
        max > 0 && max < FD_LIMIT,
        "-mc {max} with {FD_LIMIT} descriptors"
    );

    // Fill -mc with connected clients.
    let mut connected = Vec::new();
    for i in 0..max {
        connected.push(
            RawClient::connect_v311(broker.mqtt_addr(), &unique_id(&format!("fill{i}"))).await,
        );
    }
    broker.wait_connections(max as u64).await;

    // The next one is told the server is unavailable.
    let mut refused = RawClient::connect(broker.mqtt_addr()).await;
    let _ = refused
        .try_send(&Connect::v311(&unique_id("one-more")).encode())
        .await;
    assert_eq!(
        refused.expect_closed(TIMEOUT).await,
        vec![Packet::ConnAck {
            session_present: false,
            code: 0x03
        }]
    );

    // Connections that never send CONNECT take the rest of the descriptors, and more.
    let mut silent = Vec::new();
    for _ in 0..FD_LIMIT - max {
        silent.push(RawClient::connect(broker.mqtt_addr()).await);
    }
    // Still an answer (0x03) or a close for a new client, not silence.
    for i in 0..3 {
        let mut late = RawClient::connect(broker.mqtt_addr()).await;
        let _ = late
            .try_send(&Connect::v311(&unique_id(&format!("late{i}"))).encode())
            .await;
        let answer = late.expect_closed(TIMEOUT).await;
        assert!(
            answer.is_empty()
                || answer
                    == [Packet::ConnAck {
                        session_present: false,
                        code: 0x03
                    }],
            "a client of a full broker got {answer:?}"
        );
    }
    let (status, body) = broker.http_get("/healthz").await;
    assert_eq!(status, 200, "/healthz of a full broker: {body}");
    assert!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"mqtt_sockets\"}")
            .await
            >= 1.0
    );
    assert!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"max_connections\"}")
            .await
            >= 1.0
    );

    // Room again once they go.
    drop(silent);
    drop(connected);
    broker.wait_connections(0).await;
    assert_healthy(&mut broker).await;
}

/// An HTTP connection that has sent `partial`.
async fn http_partial(broker: &Broker, partial: &[u8]) -> TcpStream {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(broker.http_addr()))
        .await
        .expect("HTTP connect in time")
        .expect("HTTP connect");
    stream.write_all(partial).await.expect("write to HTTP");
    stream
}

/// What the server sent before closing `stream`, or `None` if it is still open after `within`.
async fn http_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

const UNFINISHED_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: coolpy7\r\n";

#[tokio::test]
async fn an_http_request_whose_headers_never_end_is_closed_after_the_header_timeout() {
    // The default -hto, 5 s.
    let broker = Broker::start(&[]);
    // A keep-alive connection that stays idle after its first request.
    let mut idle = http_partial(&broker, b"GET /healthz HTTP/1.1\r\nHost: coolpy7\r\n\r\n").await;
    let mut first = [0u8; 256];
    let n = tokio::time::timeout(TIMEOUT, idle.read(&mut first))
        .await
        .expect("answer in time")
        .expect("read answer");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));

    // A slowloris: one more header line every 200 ms, never the blank line.
    let mut slow = http_partial(&broker, UNFINISHED_REQUEST).await;
    let started = Instant::now();
    let mut closed = None;
    for i in 0..60 {
        if let Some(answer) = http_close(&mut slow, Duration::from_millis(200)).await {
            closed = Some(answer);
            break;
        }
        if slow
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = Some(Vec::new());
            break;
        }
    }
    let elapsed = started.elapsed();
    let answer = closed.unwrap_or_else(|| {
        panic!("a request without the end of its headers is still open after {elapsed:?}")
    });
    assert!(
        elapsed < Duration::from_secs(9),
        "closed after {elapsed:?} with a 5 s header timeout"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 200 "),
        "{answer:?}"
    );
    assert!(
        http_close(&mut idle, Duration::from_secs(2))
            .await
            .is_some(),
        "an idle keep-alive connection outlives the header timeout"
    );
}

#[tokio::test]
async fn a_connection_beyond_hmc_closes_the_oldest_while_mqtt_is_served() {
    let mut broker = Broker::start(&["-hmc", "4", "-hto", "30"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(http_partial(&broker, UNFINISHED_REQUEST).await);
        // Accepted in this order, each older than the eviction grace by the time the fifth
        // comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = probe_answer(&broker).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a probe beyond -hmc got {answer:?}"
    );
    assert!(
        http_close(&mut held[0], TIMEOUT).await.is_some(),
        "the oldest connection is still open after a fifth one came"
    );
    for (i, younger) in held.iter_mut().enumerate().skip(1) {
        assert!(
            http_close(younger, Duration::from_millis(200))
                .await
                .is_none(),
            "connection {i} was closed, not the oldest alone"
        );
    }
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("during")).await;
    client.ping().await;
    assert_eq!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"http_connections\"}")
            .await,
        1.0
    );
    drop(held);
    client.disconnect().await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn unfinished_http_requests_do_not_take_the_descriptors_mqtt_needs() {
    const FD_LIMIT: usize = 256;
    let mut broker = Broker::start_with_prefix(
        &["prlimit", &format!("--nofile={FD_LIMIT}:{FD_LIMIT}")],
        &[],
        &[],
    );
    // More unfinished requests than the process has descriptors.
    let mut held = Vec::new();
    for _ in 0..FD_LIMIT {
        held.push(http_partial(&broker, UNFINISHED_REQUEST).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("mqtt")).await;
    client.ping().await;
    client.disconnect().await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_healthy(&mut broker).await;
}

const HEALTHZ_AND_CLOSE: &[u8] =
    b"GET /healthz HTTP/1.1\r\nHost: coolpy7\r\nConnection: close\r\n\r\n";

/// How long a liveness probe may wait for its answer while others hold the HTTP connections.
const PROBE_BOUND: Duration = Duration::from_secs(5);

/// How long the hogs below run; each probe during it must be answered within [`PROBE_BOUND`].
const HOG_RUN: Duration = Duration::from_secs(12);

/// One attempt at `/healthz`, as a kubelet makes it: no retry.
async fn probe_answer(broker: &Broker) -> String {
    let attempt = async {
        let mut probe = http_partial(broker, HEALTHZ_AND_CLOSE).await;
        http_close(&mut probe, PROBE_BOUND)
            .await
            .unwrap_or_default()
    };
    let answer = tokio::time::timeout(PROBE_BOUND, attempt)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Probes `/healthz` once a second while the hogs run; every probe must get a 200.
async fn probes_answer_while(broker: &Broker, hogs: Vec<tokio::task::JoinHandle<usize>>) {
    // Let the hogs take every connection first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut probes = 0;
    while started.elapsed() + PROBE_BOUND < HOG_RUN {
        let asked = Instant::now();
        let answer = probe_answer(broker).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "probe {probes} after {:?} of the hogs: /healthz answered {answer:?} in {:?}",
            started.elapsed(),
            asked.elapsed()
        );
        probes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(probes >= 5, "{probes} probes");
    for hog in hogs {
        let connections = hog.await.expect("hog task");
        assert!(connections >= 1, "a hog never connected");
    }
}

/// A client that pipelines many `GET /metrics` on a connection and never reads an answer, with
/// a small receive buffer; it opens a new connection whenever the server closes its own. Returns
/// the connections it opened.
async fn pipelining_hog(broker_http: std::net::SocketAddr, until: Instant) -> usize {
    let requests = b"GET /metrics HTTP/1.1\r\nHost: coolpy7\r\n\r\n".repeat(3000);
    let mut connections = 0;
    while Instant::now() < until && connections < 1000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let Ok(Ok(mut stream)) = tokio::time::timeout(TIMEOUT, socket.connect(broker_http)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        connections += 1;
        // Blocks once the buffers are full, as the server stops reading while its answers
        // wait unread.
        if let Ok(Err(_)) =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(&requests)).await
        {
            continue;
        }
        // Hold the connection, without reading, until the server closes it.
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(200), stream.write_all(b"GET /")).await
            {
                Ok(Err(_)) => break,
                Ok(Ok(())) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    connections
}

/// A client that sends a full keep-alive request every 3 s (less than `-hto`) and reads its
/// answer; it opens a new connection whenever the server closes its own. Returns the
/// connections it opened.
async fn keep_alive_hog(broker_http: std::net::SocketAddr, until: Instant) -> usize {
    let mut connections = 0;
    let mut stream: Option<TcpStream> = None;
    while Instant::now() < until && connections < 1000 {
        let mut open = match stream.take() {
            Some(open) => open,
            None => match tokio::time::timeout(TIMEOUT, TcpStream::connect(broker_http)).await {
                Ok(Ok(open)) => {
                    connections += 1;
                    open
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let exchange = async {
            open.write_all(b"GET /healthz HTTP/1.1\r\nHost: coolpy7\r\n\r\n")
                .await?;
            let mut answer = [0u8; 1000];
            let n = open.read(&mut answer).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            std::io::Result::Ok(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(TIMEOUT, exchange).await {
            stream = Some(open);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    connections
}

#[tokio::test]
async fn healthz_answers_while_hmc_connections_pipeline_without_reading() {
    let mut broker = Broker::start(&["-hmc", "4"]);
    let until = Instant::now() + HOG_RUN;
    let hogs = (0..4)
        .map(|_| tokio::spawn(pipelining_hog(broker.http_addr(), until)))
        .collect();
    probes_answer_while(&broker, hogs).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn healthz_answers_while_hmc_keep_alive_connections_stay_busy() {
    let mut broker = Broker::start(&["-hmc", "4"]);
    let until = Instant::now() + HOG_RUN;
    let hogs = (0..4)
        .map(|_| tokio::spawn(keep_alive_hog(broker.http_addr(), until)))
        .collect();
    probes_answer_while(&broker, hogs).await;
    assert_healthy(&mut broker).await;
}
