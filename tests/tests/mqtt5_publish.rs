//! MQTT 5 PUBLISH (OASIS MQTT 5.0 §3.3-§3.7): application properties carried from publisher to
//! subscriber (User Property order kept), Subscription Identifiers of every matching
//! subscription, PUBACK/PUBREC reason codes (0x10 no subscribers, 0x99 payload format invalid),
//! Maximum QoS (0x9B), Response Topic validation, acknowledgements with reason codes from the
//! client, and Request Problem Information 0.

use coolpy7_tests::packets5::{
    self, reason, AckPacket, Connect, Packet, Property as P, PublishPacket, SubscribePacket,
};
use coolpy7_tests::{unique_id, Broker, RawClient5, QUIET, TIMEOUT};

/// Every application property a PUBLISH may carry, User Properties interleaved with the others
/// and a repeated key, so that order and duplicates are both visible.
fn full_properties() -> Vec<P> {
    vec![
        P::UserProperty("z".into(), "first".into()),
        P::PayloadFormatIndicator(1),
        P::MessageExpiryInterval(300),
        P::UserProperty("a".into(), "second".into()),
        P::ContentType("application/json".into()),
        P::ResponseTopic("reply/to/me".into()),
        P::CorrelationData(vec![0, 1, 2, 0xFF]),
        P::UserProperty("z".into(), "third".into()),
    ]
}

fn with_props(mut publish: PublishPacket, props: &[P]) -> PublishPacket {
    for p in props {
        publish = publish.prop(p.clone());
    }
    publish
}

#[tokio::test]
async fn properties_reach_a_v5_subscriber_with_user_property_order_kept() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe_ok(1, "props/t", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for qos in [0u8, 1, 2] {
        let sent = full_properties();
        let payload = format!("{{\"qos\":{qos}}}");
        let ack = publisher
            .publish(&with_props(
                PublishPacket::new("props/t", qos, 10 + u16::from(qos), payload.as_bytes()),
                &sent,
            ))
            .await;
        if let Some(ack) = ack {
            assert_eq!(ack.code, 0, "a subscriber exists: {ack:?}");
        }
        let got = sub.recv_publish_acked(TIMEOUT).await;
        assert_eq!(got.topic, "props/t");
        assert_eq!(got.payload, payload.as_bytes());
        assert_eq!(got.qos, qos.min(1), "granted QoS 1");
        packets5::assert_forwarded(&got, &sent, 2);
        assert!(
            got.props.subscription_identifiers().is_empty(),
            "subscribed without an identifier: {got:?}"
        );
        assert_eq!(
            got.props.topic_alias(),
            None,
            "the subscriber allowed no topic aliases"
        );
    }
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn a_publish_without_properties_is_delivered_without_properties() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe_ok(1, "bare/t", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("bare/t", 1, b"plain").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert!(got.props.is_empty(), "{got:?}");
}

#[tokio::test]
async fn subscription_identifiers_of_every_matching_subscription_are_delivered() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    // Three overlapping subscriptions, two with identifiers (one of them a multi-byte
    // Variable Byte Integer), one without.
    for (pkid, filter, id) in [
        (1, "sid/#", Some(7)),
        (2, "sid/+", Some(268_435_455)),
        (3, "sid/x", None),
    ] {
        let mut subscribe = SubscribePacket::new(pkid).filter(filter, 1);
        if let Some(id) = id {
            subscribe = subscribe.id(id);
        }
        let suback = sub.subscribe(&subscribe).await;
        assert_eq!(suback.codes, vec![1], "{suback:?}");
    }
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for round in 0..2u16 {
        publisher.publish_qos1("sid/x", round + 1, b"m").await;
        // One copy per client (§3.3.4: a single copy carries every matching identifier).
        let got = sub.recv_publish_acked(TIMEOUT).await;
        let mut ids = got.props.subscription_identifiers();
        ids.sort_unstable();
        assert_eq!(ids, vec![7, 268_435_455], "round {round}: {got:?}");
        sub.expect_no_packet(QUIET).await;
    }
    // A topic only one identified subscription matches carries only its identifier.
    publisher.publish_qos1("sid/y/z", 9, b"deep").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.props.subscription_identifiers(), vec![7], "{got:?}");
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription_identifier() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    sub.subscribe(&SubscribePacket::new(1).id(5).filter("resub/t", 1))
        .await;
    publisher.publish_qos1("resub/t", 1, b"a").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.props.subscription_identifiers(), vec![5]);

    sub.subscribe(&SubscribePacket::new(2).id(6).filter("resub/t", 1))
        .await;
    publisher.publish_qos1("resub/t", 2, b"b").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.props.subscription_identifiers(), vec![6], "{got:?}");

    // §3.8.4: a replacing SUBSCRIBE without an identifier leaves none.
    sub.subscribe(&SubscribePacket::new(3).filter("resub/t", 1))
        .await;
    publisher.publish_qos1("resub/t", 3, b"c").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert!(got.props.subscription_identifiers().is_empty(), "{got:?}");
}

