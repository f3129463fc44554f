//! Retained messages (MQTT 3.1.1 §3.3.1.3): stored, replaced, deleted by an empty payload,
//! delivered on subscribe (retain flag 1) through wildcard filters, and live deliveries carry
//! retain flag 0.

use coolpy7_tests::client::TestClient;
use coolpy7_tests::packets::{self, Packet, PublishPacket};
use coolpy7_tests::{unique_id, Broker, QoS, RawClient, QUIET, TIMEOUT};

async fn publish_retained(broker: &Broker, topic: &str, qos: QoS, payload: &[u8]) {
    let mut publisher = broker.client(&unique_id("retainer")).await;
    publisher.publish(topic, qos, true, payload.to_vec()).await;
    publisher.disconnect().await;
}

/// A new subscriber to `filter` at `qos`.
async fn new_subscriber(broker: &Broker, filter: &str, qos: QoS) -> TestClient {
    broker.subscriber(&unique_id("late"), filter, qos).await
}

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_with_retain_set() {
    let broker = Broker::start(&[]);
    publish_retained(&broker, "r/a", QoS::AtLeastOnce, b"v1").await;
    let mut sub = new_subscriber(&broker, "r/a", QoS::AtLeastOnce).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("r/a", &b"v1"[..]));
    assert!(
        got.retain,
        "a retained message sent on subscribe has retain 1"
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn retained_message_is_replaced() {
    let broker = Broker::start(&[]);
    publish_retained(&broker, "r/b", QoS::AtLeastOnce, b"v1").await;
    publish_retained(&broker, "r/b", QoS::AtLeastOnce, b"v2").await;
    let mut sub = new_subscriber(&broker, "r/b", QoS::AtLeastOnce).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"v2");
    assert!(got.retain);
    sub.expect_no_publish(QUIET).await;
    assert_eq!(broker.metric("coolpy7_retained_messages").await, 1.0);
}

#[tokio::test]
async fn empty_retained_payload_deletes_the_retained_message() {
    let broker = Broker::start(&[]);
    let mut existing = new_subscriber(&broker, "r/c", QoS::AtLeastOnce).await;
    publish_retained(&broker, "r/c", QoS::AtLeastOnce, b"v1").await;
    let got = existing.recv_publish(TIMEOUT).await;
    assert_eq!((&got.payload[..], got.retain), (&b"v1"[..], false));
    broker
        .wait_metric("coolpy7_retained_messages", "1 retained", TIMEOUT, |v| {
            v == 1.0
        })
        .await;

    publish_retained(&broker, "r/c", QoS::AtLeastOnce, b"").await;
    // The deleting message is still delivered as a normal message to existing subscribers.
    let got = existing.recv_publish(TIMEOUT).await;
    assert!(got.payload.is_empty(), "{got:?}");
    assert!(!got.retain);
    broker
        .wait_metric("coolpy7_retained_messages", "0 retained", TIMEOUT, |v| {
            v == 0.0
        })
        .await;

    let mut late = new_subscriber(&broker, "r/c", QoS::AtLeastOnce).await;
    late.expect_no_publish(QUIET).await;
    let mut late_wild = new_subscriber(&broker, "r/#", QoS::AtLeastOnce).await;
    late_wild.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn retained_messages_are_matched_by_wildcard_filters() {
    let broker = Broker::start(&[]);
    for topic in ["rw/a", "rw/a/b", "rw/a/c/d", "rw/x/b", "other/b"] {
        publish_retained(&broker, topic, QoS::AtLeastOnce, topic.as_bytes()).await;
    }
    for (filter, expected) in [
        ("rw/a/#", vec!["rw/a", "rw/a/b", "rw/a/c/d"]),
        ("rw/+/b", vec!["rw/a/b", "rw/x/b"]),
        ("+/b", vec!["other/b"]),
        ("#", vec!["other/b", "rw/a", "rw/a/b", "rw/a/c/d", "rw/x/b"]),
    ] {
        let mut sub = new_subscriber(&broker, filter, QoS::AtLeastOnce).await;
        let got = sub.recv_publishes(expected.len(), TIMEOUT).await;
        sub.expect_no_publish(QUIET).await;
        assert!(got.iter().all(|p| p.retain), "retain must be set: {got:?}");
        assert!(got.iter().all(|p| p.payload == p.topic.as_bytes()));
        let mut topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
        topics.sort();
        assert_eq!(topics, expected, "retained messages for {filter:?}");
    }
}

#[tokio::test]
async fn live_delivery_of_a_retained_publish_has_retain_clear() {
    let broker = Broker::start(&[]);
    let mut sub = new_subscriber(&broker, "r/live", QoS::AtLeastOnce).await;
    publish_retained(&broker, "r/live", QoS::AtLeastOnce, b"now").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"now");
    assert!(!got.retain, "live deliveries have retain 0 (§3.3.1.3)");
}

