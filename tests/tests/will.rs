//! Last will (MQTT 3.1.1 §3.1.2.5-§3.1.2.7): published when the connection ends without
//! DISCONNECT (keep-alive timeout, network close, protocol error, takeover), never after
//! DISCONNECT, with its QoS and retain flag.

use std::time::Duration;

use coolpy7_tests::client::TestClient;
use coolpy7_tests::packets::Connect;
use coolpy7_tests::{unique_id, Broker, QoS, RawClient, QUIET, TIMEOUT};

/// A watcher subscribed at QoS 2 to `prefix/#`.
async fn watcher(broker: &Broker, prefix: &str) -> TestClient {
    broker
        .subscriber(
            &unique_id("watcher"),
            &format!("{prefix}/#"),
            QoS::ExactlyOnce,
        )
        .await
}

/// A raw 3.1.1 client with a will, connected.
async fn with_will(
    broker: &Broker,
    id: &str,
    topic: &str,
    qos: u8,
    retain: bool,
    keep_alive: u16,
) -> RawClient {
    let connect = Connect::v311(id)
        .keep_alive(keep_alive)
        .will(topic, b"gone", qos, retain);
    RawClient::handshake(broker.mqtt_addr(), &connect).await.0
}

async fn expect_will(watcher: &mut TestClient, topic: &str, timeout: Duration) {
    let got = watcher.recv_publish(timeout).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (topic, &b"gone"[..])
    );
    assert!(!got.retain, "a live delivery has retain 0");
    watcher.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let mut client = with_will(&broker, &unique_id("ka"), "will/ka", 1, false, 1).await;
    expect_will(&mut watch, "will/ka", Duration::from_secs(5)).await;
    client.expect_closed(TIMEOUT).await;
}

#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let client = with_will(&broker, &unique_id("drop"), "will/drop", 1, false, 0).await;
    watch.expect_no_publish(QUIET).await;
    drop(client);
    expect_will(&mut watch, "will/drop", TIMEOUT).await;
}

#[tokio::test]
async fn will_is_published_on_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let mut client = with_will(&broker, &unique_id("garbage"), "will/err", 1, false, 0).await;
    // Packet type 0 is reserved: a protocol violation.
    let _ = client.try_send(&[0x00, 0x03, 0xde, 0xad, 0xbe]).await;
    client.expect_closed(TIMEOUT).await;
    expect_will(&mut watch, "will/err", TIMEOUT).await;
}

#[tokio::test]
async fn will_is_published_on_takeover() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let id = unique_id("taken");
    let mut first = with_will(&broker, &id, "will/takeover", 1, false, 0).await;
    let mut second = RawClient::connect_v311(broker.mqtt_addr(), &id).await;
    first.expect_closed(TIMEOUT).await;
    expect_will(&mut watch, "will/takeover", TIMEOUT).await;
    second.ping().await;
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let client = with_will(&broker, &unique_id("polite"), "will/polite", 1, false, 0).await;
    client.disconnect().await;
    broker.wait_connections(1).await;
    watch.expect_no_publish(Duration::from_millis(1500)).await;
    // The watcher does work: a message on the same topic arrives.
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("will/polite", QoS::AtLeastOnce, false, "control")
        .await;
    assert_eq!(&watch.recv_publish(TIMEOUT).await.payload[..], b"control");
}

#[tokio::test]
async fn will_is_not_published_after_disconnect_and_keep_alive() {
    // A DISCONNECT discards the will even if the socket then lingers past the keep alive.
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let mut client = with_will(&broker, &unique_id("linger"), "will/linger", 1, false, 1).await;
    client.send(&coolpy7_tests::packets::disconnect()).await;
    watch.expect_no_publish(Duration::from_secs(2)).await;
    drop(client);
    watch.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn will_qos_is_honoured() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wq").await;
    for level in 0..=2u8 {
        let topic = format!("wq/{level}");
        let client = with_will(&broker, &unique_id("wq"), &topic, level, false, 0).await;
        drop(client);
        let got = watch.recv_publish(TIMEOUT).await;
        assert_eq!(got.topic, topic);
        assert_eq!(
            got.qos,
            coolpy7_tests::qos(level),
            "will published at its QoS"
        );
    }
    watch.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn retained_will_is_kept_for_later_subscribers() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wr").await;
    let client = with_will(&broker, &unique_id("wr"), "wr/status", 1, true, 0).await;
    drop(client);
    let live = watch.recv_publish(TIMEOUT).await;
    assert_eq!((live.topic.as_str(), live.retain), ("wr/status", false));

    let mut late = broker
        .subscriber(&unique_id("late"), "wr/status", QoS::AtLeastOnce)
        .await;
    let got = late.recv_publish(TIMEOUT).await;
    assert_eq!(
        (&got.payload[..], got.retain, got.qos),
        (&b"gone"[..], true, QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn will_of_an_mqtt31_client_is_published() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let connect = Connect::v31(&unique_id("v31")).will("will/v31", b"gone", 1, false);
    let (client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    drop(client);
    expect_will(&mut watch, "will/v31", TIMEOUT).await;
}

#[tokio::test]
async fn will_of_a_rumqttc_client_is_published_when_it_drops() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "will").await;
    let mut options = broker.options(&unique_id("rumqttc-will"));
    options.set_last_will(rumqttc::LastWill::new(
        "will/rumqttc",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let client = TestClient::connect(options).await;
    client.drop_connection().await;
    expect_will(&mut watch, "will/rumqttc", TIMEOUT).await;
}
