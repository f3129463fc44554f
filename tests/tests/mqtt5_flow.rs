//! MQTT 5 flow control and packet size limits, both ways (OASIS MQTT 5.0 §3.1.2.11.3-4,
//! §3.2.2.3.3, §3.2.2.3.6, §4.9). The broker never has more unacknowledged QoS 1/2 deliveries to
//! a client than the client's Receive Maximum; a client with more QoS 2 PUBLISHes awaiting
//! PUBREL than `-mri` gets DISCONNECT 0x93; a delivery larger than the client's Maximum Packet
//! Size is dropped and counted; a packet over `-mpl` gets DISCONNECT 0x95.

use coolpy7_tests::packets5::{self, reason, Connect, Packet, Property as P, PublishPacket};
use coolpy7_tests::{unique_id, Broker, RawClient5, QUIET, TIMEOUT};

const DROPPED_TOO_LARGE: &str = "coolpy7_messages_dropped_total{reason=\"packet_too_large\"}";

#[tokio::test]
async fn broker_never_exceeds_the_clients_receive_maximum() {
    let broker = Broker::start(&["-mif", "32"]);
    let connect = Connect::new(&unique_id("sub")).prop(P::ReceiveMaximum(2));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "rm/#", 2).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    // QoS 1 and 2 both count (§4.9).
    for i in 0..6u16 {
        let qos = 1 + (i % 2) as u8;
        publisher
            .publish(&PublishPacket::new(
                "rm/t",
                qos,
                i + 1,
                format!("{i}").as_bytes(),
            ))
            .await;
    }
    let a = sub.recv_publish(TIMEOUT).await;
    let b = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&a.payload[..], &b.payload[..]), (&b"0"[..], &b"1"[..]));
    // Two unacknowledged: nothing more, however long we wait.
    sub.expect_no_packet(QUIET).await;
    // Acknowledging one (QoS 1) lets exactly one more through.
    sub.ack(&a).await;
    let c = sub.recv_publish(TIMEOUT).await;
    assert_eq!(c.payload, b"2");
    sub.expect_no_packet(QUIET).await;
    // A QoS 2 delivery counts until PUBCOMP (`ack` waits for PUBREL and sends it).
    sub.ack(&b).await;
    let d = sub.recv_publish(TIMEOUT).await;
    assert_eq!(d.payload, b"3");
    sub.expect_no_packet(QUIET).await;
    for publish in [c, d] {
        sub.ack(&publish).await;
    }
    for expected in ["4", "5"] {
        let got = sub.recv_publish_acked(TIMEOUT).await;
        assert_eq!(got.payload, expected.as_bytes());
    }
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn qos0_is_not_limited_by_receive_maximum() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("sub")).prop(P::ReceiveMaximum(1));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "rm0/#", 0).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for i in 0..5u16 {
        publisher.publish_qos1("rm0/t", i + 1, b"x").await;
    }
    for _ in 0..5 {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(got.qos, 0);
    }
}

#[tokio::test]
async fn more_qos2_publishes_than_the_brokers_receive_maximum_is_disconnect_0x93() {
    let broker = Broker::start(&["-mri", "2"]);
    let (mut client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("pub"))).await;
    assert_eq!(connack.props.receive_maximum(), Some(2));
    // QoS 1 is acknowledged at once: many of them never count.
    for i in 0..5u16 {
        client.publish_qos1("mri/q1", 100 + i, b"x").await;
    }
    // Two QoS 2 awaiting PUBREL are allowed.
    for pkid in [1u16, 2] {
        client
            .send(&PublishPacket::new("mri/q2", 2, pkid, b"x").encode())
            .await;
        let rec = client
            .wait_for("PUBREC", TIMEOUT, |p| matches!(p, Packet::PubRec(_)))
            .await;
        assert!(
            matches!(rec, Packet::PubRec(ref a) if a.pkid == pkid && a.code < 0x80),
            "{rec:?}"
        );
    }
    // Releasing one makes room for one more.
    client.send(&packets5::pubrel(1)).await;
    client
        .wait_for(
            "PUBCOMP",
            TIMEOUT,
            |p| matches!(p, Packet::PubComp(a) if a.pkid == 1),
        )
        .await;
    client
        .send(&PublishPacket::new("mri/q2", 2, 3, b"x").encode())
        .await;
    client
        .wait_for(
            "PUBREC",
            TIMEOUT,
            |p| matches!(p, Packet::PubRec(a) if a.pkid == 3),
        )
        .await;
    // 2 and 3 await PUBREL: a third is one too many.
    client
        .send(&PublishPacket::new("mri/q2", 2, 4, b"x").encode())
        .await;
    client
        .expect_disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED)
        .await;
}