#[tokio::test]
async fn retained_message_qos_is_capped_by_the_subscription() {
    let broker = Broker::start(&[]);
    publish_retained(&broker, "r/q", QoS::AtLeastOnce, b"q1").await;
    let mut low = new_subscriber(&broker, "r/q", QoS::AtMostOnce).await;
    let got = low.recv_publish(TIMEOUT).await;
    assert_eq!((got.qos, got.retain), (QoS::AtMostOnce, true));
    let mut high = new_subscriber(&broker, "r/q", QoS::ExactlyOnce).await;
    let got = high.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.qos, got.retain),
        (QoS::AtLeastOnce, true),
        "min(stored QoS 1, subscription QoS 2)"
    );
}

#[tokio::test]
async fn resubscribing_resends_retained_messages() {
    let broker = Broker::start(&[]);
    publish_retained(&broker, "r/again", QoS::AtLeastOnce, b"r").await;
    let mut sub = new_subscriber(&broker, "r/again", QoS::AtLeastOnce).await;
    assert!(sub.recv_publish(TIMEOUT).await.retain);
    sub.subscribe_ok("r/again", QoS::AtLeastOnce).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert!(
        got.retain,
        "§3.8.4: retained messages are re-sent on a replacing SUBSCRIBE"
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn retained_dollar_topics_only_match_explicit_filters() {
    let broker = Broker::start(&[]);
    publish_retained(&broker, "$app/state", QoS::AtLeastOnce, b"s").await;
    let mut all = new_subscriber(&broker, "#", QoS::AtLeastOnce).await;
    all.expect_no_publish(QUIET).await;
    let mut explicit = new_subscriber(&broker, "$app/#", QoS::AtLeastOnce).await;
    let got = explicit.recv_publish(TIMEOUT).await;
    assert_eq!((got.topic.as_str(), got.retain), ("$app/state", true));
}

#[tokio::test]
async fn retained_messages_survive_their_publisher() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client(&unique_id("gone")).await;
    publisher
        .publish("r/orphan", QoS::ExactlyOnce, true, "kept")
        .await;
    publisher.drop_connection().await;
    broker.wait_connections(0).await;
    let mut sub = new_subscriber(&broker, "r/orphan", QoS::ExactlyOnce).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (&got.payload[..], got.qos, got.retain),
        (&b"kept"[..], QoS::ExactlyOnce, true)
    );
}

/// Publishes `n` retained messages `<prefix>/<i>` at `qos` (0 or 1) from one raw client and
/// waits until the broker holds them all.
async fn publish_many_retained(broker: &Broker, prefix: &str, n: usize, qos: u8) {
    publish_many_retained_sized(broker, prefix, n, qos, 1).await;
}

/// [`publish_many_retained`] with payloads of `size` bytes.
async fn publish_many_retained_sized(
    broker: &Broker,
    prefix: &str,
    n: usize,
    qos: u8,
    size: usize,
) {
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("many")).await;
    let payload = vec![b'v'; size];
    for i in 0..n {
        let pkid = if qos == 0 { 0 } else { (i % 60_000) as u16 + 1 };
        let packet = PublishPacket::new(&format!("{prefix}/{i}"), qos, pkid, &payload).retain(true);
        publisher.send(&packet.encode()).await;
    }
    publisher.ping().await;
    broker
        .wait_metric(
            "coolpy7_retained_messages",
            "every retained message stored",
            TIMEOUT,
            |v| v == n as f64,
        )
        .await;
}

