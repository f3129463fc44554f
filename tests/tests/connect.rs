//! CONNECT handling (MQTT 3.1.1 §3.1, §3.2): protocol name and level, client identifiers,
//! connect flags, the first-packet rule, the CONNECT timeout and client takeover.

use std::time::{Duration, Instant};

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::{assert_healthy, unique_id, Broker, RawClient, QUIET, TIMEOUT};

/// Opens a connection, sends `connect` and returns the client with the first packet received.
async fn send_connect(broker: &Broker, connect: &Connect) -> (RawClient, Packet) {
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    let first = client.recv(TIMEOUT).await;
    (client, first)
}

fn accepted(packets: &[Packet]) -> bool {
    packets
        .iter()
        .any(|p| matches!(p, Packet::ConnAck { code: 0, .. }))
}

#[tokio::test]
async fn v311_connect_is_accepted() {
    let broker = Broker::start(&[]);
    let (mut client, first) = send_connect(&broker, &Connect::v311(&unique_id("v311"))).await;
    assert_eq!(
        first,
        Packet::ConnAck {
            session_present: false,
            code: 0
        }
    );
    client.ping().await;
}

#[tokio::test]
async fn v31_mqisdp_connect_is_accepted_and_works() {
    let broker = Broker::start(&[]);
    let (mut client, first) = send_connect(&broker, &Connect::v31(&unique_id("v31"))).await;
    assert_eq!(
        first,
        Packet::ConnAck {
            session_present: false,
            code: 0
        }
    );
    assert_eq!(client.subscribe(1, &[("v31/t", 1)]).await, vec![1]);
    client.publish_qos1("v31/t", 2, b"from 3.1").await;
    let publish = client.recv_publish(TIMEOUT).await;
    assert_eq!(publish.topic, "v31/t");
    assert_eq!(publish.payload, b"from 3.1");
    assert_eq!(publish.qos, 1);
    client.send(&packets::puback(publish.pkid)).await;
    client.ping().await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused_with_0x01() {
    let broker = Broker::start(&[]);
    // Level 5 is MQTT 5.0, which the broker speaks (tests/tests/mqtt5_*.rs); 6 does not exist yet.
    for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQTT", 255)] {
        let connect = Connect::v311(&unique_id("level")).protocol(name, level);
        let (mut client, first) = send_connect(&broker, &connect).await;
        assert_eq!(
            first,
            Packet::ConnAck {
                session_present: false,
                code: 0x01
            },
            "protocol {name:?} level {level}"
        );
        let after = client.expect_closed(TIMEOUT).await;
        assert!(
            after.is_empty(),
            "nothing may follow the refusal: {after:?}"
        );
    }
}

