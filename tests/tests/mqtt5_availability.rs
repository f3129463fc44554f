//! Turning wildcard subscriptions (`-wsa`) and subscription identifiers (`-sia`) off, and
//! SUBACK / UNSUBACK held to the client's Maximum Packet Size (OASIS MQTT 5.0 §3.2.2.3.11,
//! §3.2.2.3.12, §4.13, §3.1.2.11.4).
//!
//! With a feature off CONNACK says 0 for it, and an MQTT 5 SUBSCRIBE using it anyway is the
//! Protocol Error the standard names: DISCONNECT 0xA2 / 0xA1, with none of its filters taking
//! effect. A 3.1.1 client, which cannot be told, gets SUBACK 0x80 for a wildcard filter alone,
//! and no retained message through it. A SUBACK or UNSUBACK larger than the client's Maximum
//! Packet Size is discarded, counted, and its subscriptions still take effect.

use coolpy7_tests::packets5::{
    reason, Connect, Property as P, PublishPacket, SubscribePacket, UnsubscribePacket,
};
use coolpy7_tests::{packets, unique_id, Broker, RawClient, RawClient5, QUIET, TIMEOUT};

const OFF: &[&str] = &["-wsa", "false", "-sia=false"];
const ACKS_TOO_LARGE: &str = "coolpy7_acks_too_large_total";

async fn client(broker: &Broker, prefix: &str) -> RawClient5 {
    RawClient5::connect_simple(broker.mqtt_addr(), &unique_id(prefix)).await
}

/// A client whose session outlives its connection, so that a subscription made by a SUBSCRIBE
/// that closed the connection would still show in `coolpy7_subscriptions`.
async fn persistent_client(broker: &Broker, prefix: &str) -> RawClient5 {
    let connect = Connect::new(&unique_id(prefix)).session_expiry(300);
    RawClient5::connect_v5(broker.mqtt_addr(), &connect).await.0
}

/// Sends `subscribe` and asserts the broker answers with DISCONNECT `code` alone (no SUBACK
/// first) and closes the connection.
async fn expect_refused(client: &mut RawClient5, subscribe: &SubscribePacket, code: u8) {
    client.send(&subscribe.encode()).await;
    let (disconnect, before) = client.expect_disconnect_after(TIMEOUT).await;
    assert_eq!(
        disconnect.code, code,
        "DISCONNECT reason for {subscribe:?}: {disconnect:?}"
    );
    assert!(
        before.is_empty(),
        "nothing before the DISCONNECT: {before:?}"
    );
}

#[tokio::test]
async fn connack_says_what_is_available() {
    let cases: [(&[&str], u8, u8); 4] = [
        (&[], 1, 1),
        (OFF, 0, 0),
        (&["-wsa=0"], 0, 1),
        (&["-sia", "F"], 1, 0),
    ];
    for (args, wildcards, identifiers) in cases {
        let broker = Broker::start(args);
        let (_client, connack) =
            RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("caps"))).await;
        let props = &connack.props;
        assert_eq!(
            props.wildcard_subscription_available(),
            Some(wildcards),
            "{args:?}: {props:?}"
        );
        assert_eq!(
            props.subscription_identifier_available(),
            Some(identifiers),
            "{args:?}: {props:?}"
        );
        assert_eq!(props.shared_subscription_available(), Some(1), "{args:?}");
    }
}

#[tokio::test]
async fn a_connack_cut_to_the_clients_maximum_packet_size_keeps_what_is_not_available() {
    // 2 (fixed header) + 2 (flags, reason) + 1 (property length) + Topic Alias Maximum (3) +
    // Maximum Packet Size (5) + the three "available" flags (2 each) = 19 bytes. At 17 the
    // Shared Subscription Available (1, which its absence also says) goes; the two that say 0
    // are owed: without them the client would take the features as available and be
    // disconnected for using them.
    let broker = Broker::start(OFF);
    let connect = Connect::new(&unique_id("small")).prop(P::MaximumPacketSize(17));
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    let props = &connack.props;
    assert_eq!(
        props.wildcard_subscription_available(),
        Some(0),
        "{props:?}"
    );
    assert_eq!(
        props.subscription_identifier_available(),
        Some(0),
        "{props:?}"
    );
    assert_eq!(props.shared_subscription_available(), None, "{props:?}");
    assert_eq!(props.topic_alias_maximum(), Some(64), "{props:?}");
}

#[tokio::test]
async fn a_v5_wildcard_filter_with_wsa_off_is_disconnect_0xa2_and_nothing_is_subscribed() {
    let broker = Broker::start(&["-wsa", "false"]);
    for filter in ["wa/+", "wa/#", "#", "$share/g/wa/+", "$share/g/#"] {
        let mut sub = persistent_client(&broker, "wild").await;
        // The plain filter before it must not take effect either.
        let subscribe = SubscribePacket::new(1)
            .filter("wa/exact", 1)
            .filter(filter, 1);
        expect_refused(
            &mut sub,
            &subscribe,
            reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        )
        .await;
    }
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 0.0);

    // Filters without wildcards, shared ones too, work as before.
    let mut sub = client(&broker, "plain").await;
    let suback = sub
        .subscribe(
            &SubscribePacket::new(1)
                .filter("wa/exact", 1)
                .filter("$share/g/wa/shared", 0),
        )
        .await;
    assert_eq!(suback.codes, vec![reason::GRANTED_QOS_1, reason::SUCCESS]);
    let mut publisher = client(&broker, "pub").await;
    publisher.publish_qos1("wa/exact", 1, b"one").await;
    publisher.publish_qos1("wa/shared", 2, b"two").await;
    let mut payloads = vec![
        sub.recv_publish_acked(TIMEOUT).await.payload,
        sub.recv_publish_acked(TIMEOUT).await.payload,
    ];
    payloads.sort();
    assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[tokio::test]
