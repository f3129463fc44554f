//! Shared subscriptions (`$share/<group>/<filter>` and `$queue/<filter>`): each message goes to
//! one member of each group, round robin; plain subscribers still get everything; a member that
//! leaves stops receiving.

use std::collections::BTreeSet;
use std::time::Duration;

use coolpy7_tests::client::TestClient;
use coolpy7_tests::{unique_id, Broker, QoS, QUIET, TIMEOUT};
use rumqttc::Publish;

async fn members(broker: &Broker, filter: &str, n: usize) -> Vec<TestClient> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            broker
                .subscriber(&unique_id("member"), filter, QoS::AtLeastOnce)
                .await,
        );
    }
    out
}

async fn publish_numbered(broker: &Broker, topic: &str, n: usize) {
    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..n {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    publisher.disconnect().await;
}

/// Collects from all `clients` until `total` PUBLISHes arrived (at most [`TIMEOUT`]), then waits
/// [`QUIET`] for extra ones; returns what each client got.
async fn collect(clients: &mut [TestClient], total: usize) -> Vec<Vec<Publish>> {
    let mut got: Vec<Vec<Publish>> = vec![Vec::new(); clients.len()];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        for (i, client) in clients.iter_mut().enumerate() {
            while let Some(publish) = client.try_recv_publish() {
                got[i].push(publish);
            }
        }
        let count: usize = got.iter().map(Vec::len).sum();
        if count >= total {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("only {count} of {total} messages reached the group members: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(QUIET).await;
    for (i, client) in clients.iter_mut().enumerate() {
        while let Some(publish) = client.try_recv_publish() {
            got[i].push(publish);
        }
    }
    got
}

fn payloads(got: &[Vec<Publish>]) -> Vec<String> {
    let mut all: Vec<String> = got
        .iter()
        .flatten()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    all.sort_by_key(|s| s.parse::<u64>().unwrap_or(u64::MAX));
    all
}

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

fn counts(got: &[Vec<Publish>]) -> Vec<usize> {
    got.iter().map(Vec::len).collect()
}

#[tokio::test]
async fn share_group_of_three_is_round_robin() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$share/g/sh/t", 3).await;
    publish_numbered(&broker, "sh/t", 9).await;
    let got = collect(&mut group, 9).await;
    assert_eq!(
        payloads(&got),
        numbers(9),
        "each message exactly once in the group"
    );
    assert_eq!(counts(&got), vec![3, 3, 3], "round robin: {got:?}");
    for publish in got.iter().flatten() {
        assert_eq!(publish.topic, "sh/t", "delivered with the published topic");
    }
}

#[tokio::test]
async fn share_group_of_two_splits_evenly() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$share/pair/sh2/t", 2).await;
    publish_numbered(&broker, "sh2/t", 10).await;
    let got = collect(&mut group, 10).await;
    assert_eq!(payloads(&got), numbers(10));
    assert_eq!(counts(&got), vec![5, 5]);
}

#[tokio::test]
async fn queue_group_is_round_robin() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$queue/qu/t", 3).await;
    publish_numbered(&broker, "qu/t", 9).await;
    let got = collect(&mut group, 9).await;
    assert_eq!(payloads(&got), numbers(9));
    assert_eq!(counts(&got), vec![3, 3, 3]);
    assert!(got.iter().flatten().all(|p| p.topic == "qu/t"));
}

#[tokio::test]
async fn plain_subscriber_still_gets_every_message() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$share/g/mix/t", 2).await;
    let mut plain = broker
        .subscriber(&unique_id("plain"), "mix/t", QoS::AtLeastOnce)
        .await;
    publish_numbered(&broker, "mix/t", 6).await;
    let got = collect(&mut group, 6).await;
    assert_eq!(payloads(&got), numbers(6));
    assert_eq!(counts(&got), vec![3, 3]);
    let all = plain.recv_publishes(6, TIMEOUT).await;
    assert_eq!(payloads(&[all]), numbers(6));
    plain.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn each_group_gets_every_message_once() {
    let broker = Broker::start(&[]);
    let mut g1 = members(&broker, "$share/g1/grp/t", 2).await;
    let mut g2 = members(&broker, "$share/g2/grp/t", 1).await;
    publish_numbered(&broker, "grp/t", 4).await;
    let got1 = collect(&mut g1, 4).await;
    let got2 = collect(&mut g2, 4).await;
    assert_eq!(payloads(&got1), numbers(4));
    assert_eq!(counts(&got1), vec![2, 2]);
    assert_eq!(payloads(&got2), numbers(4));
}

