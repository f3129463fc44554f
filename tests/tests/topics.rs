//! Topic name and filter rules (MQTT 3.1.1 §1.5.3, §4.7): wildcards in a topic name, ill-formed
//! UTF-8, U+0000 and empty names close the connection, and such a message is never routed.

use coolpy7_tests::packets::{self, PublishPacket};
use coolpy7_tests::{assert_healthy, unique_id, Broker, QoS, RawClient, QUIET, TIMEOUT};

/// Sends `bytes` after a good CONNECT and asserts the broker closes the connection without
/// answering (no PUBACK / SUBACK).
async fn expect_rejected(broker: &Broker, what: &str, bytes: &[u8]) {
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("bad")).await;
    // The broker may close while the bytes are still being written.
    let _ = client.try_send(bytes).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(
        before.is_empty(),
        "{what}: the broker must close the connection without answering, it sent {before:?}"
    );
}

#[tokio::test]
async fn publish_with_wildcards_in_the_topic_closes() {
    let mut broker = Broker::start(&[]);
    let mut watcher = broker
        .subscriber(&unique_id("watch"), "#", QoS::AtMostOnce)
        .await;
    for topic in ["a/+", "a/#", "+", "#", "a+b", "a/b#"] {
        for qos in [0u8, 1] {
            let bytes = packets::publish(topic, qos, 1, b"x");
            expect_rejected(&broker, &format!("PUBLISH QoS {qos} to {topic:?}"), &bytes).await;
        }
    }
    watcher.expect_no_publish(QUIET).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn publish_with_invalid_utf8_topic_closes() {
    let mut broker = Broker::start(&[]);
    let mut watcher = broker
        .subscriber(&unique_id("watch"), "#", QoS::AtMostOnce)
        .await;
    let topics: [&[u8]; 4] = [b"a/\xff", b"\xc3\x28", b"a/\xed\xa0\x80", b"\xc0\xaf"];
    for topic in topics {
        let bytes = PublishPacket::new("", 1, 1, b"x").raw_topic(topic).encode();
        expect_rejected(&broker, &format!("PUBLISH to {topic:02x?}"), &bytes).await;
    }
    watcher.expect_no_publish(QUIET).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn publish_with_nul_in_the_topic_closes() {
    let mut broker = Broker::start(&[]);
    let mut watcher = broker
        .subscriber(&unique_id("watch"), "#", QoS::AtMostOnce)
        .await;
    let bytes = PublishPacket::new("", 0, 0, b"x")
        .raw_topic(b"a/\0/b")
        .encode();
    expect_rejected(&broker, "PUBLISH to a/U+0000/b", &bytes).await;
    watcher.expect_no_publish(QUIET).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn publish_with_empty_topic_closes() {
    let mut broker = Broker::start(&[]);
    let bytes = packets::publish("", 1, 1, b"x");
    expect_rejected(&broker, "PUBLISH with an empty topic", &bytes).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn subscribe_with_invalid_utf8_filter_closes() {
    let mut broker = Broker::start(&[]);
    let filters: [&[u8]; 3] = [b"a/\xff", b"\xed\xa0\x80/#", b"ok/\xc3"];
    for filter in filters {
        let bytes = packets::subscribe_raw(1, &[(b"fine/filter", 0), (filter, 0)]);
        expect_rejected(&broker, &format!("SUBSCRIBE to {filter:02x?}"), &bytes).await;
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn subscribe_with_nul_in_the_filter_closes() {
    let mut broker = Broker::start(&[]);
    let bytes = packets::subscribe_raw(1, &[(b"a/\0", 0)]);
    expect_rejected(&broker, "SUBSCRIBE to a/U+0000", &bytes).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn unsubscribe_with_invalid_utf8_filter_closes() {
    let mut broker = Broker::start(&[]);
    let mut body = 5u16.to_be_bytes().to_vec();
    body.extend(packets::string(b"a/\xff"));
    let bytes = packets::packet(0xA2, &body);
    expect_rejected(&broker, "UNSUBSCRIBE from a/0xff", &bytes).await;
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn multibyte_utf8_topics_are_routed() {
    let broker = Broker::start(&[]);
    let topic = "温度/房间/🌡";
    let mut sub = broker
        .subscriber(&unique_id("sub"), "温度/+/🌡", QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1(topic, 1, b"21.5").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], b"21.5");
}
