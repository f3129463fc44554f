//! MQTT over WebSocket (`-wl`) and WebSocket over TLS (`-wsl`): the upgrade on `-wsp` with the
//! subprotocol "mqtt" (or "mqttv3.1"), packets split across messages and several packets in one
//! message, MQTT 5 over WebSocket, a client certificate over WSS, and upgrades and messages the
//! broker must refuse.
//!
//! The client is tokio-tungstenite (over tokio-rustls for WSS) carrying the test's own MQTT
//! encoder: each `send` is one binary message, so a test decides where messages split.

use std::time::Duration;

use coolpy7_tests::cluster::wait_until;
use coolpy7_tests::packets5;
use coolpy7_tests::raw::{V3, V5};
use coolpy7_tests::transport::{
    boxed, client_config, flood_until_write_timeout, tcp, try_connect_tls, try_connect_ws, ws_end,
    TestCa, TlsFiles, WsEnd,
};
use coolpy7_tests::{packets, unique_id, Broker, Connect, Packet, RawClient, TIMEOUT};
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

fn start_ws(extra: &[&str]) -> Broker {
    let mut args = vec!["-wl=127.0.0.1:0"];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

/// A WebSocket MQTT client that has sent CONNECT and got CONNACK 0.
async fn ws_client(broker: &Broker, client_id: &str) -> RawClient {
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("WebSocket upgrade");
    RawClient::connect_over(boxed(ws), addr, client_id).await
}

#[tokio::test]
async fn websocket_and_tcp_clients_exchange_messages() {
    let broker = start_ws(&[]);
    let mut over_ws = ws_client(&broker, "over-ws").await;
    over_ws.subscribe(1, &[("w/#", 1)]).await;
    let mut over_tcp = RawClient::connect_v311(broker.mqtt_addr(), "over-tcp").await;
    over_tcp.subscribe(1, &[("w/#", 0)]).await;

    over_tcp.publish_qos0("w/from-tcp", b"hello").await;
    let got = over_ws.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("w/from-tcp", &b"hello"[..])
    );
    over_ws.send(&packets::puback(got.pkid)).await;
    let _echo = over_tcp.recv_publish(TIMEOUT).await;

    // Larger than the broker's 16 KiB WebSocket messages: it arrives in several.
    let big = vec![7u8; 200_000];
    over_ws.publish_qos1("w/from-ws", 9, &big).await;
    let got = over_tcp.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), got.payload.len()),
        ("w/from-ws", big.len())
    );
    assert_eq!(got.payload, big);
    let echo = over_ws.recv_publish(TIMEOUT).await;
    assert_eq!(echo.payload, big);
    assert_eq!(
        broker
            .metric("coolpy7_listener_connections_total{listener=\"ws\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn packets_split_across_messages_and_several_in_one() {
    let broker = start_ws(&[]);
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("WebSocket upgrade");
    let mut client = RawClient::<V3>::over(boxed(ws), addr);
    // CONNECT in three messages: one byte, the rest of the fixed header, the body.
    let connect = Connect::v311("split").encode();
    client.send(&connect[..1]).await;
    client.send(&connect[1..2]).await;
    client.send(&connect[2..]).await;
    assert!(matches!(
        client.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    // SUBSCRIBE, two PUBLISHes and a PINGREQ in one message.
    let mut batch = packets::subscribe(1, &[("s/#", 0)]);
    batch.extend(packets::publish("s/1", 0, 0, b"one"));
    batch.extend(packets::publish("s/2", 0, 0, b"two"));
    batch.extend([0xc0, 0x00]);
    client.send(&batch).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(client.recv(TIMEOUT).await);
    }
    assert!(matches!(seen[0], Packet::SubAck { .. }), "{seen:?}");
    let payloads: Vec<Vec<u8>> = seen
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(publish) => Some(publish.payload.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(payloads, [b"one".to_vec(), b"two".to_vec()], "{seen:?}");
    assert!(seen.contains(&Packet::PingResp), "{seen:?}");
    // A PUBLISH whose bytes straddle two messages with the next packet's start.
    let first = packets::publish("s/3", 0, 0, b"three");
    let second = packets::publish("s/4", 0, 0, b"four");
    let mut joined = first.clone();
    joined.extend(&second);
    let cut = first.len() + 2;
    client.send(&joined[..3]).await;
    client.send(&joined[3..cut]).await;
    client.send(&joined[cut..]).await;
    assert_eq!(client.recv_publish(TIMEOUT).await.payload, b"three");
    assert_eq!(client.recv_publish(TIMEOUT).await.payload, b"four");
}

#[tokio::test]
async fn subprotocols_and_paths() {
    let broker = start_ws(&["-wsp=/broker/mqtt"]);
    let addr = broker.listener_addr("ws");
    for (offered, agreed) in [
        ("mqtt", Some("mqtt")),
        ("mqttv3.1", Some("mqttv3.1")),
        ("wamp, mqtt", Some("mqtt")),
        ("", None),
    ] {
        let ws = try_connect_ws(tcp(addr).await, addr, "/broker/mqtt", offered)
            .await
            .unwrap_or_else(|e| panic!("upgrade offering {offered:?}: {e}"));
        assert_eq!(ws.agreed.as_deref(), agreed, "offering {offered:?}");
        let mut client = RawClient::connect_over(boxed(ws), addr, &unique_id("sub")).await;
        client.ping().await;
    }
    let refused = try_connect_ws(tcp(addr).await, addr, "/broker/mqtt", "wamp").await;
    assert!(
        refused.is_err(),
        "a client offering only other subprotocols is refused"
    );
    let wrong_path = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt").await;
    let error = wrong_path.err().expect("another path is refused");
    assert!(error.contains("404"), "{error}");
    // Counted once the refusal was written: the client may read it a moment before.
    let series = "coolpy7_handshake_failures_total{listener=\"ws\",reason=\"websocket\"}";
    wait_until("both refusals to be counted", TIMEOUT, || async {
        broker.metric(series).await >= 2.0
    })
    .await;
    assert_eq!(broker.metric(series).await, 2.0);
}

#[tokio::test]
async fn text_messages_garbage_and_silence_close_the_connection() {
    let broker = start_ws(&["-nt=1"]);
    let addr = broker.listener_addr("ws");

    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    let mut inner = ws.into_inner();
    inner
        .send(Message::text("CONNECT"))
        .await
        .expect("send text");
    let closed = ws_end(&mut inner, TIMEOUT).await;
    assert_eq!(
        closed,
        Some(WsEnd::Close(Some(1003))),
        "a text message closes with 1003 (unsupported data)"
    );

    // Not HTTP at all.
    let mut garbage = RawClient::connect(addr).await;
    garbage.send(&Connect::v311("not-ws").encode()).await;
    garbage.expect_closed(TIMEOUT).await;

    // An upgrade that never comes.
    let mut silent = RawClient::connect(addr).await;
    silent.expect_closed(Duration::from_secs(4)).await;
    // Counted just after the socket is dropped (with the timed-out handshake's future), so
    // the client may see the close first.
    broker
        .wait_metric(
            "coolpy7_handshake_failures_total{listener=\"ws\",reason=\"timeout\"}",
            "one handshake timeout",
            TIMEOUT,
            |timeouts| timeouts == 1.0,
        )
        .await;

    let mut client = ws_client(&broker, "still-serving").await;
    client.ping().await;
}

#[tokio::test]
async fn mqtt5_over_websocket() {
    let broker = start_ws(&[]);
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    let mut client = RawClient::<V5>::over(boxed(ws), addr);
    client.send(&packets5::Connect::new("v5-ws").encode()).await;
    match client.recv(TIMEOUT).await {
        packets5::Packet::ConnAck(connack) => assert_eq!(connack.code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    client.subscribe_ok(1, "v5/#", 1).await;
    client.publish_qos1("v5/x", 3, b"five").await;
    let got = client.recv_publish(TIMEOUT).await;
    assert_eq!(got.payload, b"five");
}

#[tokio::test]
async fn wss_with_a_client_certificate_talks_to_tcp_and_ws_clients() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let mut args = vec![
        "-wl=127.0.0.1:0".to_string(),
        "-wsl=127.0.0.1:0".to_string(),
        format!("-tca={}", files.client_ca.display()),
        "-tcn=cn".to_string(),
    ];
    args.extend(files.server_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&args);
    let addr = broker.listener_addr("wss");

    // Browsers offer ALPN http/1.1 for wss://.
    let identity = ca.client("browser-1", "browser-1.example");
    let tls = try_connect_tls(addr, client_config(&ca, Some(&identity), &[b"http/1.1"]))
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let wss = try_connect_ws(tls, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade over TLS");
    let mut over_wss = RawClient::connect_over(boxed(wss), addr, "over-wss").await;
    over_wss.subscribe(1, &[("x/#", 0)]).await;
    let mut over_ws = ws_client(&broker, "over-ws").await;
    let mut over_tcp = RawClient::connect_v311(broker.mqtt_addr(), "over-tcp").await;
    over_ws.publish_qos0("x/ws", b"from ws").await;
    over_tcp.publish_qos0("x/tcp", b"from tcp").await;
    let mut got = vec![
        over_wss.recv_publish(TIMEOUT).await.payload,
        over_wss.recv_publish(TIMEOUT).await.payload,
    ];
    got.sort();
    assert_eq!(got, [b"from tcp".to_vec(), b"from ws".to_vec()]);
    let connected = broker
        .wait_log_line(&["client connected", "over-wss"], TIMEOUT)
        .await;
    assert!(
        connected.contains("username=Some(\"browser-1\")"),
        "{connected}"
    );

    // Without a certificate the WSS listener refuses (-tca makes them required).
    let refused = match try_connect_tls(addr, client_config(&ca, None, &[])).await {
        Err(_) => true,
        Ok(tls) => try_connect_ws(tls, addr, "/mqtt", "mqtt").await.is_err(),
    };
    assert!(refused, "a WSS client without a certificate is refused");
}

#[tokio::test]
async fn tls_and_websocket_clients_of_different_nodes_exchange_messages() {
    use coolpy7_tests::cluster::{
        unique_key, wait_full_membership, Node, NodeConfig, JOIN_TIMEOUT,
    };

    let ca = TestCa::new("cluster CA");
    let files = TlsFiles::write(&ca.server("node"), &ca);
    let key = unique_key();
    let mut tls_args = vec!["-tl=127.0.0.1:0".to_string()];
    tls_args.extend(files.server_args());
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let n1 = Node::start(NodeConfig::new("n1", &key).args(&tls_args));
    let n2 = Node::start(
        NodeConfig::new("n2", &key)
            .seed(n1.gossip)
            .args(&["-wl=127.0.0.1:0"]),
    );
    wait_full_membership(&[&n1, &n2], JOIN_TIMEOUT).await;

    let tls_addr = n1.listener_addr("tls");
    let tls = try_connect_tls(tls_addr, client_config(&ca, None, &[b"mqtt"]))
        .await
        .expect("TLS handshake");
    let mut on_n1 = RawClient::connect_over(boxed(tls), tls_addr, "tls-on-n1").await;
    on_n1.subscribe(1, &[("c/#", 0)]).await;
    let mut on_n2 = ws_client(&n2, "ws-on-n2").await;
    on_n2.subscribe(1, &[("c/#", 0)]).await;

    // Subscriptions are not announced between nodes: a bounded retry until forwarding works.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        on_n2.publish_qos0("c/from-ws", b"over the cluster").await;
        match on_n1.try_recv(Duration::from_millis(300)).await {
            Ok(Packet::Publish(p)) if p.payload == b"over the cluster" => break,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "the TLS client on n1 got nothing from the WebSocket client on n2"
            ),
        }
    }
    on_n1.publish_qos0("c/from-tls", b"and back").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = on_n2.recv_publish(TIMEOUT).await;
        if got.payload == b"and back" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
}

#[tokio::test]
async fn pings_are_answered_and_close_is_a_handshake() {
    use futures_util::StreamExt;
    let broker = start_ws(&[]);
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    let mut inner = ws.into_inner();
    inner
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(TIMEOUT, inner.next())
        .await
        .expect("an answer in time");
    match pong {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    inner.close(None).await.expect("close");
    let answer = ws_end(&mut inner, TIMEOUT).await;
    assert!(
        matches!(answer, Some(WsEnd::Close(_) | WsEnd::Eof)),
        "the broker answers Close with Close: {answer:?}"
    );
}

#[tokio::test]
async fn a_large_message_before_connect_is_judged_by_its_fixed_header() {
    let broker = start_ws(&["-mcl=1000"]);
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    let mut client = RawClient::<V3>::over(boxed(ws), addr);
    // One 200 KB message whose first bytes are a CONNECT fixed header announcing 199,000 bytes.
    let mut message = vec![0x10];
    let mut remaining: usize = 199_000;
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining == 0 {
            message.push(byte);
            break;
        }
        message.push(byte | 0x80);
    }
    message.resize(200_000, 0);
    let _ = client.try_send(&message).await;
    client.expect_closed(TIMEOUT).await;
    assert_eq!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"connect_too_large\"}")
            .await,
        1.0
    );
    // The lease goes with the connection's task, a moment after the close the client sees.
    broker
        .wait_metric(
            "coolpy7_handshake_buffer_bytes",
            "handshake memory given back",
            TIMEOUT,
            |v| v == 0.0,
        )
        .await;
}

#[tokio::test]
async fn a_frame_header_in_pieces_does_not_keep_a_silent_client_alive() {
    let broker = start_ws(&[]);
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    // CONNECT with keepalive 1 s, then the first byte of a frame header and silence.
    let mut tcp_level = ws.into_inner();
    let mut connect = Connect::v311("half-header");
    connect.keep_alive = 1;
    tcp_level
        .send(Message::binary(connect.encode()))
        .await
        .expect("CONNECT");
    tcp_level
        .get_mut()
        .write_all(&[0x82])
        .await
        .expect("a lone header byte");
    let closed = ws_end(&mut tcp_level, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the keepalive (1.5 s) did not close the client"
    );
    broker
        .wait_log_line(&["half-header", "keepalive expired"], TIMEOUT)
        .await;
}

#[tokio::test]
async fn a_websocket_subscriber_that_stops_reading_is_closed_at_its_write_timeout() {
    let broker = start_ws(&["-t=1", "-mq=100000"]);
    let addr = broker.listener_addr("ws");
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    let mut stalled = RawClient::connect_over(boxed(ws), addr, "stalled-ws").await;
    stalled.subscribe(1, &[("flood/#", 0)]).await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "flooder").await;
    flood_until_write_timeout(&broker, &mut publisher, "stalled-ws").await;
    publisher.ping().await;
}

