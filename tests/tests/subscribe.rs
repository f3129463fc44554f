//! SUBSCRIBE / UNSUBSCRIBE (MQTT 3.1.1 §3.8-§3.11) and topic matching (§4.7): granted QoS,
//! failure codes for invalid filters, wildcards, `$` topics and overlapping subscriptions.

use coolpy7_tests::packets::Packet;
use coolpy7_tests::{unique_id, Broker, QoS, RawClient, SubscribeReasonCode, QUIET, TIMEOUT};

/// Subscribes one client to `filter`, publishes one QoS 1 message to each of `topics` (payload =
/// topic) and returns the topics delivered, sorted, after checking nothing more arrives.
async fn delivered_topics(
    broker: &Broker,
    filter: &str,
    topics: &[&str],
    expected: usize,
) -> Vec<String> {
    let mut sub = broker
        .subscriber(&unique_id("sub"), filter, QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    for topic in topics {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, topic.as_bytes().to_vec())
            .await;
    }
    let got = sub.recv_publishes(expected, TIMEOUT).await;
    let extra = sub.drain_publishes(QUIET).await;
    let mut names: Vec<String> = got.iter().map(|p| p.topic.clone()).collect();
    for p in &got {
        assert_eq!(p.payload.to_vec(), p.topic.as_bytes(), "payload of {p:?}");
    }
    names.extend(extra.iter().map(|p| format!("(unexpected) {}", p.topic)));
    names.sort();
    names
}

fn sorted(topics: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn suback_grants_the_minimum_of_requested_and_max_qos() {
    let broker = Broker::start(&["-mqos", "1"]);
    let mut sub = broker.client(&unique_id("mqos")).await;
    let codes = sub
        .subscribe_many(&[
            ("mqos/0", QoS::AtMostOnce),
            ("mqos/1", QoS::AtLeastOnce),
            ("mqos/2", QoS::ExactlyOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
        ]
    );
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("mqos/2", QoS::ExactlyOnce, false, "x")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.qos, QoS::AtLeastOnce, "delivered at the granted QoS");
}

#[tokio::test]
async fn suback_grants_requested_qos_by_default() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("grant")).await;
    let codes = sub
        .subscribe(77, &[("g/0", 0), ("g/1", 1), ("g/2", 2)])
        .await;
    assert_eq!(codes, vec![0, 1, 2]);
}

#[tokio::test]
async fn invalid_filters_get_0x80_alongside_valid_ones() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("bad-filters")).await;
    let codes = sub
        .subscribe(
            9,
            &[
                ("ok/1", 1),
                ("a/#/b", 0),
                ("a+", 0),
                ("#a", 0),
                ("", 0),
                ("a/b#", 1),
                ("+a/b", 1),
                ("ok/+/2", 2),
            ],
        )
        .await;
    assert_eq!(codes, vec![1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 2]);
    // The connection stays usable and the valid filters are active.
    sub.ping().await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("ok/1", QoS::AtLeastOnce, false, "a")
        .await;
    publisher
        .publish("ok/x/2", QoS::AtLeastOnce, false, "b")
        .await;
    let first = sub.recv_publish(TIMEOUT).await;
    let second = sub.recv_publish(TIMEOUT).await;
    let mut topics = vec![first.topic, second.topic];
    topics.sort();
    assert_eq!(topics, ["ok/1", "ok/x/2"]);
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "us/t", QoS::AtLeastOnce)
        .await;
    sub.subscribe_ok("us/other", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("us/t", QoS::AtLeastOnce, false, "before")
        .await;
    assert_eq!(&sub.recv_publish(TIMEOUT).await.payload[..], b"before");

    sub.unsubscribe("us/t").await;
    publisher
        .publish("us/t", QoS::AtLeastOnce, false, "after")
        .await;
    publisher
        .publish("us/other", QoS::AtLeastOnce, false, "other")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("us/other", &b"other"[..]),
        "only the remaining subscription delivers"
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn unsuback_is_sent_for_unknown_filters() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("unsub")).await;
    client.unsubscribe(31, &["never/subscribed", "x/#"]).await;
    client.ping().await;
}

#[tokio::test]
async fn suback_uses_the_subscribe_packet_id() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("ids")).await;
    for pkid in [1u16, 0x1234, 0xFFFF] {
        client
            .send(&coolpy7_tests::packets::subscribe(pkid, &[("ids/t", 1)]))
            .await;
        client
            .expect(Packet::SubAck {
                pkid,
                codes: vec![1],
            })
            .await;
    }
}

#[tokio::test]
async fn plus_matches_exactly_one_level() {
    let broker = Broker::start(&[]);
    let got = delivered_topics(
        &broker,
        "a/+/c",
        &[
            "a/b/c", "a/b/d", "a/b/c/d", "a//c", "a/c", "b/b/c", "a/xyz/c",
        ],
        3,
    )
    .await;
    assert_eq!(got, sorted(&["a/b/c", "a//c", "a/xyz/c"]));
}

#[tokio::test]
async fn hash_matches_the_parent_and_all_descendants() {
    let broker = Broker::start(&[]);
    let got = delivered_topics(&broker, "a/#", &["a", "a/b", "a/b/c", "ab", "b/a", "a/"], 4).await;
    assert_eq!(got, sorted(&["a", "a/b", "a/b/c", "a/"]));
}

#[tokio::test]
async fn hash_alone_matches_everything_but_dollar_topics() {
    let broker = Broker::start(&[]);
    let got = delivered_topics(&broker, "#", &["x", "x/y", "/x", "$app/x", "$app"], 3).await;
    assert_eq!(got, sorted(&["x", "x/y", "/x"]));
}

