//! MQTT 5 SUBSCRIBE / UNSUBSCRIBE (OASIS MQTT 5.0 §3.8-§3.11): subscription options (No Local,
//! Retain As Published, Retain Handling 0/1/2), invalid options (DISCONNECT 0x81), shared
//! subscriptions under v5 (No Local on one is DISCONNECT 0x82), Subscription Identifier 0, and
//! the SUBACK (0x8F, 0x97) and UNSUBACK (0x00, 0x11, 0x8F) reason codes.

use coolpy7_tests::packets5::{
    reason, sub_options, Connect, Packet, Property as P, PublishPacket, SubscribePacket,
};
use coolpy7_tests::{unique_id, Broker, RawClient5, QUIET, TIMEOUT};

async fn client(broker: &Broker, prefix: &str) -> RawClient5 {
    RawClient5::connect_simple(broker.mqtt_addr(), &unique_id(prefix)).await
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let broker = Broker::start(&[]);
    let mut me = client(&broker, "me").await;
    let mut other = client(&broker, "other").await;
    me.subscribe_ok(1, "nl/t", sub_options(1, true, false, 0))
        .await;
    other.subscribe_ok(1, "nl/t", 1).await;
    me.publish_qos1("nl/t", 1, b"mine").await;
    let got = other.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"mine");
    me.expect_no_packet(QUIET).await;
    // Others' messages still arrive.
    other.publish_qos1("nl/t", 2, b"theirs").await;
    let got = me.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"theirs");
    // Without No Local, a client gets its own messages.
    let mut echo = client(&broker, "echo").await;
    echo.subscribe_ok(1, "nl/t", 1).await;
    echo.publish_qos1("nl/t", 1, b"echo").await;
    let got = echo.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"echo");
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_deliveries() {
    let broker = Broker::start(&[]);
    let mut rap = client(&broker, "rap").await;
    let mut plain = client(&broker, "plain").await;
    rap.subscribe_ok(1, "rap/#", sub_options(1, false, true, 0))
        .await;
    plain.subscribe_ok(1, "rap/#", 1).await;
    let mut publisher = client(&broker, "pub").await;
    publisher
        .publish(&PublishPacket::new("rap/t", 1, 1, b"r").retain(true))
        .await;
    publisher.publish_qos1("rap/u", 2, b"n").await;
    let got = rap.recv_publish_acked(TIMEOUT).await;
    assert!(got.retain, "Retain As Published: {got:?}");
    let got = rap.recv_publish_acked(TIMEOUT).await;
    assert!(!got.retain, "a non-retained message stays so: {got:?}");
    let got = plain.recv_publish_acked(TIMEOUT).await;
    assert!(
        !got.retain,
        "without the option a live delivery has retain 0: {got:?}"
    );
    plain.recv_publish_acked(TIMEOUT).await;

    // Retained messages sent because of a SUBSCRIBE have retain 1 either way.
    let mut late = client(&broker, "late").await;
    late.subscribe_ok(1, "rap/#", 1).await;
    let got = late.recv_publish_acked(TIMEOUT).await;
    assert!(got.retain && got.topic == "rap/t", "{got:?}");
}

