//! MQTT 5 DISCONNECT from the broker and AUTH (OASIS MQTT 5.0 §3.14, §3.15, §4.13): 0x8E on
//! takeover, 0x8B on shutdown (SIGTERM), 0x8D on keep-alive timeout, 0x8C for AUTH, and the
//! reason code for each malformed or forbidden property on PUBLISH / SUBSCRIBE (0x81 malformed,
//! 0x82 protocol error). A 3.1.1 client in the same situations gets no DISCONNECT, only the close.

use std::time::{Duration, Instant};

use coolpy7_tests::packets5::{
    reason, Connect, Packet, Property as P, PublishPacket, ReasonPacket, SubscribePacket,
};
use coolpy7_tests::{assert_healthy, unique_id, Broker, RawClient, RawClient5, QUIET, TIMEOUT};

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_connection() {
    let broker = Broker::start(&[]);
    let id = unique_id("take");
    let mut old = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    let mut new = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    old.expect_disconnect(reason::SESSION_TAKEN_OVER).await;
    new.ping().await;
    // A 3.1.1 newcomer takes over a v5 connection the same way.
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), &id).await;
    new.expect_disconnect(reason::SESSION_TAKEN_OVER).await;
    v3.ping().await;
    // And a v3 connection taken over is just closed.
    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    v3.expect_closed_silently(TIMEOUT).await;
    v5.ping().await;
}

#[tokio::test]
async fn sigterm_sends_0x8b_to_v5_clients_and_closes_v3_ones() {
    let mut broker = Broker::start(&[]);
    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5")).await;
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v3")).await;
    broker.sigterm();
    v5.expect_disconnect(reason::SERVER_SHUTTING_DOWN).await;
    v3.expect_closed_silently(TIMEOUT).await;
    let status = broker
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", broker.logs()));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn keep_alive_timeout_is_disconnect_0x8d() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("ka")).keep_alive(1);
    let (mut client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(
        connack.props.server_keep_alive(),
        None,
        "1 s is under any cap"
    );
    let start = Instant::now();
    client.assert_open_for(Duration::from_millis(1000)).await;
    let (disconnect, before) = client.expect_disconnect_after(Duration::from_secs(3)).await;
    assert_eq!(
        disconnect.code,
        reason::KEEP_ALIVE_TIMEOUT,
        "{disconnect:?}"
    );
    assert!(before.is_empty(), "{before:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
/// The issue asked for 0x8C here, but 0x8C is not a DISCONNECT reason code (§3.14.2.1, Table
/// 3-10); an AUTH from a client whose CONNECT named no method is a Protocol Error (§4.12).
async fn auth_after_connect_without_a_method_is_disconnect_0x82() {
    let broker = Broker::start(&[]);
    for auth in [
        ReasonPacket::auth(reason::RE_AUTHENTICATE)
            .prop(P::AuthenticationMethod("SCRAM-SHA-1".into())),
        ReasonPacket::auth(reason::CONTINUE_AUTHENTICATION)
            .prop(P::AuthenticationMethod("PLAIN".into()))
            .prop(P::AuthenticationData(b"data".to_vec())),
    ] {
        let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("auth")).await;
        client.send(&auth.encode()).await;
        client.expect_disconnect(reason::PROTOCOL_ERROR).await;
    }
}

#[tokio::test]
async fn client_disconnect_with_reason_string_and_user_properties_is_a_normal_close() {
    let mut broker = Broker::start(&[]);
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("bye")).await;
    client
        .send(
            &ReasonPacket::disconnect(0)
                .prop(P::ReasonString("done for today".into()))
                .prop(P::UserProperty("k".into(), "v".into()))
                .encode(),
        )
        .await;
    // The broker closes without answering (§3.14.4: it must not send anything after).
    client.expect_closed_silently(TIMEOUT).await;
    assert_healthy(&mut broker).await;
}

/// Sends `bytes` on a fresh v5 connection and expects DISCONNECT `code`, then the close.
async fn rejected(broker: &Broker, what: &str, bytes: &[u8], code: u8) {
    eprintln!("case: {what}");
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("bad")).await;
    let _ = client.try_send(bytes).await;
    let (disconnect, before) = client.expect_disconnect_after(TIMEOUT).await;
    assert_eq!(
        disconnect.code, code,
        "{what}: expected DISCONNECT {code:#04x}, got {disconnect:?} (before: {before:?})"
    );
    assert!(
        before
            .iter()
            .all(|p| !matches!(p, Packet::PubAck(_) | Packet::PubRec(_) | Packet::SubAck(_))),
        "{what}: the packet must not be acknowledged: {before:?}"
    );
}

