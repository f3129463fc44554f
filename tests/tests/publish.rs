//! PUBLISH in both directions at QoS 0, 1 and 2 (MQTT 3.1.1 §3.3-§3.7, §4.3), the delivered
//! QoS, exactly-once for inbound QoS 2 (also across a reconnect), the in-flight window, payload
//! sizes and ordering.

use coolpy7_tests::packets::{self, Connect, Packet, PublishPacket};
use coolpy7_tests::{qos, unique_id, Broker, QoS, RawClient, QUIET, TIMEOUT};

#[tokio::test]
async fn qos0_publish_is_delivered() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/q0", QoS::AtMostOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos0("p/q0", b"zero").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.topic, "p/q0");
    assert_eq!(&got.payload[..], b"zero");
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert!(!got.retain && !got.dup);
    // QoS 0 gets no acknowledgement.
    publisher.expect_no_packet(QUIET).await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn qos1_publish_gets_puback_and_is_delivered() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/q1", QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .send(&packets::publish("p/q1", 1, 10, b"one"))
        .await;
    publisher.expect(Packet::PubAck(10)).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("p/q1", &b"one"[..])
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
    publisher.expect_no_packet(QUIET).await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn qos2_publish_goes_through_pubrec_pubrel_pubcomp() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/q2", QoS::ExactlyOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .send(&packets::publish("p/q2", 2, 11, b"two"))
        .await;
    publisher.expect(Packet::PubRec(11)).await;
    publisher.send(&packets::pubrel(11)).await;
    publisher.expect(Packet::PubComp(11)).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("p/q2", &b"two"[..])
    );
    assert_eq!(got.qos, QoS::ExactlyOnce);
    publisher.expect_no_packet(QUIET).await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription() {
    let broker = Broker::start(&[]);
    let mut subs = Vec::new();
    for level in 0..=2u8 {
        subs.push(
            broker
                .subscriber(&unique_id(&format!("sub{level}")), "p/min", qos(level))
                .await,
        );
    }
    let mut publisher = broker.client(&unique_id("pub")).await;
    for level in 0..=2u8 {
        publisher
            .publish("p/min", qos(level), false, format!("published at {level}"))
            .await;
    }
    for (sub_level, sub) in subs.iter_mut().enumerate() {
        let mut got = sub.recv_publishes(3, TIMEOUT).await;
        got.sort_by(|a, b| a.payload.cmp(&b.payload));
        for (pub_level, publish) in got.iter().enumerate() {
            assert_eq!(
                publish.payload.to_vec(),
                format!("published at {pub_level}").into_bytes()
            );
            assert_eq!(
                publish.qos,
                qos(pub_level.min(sub_level) as u8),
                "published at QoS {pub_level}, subscribed at QoS {sub_level}"
            );
        }
        sub.expect_no_publish(QUIET).await;
    }
}

#[tokio::test]
async fn outbound_qos1_to_a_raw_subscriber() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("rawsub")).await;
    assert_eq!(sub.subscribe(3, &[("p/out1", 1)]).await, vec![1]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("p/out1", QoS::AtLeastOnce, false, "x")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((got.qos, got.dup, got.retain), (1, false, false));
    assert_ne!(got.pkid, 0);
    sub.send(&packets::puback(got.pkid)).await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn outbound_qos2_to_a_raw_subscriber() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("rawsub")).await;
    assert_eq!(sub.subscribe(3, &[("p/out2", 2)]).await, vec![2]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("p/out2", QoS::ExactlyOnce, false, "x")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((got.qos, got.dup), (2, false));
    sub.send(&packets::pubrec(got.pkid)).await;
    sub.expect(Packet::PubRel(got.pkid)).await;
    sub.send(&packets::pubcomp(got.pkid)).await;
    sub.expect_no_packet(QUIET).await;
    // The packet id is free again: the next message flows normally.
    publisher
        .publish("p/out2", QoS::ExactlyOnce, false, "y")
        .await;
    let next = sub.recv_publish(TIMEOUT).await;
    assert_eq!((next.qos, &next.payload[..]), (2, &b"y"[..]));
}