#[tokio::test]
async fn a_delivery_larger_than_the_clients_maximum_packet_size_is_dropped_and_counted() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("sub")).prop(P::MaximumPacketSize(100));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "mps/#", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("mps/t", 1, &[b'x'; 200]).await;
    // Small enough alone, too large with its properties (the whole packet counts, §3.1.2.11.4).
    publisher
        .publish(
            &PublishPacket::new("mps/t", 1, 2, &[b'y'; 60])
                .prop(P::UserProperty("k".into(), "v".repeat(40))),
        )
        .await;
    publisher.publish_qos1("mps/t", 3, b"small").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        got.payload, b"small",
        "the large ones are never sent: {got:?}"
    );
    sub.expect_no_packet(QUIET).await;
    broker
        .wait_metric(DROPPED_TOO_LARGE, "2 drops", TIMEOUT, |v| v >= 2.0)
        .await;
}

#[tokio::test]
async fn dropped_large_deliveries_do_not_use_up_the_receive_maximum() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("sub"))
        .prop(P::MaximumPacketSize(64))
        .prop(P::ReceiveMaximum(1));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "mpsrm/#", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for i in 0..3u16 {
        publisher.publish_qos1("mpsrm/t", i + 1, &[b'x'; 100]).await;
    }
    publisher.publish_qos1("mpsrm/t", 10, b"fits").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"fits");
}

#[tokio::test]
async fn a_packet_over_mpl_is_disconnect_0x95() {
    let broker = Broker::start(&["-mpl", "100"]);
    let (mut client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("big"))).await;
    assert_eq!(connack.props.maximum_packet_size(), Some(100));
    // 100 bytes in all is allowed.
    let fits = PublishPacket::new("mpl/t", 1, 1, &[]);
    let overhead = fits.encode().len();
    let fits = PublishPacket::new("mpl/t", 1, 1, &vec![b'x'; 100 - overhead]);
    assert_eq!(fits.encode().len(), 100);
    let ack = client.publish(&fits).await.expect("PUBACK");
    assert!(ack.code < 0x80, "{ack:?}");
    let over = PublishPacket::new("mpl/t", 1, 2, &vec![b'x'; 101 - overhead]);
    let _ = client.try_send(&over.encode()).await;
    client.expect_disconnect(reason::PACKET_TOO_LARGE).await;
}

#[tokio::test]
async fn in_flight_messages_too_large_for_the_new_maximum_packet_size_are_not_resent() {
    // A session resumed by a connection with a smaller Maximum Packet Size: what was in flight
    // and no longer fits is discarded, not resent (§3.1.2.11.4: "the Server MUST discard it
    // without sending it and then behave as if it had completed sending that Application
    // Message"). Resent anyway, it would break the limit on every reconnect, and its packet id
    // would hold the window (Receive Maximum 1 here) for good.
    let broker = Broker::start(&[]);
    let id = unique_id("sub");
    let first = Connect::new(&id).clean_start(false).session_expiry(60);
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &first).await;
    sub.subscribe_ok(1, "rs/#", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("rs/t", 1, &[b'x'; 200]).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.payload.len(), 200);
    // Gone without acknowledging it.
    drop(sub);
    broker.wait_connections(1).await;

    let again = Connect::new(&id)
        .clean_start(false)
        .session_expiry(60)
        .prop(P::MaximumPacketSize(100))
        .prop(P::ReceiveMaximum(1));
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &again).await;
    assert!(connack.session_present);
    publisher.publish_qos1("rs/t", 2, b"fits").await;
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        got.payload, b"fits",
        "the 200-byte message is not resent past the 100-byte limit: {got:?}"
    );
    sub.expect_no_packet(QUIET).await;
}