#[tokio::test]
async fn member_that_disconnects_stops_receiving() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$share/g/off/t", 3).await;
    let leaving = group.pop().expect("three members");
    leaving.disconnect().await;
    broker.wait_connections(2).await;
    publish_numbered(&broker, "off/t", 6).await;
    let got = collect(&mut group, 6).await;
    assert_eq!(
        payloads(&got),
        numbers(6),
        "the remaining members get everything"
    );
    assert_eq!(counts(&got), vec![3, 3]);
}

#[tokio::test]
async fn persistent_member_that_goes_offline_stops_receiving() {
    let broker = Broker::start(&[]);
    let mut group = Vec::new();
    for _ in 0..3 {
        let mut member = broker.persistent_client(&unique_id("pmember")).await;
        member
            .subscribe_ok("$share/g/poff/t", QoS::AtLeastOnce)
            .await;
        group.push(member);
    }
    let offline = group.pop().expect("three members");
    offline.drop_connection().await;
    broker.wait_connections(2).await;
    publish_numbered(&broker, "poff/t", 6).await;
    let got = collect(&mut group, 6).await;
    assert_eq!(
        payloads(&got),
        numbers(6),
        "the online members get everything"
    );
}

#[tokio::test]
async fn member_that_unsubscribes_stops_receiving() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$share/g/uns/t", 2).await;
    group[1].unsubscribe("$share/g/uns/t").await;
    publish_numbered(&broker, "uns/t", 4).await;
    let got = collect(&mut group, 4).await;
    assert_eq!(counts(&got), vec![4, 0]);
}

#[tokio::test]
async fn shared_wildcard_filter() {
    let broker = Broker::start(&[]);
    let mut group = members(&broker, "$share/g/sw/+", 2).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    for topic in ["sw/a", "sw/b", "sw/c", "sw/d", "other/a"] {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, topic)
            .await;
    }
    let got = collect(&mut group, 4).await;
    let topics: BTreeSet<&str> = got.iter().flatten().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, BTreeSet::from(["sw/a", "sw/b", "sw/c", "sw/d"]));
    assert_eq!(counts(&got), vec![2, 2]);
}

#[tokio::test]
async fn invalid_shared_filters_get_0x80() {
    let broker = Broker::start(&[]);
    let mut client =
        coolpy7_tests::RawClient::connect_v311(broker.mqtt_addr(), &unique_id("bad")).await;
    let codes = client
        .subscribe(
            1,
            &[
                ("$share/g", 1),
                ("$share//t", 1),
                ("$share/g/", 1),
                ("$share/a+b/t", 1),
                ("$share/g#/t", 1),
                ("$share/g/a/#/b", 1),
                ("$share/ok/t", 1),
            ],
        )
        .await;
    assert_eq!(codes, vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 1]);
}

#[tokio::test]
async fn shared_subscriptions_get_no_retained_messages() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("shr/t", QoS::AtLeastOnce, true, "retained")
        .await;
    let mut member = broker
        .subscriber(&unique_id("member"), "$share/g/shr/t", QoS::AtLeastOnce)
        .await;
    member.expect_no_publish(QUIET).await;
    publisher
        .publish("shr/t", QoS::AtLeastOnce, false, "live")
        .await;
    let got = member.recv_publish(TIMEOUT).await;
    assert_eq!(&got.payload[..], b"live");
}

#[tokio::test]
async fn shared_delivery_qos_is_capped_by_the_member_subscription() {
    let broker = Broker::start(&[]);
    let mut group = vec![
        broker
            .subscriber(&unique_id("m0"), "$share/g/shq/t", QoS::AtMostOnce)
            .await,
        broker
            .subscriber(&unique_id("m2"), "$share/g/shq/t", QoS::ExactlyOnce)
            .await,
    ];
    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..4 {
        publisher
            .publish("shq/t", QoS::ExactlyOnce, false, format!("{i}"))
            .await;
    }
    let got = collect(&mut group, 4).await;
    assert_eq!(payloads(&got), numbers(4));
    assert!(got[0].iter().all(|p| p.qos == QoS::AtMostOnce), "{got:?}");
    assert!(got[1].iter().all(|p| p.qos == QoS::ExactlyOnce), "{got:?}");
}
