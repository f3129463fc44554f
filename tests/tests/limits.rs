//! Configured limits: `-mpl` (maximum packet size, whole packet) and `-mc` (maximum connections,
//! refused with CONNACK 0x03).

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::{assert_healthy, unique_id, Broker, QoS, RawClient, QUIET, TIMEOUT};

/// A QoS 0 PUBLISH to `topic` of exactly `total` bytes.
fn publish_of_size(topic: &str, total: usize) -> Vec<u8> {
    for payload_len in (0..total).rev() {
        let bytes = packets::publish(topic, 0, 0, &vec![b'x'; payload_len]);
        if bytes.len() == total {
            return bytes;
        }
    }
    panic!("no PUBLISH of {total} bytes to {topic:?}");
}

#[tokio::test]
async fn packet_larger_than_max_packet_size_closes_the_connection() {
    let mut broker = Broker::start(&["-mpl", "100"]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "mpl/t", QoS::AtMostOnce)
        .await;
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("big")).await;

    let small = publish_of_size("mpl/t", 50);
    client.send(&small).await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        got.payload.len(),
        50 - 9,
        "the 50-byte PUBLISH is delivered"
    );

    let big = publish_of_size("mpl/t", 200);
    let _ = client.try_send(&big).await;
    client.expect_closed_silently(TIMEOUT).await;
    sub.expect_no_publish(QUIET).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn max_packet_size_counts_the_whole_packet() {
    let broker = Broker::start(&["-mpl", "100"]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "mpl/edge", QoS::AtMostOnce)
        .await;
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("edge")).await;
    client.send(&publish_of_size("mpl/edge", 100)).await;
    assert_eq!(sub.recv_publish(TIMEOUT).await.topic, "mpl/edge");
    client.ping().await;

    // 101 bytes in all, though its remaining length (99) is below the limit.
    let over = publish_of_size("mpl/edge", 101);
    assert_eq!(over[1], 99);
    let _ = client.try_send(&over).await;
    client.expect_closed_silently(TIMEOUT).await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn max_connections_refuses_with_0x03_and_frees_slots() {
    let mut broker = Broker::start(&["-mc", "2"]);
    let first = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("c1")).await;
    let mut second = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("c2")).await;

    let mut third = RawClient::connect(broker.mqtt_addr()).await;
    let _ = third
        .try_send(&Connect::v311(&unique_id("c3")).encode())
        .await;
    let packets = third.expect_closed(TIMEOUT).await;
    assert_eq!(
        packets,
        vec![Packet::ConnAck {
            session_present: false,
            code: 0x03
        }],
        "the third connection is refused with CONNACK 0x03 (server unavailable)"
    );
    second.ping().await;
    broker
        .wait_metric(
            "coolpy7_connections_refused_total",
            ">= 1 refused",
            TIMEOUT,
            |v| v >= 1.0,
        )
        .await;

    first.disconnect().await;
    broker.wait_connections(1).await;
    let (mut fourth, _) =
        RawClient::handshake(broker.mqtt_addr(), &Connect::v311(&unique_id("c4"))).await;
    fourth.ping().await;
    second.disconnect().await;
    fourth.disconnect().await;
    broker.wait_connections(0).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn max_connections_slot_is_freed_by_an_abnormal_close() {
    let broker = Broker::start(&["-mc", "1"]);
    let only = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("only")).await;
    drop(only);
    broker.wait_connections(0).await;
    let mut next = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("next")).await;
    next.ping().await;
}