#[tokio::test]
async fn puback_and_pubrec_say_0x10_when_nobody_is_subscribed() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let ack = publisher
        .publish(&PublishPacket::new("nobody/home", 1, 1, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, reason::NO_MATCHING_SUBSCRIBERS, "{ack:?}");
    // On PUBREC 0x10 is allowed too (the design only promises it on PUBACK); either way it is a
    // success and the QoS 2 flow goes on to PUBCOMP (checked by `publish`).
    let rec = publisher
        .publish(&PublishPacket::new("nobody/home", 2, 2, b"x"))
        .await
        .expect("PUBREC");
    assert!(
        matches!(rec.code, reason::SUCCESS | reason::NO_MATCHING_SUBSCRIBERS),
        "{rec:?}"
    );

    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe_ok(1, "nobody/home", 0).await;
    let ack = publisher
        .publish(&PublishPacket::new("nobody/home", 1, 3, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(
        ack.code,
        reason::SUCCESS,
        "a subscriber exists now: {ack:?}"
    );
}

#[tokio::test]
async fn payload_format_utf8_with_invalid_utf8_is_refused_with_0x99() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe_ok(1, "pfi/#", 2).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let bad = [0x66, 0x6F, 0xC3, 0x28]; // "fo" then an invalid two-byte sequence
    let ack = publisher
        .publish(&PublishPacket::new("pfi/q1", 1, 1, &bad).prop(P::PayloadFormatIndicator(1)))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, reason::PAYLOAD_FORMAT_INVALID, "{ack:?}");
    let rec = publisher
        .publish(&PublishPacket::new("pfi/q2", 2, 2, &bad).prop(P::PayloadFormatIndicator(1)))
        .await
        .expect("PUBREC");
    assert_eq!(rec.code, reason::PAYLOAD_FORMAT_INVALID, "{rec:?}");
    sub.expect_no_packet(QUIET).await;

    // The same bytes without the indicator, and valid UTF-8 with it, are routed.
    publisher.publish_qos1("pfi/raw", 3, &bad).await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("pfi/raw", &bad[..])
    );
    let ok = publisher
        .publish(
            &PublishPacket::new("pfi/text", 1, 4, "héllo".as_bytes())
                .prop(P::PayloadFormatIndicator(1)),
        )
        .await
        .expect("PUBACK");
    assert_eq!(ok.code, 0, "{ok:?}");
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.props.payload_format_indicator(), Some(1), "{got:?}");

    // At QoS 0 there is nothing to answer with: DISCONNECT 0x99.
    publisher
        .send(
            &PublishPacket::new("pfi/q0", 0, 0, &bad)
                .prop(P::PayloadFormatIndicator(1))
                .encode(),
        )
        .await;
    publisher
        .expect_disconnect(reason::PAYLOAD_FORMAT_INVALID)
        .await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn publish_above_maximum_qos_gets_disconnect_0x9b() {
    let broker = Broker::start(&["-mqos", "1"]);
    let (mut publisher, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("pub"))).await;
    assert_eq!(connack.props.maximum_qos(), Some(1));
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe(&SubscribePacket::new(1).filter("mqos/t", 1))
        .await;
    publisher.publish_qos1("mqos/t", 1, b"ok").await;
    sub.recv_publish_acked(TIMEOUT).await;
    publisher
        .send(&PublishPacket::new("mqos/t", 2, 2, b"too high").encode())
        .await;
    publisher.expect_disconnect(reason::QOS_NOT_SUPPORTED).await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn response_topic_with_a_wildcard_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    for topic in ["reply/+", "reply/#"] {
        let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
        publisher
            .send(
                &PublishPacket::new("rt/t", 1, 1, b"x")
                    .prop(P::ResponseTopic(topic.into()))
                    .encode(),
            )
            .await;
        publisher.expect_disconnect(reason::PROTOCOL_ERROR).await;
    }
}