#[tokio::test]
async fn a_close_right_behind_a_publish_is_a_clean_close() {
    use futures_util::StreamExt;
    let broker = start_ws(&[]);
    let addr = broker.listener_addr("ws");
    let mut subscriber = RawClient::connect_v311(broker.mqtt_addr(), "watcher").await;
    subscriber.subscribe(1, &[("last/#", 0)]).await;
    let ws = try_connect_ws(tcp(addr).await, addr, "/mqtt", "mqtt")
        .await
        .expect("upgrade");
    let mut ws = ws.into_inner();
    ws.send(Message::binary(Connect::v311("closer").encode()))
        .await
        .expect("CONNECT");
    match ws.next().await {
        Some(Ok(Message::Binary(connack))) => assert_eq!(&connack[..2], &[0x20, 0x02]),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // A QoS 1 PUBLISH and the Close in one write: the broker reads both at once.
    ws.feed(Message::binary(packets::publish(
        "last/words",
        1,
        5,
        b"bye",
    )))
    .await
    .expect("feed");
    ws.close(None).await.expect("close");
    let answered = ws_end(&mut ws, TIMEOUT).await;
    assert!(
        matches!(answered, Some(WsEnd::Close(_) | WsEnd::Eof)),
        "the Close is answered with Close: {answered:?}"
    );
    assert_eq!(subscriber.recv_publish(TIMEOUT).await.payload, b"bye");
    broker
        .wait_log_line(&["closer", "client closed the connection"], TIMEOUT)
        .await;
}
