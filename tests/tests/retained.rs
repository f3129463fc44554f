//! Retained messages (MQTT 3.1.1 §3.3.1.3): stored, replaced, deleted by an empty payload,
//! delivered on subscribe (retain flag 1) through wildcard filters, and live deliveries carry
//! retain flag 0.

use coolpy7_tests::client::TestClient;
use coolpy7_tests::{unique_id, Broker, QoS, QUIET, TIMEOUT};

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