#[tokio::test]
async fn acknowledgements_with_reason_codes_and_properties_from_the_client_are_accepted() {
    let broker = Broker::start(&["-mif", "1"]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe_ok(1, "ack/#", 2).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;

    // PUBACK 0x80 with a reason string: the delivery is over, the window (1) frees up.
    publisher.publish_qos1("ack/q1", 1, b"a").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.qos, 1);
    sub.send(
        &AckPacket::puback(got.pkid)
            .reason(0x80)
            .prop(P::ReasonString("could not store".into()))
            .prop(P::UserProperty("k".into(), "v".into()))
            .encode(),
    )
    .await;

    // PUBREC 0x80 ends a QoS 2 delivery (§4.3.3): no PUBREL may follow, the window frees up.
    publisher
        .publish(&PublishPacket::new("ack/q2", 2, 2, b"b"))
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((got.topic.as_str(), got.qos), ("ack/q2", 2));
    sub.send(&AckPacket::pubrec(got.pkid).reason(0x80).encode())
        .await;

    publisher
        .publish(&PublishPacket::new("ack/q2b", 2, 3, b"c"))
        .await;
    let next = sub.recv(TIMEOUT).await;
    let Packet::Publish(next) = next else {
        panic!("expected the next PUBLISH (no PUBREL after PUBREC 0x80), got {next:?}")
    };
    assert_eq!(next.topic, "ack/q2b");
    sub.ack(&next).await;
    sub.expect_no_packet(QUIET).await;
}

/// Request Problem Information 0 (§3.1.2.11.7): no Reason String or User Property on anything
/// but PUBLISH, CONNACK and DISCONNECT. The broker is given every chance to add one: a
/// PUBACK 0x10, a PUBREC 0x99, a SUBACK 0x8F and an UNSUBACK 0x11.
#[tokio::test]
async fn request_problem_information_0_keeps_reason_strings_off_acknowledgements() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("rpi0")).prop(P::RequestProblemInformation(0));
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    let no_problem_info = |props: &packets5::Properties, what: &str| {
        assert!(
            !props.has(packets5::id::REASON_STRING) && !props.has(packets5::id::USER_PROPERTY),
            "{what} must carry no Reason String / User Property: {props:?}"
        );
    };
    let ack = client
        .publish(&PublishPacket::new("rpi/none", 1, 1, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, reason::NO_MATCHING_SUBSCRIBERS);
    no_problem_info(&ack.props, "PUBACK");
    let rec = client
        .publish(&PublishPacket::new("rpi/none", 2, 2, &[0xFF]).prop(P::PayloadFormatIndicator(1)))
        .await
        .expect("PUBREC");
    assert_eq!(rec.code, reason::PAYLOAD_FORMAT_INVALID);
    no_problem_info(&rec.props, "PUBREC");
    let suback = client
        .subscribe(&SubscribePacket::new(3).filter("bad/#/filter", 0))
        .await;
    assert_eq!(suback.codes, vec![reason::TOPIC_FILTER_INVALID]);
    no_problem_info(&suback.props, "SUBACK");
    let unsuback = client.unsubscribe(4, &["never/subscribed"]).await;
    assert_eq!(unsuback.codes, vec![reason::NO_SUBSCRIPTION_EXISTED]);
    no_problem_info(&unsuback.props, "UNSUBACK");
}

#[tokio::test]
async fn a_delivery_too_large_for_the_protocol_does_not_take_a_packet_id_for_good() {
    // With -mpl 0 (the protocol's maximum) a PUBLISH that names its topic by alias can be
    // delivered only with the topic spelled out, which can take it past what any PUBLISH may
    // be (268,435,455 bytes of remaining length). Such a delivery cannot be sent; it must not
    // keep a packet id and a place in the in-flight window (here 1) either, or the subscriber
    // would never be sent another QoS 1 message.
    const MAX_REMAINING: usize = 268_435_455;
    let broker = Broker::start(&["-mpl", "0", "-mif", "1"]);
    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub5")).await;
    v5.subscribe_ok(1, "huge/#", 1).await;
    let mut v3 =
        coolpy7_tests::RawClient::connect_v311(broker.mqtt_addr(), &unique_id("sub3")).await;
    assert_eq!(v3.subscribe(1, &[("huge/#", 1)]).await, vec![1]);

    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let topic = format!("huge/{}", "t".repeat(60_000));
    publisher
        .publish(&PublishPacket::new(&topic, 0, 0, b"define").prop(P::TopicAlias(1)))
        .await;
    let got = v5.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"define");
    let got = v3.recv_publish(TIMEOUT).await;
    assert_eq!(got.payload, b"define");

    // Topic length prefix, packet id, property length and the alias property: 8 bytes.
    let payload = vec![b'p'; MAX_REMAINING - 8];
    let huge = PublishPacket::new("", 1, 1, &payload).prop(P::TopicAlias(1));
    let ack = publisher.publish(&huge).await.expect("PUBACK");
    assert_eq!(ack.code, 0, "{ack:?}");
    drop((huge, payload));

    publisher.publish_qos1("huge/after", 2, b"after").await;
    let got = v5.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        got.payload, b"after",
        "the next QoS 1 message reaches the MQTT 5 subscriber"
    );
    let got = v3.recv_publish(TIMEOUT).await;
    assert_eq!(
        got.payload, b"after",
        "the next QoS 1 message reaches the MQTT 3.1.1 subscriber"
    );
}