/// Every retained message matching a new subscription is delivered, however many there are:
/// they are paced by the client's flow, not cut to the `-mq` queue limit (100 here).
#[tokio::test]
async fn every_matching_retained_message_is_delivered_beyond_the_queue_limit_at_qos0() {
    // 3,000 × 1 KB: far more than the socket buffers hold, so the stream lasts while we ping.
    const N: usize = 3000;
    let broker = Broker::start(&["-mq", "100"]);
    publish_many_retained_sized(&broker, "many", N, 0, 1024).await;

    let mut sub = RawClient::connect_with_recv_buffer(broker.mqtt_addr(), 4096).await;
    sub.send(&packets::Connect::v311(&unique_id("all")).encode())
        .await;
    assert!(matches!(
        sub.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    sub.send(&packets::subscribe(1, &[("many/#", 0)])).await;
    let mut topics = std::collections::HashSet::new();
    let mut suback = false;
    let mut pinged = false;
    let mut pong = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while topics.len() < N || !pong || !suback {
        assert!(
            std::time::Instant::now() < deadline,
            "got {} of {N} retained messages (SUBACK {suback}, PINGRESP {pong})",
            topics.len()
        );
        match sub.recv(TIMEOUT).await {
            Packet::SubAck { pkid: 1, codes } => {
                assert_eq!(codes, vec![0]);
                assert!(
                    topics.is_empty(),
                    "SUBACK comes before the retained messages"
                );
                suback = true;
            }
            Packet::PingResp => {
                // Asked for while the retained messages stream and answered among them: the
                // connection is still read from while it catches up.
                assert!(topics.len() < N, "PINGRESP only after the whole backlog");
                pong = true;
            }
            Packet::Publish(publish) => {
                if !pinged && topics.len() == 100 {
                    sub.send(&packets::pingreq()).await;
                    pinged = true;
                }
                assert!(publish.retain, "sent because of the subscription: retain 1");
                assert!(
                    topics.insert(publish.topic.clone()),
                    "{} twice",
                    publish.topic
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    sub.expect_no_packet(QUIET).await;
    let dropped = broker
        .metric("coolpy7_messages_dropped_total{reason=\"queue_full\"}")
        .await;
    assert_eq!(dropped, 0.0, "no retained message was dropped");
}

/// The same at QoS 1, where the in-flight window (`-mif`) paces them by acknowledgements.
#[tokio::test]
async fn every_matching_retained_message_is_delivered_beyond_the_queue_limit_at_qos1() {
    const N: usize = 2000;
    let broker = Broker::start(&["-mq", "100", "-mif", "10"]);
    publish_many_retained(&broker, "many1", N, 1).await;

    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("all1")).await;
    assert_eq!(sub.subscribe(1, &[("many1/#", 1)]).await, vec![1]);
    let mut topics = std::collections::HashSet::new();
    for _ in 0..N {
        let publish = sub.recv_publish(TIMEOUT).await;
        assert!(publish.retain);
        assert_eq!(publish.qos, 1);
        assert!(
            topics.insert(publish.topic.clone()),
            "{} twice",
            publish.topic
        );
        sub.send(&packets::puback(publish.pkid)).await;
    }
    sub.expect_no_packet(QUIET).await;
    assert_eq!(topics.len(), N);
}

/// A live message published while a retained backlog is still being sent follows it, without
/// the client having to send anything.
#[tokio::test]
async fn a_live_message_queued_behind_a_retained_backlog_is_delivered() {
    const N: usize = 5000;
    let broker = Broker::start(&[]);
    publish_many_retained_sized(&broker, "bl", N, 0, 1024).await;
    let mut sub = RawClient::connect_with_recv_buffer(broker.mqtt_addr(), 4096).await;
    sub.send(&packets::Connect::v311(&unique_id("bl")).encode())
        .await;
    assert!(matches!(
        sub.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    sub.send(&packets::subscribe(1, &[("bl/#", 0)])).await;
    // Not reading yet: the backlog is still owed when the live message arrives.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("live")).await;
    publisher.publish_qos0("bl/live", b"live").await;
    publisher.ping().await;
    let mut retained = 0;
    loop {
        match sub.recv(TIMEOUT).await {
            Packet::Publish(publish) if publish.topic == "bl/live" => break,
            Packet::Publish(_) => retained += 1,
            _ => {}
        }
    }
    assert_eq!(
        retained, N,
        "the live message comes after every retained one"
    );
}

/// Repeating a small SUBSCRIBE that matches many retained messages does not make the broker
/// hold a copy of them per SUBSCRIBE: what is owed is a cursor per filter.
#[tokio::test]
async fn repeated_subscribes_do_not_multiply_the_retained_backlog() {
    const N: usize = 50_000;
    const REPEATS: u16 = 300;
    let broker = Broker::start(&[]);
    publish_many_retained(&broker, "amp", N, 0).await;
    let rss_before = broker.rss_kb();
    let mut sub = RawClient::connect_with_recv_buffer(broker.mqtt_addr(), 4096).await;
    sub.send(&packets::Connect::v311(&unique_id("amp")).encode())
        .await;
    let mut bytes = Vec::new();
    for pkid in 1..=REPEATS {
        bytes.extend_from_slice(&packets::subscribe(pkid, &[("amp/#", 0)]));
    }
    sub.send(&bytes).await;
    // Bounded: every SUBACK, read through whatever retained messages come first.
    let mut subacks = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while subacks < REPEATS {
        assert!(std::time::Instant::now() < deadline, "{subacks} SUBACKs");
        if let Packet::SubAck { .. } = sub.recv(TIMEOUT).await {
            subacks += 1;
        }
    }
    let growth_mb = broker.rss_kb().saturating_sub(rss_before) / 1024;
    // A copy per SUBSCRIBE would be 300 × 50,000 × 16 bytes = 229 MB.
    assert!(
        growth_mb < 32,
        "RSS grew by {growth_mb} MB from {REPEATS} SUBSCRIBEs"
    );
}
