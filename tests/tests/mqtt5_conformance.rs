//! MQTT 5 conformance details found in review, each checked against the OASIS MQTT 5.0 text:
//! Subscription Identifiers on retained messages sent for a subscription (§3.3.4), the Will
//! Message Expiry Interval counting from the will's publication (§3.1.3.2.4), Will QoS above
//! Maximum QoS (§3.2.2.3.4), resends after a reconnect within the new connection's Receive
//! Maximum (§4.9) and Maximum Packet Size (§3.1.2.11.4), CONNACK within the Maximum Packet Size,
//! and the reason code for a second CONNECT (§3.1.0, §3.14.2.1).

use std::time::Duration;

use coolpy7_tests::packets5::{reason, Connect, Packet, Property as P, SubscribePacket};
use coolpy7_tests::{unique_id, Broker, RawClient5, QUIET, TIMEOUT};

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

/// A v5 session with `count` QoS 1 deliveries sent but not acknowledged, left offline.
async fn session_with_unacknowledged(broker: &Broker, id: &str, payloads: &[&[u8]]) {
    let connect = Connect::new(id).clean_start(true).session_expiry(60);
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "resend/t", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for (n, payload) in payloads.iter().enumerate() {
        publisher
            .publish_qos1("resend/t", n as u16 + 1, payload)
            .await;
    }
    for payload in payloads {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(&got.payload, payload);
    }
    drop(sub);
    broker.wait_connections(1).await;
}

/// §4.9: the send quota is "re-initialized with each new Network Connection" to the Receive
/// Maximum of that connection, and the Server "MUST NOT send more than Receive Maximum QoS 1 and
/// QoS 2 PUBLISH packets for which it has not received PUBACK..." [MQTT-3.3.4-9]: resends too.
#[tokio::test]
async fn resends_after_a_reconnect_stay_within_the_new_receive_maximum() {
    let broker = Broker::start(&[]);
    let id = unique_id("rm");
    let payloads: [&[u8]; 4] = [b"1", b"2", b"3", b"4"];
    session_with_unacknowledged(&broker, &id, &payloads).await;
    let back = Connect::new(&id)
        .clean_start(false)
        .session_expiry(60)
        .prop(P::ReceiveMaximum(2));
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &back).await;
    assert!(connack.session_present);
    let first = sub.recv_publish(TIMEOUT).await;
    let second = sub.recv_publish(TIMEOUT).await;
    assert!(first.dup && second.dup, "{first:?} {second:?}");
    sub.expect_no_packet(QUIET).await;
    // Each acknowledgement makes room for the next, in order.
    let mut got = vec![first.payload.clone(), second.payload.clone()];
    sub.ack(&first).await;
    let third = sub.recv_publish(TIMEOUT).await;
    assert!(third.dup, "{third:?}");
    got.push(third.payload.clone());
    sub.ack(&second).await;
    sub.ack(&third).await;
    let fourth = sub.recv_publish_acked(TIMEOUT).await;
    got.push(fourth.payload);
    assert_eq!(got, payloads.map(|p| p.to_vec()).to_vec());
    sub.expect_no_packet(QUIET).await;
}

/// §3.1.2.11.4 [MQTT-3.1.2-24, -25]: the Server MUST NOT send a packet larger than the
/// client's Maximum Packet Size; a PUBLISH too large is discarded "as if it had completed
/// sending". This holds for the resend of a session's in-flight messages on a new connection
/// that allows less than the old one did.
#[tokio::test]
async fn resends_after_a_reconnect_respect_the_new_maximum_packet_size() {
    let broker = Broker::start(&[]);
    let id = unique_id("mps");
    let big = [b'x'; 200];
    session_with_unacknowledged(&broker, &id, &[&big[..], b"small"]).await;
    let back = Connect::new(&id)
        .clean_start(false)
        .session_expiry(60)
        .prop(P::MaximumPacketSize(100));
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &back).await;
    assert!(connack.session_present);
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"small", "{got:?}");
    sub.expect_no_packet(QUIET).await;
    // The discarded one is done: a later reconnect does not send it either.
    drop(sub);
    broker.wait_connections(0).await;
    let back = Connect::new(&id).clean_start(false).session_expiry(60);
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &back).await;
    assert!(connack.session_present);
    match sub.try_recv(QUIET).await {
        Ok(Packet::Publish(publish)) => panic!("resent after being discarded: {publish:?}"),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => {}
    }
}

/// The size on the wire of a CONNACK with these properties.
fn connack_size(connack: &coolpy7_tests::packets5::ConnAck) -> usize {
    let properties = coolpy7_tests::packets5::Props::new(connack.props.0.clone()).encode();
    let remaining = 2 + properties.len();
    1 + coolpy7_tests::packets5::varint(remaining as u32).len() + remaining
}

/// [MQTT-3.1.2-24]: "The Server MUST NOT send packets exceeding Maximum Packet Size to the
/// Client", CONNACK included. What CONNACK may leave out (Response Information, which the
/// Server MAY return, and properties whose absence means the same) goes before the limit is
/// broken.
#[tokio::test]
async fn connack_fits_the_clients_maximum_packet_size() {
    let broker = Broker::start(&[]);
    let id = format!("{}-{}", unique_id("long"), "x".repeat(150));
    let connect = Connect::new(&id)
        .prop(P::RequestResponseInformation(1))
        .prop(P::MaximumPacketSize(64));
    let (client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(connack_size(&connack) <= 64, "{connack:?}");
    client.disconnect().await;
    // With room, Response Information is sent.
    let connect = Connect::new(&id).prop(P::RequestResponseInformation(1));
    let (_, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(
        connack.props.response_information().is_some(),
        "{connack:?}"
    );
}

/// [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error (0x82), whatever its protocol level;
/// 0x84 (unsupported protocol version) is a CONNACK code a DISCONNECT may not carry (§3.14.2.1).
#[tokio::test]
async fn a_second_connect_of_another_protocol_level_is_disconnect_0x82() {
    let broker = Broker::start(&[]);
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("twice")).await;
    let second = Connect::new(&unique_id("twice")).protocol("MQTT", 6);
    client.send(&second.encode()).await;
    client.expect_disconnect(reason::PROTOCOL_ERROR).await;
}