#[tokio::test]
async fn inbound_qos2_duplicate_before_pubrel_is_delivered_once() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/eo", QoS::ExactlyOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;

    publisher
        .send(&packets::publish("p/eo", 2, 7, b"first"))
        .await;
    publisher.expect(Packet::PubRec(7)).await;
    let dup = PublishPacket::new("p/eo", 2, 7, b"first")
        .dup(true)
        .encode();
    publisher.send(&dup).await;
    publisher.expect(Packet::PubRec(7)).await;
    publisher.send(&packets::pubrel(7)).await;
    publisher.expect(Packet::PubComp(7)).await;

    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"first");
    sub.expect_no_publish(QUIET).await;

    // After PUBCOMP, id 7 is free: a new PUBLISH with it is a new message.
    publisher.publish_qos2("p/eo", 7, b"second").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"second");
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn inbound_qos2_is_exactly_once_across_a_reconnect() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/eor", QoS::ExactlyOnce)
        .await;
    let id = unique_id("pub");
    let connect = Connect::v311(&id).clean_session(false);
    let (mut publisher, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    publisher
        .send(&packets::publish("p/eor", 2, 9, b"payload"))
        .await;
    publisher.expect(Packet::PubRec(9)).await;
    drop(publisher); // no PUBREL, no DISCONNECT
    broker.wait_connections(1).await;

    let (mut publisher, sp) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    assert!(
        sp,
        "the publisher's session (with packet 9 received) must be resumed"
    );
    let dup = PublishPacket::new("p/eor", 2, 9, b"payload")
        .dup(true)
        .encode();
    publisher.send(&dup).await;
    publisher.expect(Packet::PubRec(9)).await;
    publisher.send(&packets::pubrel(9)).await;
    publisher.expect(Packet::PubComp(9)).await;

    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"payload");
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn pubrel_for_unknown_packet_id_gets_pubcomp() {
    // §4.3.3: the receiver answers PUBREL with PUBCOMP even if it has no state for the id
    // (e.g. after it already completed it).
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("rel")).await;
    client.send(&packets::pubrel(42)).await;
    client.expect(Packet::PubComp(42)).await;
    client.ping().await;
}

#[tokio::test]
async fn inflight_window_limits_unacknowledged_messages() {
    let broker = Broker::start(&["-mif", "2"]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("window")).await;
    assert_eq!(sub.subscribe(1, &[("p/win", 1)]).await, vec![1]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..5 {
        publisher
            .publish("p/win", QoS::AtLeastOnce, false, format!("w{i}"))
            .await;
    }
    let a = sub.recv_publish(TIMEOUT).await;
    let b = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&a.payload[..], &b.payload[..]), (&b"w0"[..], &b"w1"[..]));
    sub.expect_no_packet(QUIET).await;

    sub.send(&packets::puback(a.pkid)).await;
    let c = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&c.payload[..], b"w2");
    sub.expect_no_packet(QUIET).await;

    sub.send(&packets::puback(b.pkid)).await;
    sub.send(&packets::puback(c.pkid)).await;
    let d = sub.recv_publish(TIMEOUT).await;
    let e = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&d.payload[..], &e.payload[..]), (&b"w3"[..], &b"w4"[..]));
    // Messages in flight at the same time have distinct packet ids.
    assert_ne!(a.pkid, b.pkid);
    assert_ne!(b.pkid, c.pkid);
    assert_ne!(d.pkid, e.pkid);
    sub.send(&packets::puback(d.pkid)).await;
    sub.send(&packets::puback(e.pkid)).await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn inflight_window_does_not_limit_qos0() {
    let broker = Broker::start(&["-mif", "1"]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("window0")).await;
    assert_eq!(sub.subscribe(1, &[("p/win0", 0)]).await, vec![0]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..5 {
        publisher
            .publish("p/win0", QoS::AtMostOnce, false, format!("z{i}"))
            .await;
    }
    for i in 0..5 {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(got.payload, format!("z{i}").into_bytes());
        assert_eq!(got.qos, 0);
    }
}

#[tokio::test]
async fn messages_from_one_publisher_keep_their_order() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/order", QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    // Pipelined: 100 QoS 1 PUBLISHes written before reading any PUBACK.
    let mut bytes = Vec::new();
    for i in 0..100u16 {
        bytes.extend(packets::publish(
            "p/order",
            1,
            i + 1,
            format!("{i}").as_bytes(),
        ));
    }
    publisher.send(&bytes).await;
    for i in 0..100u16 {
        publisher.expect(Packet::PubAck(i + 1)).await;
    }
    let got = sub.recv_publishes(100, TIMEOUT).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
}

#[tokio::test]
async fn a_client_receives_its_own_publications() {
    let broker = Broker::start(&[]);
    let mut client = broker
        .subscriber(&unique_id("self"), "p/self", QoS::AtLeastOnce)
        .await;
    client
        .publish("p/self", QoS::AtLeastOnce, false, "echo")
        .await;
    let got = client.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"echo");
}

#[tokio::test]
async fn binary_and_empty_payloads_are_delivered_unchanged() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("sub")).await;
    assert_eq!(sub.subscribe(1, &[("p/bin", 0)]).await, vec![0]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    let binary: Vec<u8> = (0..=255u8).collect();
    publisher.publish_qos1("p/bin", 1, &binary).await;
    publisher.publish_qos1("p/bin", 2, b"").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.payload, binary);
    let got = sub.recv_publish(TIMEOUT).await;
    assert!(got.payload.is_empty(), "empty payload expected: {got:?}");
}