async fn a_subscription_identifier_with_sia_off_is_disconnect_0xa1() {
    let broker = Broker::start(&["-sia", "false"]);
    let mut sub = persistent_client(&broker, "sid").await;
    let subscribe = SubscribePacket::new(1).id(7).filter("si/t", 1);
    expect_refused(
        &mut sub,
        &subscribe,
        reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    )
    .await;
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 0.0);

    // Without an identifier the same SUBSCRIBE works, wildcards too (-wsa is still on).
    let mut sub = client(&broker, "plain").await;
    sub.subscribe_ok(1, "si/+", 1).await;
    let mut publisher = client(&broker, "pub").await;
    publisher.publish_qos1("si/t", 1, b"x").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"x");
    assert!(got.props.subscription_identifiers().is_empty(), "{got:?}");
}

#[tokio::test]
async fn a_v311_wildcard_filter_with_wsa_off_gets_0x80_alone_and_no_retained_message() {
    let broker = Broker::start(&["-wsa", "false"]);
    let mut publisher = client(&broker, "pub").await;
    for (pkid, topic) in [(1, "r/a"), (2, "s/b")] {
        publisher
            .publish(&PublishPacket::new(topic, 1, pkid, topic.as_bytes()).retain(true))
            .await;
    }
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v311")).await;
    let codes = sub
        .subscribe(1, &[("r/+", 1), ("s/b", 1), ("$share/g/s/#", 0), ("#", 0)])
        .await;
    assert_eq!(codes, vec![0x80, 0x01, 0x80, 0x80]);
    // Only the granted filter's retained message arrives; r/a's must not leak through "r/+"
    // or "#".
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((got.topic.as_str(), got.retain), ("s/b", true), "{got:?}");
    sub.send(&packets::puback(got.pkid)).await;
    sub.expect_no_packet(QUIET).await;

    // Live messages: through the granted filter only.
    publisher.publish_qos1("r/x", 3, b"refused").await;
    publisher.publish_qos1("s/b", 4, b"granted").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("s/b", &b"granted"[..])
    );
    sub.send(&packets::puback(got.pkid)).await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn with_the_defaults_wildcards_and_identifiers_work_for_both_protocols() {
    let broker = Broker::start(&[]);
    let mut v5 = client(&broker, "v5").await;
    let suback = v5
        .subscribe(
            &SubscribePacket::new(1)
                .id(9)
                .filter("d/+", 1)
                .filter("$share/g/e/#", 1),
        )
        .await;
    assert_eq!(suback.codes, vec![reason::GRANTED_QOS_1; 2]);
    let mut v311 = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v311")).await;
    assert_eq!(v311.subscribe(1, &[("d/#", 1)]).await, vec![0x01]);
    let mut publisher = client(&broker, "pub").await;
    publisher.publish_qos1("d/t", 1, b"x").await;
    let got = v5.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.props.subscription_identifiers(), vec![9], "{got:?}");
    let got = v311.recv_publish(TIMEOUT).await;
    assert_eq!(got.payload, b"x");
}

#[tokio::test]
async fn suback_and_unsuback_beyond_the_clients_maximum_packet_size_are_discarded_not_undone() {
    let broker = Broker::start(&[]);
    // 10 bytes: room for a CONNACK cut to its Maximum Packet Size property (10), a PUBLISH of a
    // one-byte payload to "f/c" at QoS 0 (9) and a SUBACK of one filter (6), not for one of 20
    // (25).
    let connect = Connect::new(&unique_id("tiny")).prop(P::MaximumPacketSize(10));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    let filters: Vec<String> = (b'a'..=b't').map(|c| format!("f/{}", c as char)).collect();
    let mut subscribe = SubscribePacket::new(1);
    for filter in &filters {
        subscribe = subscribe.filter(filter, 0);
    }
    sub.send(&subscribe.encode()).await;
    sub.expect_no_packet(QUIET).await;
    assert_eq!(broker.metric(ACKS_TOO_LARGE).await, 1.0);

    // As if the SUBACK had been sent: the subscriptions hold.
    let mut publisher = client(&broker, "pub").await;
    publisher.publish_qos1("f/c", 1, b"x").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("f/c", &b"x"[..]));

    let names: Vec<&str> = filters.iter().map(String::as_str).collect();
    sub.send(&UnsubscribePacket::new(2, &names).encode()).await;
    sub.expect_no_packet(QUIET).await;
    assert_eq!(broker.metric(ACKS_TOO_LARGE).await, 2.0);
    // The UNSUBSCRIBE took effect too.
    publisher.publish_qos1("f/c", 2, b"y").await;
    sub.expect_no_packet(QUIET).await;

    // An acknowledgement that fits still goes out, and the connection is healthy.
    let suback = sub
        .subscribe(&SubscribePacket::new(3).filter("f/a", 0))
        .await;
    assert_eq!(suback.codes, vec![reason::SUCCESS]);
    let unsuback = sub.unsubscribe(4, &["f/a"]).await;
    assert_eq!(unsuback.codes, vec![reason::SUCCESS]);
    assert_eq!(broker.metric(ACKS_TOO_LARGE).await, 2.0);
    sub.expect_no_packet(QUIET).await;
}