#[tokio::test]
async fn slow_consumer_stalls_nobody_and_is_dropped_after_the_write_timeout() {
    let mut broker = Broker::start(&["-t", "2"]);
    // A subscriber with a tiny receive buffer that never reads.
    let mut slow = RawClient::connect_with_recv_buffer(broker.mqtt_addr(), 4096).await;
    slow.send(&Connect::v311(&unique_id("slow")).encode()).await;
    assert_eq!(
        slow.recv(TIMEOUT).await,
        Packet::ConnAck {
            session_present: false,
            code: 0
        }
    );
    // QoS 0, so that the in-flight window does not hold the broker back: it keeps writing
    // until the socket is full.
    assert_eq!(slow.subscribe(1, &[("slow/t", 0)]).await, vec![0]);
    let mut fast = broker
        .subscriber(&unique_id("fast"), "slow/t", QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.client(&unique_id("pub")).await;

    // 200 × 64 KiB: far more than the socket buffers towards the slow client hold. Every
    // PUBLISH must still be acknowledged in time (the publisher is not held back).
    const N: usize = 200;
    for i in 0..N {
        let mut payload = vec![b'.'; 64 * 1024];
        let tag = format!("{i:05}");
        payload[..5].copy_from_slice(tag.as_bytes());
        publisher
            .publish("slow/t", QoS::AtLeastOnce, false, payload)
            .await;
    }
    let got = fast
        .recv_publishes(N, std::time::Duration::from_secs(30))
        .await;
    for (i, publish) in got.iter().enumerate() {
        assert_eq!(
            &publish.payload[..5],
            format!("{i:05}").as_bytes(),
            "the fast subscriber gets every message, in order"
        );
    }

    // The slow client's connection is dropped by the broker (stalled for -t 2 s) while it still
    // has not read anything.
    broker
        .wait_metric(
            "coolpy7_connections",
            "the stalled subscriber to be disconnected (2 left)",
            std::time::Duration::from_secs(15),
            |v| v == 2.0,
        )
        .await;
    slow.expect_closed(TIMEOUT).await;
    assert_healthy(&mut broker).await;
}

/// `-t` applies to a QoS 1 subscriber that stops acknowledging as it does to one that stops
/// reading: with its in-flight window full and messages waiting, it is closed after about `-t`.
#[tokio::test]
async fn a_subscriber_that_stops_acknowledging_is_dropped_after_the_write_timeout() {
    let mut broker = Broker::start(&["-t", "2", "-mif", "4"]);
    let mut stalled = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("noack")).await;
    assert_eq!(stalled.subscribe(1, &[("noack/t", 1)]).await, vec![1]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    for i in 0..20u16 {
        publisher.publish_qos1("noack/t", i + 1, b"m").await;
    }
    // It gets the window's worth and acknowledges none of them.
    for _ in 0..4 {
        stalled.recv_publish(TIMEOUT).await;
    }
    let closed_within = std::time::Duration::from_secs(15);
    stalled.expect_closed(closed_within).await;
    assert_healthy(&mut broker).await;
    assert!(
        broker.logs().contains("stopped acknowledging"),
        "the reason is logged"
    );
}

/// A subscriber whose window is full but which has nothing more waiting is not stalled: it is
/// not closed however long it takes to acknowledge.
#[tokio::test]
async fn a_full_window_with_nothing_waiting_is_not_a_stall() {
    let broker = Broker::start(&["-t", "1", "-mif", "2"]);
    let mut slow = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("slowack")).await;
    assert_eq!(slow.subscribe(1, &[("slowack/t", 1)]).await, vec![1]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("slowack/t", 1, b"a").await;
    publisher.publish_qos1("slowack/t", 2, b"b").await;
    let first = slow.recv_publish(TIMEOUT).await;
    let second = slow.recv_publish(TIMEOUT).await;
    slow.assert_open_for(std::time::Duration::from_millis(2500))
        .await;
    slow.send(&packets::puback(first.pkid)).await;
    slow.send(&packets::puback(second.pkid)).await;
    slow.ping().await;
}

/// A QoS 1 subscriber that keeps acknowledging, only more slowly than its backlog drains,
/// makes progress the whole time: `-t` does not close it.
#[tokio::test]
async fn a_slow_but_steady_acknowledger_is_not_stalled() {
    const N: u16 = 150;
    let broker = Broker::start(&["-t", "1", "-mif", "4"]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("steady")).await;
    assert_eq!(sub.subscribe(1, &[("steady/t", 1)]).await, vec![1]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    for i in 0..N {
        publisher.publish_qos1("steady/t", i + 1, b"m").await;
    }
    // One acknowledgement every 20 ms: 3 s for all, three times -t, with steady progress.
    for _ in 0..N {
        let publish = sub.recv_publish(TIMEOUT).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        sub.send(&packets::puback(publish.pkid)).await;
    }
    sub.ping().await;
}