#[tokio::test]
async fn remaining_length_boundaries_round_trip() {
    let broker = Broker::start(&["-mpl", "1048576"]);
    let topic = "p/len";
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("sub")).await;
    assert_eq!(sub.subscribe(1, &[(topic, 1)]).await, vec![1]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    // Remaining lengths at the 1/2/3-byte boundaries of the variable-length encoding, and a
    // 200 kB message.
    let overhead = 2 + topic.len() + 2;
    for (i, remaining) in [127usize, 128, 16_383, 16_384, 200_000]
        .into_iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..remaining - overhead).map(|b| (b % 251) as u8).collect();
        let pkid = i as u16 + 1;
        let bytes = packets::publish(topic, 1, pkid, &payload);
        assert_eq!(
            bytes.len(),
            1 + packets::remaining_length(remaining).len() + remaining
        );
        publisher.send(&bytes).await;
        publisher.expect(Packet::PubAck(pkid)).await;
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(
            got.payload.len(),
            payload.len(),
            "remaining length {remaining}"
        );
        assert!(
            got.payload == payload,
            "payload corrupted at remaining length {remaining}"
        );
        sub.send(&packets::puback(got.pkid)).await;
    }
}

#[tokio::test]
async fn publish_without_subscribers_is_still_acknowledged() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("nobody/listens", 1, b"x").await;
    publisher.publish_qos2("nobody/listens", 2, b"y").await;
    publisher.ping().await;
}

#[tokio::test]
async fn manual_acks_rumqttc_subscriber_gets_redelivery_on_reconnect() {
    let broker = Broker::start(&[]);
    let id = unique_id("manual");
    let mut options = broker.options(&id);
    options.set_clean_session(false).set_manual_acks(true);
    let mut sub = coolpy7_tests::TestClient::connect(options.clone()).await;
    sub.subscribe_ok("p/manual", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("p/manual", QoS::AtLeastOnce, false, "ack me")
        .await;
    let first = sub.recv_publish(TIMEOUT).await;
    assert!(!first.dup);
    sub.drop_connection().await;
    broker.wait_connections(1).await;

    let mut sub = coolpy7_tests::TestClient::connect(options).await;
    assert!(sub.session_present());
    let again = sub.recv_publish(TIMEOUT).await;
    assert_eq!(&again.payload[..], b"ack me");
    assert!(again.dup, "re-delivery must set DUP");
    assert_eq!(again.pkid, first.pkid);
    sub.ack(&again).await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn fan_out_to_many_subscribers() {
    let broker = Broker::start(&[]);
    let mut subs = Vec::new();
    for i in 0..100 {
        let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("fan")).await;
        let qos = (i % 3) as u8;
        assert_eq!(sub.subscribe(1, &[("fan/out", qos)]).await, vec![qos]);
        subs.push((sub, qos));
    }
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("fan/out", QoS::ExactlyOnce, false, "to all")
        .await;
    for (sub, qos) in &mut subs {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!((&got.payload[..], got.qos), (&b"to all"[..], *qos));
    }
    for (sub, _) in &mut subs {
        sub.expect_no_packet(std::time::Duration::from_millis(20))
            .await;
    }
}

#[tokio::test]
async fn fan_in_keeps_each_publishers_order() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sink"), "fan/in/+", QoS::AtLeastOnce)
        .await;
    const PUBLISHERS: usize = 10;
    const EACH: usize = 30;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let addr = broker.mqtt_addr();
        tasks.push(tokio::spawn(async move {
            let mut client = RawClient::connect_v311(addr, &unique_id("src")).await;
            let topic = format!("fan/in/{p}");
            for i in 0..EACH {
                client
                    .publish_qos1(&topic, i as u16 + 1, format!("{i}").as_bytes())
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    let got = sub.recv_publishes(PUBLISHERS * EACH, TIMEOUT).await;
    let mut next = [0usize; PUBLISHERS];
    for publish in &got {
        let p: usize = publish.topic["fan/in/".len()..].parse().expect("topic");
        let i: usize = String::from_utf8_lossy(&publish.payload)
            .parse()
            .expect("payload");
        assert_eq!(i, next[p], "publisher {p}'s messages in order");
        next[p] += 1;
    }
    assert_eq!(next, [EACH; PUBLISHERS]);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn qos1_resend_by_a_publisher_is_a_new_publication() {
    // §4.3.2: after PUBACK, a PUBLISH with the same packet id is a new publication (QoS 1 is
    // at least once; only QoS 2 de-duplicates).
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "p/again", QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("p/again", 5, b"a").await;
    let dup = PublishPacket::new("p/again", 1, 5, b"a").dup(true).encode();
    publisher.send(&dup).await;
    publisher.expect(Packet::PubAck(5)).await;
    let got = sub.recv_publishes(2, TIMEOUT).await;
    assert!(got.iter().all(|p| &p.payload[..] == b"a"));
    sub.expect_no_publish(QUIET).await;
}
