//! MQTT 5 expiry (OASIS MQTT 5.0 §3.1.2.11.2, §3.3.2.3.3, §3.14.2.2.2). Message Expiry: a
//! message that waited is delivered with the remaining interval, an expired one never (from an
//! offline session or the retained store). Session Expiry: 0 ends the session with the
//! connection, n keeps it n seconds, DISCONNECT may change it unless it was 0 (0 -> n is
//! DISCONNECT 0x82).

use std::time::Duration;

use coolpy7_tests::packets5::{
    reason, Connect, Packet, Property as P, PublishPacket, ReasonPacket, SubscribePacket,
};
use coolpy7_tests::{unique_id, Broker, RawClient5, QUIET, TIMEOUT};

fn persistent(id: &str, expiry: u32) -> Connect {
    Connect::new(id).clean_start(false).session_expiry(expiry)
}

/// Connects `id` with a session of `expiry` seconds subscribed to `filter` at QoS 1, then
/// disconnects normally and waits until the broker has seen it go.
async fn offline_subscriber(broker: &Broker, id: &str, expiry: u32, filter: &str) {
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(id, expiry)).await;
    client.subscribe_ok(1, filter, 1).await;
    client.disconnect().await;
    broker.wait_connections(0).await;
}

async fn publisher(broker: &Broker) -> RawClient5 {
    RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await
}

async fn publish_expiring(
    publisher: &mut RawClient5,
    topic: &str,
    pkid: u16,
    expiry: u32,
    retain: bool,
) {
    let ack = publisher
        .publish(
            &PublishPacket::new(topic, 1, pkid, topic.as_bytes())
                .retain(retain)
                .prop(P::MessageExpiryInterval(expiry)),
        )
        .await
        .expect("PUBACK");
    assert!(ack.code < 0x80, "{ack:?}");
}

#[tokio::test]
async fn a_queued_message_is_delivered_with_the_remaining_expiry_interval() {
    let broker = Broker::start(&[]);
    let id = unique_id("queued");
    offline_subscriber(&broker, &id, 60, "mx/#").await;
    let mut publisher = publisher(&broker).await;
    publish_expiring(&mut publisher, "mx/t", 1, 30, false).await;
    publisher.disconnect().await;
    // At least 2 s in the queue: the remaining interval, rounded down, is at most 28.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 60)).await;
    assert!(connack.session_present);
    let got = sub.recv_publish_acked(TIMEOUT).await;
    let left = got
        .props
        .message_expiry_interval()
        .unwrap_or_else(|| panic!("the expiry must be forwarded: {got:?}"));
    assert!(
        (20..=28).contains(&left),
        "remaining Message Expiry Interval {left} after 2+ s of 30: {got:?}"
    );
}

#[tokio::test]
async fn an_expired_message_is_never_delivered_from_an_offline_session() {
    let broker = Broker::start(&[]);
    let id = unique_id("expired");
    offline_subscriber(&broker, &id, 60, "mxe/#").await;
    let mut publisher = publisher(&broker).await;
    publish_expiring(&mut publisher, "mxe/short", 1, 1, false).await;
    publish_expiring(&mut publisher, "mxe/long", 2, 600, false).await;
    publisher
        .publish_qos1("mxe/forever", 3, b"mxe/forever")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 60)).await;
    assert!(connack.session_present);
    let mut topics = Vec::new();
    for _ in 0..2 {
        let got = sub.recv_publish_acked(TIMEOUT).await;
        topics.push(got.topic.clone());
    }
    assert_eq!(topics, ["mxe/long", "mxe/forever"]);
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn a_message_waiting_behind_a_full_window_expires_too() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("sub")).prop(P::ReceiveMaximum(1));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "mxw/#", 1).await;
    let mut publisher = publisher(&broker).await;
    publisher.publish_qos1("mxw/first", 1, b"first").await;
    publish_expiring(&mut publisher, "mxw/short", 2, 1, false).await;
    publish_expiring(&mut publisher, "mxw/long", 3, 600, false).await;
    let first = sub.recv_publish(TIMEOUT).await;
    assert_eq!(first.topic, "mxw/first");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sub.ack(&first).await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        got.topic, "mxw/long",
        "the expired one must be skipped: {got:?}"
    );
    let left = got.props.message_expiry_interval().expect("expiry");
    assert!((590..=598).contains(&left), "{left}");
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn a_retained_message_expires() {
    let broker = Broker::start(&[]);
    let mut publisher = publisher(&broker).await;
    publish_expiring(&mut publisher, "rx/short", 1, 2, true).await;
    publish_expiring(&mut publisher, "rx/long", 2, 600, true).await;

    // At once: both, with their (remaining) intervals.
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("early")).await;
    sub.subscribe_ok(1, "rx/#", 1).await;
    let mut got = vec![
        sub.recv_publish_acked(TIMEOUT).await,
        sub.recv_publish_acked(TIMEOUT).await,
    ];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (got[0].topic.as_str(), got[1].topic.as_str()),
        ("rx/long", "rx/short")
    );
    assert!(got.iter().all(|p| p.retain), "{got:?}");
    let short = got[1].props.message_expiry_interval().expect("expiry");
    assert!((1..=2).contains(&short), "{short}");

    // After the short one's interval: only the long one, with less left.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let mut late = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("late")).await;
    late.subscribe_ok(1, "rx/#", 1).await;
    let got = late.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.topic, "rx/long", "{got:?}");
    let left = got.props.message_expiry_interval().expect("expiry");
    assert!((590..=597).contains(&left), "{left}");
    late.expect_no_packet(QUIET).await;
    // And the expired one no longer takes memory: it is removed, not only skipped.
    assert_eq!(broker.metric("coolpy7_retained_messages").await, 1.0);
}