#[tokio::test]
async fn plus_first_level_does_not_match_dollar_topics() {
    let broker = Broker::start(&[]);
    let got = delivered_topics(&broker, "+/x", &["a/x", "$app/x", "/x"], 2).await;
    assert_eq!(got, sorted(&["a/x", "/x"]));
}

#[tokio::test]
async fn explicit_dollar_filters_match_dollar_topics() {
    let broker = Broker::start(&[]);
    let got = delivered_topics(&broker, "$app/#", &["$app/x", "$app/y/z", "app/x"], 2).await;
    assert_eq!(got, sorted(&["$app/x", "$app/y/z"]));
    let got = delivered_topics(&broker, "$app/+", &["$app/x", "$app/y/z"], 1).await;
    assert_eq!(got, sorted(&["$app/x"]));
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = Broker::start(&[]);
    let mut sub = broker.client(&unique_id("overlap")).await;
    let codes = sub
        .subscribe_many(&[("ov/a/b", QoS::AtMostOnce), ("ov/#", QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    let mut publisher = broker.client(&unique_id("pub")).await;

    publisher
        .publish("ov/a/b", QoS::ExactlyOnce, false, "q2")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&got.payload[..], got.qos), (&b"q2"[..], QoS::AtLeastOnce));
    sub.expect_no_publish(QUIET).await;

    publisher
        .publish("ov/a/b", QoS::AtMostOnce, false, "q0")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&got.payload[..], got.qos), (&b"q0"[..], QoS::AtMostOnce));
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("resub"), "rs/t", QoS::AtMostOnce)
        .await;
    sub.subscribe_ok("rs/t", QoS::ExactlyOnce).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("rs/t", QoS::ExactlyOnce, false, "x")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        got.qos,
        QoS::ExactlyOnce,
        "the new subscription's QoS applies"
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn subscribing_to_many_filters_at_once() {
    let broker = Broker::start(&[]);
    let filters: Vec<String> = (0..50).map(|i| format!("many/{i}")).collect();
    let requested: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 1u8)).collect();
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("many")).await;
    assert_eq!(sub.subscribe(2, &requested).await, vec![1; 50]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("many/49", QoS::AtMostOnce, false, "last")
        .await;
    assert_eq!(sub.recv_publish(TIMEOUT).await.topic, "many/49");
}

/// Subscribes `raw` to `count` distinct filters `cap/<i>` in SUBSCRIBE packets of 100 (a few
/// awaiting their SUBACK at once) and returns every return code, in order.
async fn subscribe_numbered(raw: &mut RawClient, count: usize) -> Vec<u8> {
    let filters: Vec<String> = (0..count).map(|i| format!("cap/{i}")).collect();
    let mut codes = Vec::with_capacity(count);
    for (window, chunks) in filters.chunks(100 * 10).enumerate() {
        let packets: Vec<(u16, usize)> = chunks
            .chunks(100)
            .enumerate()
            .map(|(i, chunk)| ((window * 10 + i + 1) as u16, chunk.len()))
            .collect();
        for ((pkid, _), chunk) in packets.iter().zip(chunks.chunks(100)) {
            let pairs: Vec<(&str, u8)> = chunk.iter().map(|f| (f.as_str(), 0)).collect();
            raw.send(&coolpy7_tests::packets::subscribe(*pkid, &pairs))
                .await;
        }
        for (pkid, len) in packets {
            codes.extend(raw.wait_suback(pkid, len).await);
        }
    }
    codes
}

#[tokio::test]
async fn filters_beyond_the_per_client_cap_get_0x80() {
    let broker = Broker::start(&["-msc", "3"]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("cap")).await;
    let codes = sub
        .subscribe(
            1,
            &[("c/1", 1), ("c/2", 1), ("c/3", 0), ("c/4", 1), ("c/+", 1)],
        )
        .await;
    assert_eq!(codes, vec![1, 1, 0, 0x80, 0x80]);
    // Renewing a filter the client holds is not a new one: granted, with the new QoS.
    assert_eq!(
        sub.subscribe(2, &[("c/3", 1), ("c/5", 1)]).await,
        vec![1, 0x80]
    );
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 3.0);

    // The refused filters deliver nothing; the granted ones do.
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos0("c/4", b"refused").await;
    publisher.publish_qos0("c/3", b"granted").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("c/3", &b"granted"[..])
    );
    sub.expect_no_packet(QUIET).await;

    // Unsubscribing makes room again.
    sub.unsubscribe(3, &["c/1"]).await;
    assert_eq!(
        sub.subscribe(4, &[("c/4", 0), ("c/5", 0)]).await,
        vec![0, 0x80]
    );
}

#[tokio::test]
async fn the_default_cap_is_10000_filters_and_msc_0_lifts_it() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("default-cap")).await;
    let codes = subscribe_numbered(&mut sub, 10_001).await;
    assert!(
        codes[..10_000].iter().all(|&c| c == 0),
        "the first 10,000 are granted"
    );
    assert_eq!(codes[10_000], 0x80, "the 10,001st is refused");
    drop(broker);

    let broker = Broker::start(&["-msc=0"]);
    let mut sub = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("no-cap")).await;
    let codes = subscribe_numbered(&mut sub, 10_001).await;
    assert!(codes.iter().all(|&c| c == 0), "-msc 0 is unlimited");
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 10_001.0);
}