#[tokio::test]
async fn protocol_errors_in_properties_are_disconnect_0x82() {
    let mut broker = Broker::start(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "duplicate Payload Format Indicator",
            PublishPacket::new("p/t", 1, 1, b"x")
                .prop(P::PayloadFormatIndicator(0))
                .prop(P::PayloadFormatIndicator(0))
                .encode(),
        ),
        (
            "duplicate Message Expiry Interval",
            PublishPacket::new("p/t", 1, 1, b"x")
                .prop(P::MessageExpiryInterval(5))
                .prop(P::MessageExpiryInterval(5))
                .encode(),
        ),
        (
            "duplicate Topic Alias",
            PublishPacket::new("p/t", 1, 1, b"x")
                .prop(P::TopicAlias(1))
                .prop(P::TopicAlias(1))
                .encode(),
        ),
        (
            "duplicate Content Type",
            PublishPacket::new("p/t", 0, 0, b"x")
                .prop(P::ContentType("a".into()))
                .prop(P::ContentType("a".into()))
                .encode(),
        ),
        (
            "Subscription Identifier on a PUBLISH from a client (MQTT-3.3.4-6)",
            PublishPacket::new("p/t", 1, 1, b"x")
                .prop(P::SubscriptionIdentifier(3))
                .encode(),
        ),
        (
            "duplicate Session Expiry Interval on DISCONNECT",
            ReasonPacket::disconnect(0)
                .prop(P::SessionExpiryInterval(0))
                .prop(P::SessionExpiryInterval(0))
                .encode(),
        ),
    ];
    for (what, bytes) in cases {
        rejected(&broker, what, &bytes, reason::PROTOCOL_ERROR).await;
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn malformed_properties_are_disconnect_0x81() {
    let mut broker = Broker::start(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Session Expiry Interval (not a PUBLISH property) on PUBLISH",
            PublishPacket::new("m/t", 1, 1, b"x")
                .prop(P::SessionExpiryInterval(5))
                .encode(),
        ),
        (
            "Receive Maximum (a CONNECT property) on PUBLISH",
            PublishPacket::new("m/t", 0, 0, b"x")
                .prop(P::ReceiveMaximum(5))
                .encode(),
        ),
        (
            "Topic Alias on SUBSCRIBE",
            SubscribePacket::new(1)
                .prop(P::TopicAlias(1))
                .filter("m/t", 1)
                .encode(),
        ),
        (
            "Content Type on DISCONNECT",
            ReasonPacket::disconnect(0)
                .prop(P::ContentType("x".into()))
                .encode(),
        ),
        (
            "unknown property identifier 0x7F",
            PublishPacket::new("m/t", 1, 1, b"x")
                .prop(P::Raw(vec![0x7F, 1]))
                .encode(),
        ),
        (
            "Message Expiry Interval cut short (2 of 4 bytes, then the payload)",
            PublishPacket::new("m/t", 1, 1, b"")
                .props_raw(&[3, 0x02, 0, 0])
                .encode(),
        ),
        (
            "property length beyond the packet",
            PublishPacket::new("m/t", 1, 1, b"")
                .props_raw(&[50, 0x01, 0])
                .encode(),
        ),
        (
            "Content Type that is not UTF-8",
            PublishPacket::new("m/t", 1, 1, b"x")
                .prop(P::Raw(vec![0x03, 0, 2, 0xC3, 0x28]))
                .encode(),
        ),
        (
            "User Property with only a name",
            PublishPacket::new("m/t", 1, 1, b"")
                .props_raw(&[4, 0x26, 0, 1, b'k'])
                .encode(),
        ),
        (
            "Subscription Identifier as a five-byte Variable Byte Integer",
            SubscribePacket::new(1)
                .prop(P::Raw(vec![0x0B, 0x81, 0x80, 0x80, 0x80, 0x01]))
                .filter("m/t", 1)
                .encode(),
        ),
        (
            "DISCONNECT property length beyond the packet",
            ReasonPacket::disconnect(0).props_raw(&[9, 0x11]).encode(),
        ),
    ];
    for (what, bytes) in cases {
        rejected(&broker, what, &bytes, reason::MALFORMED_PACKET).await;
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn a_v3_client_sending_auth_is_just_closed() {
    // AUTH does not exist in 3.1.1: a protocol violation, answered by the close alone.
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v3")).await;
    client
        .send(&coolpy7_tests::packets::publish("v3/t", 1, 1, b"ok"))
        .await;
    client
        .wait_for("PUBACK", TIMEOUT, |p| {
            matches!(p, coolpy7_tests::Packet::PubAck(1))
        })
        .await;
    // Reserved packet type 15 (AUTH) is a protocol violation for 3.1.1.
    let _ = client.try_send(&[0xF0, 0x00]).await;
    client.expect_closed_silently(TIMEOUT).await;
}

#[tokio::test]
async fn a_valid_v5_exchange_stays_open() {
    // The control case for the rejections above: the same packets, well formed, are accepted.
    let broker = Broker::start(&[]);
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("ok")).await;
    let ack = client
        .publish(
            &PublishPacket::new("ok/t", 1, 1, b"x")
                .prop(P::PayloadFormatIndicator(0))
                .prop(P::MessageExpiryInterval(5))
                .prop(P::ContentType("a".into()))
                .prop(P::TopicAlias(1)),
        )
        .await
        .expect("PUBACK");
    assert!(ack.code < 0x80, "{ack:?}");
    let suback = client
        .subscribe(&SubscribePacket::new(2).id(268_435_455).filter("ok/t", 1))
        .await;
    assert_eq!(suback.codes, vec![1]);
    client.assert_open_for(QUIET).await;
}