async fn retained_after_subscribe(sub: &mut RawClient5, pkid: u16, options: u8) -> usize {
    sub.subscribe_ok(pkid, "rh/#", options).await;
    let mut n = 0;
    for _ in 0..3 {
        match sub.try_recv(QUIET).await {
            Ok(Packet::Publish(p)) => {
                assert!(p.retain, "{p:?}");
                sub.ack(&p).await;
                n += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    n
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let broker = Broker::start(&[]);
    let mut publisher = client(&broker, "pub").await;
    publisher
        .publish(&PublishPacket::new("rh/t", 1, 1, b"kept").retain(true))
        .await;

    let mut rh0 = client(&broker, "rh0").await;
    assert_eq!(
        retained_after_subscribe(&mut rh0, 1, sub_options(1, false, false, 0)).await,
        1
    );
    assert_eq!(
        retained_after_subscribe(&mut rh0, 2, sub_options(1, false, false, 0)).await,
        1,
        "RH 0 sends retained messages on every SUBSCRIBE, new or not"
    );

    let mut rh1 = client(&broker, "rh1").await;
    assert_eq!(
        retained_after_subscribe(&mut rh1, 1, sub_options(1, false, false, 1)).await,
        1
    );
    assert_eq!(
        retained_after_subscribe(&mut rh1, 2, sub_options(1, false, false, 1)).await,
        0,
        "RH 1 sends them only when the subscription is new"
    );

    let mut rh2 = client(&broker, "rh2").await;
    assert_eq!(
        retained_after_subscribe(&mut rh2, 1, sub_options(1, false, false, 2)).await,
        0,
        "RH 2 never sends them"
    );
    // ...but live messages flow as usual.
    publisher.publish_qos1("rh/t", 2, b"live").await;
    let got = rh2.recv_publish_acked(TIMEOUT).await;
    assert_eq!((got.payload.as_slice(), got.retain), (&b"live"[..], false));
}

#[tokio::test]
/// §3.8.3.1: reserved bits make the packet malformed; QoS 3 and Retain Handling 3 are Protocol
/// Errors.
async fn invalid_subscription_options_are_refused_with_the_reason_the_standard_gives() {
    let broker = Broker::start(&[]);
    for (what, options, expected) in [
        ("reserved bit 6", 0x41u8, reason::MALFORMED_PACKET),
        ("reserved bit 7", 0x81, reason::MALFORMED_PACKET),
        ("Retain Handling 3", 0x31, reason::PROTOCOL_ERROR),
        ("QoS 3", 0x03, reason::PROTOCOL_ERROR),
    ] {
        let mut c = client(&broker, "badopt").await;
        c.send(&SubscribePacket::new(1).filter("opt/t", options).encode())
            .await;
        eprintln!("case: {what}");
        c.expect_disconnect(expected).await;
    }
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    // A session that outlives the connection: the refused SUBSCRIBE must leave nothing in it,
    // not even the valid filter listed before the offending one.
    let connect = Connect::new(&unique_id("nlshare")).session_expiry(600);
    let (mut c, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    c.send(
        &SubscribePacket::new(1)
            .filter("nls/plain", 1)
            .filter("$share/g/nls/t", sub_options(1, true, false, 0))
            .encode(),
    )
    .await;
    c.expect_disconnect(reason::PROTOCOL_ERROR).await;
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 0.0);
}

#[tokio::test]
async fn shared_subscriptions_under_v5_split_messages_and_carry_the_identifier() {
    let broker = Broker::start(&[]);
    let mut members = Vec::new();
    for id in [11u32, 12] {
        let mut m = client(&broker, "member").await;
        let suback = m
            .subscribe(&SubscribePacket::new(1).id(id).filter("$share/grp/sh5/t", 1))
            .await;
        assert_eq!(suback.codes, vec![1], "{suback:?}");
        members.push((id, m));
    }
    let mut publisher = client(&broker, "pub").await;
    for i in 0..6u16 {
        publisher
            .publish_qos1("sh5/t", i + 1, format!("{i}").as_bytes())
            .await;
    }
    let mut payloads = Vec::new();
    for (id, m) in &mut members {
        loop {
            match m.try_recv(QUIET).await {
                Ok(Packet::Publish(p)) => {
                    assert_eq!(p.props.subscription_identifiers(), vec![*id], "{p:?}");
                    assert_eq!(p.topic, "sh5/t");
                    m.ack(&p).await;
                    payloads.push(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
            assert!(payloads.len() <= 6, "more than published: {payloads:?}");
        }
    }
    payloads.sort();
    assert_eq!(
        payloads,
        ["0", "1", "2", "3", "4", "5"],
        "each exactly once"
    );
}

#[tokio::test]
async fn subscription_identifier_0_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut c = client(&broker, "sid0").await;
    c.send(&SubscribePacket::new(1).id(0).filter("sid0/t", 1).encode())
        .await;
    c.expect_disconnect(reason::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn two_subscription_identifiers_in_one_subscribe_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut c = client(&broker, "sid2").await;
    c.send(
        &SubscribePacket::new(1)
            .id(1)
            .id(2)
            .filter("sid2/t", 1)
            .encode(),
    )
    .await;
    c.expect_disconnect(reason::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn user_properties_on_subscribe_and_unsubscribe_are_accepted() {
    let broker = Broker::start(&[]);
    let mut c = client(&broker, "subup").await;
    let suback = c
        .subscribe(
            &SubscribePacket::new(1)
                .prop(P::UserProperty("a".into(), "b".into()))
                .filter("subup/t", 1),
        )
        .await;
    assert_eq!(suback.codes, vec![1]);
    c.send(
        &coolpy7_tests::packets5::UnsubscribePacket::new(2, &["subup/t"])
            .prop(P::UserProperty("a".into(), "b".into()))
            .encode(),
    )
    .await;
    let got = c
        .wait_for("UNSUBACK", TIMEOUT, |p| matches!(p, Packet::UnsubAck(_)))
        .await;
    let Packet::UnsubAck(unsuback) = got else {
        unreachable!()
    };
    assert_eq!(unsuback.codes, vec![reason::SUCCESS], "{unsuback:?}");
}

#[tokio::test]
async fn suback_reason_codes_per_filter() {
    let broker = Broker::start(&["-mqos", "1"]);
    let mut c = client(&broker, "codes").await;
    let suback = c
        .subscribe(
            &SubscribePacket::new(1)
                .filter("ok/q0", 0)
                .filter("bad/#/filter", 1)
                .filter("ok/q2", 2)
                .filter("bad+", 1)
                .filter("$share/g/ok/shared", 1),
        )
        .await;
    assert_eq!(
        suback.codes,
        vec![
            0x00,
            reason::TOPIC_FILTER_INVALID,
            0x01,
            reason::TOPIC_FILTER_INVALID,
            0x01
        ],
        "-mqos 1 grants QoS 1 for 2; invalid filters get 0x8F: {suback:?}"
    );
}

#[tokio::test]
async fn suback_0x97_when_the_subscription_cap_is_reached() {
    let broker = Broker::start(&["-msc", "2"]);
    let mut c = client(&broker, "cap").await;
    let suback = c
        .subscribe(
            &SubscribePacket::new(1)
                .filter("cap/a", 1)
                .filter("cap/b", 1)
                .filter("cap/c", 1),
        )
        .await;
    assert_eq!(
        suback.codes,
        vec![1, 1, reason::QUOTA_EXCEEDED],
        "{suback:?}"
    );
    // Renewing one the client holds is allowed.
    let suback = c
        .subscribe(&SubscribePacket::new(2).filter("cap/a", 0))
        .await;
    assert_eq!(suback.codes, vec![0], "{suback:?}");
}

#[tokio::test]
async fn unsuback_reason_codes_per_filter() {
    let broker = Broker::start(&[]);
    let mut c = client(&broker, "unsub").await;
    c.subscribe_ok(1, "un/a", 1).await;
    c.subscribe_ok(2, "$share/g/un/s", 1).await;
    let unsuback = c
        .unsubscribe(3, &["un/a", "un/never", "un/#/bad", "$share/g/un/s"])
        .await;
    assert_eq!(
        unsuback.codes,
        vec![
            reason::SUCCESS,
            reason::NO_SUBSCRIPTION_EXISTED,
            reason::TOPIC_FILTER_INVALID,
            reason::SUCCESS
        ],
        "{unsuback:?}"
    );
    // Unsubscribing again: it no longer exists.
    let unsuback = c.unsubscribe(4, &["un/a"]).await;
    assert_eq!(unsuback.codes, vec![reason::NO_SUBSCRIPTION_EXISTED]);
}
