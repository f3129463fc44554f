//! MQTT 5 wills (OASIS MQTT 5.0 §3.1.2.5, §3.1.3.2): will properties are published with the
//! will; Will Delay Interval holds it back until the delay passes or the session ends, whichever
//! is first, and a reconnect before then cancels it; DISCONNECT 0x04 publishes it, 0x00 not.

use std::time::{Duration, Instant};

use coolpy7_tests::packets5::{self, reason, Connect, Property as P, ReasonPacket};
use coolpy7_tests::{unique_id, Broker, RawClient5, QUIET, TIMEOUT};

/// A v5 watcher subscribed at QoS 1 to `filter`.
async fn watcher(broker: &Broker, filter: &str) -> RawClient5 {
    let mut watcher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("watch")).await;
    watcher.subscribe_ok(1, filter, 1).await;
    watcher
}

fn with_will(id: &str, topic: &str) -> Connect {
    Connect::new(id).will(topic, b"gone", 1, false)
}

#[tokio::test]
async fn will_properties_are_published_with_the_will() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wp/#").await;
    let props = vec![
        P::UserProperty("who".into(), "sensor-1".into()),
        P::PayloadFormatIndicator(1),
        P::ContentType("text/plain".into()),
        P::ResponseTopic("wp/reply".into()),
        P::CorrelationData(vec![9, 8, 7]),
        P::MessageExpiryInterval(120),
        P::UserProperty("who".into(), "sensor-2".into()),
    ];
    let mut connect = with_will(&unique_id("wp"), "wp/t");
    for p in &props {
        connect = connect.will_prop(p.clone());
    }
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    let got = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("wp/t", &b"gone"[..])
    );
    packets5::assert_forwarded(&got, &props, 2);
    watch.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn will_delay_holds_the_will_back_until_it_passes() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wd/#").await;
    let connect = with_will(&unique_id("wd"), "wd/t")
        .session_expiry(60)
        .will_prop(P::WillDelayInterval(2));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    let dropped = Instant::now();
    // Not before the delay (checked up to 1.5 s, leaving slack for a loaded machine)...
    watch.expect_no_packet(Duration::from_millis(1500)).await;
    // ...but soon after it.
    let got = watch.recv_publish_acked(Duration::from_secs(5)).await;
    assert_eq!(got.topic, "wd/t");
    assert!(dropped.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_reconnect_within_the_will_delay_cancels_the_will() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wc/#").await;
    let id = unique_id("wc");
    let connect = with_will(&id, "wc/t")
        .clean_start(false)
        .session_expiry(60)
        .will_prop(P::WillDelayInterval(2));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    broker.wait_connections(1).await;
    // Back within the delay, without a will this time.
    let back = Connect::new(&id).clean_start(false).session_expiry(60);
    let (client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &back).await;
    assert!(connack.session_present);
    // Well past the delay: nothing.
    watch.expect_no_packet(Duration::from_secs(4)).await;
    client.disconnect().await;
}

#[tokio::test]
async fn the_will_is_published_when_the_session_ends_before_the_delay() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wse/#").await;
    let connect = with_will(&unique_id("wse"), "wse/t")
        .session_expiry(1)
        .will_prop(P::WillDelayInterval(600));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    let got = watch.recv_publish_acked(Duration::from_secs(5)).await;
    assert_eq!(got.topic, "wse/t");
}

#[tokio::test]
async fn a_will_without_delay_is_published_at_once_even_with_a_session() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w0/#").await;
    let connect = with_will(&unique_id("w0"), "w0/t").session_expiry(600);
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    let got = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.topic, "w0/t");
}

#[tokio::test]
async fn disconnect_with_will_message_0x04_publishes_the_will() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w4/#").await;
    let (client, _) =
        RawClient5::connect_v5(broker.mqtt_addr(), &with_will(&unique_id("w4"), "w4/t")).await;
    client
        .disconnect_with(&ReasonPacket::disconnect(reason::DISCONNECT_WITH_WILL))
        .await;
    let got = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("w4/t", &b"gone"[..])
    );
}

#[tokio::test]
async fn disconnect_with_will_message_respects_the_will_delay() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "w4d/#").await;
    let connect = with_will(&unique_id("w4d"), "w4d/t")
        .session_expiry(60)
        .will_prop(P::WillDelayInterval(2));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    client
        .disconnect_with(&ReasonPacket::disconnect(reason::DISCONNECT_WITH_WILL))
        .await;
    watch.expect_no_packet(Duration::from_millis(1500)).await;
    let got = watch.recv_publish_acked(Duration::from_secs(5)).await;
    assert_eq!(got.topic, "w4d/t");
}

#[tokio::test]
async fn normal_disconnect_discards_the_will() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wn/#").await;
    let connect = with_will(&unique_id("wn"), "wn/t").will_prop(P::WillDelayInterval(1));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    client
        .disconnect_with(&ReasonPacket::disconnect(0).prop(P::ReasonString("bye".into())))
        .await;
    watch.expect_no_packet(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_invalid_disconnect_publishes_the_will() {
    // §3.14.2.2.2: a DISCONNECT that sets a Session Expiry Interval after 0 is not a valid
    // DISCONNECT, so the will is not discarded.
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wi/#").await;
    let (mut client, _) =
        RawClient5::connect_v5(broker.mqtt_addr(), &with_will(&unique_id("wi"), "wi/t")).await;
    client
        .send(
            &ReasonPacket::disconnect(0)
                .prop(P::SessionExpiryInterval(30))
                .encode(),
        )
        .await;
    client.expect_disconnect(reason::PROTOCOL_ERROR).await;
    let got = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.topic, "wi/t");
}

#[tokio::test]
async fn will_is_published_on_takeover_by_a_v5_client() {
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wt/#").await;
    let id = unique_id("wt");
    let (mut old, _) = RawClient5::connect_v5(broker.mqtt_addr(), &with_will(&id, "wt/t")).await;
    let (_new, _) = RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&id)).await;
    old.expect_disconnect(reason::SESSION_TAKEN_OVER).await;
    let got = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.topic, "wt/t");
}

#[tokio::test]
async fn a_delayed_will_counts_its_message_expiry_from_when_it_is_published() {
    // §3.1.3.2.4: the will's Message Expiry Interval is "sent as the Publication Expiry
    // Interval when the Server publishes the Will Message": it starts when the will goes out,
    // not when the connection closed. A will delayed longer than its expiry must still arrive.
    let broker = Broker::start(&[]);
    let mut watch = watcher(&broker, "wx/#").await;
    let connect = with_will(&unique_id("wx"), "wx/t")
        .session_expiry(60)
        .will_prop(P::WillDelayInterval(2))
        .will_prop(P::MessageExpiryInterval(1));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    let got = watch.recv_publish_acked(Duration::from_secs(6)).await;
    assert_eq!(got.topic, "wx/t");
    assert_eq!(
        got.props.message_expiry_interval(),
        Some(1),
        "the full interval, counted from publication"
    );
}
