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
