//! PROXY protocol v1 and v2 (`-pp`): the client's address from the header is the one the broker
//! sees; a LOCAL header keeps the balancer's own; a connection without a valid header on such a
//! listener is closed and counted. Also under TLS and WebSocket, where the header comes before
//! the handshake.
//!
//! The headers are built here byte by byte from the specification (haproxy's
//! proxy-protocol.txt), not with the broker's parser.

use std::net::SocketAddr;
use std::time::Duration;

use coolpy7_tests::raw::V3;
use coolpy7_tests::transport::{boxed, client_config, try_connect_ws, TestCa, TlsFiles};
use coolpy7_tests::{Broker, Connect, Packet, RawClient, TIMEOUT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

const V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// A v2 PROXY header for TCP over IPv4 from `source` to `destination`.
fn v2_tcp4(source: ([u8; 4], u16), destination: ([u8; 4], u16)) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x21, 0x11, 0x00, 12]);
    header.extend(source.0);
    header.extend(destination.0);
    header.extend(source.1.to_be_bytes());
    header.extend(destination.1.to_be_bytes());
    header
}

/// A v2 LOCAL header (the balancer's own health check).
fn v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x20, 0x00, 0x00, 0x00]);
    header
}

/// The address the broker logged for client `id` when it connected.
async fn logged_peer(broker: &Broker, id: &str) -> String {
    let line = broker
        .wait_log_line(&["client connected", &format!("client_id={id} ")], TIMEOUT)
        .await;
    let start = line.find("peer=").expect("peer field") + "peer=".len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends `header` and then a CONNECT for `id` in one write; asserts CONNACK 0.
async fn connect_behind(addr: SocketAddr, header: &[u8], id: &str) -> RawClient {
    let mut client = RawClient::connect(addr).await;
    let mut bytes = header.to_vec();
    bytes.extend(Connect::v311(id).encode());
    client.send(&bytes).await;
    match client.recv(TIMEOUT).await {
        Packet::ConnAck { code: 0, .. } => client,
        other => panic!("expected CONNACK 0 for {id}, got {other:?}"),
    }
}

#[tokio::test]
async fn the_header_names_the_client() {
    let broker = Broker::start(&["-pp=tcp"]);
    let addr = broker.mqtt_addr();
    let mut v1 = connect_behind(
        addr,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\n",
        "behind-v1",
    )
    .await;
    let mut v2 = connect_behind(
        addr,
        &v2_tcp4(([198, 51, 100, 9], 40000), ([10, 0, 0, 1], 1883)),
        "behind-v2",
    )
    .await;
    let mut v1_ipv6 = connect_behind(
        addr,
        b"PROXY TCP6 2001:db8::1 2001:db8::2 6000 1883\r\n",
        "behind-v6",
    )
    .await;
    let mut local = connect_behind(addr, &v2_local(), "local-check").await;
    for client in [&mut v1, &mut v2, &mut v1_ipv6, &mut local] {
        client.ping().await;
    }
    assert_eq!(logged_peer(&broker, "behind-v1").await, "203.0.113.7:5555");
    assert_eq!(
        logged_peer(&broker, "behind-v2").await,
        "198.51.100.9:40000"
    );
    assert_eq!(
        logged_peer(&broker, "behind-v6").await,
        "[2001:db8::1]:6000"
    );
    assert!(
        logged_peer(&broker, "local-check")
            .await
            .starts_with("127.0.0.1:"),
        "LOCAL keeps the connection's own address"
    );
}

#[tokio::test]
async fn a_header_in_pieces_is_waited_for() {
    let broker = Broker::start(&["-pp=tcp"]);
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    let header = b"PROXY TCP4 203.0.113.8 10.0.0.1 5556 1883\r\n";
    client.send(&header[..10]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    client.send(&header[10..]).await;
    client.send(&Connect::v311("dribbled").encode()).await;
    assert!(matches!(
        client.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    assert_eq!(logged_peer(&broker, "dribbled").await, "203.0.113.8:5556");
}

#[tokio::test]
async fn no_header_or_a_broken_one_closes_the_connection() {
    let broker = Broker::start(&["-pp=tcp", "-nt=1"]);
    let addr = broker.mqtt_addr();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain CONNECT", Connect::v311("no-header").encode()),
        (
            "garbage",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n".to_vec(),
        ),
        ("UDP", {
            let mut udp = v2_tcp4(([1, 2, 3, 4], 1), ([5, 6, 7, 8], 2));
            udp[13] = 0x12;
            udp
        }),
    ];
    // A v1 header that never ends within its 107 bytes.
    cases.push((
        "endless",
        [b"PROXY TCP4 ".to_vec(), vec![b'1'; 120]].concat(),
    ));
    for (what, bytes) in &cases {
        let mut client = RawClient::<V3>::connect(addr).await;
        let _ = client.try_send(bytes).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(
            before.is_empty(),
            "{what}: nothing is answered, got {before:?}"
        );
    }
    let mut silent = RawClient::<V3>::connect(addr).await;
    silent.expect_closed(Duration::from_secs(4)).await;
    let refused = broker
        .metric("coolpy7_handshake_failures_total{listener=\"tcp\",reason=\"proxy_header\"}")
        .await;
    assert_eq!(refused, cases.len() as f64);
    let timeouts = broker
        .metric("coolpy7_handshake_failures_total{listener=\"tcp\",reason=\"timeout\"}")
        .await;
    assert_eq!(timeouts, 1.0);
    let mut fine = connect_behind(addr, &v2_local(), "after-broken").await;
    fine.ping().await;
}

#[tokio::test]
async fn the_header_comes_before_tls_and_websocket() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let mut args = vec![
        "-tl=127.0.0.1:0".to_string(),
        "-wl=127.0.0.1:0".to_string(),
        "-pp=tls,ws".to_string(),
    ];
    args.extend(files.server_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&args);

    // TLS: the header in clear, then the handshake on the same socket.
    let addr = broker.listener_addr("tls");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&v2_tcp4(([192, 0, 2, 10], 7000), ([10, 0, 0, 1], 8883)))
        .await
        .expect("header");
    let connector = TlsConnector::from(std::sync::Arc::new(client_config(&ca, None, &[])));
    let tls = tokio::time::timeout(
        TIMEOUT,
        connector.connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .expect("TLS in time")
    .expect("TLS handshake behind a PROXY header");
    let mut over_tls = RawClient::connect_over(boxed(tls), addr, "tls-behind").await;
    over_tls.ping().await;
    assert_eq!(logged_peer(&broker, "tls-behind").await, "192.0.2.10:7000");

    // WebSocket: the header, then the upgrade request.
    let addr = broker.listener_addr("ws");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"PROXY TCP4 192.0.2.11 10.0.0.1 7001 8083\r\n")
        .await
        .expect("header");
    let ws = try_connect_ws(tcp, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade behind a PROXY header");
    let mut over_ws = RawClient::connect_over(boxed(ws), addr, "ws-behind").await;
    over_ws.ping().await;
    assert_eq!(logged_peer(&broker, "ws-behind").await, "192.0.2.11:7001");

    // The plain listener was not named in -pp: no header expected there.
    let mut plain = RawClient::connect_v311(broker.mqtt_addr(), "plain").await;
    plain.ping().await;
}
