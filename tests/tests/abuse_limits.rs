//! Coolpy7's abuse limits through the real binary: `-pl` and `-psl` close a client that pings or
//! publishes too often (MQTT 5: DISCONNECT 0x96), `-dt` then refuses its client id (CONNACK 0x05,
//! MQTT 5 0x9F), `-cr` closes connections over the listener's rate before any handshake, and
//! `-prm`/`-prb` slow a publisher down without dropping anything.

use std::time::{Duration, Instant};

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::packets5;
use coolpy7_tests::raw::RawClient5;
use coolpy7_tests::{unique_id, Broker, RawClient, QUIET, TIMEOUT};

async fn connack_code(broker: &Broker, connect: &Connect) -> u8 {
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    match client.recv(TIMEOUT).await {
        Packet::ConnAck { code, .. } => code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn pinging_sooner_than_pl_closes_and_dt_bans_the_client_id() {
    let broker = Broker::start(&["-pl", "10", "-dt", "30"]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), "pinger").await;
    client.ping().await;
    client.send(&packets::pingreq()).await;
    client.expect_closed(TIMEOUT).await;
    // Banned: 3.1.1 gets 0x05, MQTT 5 0x9F; another client id is still welcome.
    assert_eq!(connack_code(&broker, &Connect::v311("pinger")).await, 0x05);
    let (_, connack) =
        RawClient5::try_connect_v5(broker.mqtt_addr(), &packets5::Connect::new("pinger")).await;
    assert_eq!(connack.code, 0x9F);
    assert_eq!(connack_code(&broker, &Connect::v311("other")).await, 0);
    assert_eq!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"banned\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn publishing_sooner_than_psl_closes_an_mqtt_5_client_with_0x96() {
    let broker = Broker::start(&["-psl", "500"]);
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), "fast").await;
    client.publish_qos1("t", 1, b"a").await;
    client
        .send(&packets5::PublishPacket::new("t", 0, 0, b"b").encode())
        .await;
    client.expect_disconnect(0x96).await;
    // Without -dt nobody is banned.
    assert_eq!(connack_code(&broker, &Connect::v311("fast")).await, 0);
    // A client that keeps to the interval is served.
    let mut slow = RawClient::connect_v311(broker.mqtt_addr(), "slow").await;
    slow.publish_qos1("t", 1, b"a").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    slow.publish_qos1("t", 2, b"b").await;
    slow.assert_open_for(QUIET).await;
}

#[tokio::test]
async fn connections_over_the_listeners_rate_are_closed_at_once() {
    let broker = Broker::start(&["-cr", "5"]);
    let mut accepted = 0;
    let mut closed = 0;
    for n in 0..20 {
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        client.send(&Connect::v311(&format!("c{n}")).encode()).await;
        match client.try_recv(TIMEOUT).await {
            Ok(Packet::ConnAck { code: 0, .. }) => accepted += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => closed += 1,
        }
    }
    // A burst of one second's worth, plus what refilled meanwhile.
    assert!(accepted >= 5, "{accepted} accepted");
    assert!(closed > 0, "none refused");
    assert_eq!(
        broker
            .metric("coolpy7_admission_refused_total{reason=\"connection_rate\"}")
            .await,
        f64::from(closed)
    );
}

#[tokio::test]
async fn a_publisher_over_its_rate_is_slowed_down_and_loses_nothing() {
    let broker = Broker::start(&["-prm", "20"]);
    let mut subscriber = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("sub")).await;
    assert_eq!(subscriber.subscribe(1, &[("rate/#", 0)]).await, vec![0]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "pub").await;
    let started = Instant::now();
    // 60 messages at 20/s with a burst of 20: at least two seconds.
    let mut batch = Vec::new();
    for n in 0..60u32 {
        batch.extend(packets::publish("rate/x", 0, 0, &n.to_be_bytes()));
    }
    publisher.send(&batch).await;
    let mut got = Vec::new();
    for _ in 0..60 {
        let publish = subscriber.recv_publish(Duration::from_secs(10)).await;
        got.push(u32::from_be_bytes(
            publish.payload[..4].try_into().expect("4 bytes"),
        ));
    }
    let elapsed = started.elapsed();
    assert_eq!(got, (0..60).collect::<Vec<_>>(), "all, in order");
    assert!(
        elapsed >= Duration::from_millis(1900),
        "60 messages at 20/s took only {elapsed:?}"
    );
    publisher.assert_open_for(QUIET).await;
}

#[tokio::test]
async fn a_publisher_over_its_byte_rate_is_slowed_down_too() {
    let broker = Broker::start(&["-prb", "10000"]);
    let mut subscriber = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("sub")).await;
    assert_eq!(subscriber.subscribe(1, &[("bytes/#", 0)]).await, vec![0]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "pub").await;
    let started = Instant::now();
    // 30 KB at 10 KB/s with a burst of 10 KB: at least two seconds.
    let payload = vec![7u8; 1000];
    let mut batch = Vec::new();
    for _ in 0..30 {
        batch.extend(packets::publish("bytes/x", 0, 0, &payload));
    }
    publisher.send(&batch).await;
    for _ in 0..30 {
        subscriber.recv_publish(Duration::from_secs(10)).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "30 KB at 10 KB/s took only {elapsed:?}"
    );
}