#[tokio::test]
async fn session_expiry_0_ends_the_session_with_the_connection() {
    let broker = Broker::start(&[]);
    let id = unique_id("se0");
    // Clean Start 0 but no Session Expiry Interval: the session ends at the close.
    let connect = Connect::new(&id).clean_start(false);
    let (mut client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(!connack.session_present);
    client.subscribe_ok(1, "se0/t", 1).await;
    client.disconnect().await;
    broker.wait_connections(0).await;
    let mut publisher = publisher(&broker).await;
    let ack = publisher
        .publish(&PublishPacket::new("se0/t", 1, 1, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(
        ack.code,
        reason::NO_MATCHING_SUBSCRIBERS,
        "the subscription is gone"
    );
    let (mut client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(!connack.session_present, "{connack:?}");
    client.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn a_session_with_an_expiry_outlives_the_connection_with_its_messages() {
    let broker = Broker::start(&[]);
    let id = unique_id("se60");
    offline_subscriber(&broker, &id, 60, "se60/t").await;
    let mut publisher = publisher(&broker).await;
    publisher.publish_qos1("se60/t", 1, b"kept").await;
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 60)).await;
    assert!(connack.session_present);
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"kept");
}

#[tokio::test]
async fn a_session_ends_when_its_expiry_interval_passes() {
    let broker = Broker::start(&[]);
    let id = unique_id("se1");
    offline_subscriber(&broker, &id, 1, "se1/t").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 1)).await;
    assert!(!connack.session_present, "the session expired: {connack:?}");
}

#[tokio::test]
async fn clean_start_discards_the_stored_session() {
    let broker = Broker::start(&[]);
    let id = unique_id("clean");
    offline_subscriber(&broker, &id, 60, "clean/t").await;
    let connect = Connect::new(&id).clean_start(true).session_expiry(60);
    let (client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(!connack.session_present);
    client.disconnect().await;
    broker.wait_connections(0).await;
    let mut publisher = publisher(&broker).await;
    let ack = publisher
        .publish(&PublishPacket::new("clean/t", 1, 1, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(
        ack.code,
        reason::NO_MATCHING_SUBSCRIBERS,
        "the old subscription is gone"
    );
}

#[tokio::test]
async fn disconnect_may_shorten_the_session_expiry_to_0() {
    let broker = Broker::start(&[]);
    let id = unique_id("shorten");
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 600)).await;
    client.subscribe_ok(1, "shorten/t", 1).await;
    client
        .disconnect_with(&ReasonPacket::disconnect(0).prop(P::SessionExpiryInterval(0)))
        .await;
    broker.wait_connections(0).await;
    let (_client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 600)).await;
    assert!(
        !connack.session_present,
        "DISCONNECT set the expiry to 0: {connack:?}"
    );
}

#[tokio::test]
async fn disconnect_may_lengthen_a_nonzero_session_expiry() {
    let broker = Broker::start(&[]);
    let id = unique_id("lengthen");
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 1)).await;
    client.subscribe_ok(1, "lengthen/t", 1).await;
    client
        .disconnect_with(&ReasonPacket::disconnect(0).prop(P::SessionExpiryInterval(600)))
        .await;
    broker.wait_connections(0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 600)).await;
    assert!(
        connack.session_present,
        "DISCONNECT set the expiry to 600: {connack:?}"
    );
}

#[tokio::test]
async fn disconnect_changing_a_0_session_expiry_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let id = unique_id("zero-to-n");
    let connect = Connect::new(&id).clean_start(false);
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    client.subscribe_ok(1, "zero/t", 1).await;
    client
        .send(
            &ReasonPacket::disconnect(0)
                .prop(P::SessionExpiryInterval(60))
                .encode(),
        )
        .await;
    client.expect_disconnect(reason::PROTOCOL_ERROR).await;
    broker.wait_connections(0).await;
    // The session still ended with the connection.
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(!connack.session_present, "{connack:?}");
}

#[tokio::test]
async fn a_v5_session_expiry_above_se_is_cut_to_se() {
    let broker = Broker::start(&["-se", "1"]);
    let id = unique_id("capped");
    let (mut client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 3600)).await;
    assert_eq!(connack.props.session_expiry_interval(), Some(1));
    client
        .subscribe(&SubscribePacket::new(1).filter("capped/t", 1))
        .await;
    client.disconnect().await;
    broker.wait_connections(0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &persistent(&id, 3600)).await;
    assert!(
        !connack.session_present,
        "the session lived -se seconds: {connack:?}"
    );
    match client.try_recv(QUIET).await {
        Err(_) => {}
        Ok(packet @ Packet::Publish(_)) => panic!("nothing may be queued: {packet:?}"),
        Ok(other) => panic!("unexpected {other:?}"),
    }
}