#[tokio::test]
async fn unknown_protocol_name_is_not_accepted() {
    let mut broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("name")).protocol("FOO", 4);
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(
        !accepted(&before),
        "a CONNECT for protocol FOO was accepted: {before:?}"
    );
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn empty_client_id_with_clean_session_gets_a_generated_id() {
    let broker = Broker::start(&[]);
    // Two such clients at once: if they shared an id, the second would take over the first.
    let (mut first, sp) = RawClient::handshake(broker.mqtt_addr(), &Connect::v311("")).await;
    assert!(!sp, "a clean session never has session present");
    let (mut second, sp) = RawClient::handshake(broker.mqtt_addr(), &Connect::v311("")).await;
    assert!(!sp);
    first.assert_open_for(QUIET).await;
    first.ping().await;
    second.ping().await;
    assert_eq!(second.subscribe(1, &[("gen/t", 0)]).await, vec![0]);
    first.publish_qos0("gen/t", b"hi").await;
    let publish = second.recv_publish(TIMEOUT).await;
    assert_eq!(
        (publish.topic.as_str(), &publish.payload[..]),
        ("gen/t", &b"hi"[..])
    );
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_refused_with_0x02() {
    let broker = Broker::start(&[]);
    let (mut client, first) = send_connect(&broker, &Connect::v311("").clean_session(false)).await;
    assert_eq!(
        first,
        Packet::ConnAck {
            session_present: false,
            code: 0x02
        }
    );
    let after = client.expect_closed(TIMEOUT).await;
    assert!(
        after.is_empty(),
        "nothing may follow the refusal: {after:?}"
    );
}

#[tokio::test]
async fn reserved_connect_flag_closes_without_connack() {
    let mut broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("reserved"));
    let connect = connect.clone().flags(connect.computed_flags() | 0x01);
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    client.expect_closed_silently(TIMEOUT).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn will_qos_or_retain_without_will_flag_closes() {
    let mut broker = Broker::start(&[]);
    // clean session + will QoS 1 / will QoS 2 / will retain, all without the will flag.
    for flags in [0x02 | 0x08, 0x02 | 0x10, 0x02 | 0x20] {
        let connect = Connect::v311(&unique_id("willflags")).flags(flags);
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        client.send(&connect.encode()).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(
            !accepted(&before),
            "CONNECT with flags {flags:#04x} (will flag 0) was accepted: {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn will_qos_3_closes() {
    let mut broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("willqos3")).will("w/t", b"x", 3, false);
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(!accepted(&before), "will QoS 3 was accepted: {before:?}");
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn password_without_username_closes() {
    let mut broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("pwonly")).password(b"secret");
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(
        !accepted(&before),
        "password flag without user name flag was accepted (§3.1.2-22): {before:?}"
    );
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn connect_with_will_username_and_password_is_accepted() {
    let broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("full"))
        .keep_alive(30)
        .will("full/will", b"bye", 1, false)
        .username("user")
        .password(b"\x00\xffbinary");
    let (mut client, sp) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    assert!(!sp);
    client.ping().await;
}

#[tokio::test]
async fn invalid_utf8_client_id_is_not_accepted() {
    let mut broker = Broker::start(&[]);
    let mut connect = Connect::v311("x");
    connect.client_id = b"bad\xff\xfeid".to_vec();
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(
        !accepted(&before),
        "ill-formed UTF-8 client id accepted: {before:?}"
    );
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn second_connect_closes_the_connection() {
    let mut broker = Broker::start(&[]);
    let id = unique_id("twice");
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &id).await;
    client.send(&Connect::v311(&id).encode()).await;
    client.expect_closed_silently(TIMEOUT).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn silent_socket_is_closed_after_connect_timeout() {
    let broker = Broker::start(&["-nt", "1"]);
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    let start = Instant::now();
    client.expect_closed_silently(Duration::from_secs(3)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed after {elapsed:?}, long before the 1 s CONNECT timeout"
    );
}

#[tokio::test]
async fn connect_timeout_does_not_apply_after_connect() {
    let broker = Broker::start(&["-nt", "1"]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("late")).await;
    client.assert_open_for(Duration::from_millis(2500)).await;
    client.ping().await;
}

#[tokio::test]
async fn non_connect_first_packet_closes() {
    let mut broker = Broker::start(&["-nt", "1"]);
    let firsts: [(&str, Vec<u8>); 3] = [
        ("PINGREQ", packets::pingreq()),
        ("PUBLISH", packets::publish("a/b", 0, 0, b"x")),
        ("SUBSCRIBE", packets::subscribe(1, &[("a/b", 0)])),
    ];
    for (name, bytes) in firsts {
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        client.send(&bytes).await;
        let before = client.expect_closed(Duration::from_secs(3)).await;
        assert!(
            before.is_empty(),
            "{name} before CONNECT must be answered by a close, got {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn second_connection_with_same_client_id_takes_over() {
    let broker = Broker::start(&[]);
    let id = unique_id("takeover");
    let mut first = RawClient::connect_v311(broker.mqtt_addr(), &id).await;
    first.ping().await;
    let (mut second, sp) = RawClient::handshake(broker.mqtt_addr(), &Connect::v311(&id)).await;
    assert!(!sp);
    let before = first.expect_closed(TIMEOUT).await;
    assert!(
        before.is_empty(),
        "the old connection got {before:?} before its close"
    );
    second.assert_open_for(QUIET).await;
    second.ping().await;
}

#[tokio::test]
async fn takeover_by_rumqttc_client_closes_the_old_one() {
    let broker = Broker::start(&[]);
    let id = unique_id("takeover-rumqttc");
    let mut first = broker.client(&id).await;
    let mut second = broker.client(&id).await;
    first.wait_closed(TIMEOUT).await;
    second
        .subscribe_ok("tk/t", coolpy7_tests::QoS::AtLeastOnce)
        .await;
    second
        .publish("tk/t", coolpy7_tests::QoS::AtLeastOnce, false, "x")
        .await;
    let publish = second.recv_publish(TIMEOUT).await;
    assert_eq!(publish.topic, "tk/t");
}

#[tokio::test]
async fn will_topic_with_wildcard_is_not_accepted() {
    let mut broker = Broker::start(&[]);
    for topic in ["will/+", "will/#", ""] {
        let connect = Connect::v311(&unique_id("badwill")).will(topic, b"x", 0, false);
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        client.send(&connect.encode()).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(
            !accepted(&before),
            "a will topic {topic:?} was accepted: {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn listener_on_all_interfaces_with_colon_port() {
    let broker = Broker::start(&["-l", ":0"]);
    let addr = broker.mqtt_addr();
    assert_ne!(addr.port(), 0, "a real port is logged: {addr}");
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let mut client = RawClient::connect_v311(loopback, &unique_id("any")).await;
    client.ping().await;
}
