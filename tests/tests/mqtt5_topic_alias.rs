//! MQTT 5 Topic Alias (OASIS MQTT 5.0 §3.3.2.3.4) both ways. Inbound: alias + topic learns,
//! alias + empty topic uses, an alias may be remapped, 0 or above `-mta` is DISCONNECT 0x94, an
//! unknown alias with an empty topic is DISCONNECT 0x82, and nothing carries over to the next
//! connection. Outbound: at most min(client's Topic Alias Maximum, `-mta`) aliases, topic + alias
//! first and an empty topic + alias after, never an alias to a client that allowed none.

use std::collections::HashMap;

use coolpy7_tests::packets5::{reason, Connect, Property as P, Publish, PublishPacket};
use coolpy7_tests::{unique_id, Broker, QoS, RawClient5, QUIET, TIMEOUT};

fn aliased(topic: &str, alias: u16, qos: u8, pkid: u16, payload: &[u8]) -> PublishPacket {
    PublishPacket::new(topic, qos, pkid, payload).prop(P::TopicAlias(alias))
}

#[tokio::test]
async fn inbound_alias_is_learned_then_used_with_an_empty_topic() {
    let broker = Broker::start(&[]);
    // A 3.1.1 subscriber: whatever the publisher's aliases, it sees full topic names.
    let mut sub = broker
        .subscriber(&unique_id("sub"), "alias/#", QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let ack = publisher
        .publish(&aliased("alias/long/topic/name", 1, 1, 1, b"first"))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, 0, "{ack:?}");
    let ack = publisher
        .publish(&aliased("", 1, 1, 2, b"second"))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, 0, "{ack:?}");
    publisher.publish(&aliased("", 1, 0, 0, b"third")).await;
    for payload in ["first", "second", "third"] {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            ("alias/long/topic/name", payload.as_bytes())
        );
    }
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn inbound_alias_can_be_remapped() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "remap/#", QoS::AtLeastOnce)
        .await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish(&aliased("remap/a", 2, 1, 1, b"1")).await;
    publisher.publish(&aliased("remap/b", 2, 1, 2, b"2")).await;
    publisher.publish(&aliased("", 2, 1, 3, b"3")).await;
    let topics: Vec<String> = sub
        .recv_publishes(3, TIMEOUT)
        .await
        .iter()
        .map(|p| p.topic.clone())
        .collect();
    assert_eq!(topics, ["remap/a", "remap/b", "remap/b"]);
}

#[tokio::test]
async fn topic_alias_0_is_disconnect_0x94() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .send(&aliased("a/t", 0, 0, 0, b"x").encode())
        .await;
    publisher
        .expect_disconnect(reason::TOPIC_ALIAS_INVALID)
        .await;
}

#[tokio::test]
async fn topic_alias_above_the_maximum_is_disconnect_0x94() {
    let broker = Broker::start(&["-mta", "3"]);
    let (mut publisher, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("pub"))).await;
    assert_eq!(connack.props.topic_alias_maximum(), Some(3));
    // 3 is the highest allowed.
    publisher.publish(&aliased("a/t", 3, 1, 1, b"x")).await;
    publisher
        .send(&aliased("a/t", 4, 1, 2, b"x").encode())
        .await;
    publisher
        .expect_disconnect(reason::TOPIC_ALIAS_INVALID)
        .await;
}

#[tokio::test]
async fn any_topic_alias_with_mta_0_is_disconnect_0x94() {
    let broker = Broker::start(&["-mta", "0"]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .send(&aliased("a/t", 1, 0, 0, b"x").encode())
        .await;
    publisher
        .expect_disconnect(reason::TOPIC_ALIAS_INVALID)
        .await;
}

#[tokio::test]
async fn unknown_alias_with_an_empty_topic_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.send(&aliased("", 5, 1, 1, b"x").encode()).await;
    publisher.expect_disconnect(reason::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn empty_topic_without_an_alias_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .send(&PublishPacket::new("", 1, 1, b"x").encode())
        .await;
    publisher.expect_disconnect(reason::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn an_alias_learned_on_one_connection_is_forgotten_on_the_next() {
    let broker = Broker::start(&[]);
    let id = unique_id("pub");
    let persistent = Connect::new(&id).clean_start(false).session_expiry(60);
    let (mut publisher, _) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent).await;
    publisher.publish(&aliased("forget/t", 1, 1, 1, b"x")).await;
    publisher.disconnect().await;
    broker.wait_connections(0).await;
    let (mut publisher, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent).await;
    assert!(connack.session_present, "the session itself is kept");
    publisher.send(&aliased("", 1, 1, 2, b"x").encode()).await;
    publisher.expect_disconnect(reason::PROTOCOL_ERROR).await;
}

/// Resolves outbound aliases the way a client must (§3.3.2.3.4) and checks each step.
struct AliasMap {
    max: u16,
    map: HashMap<u16, String>,
}

impl AliasMap {
    fn resolve(&mut self, got: &Publish) -> String {
        match got.props.topic_alias() {
            None => {
                assert!(!got.topic.is_empty(), "{got:?}");
                got.topic.clone()
            }
            Some(alias) => {
                assert!(
                    (1..=self.max).contains(&alias),
                    "alias {alias} outside 1..={}: {got:?}",
                    self.max
                );
                if got.topic.is_empty() {
                    self.map
                        .get(&alias)
                        .unwrap_or_else(|| panic!("alias {alias} used before it was set: {got:?}"))
                        .clone()
                } else {
                    self.map.insert(alias, got.topic.clone());
                    got.topic.clone()
                }
            }
        }
    }
}

#[tokio::test]
async fn outbound_aliases_send_the_topic_once_then_an_empty_topic() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("sub")).prop(P::TopicAliasMaximum(2));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "out/#", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let topic = "out/a/rather/long/topic/name/that/is/worth/aliasing";
    for i in 0..3u16 {
        publisher.publish_qos1(topic, i + 1, b"x").await;
    }
    let first = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(first.topic, topic, "the first delivery carries the topic");
    let alias = first
        .props
        .topic_alias()
        .unwrap_or_else(|| panic!("the broker assigns an alias when allowed: {first:?}"));
    for _ in 0..2 {
        let later = sub.recv_publish_acked(TIMEOUT).await;
        assert_eq!(
            (later.topic.as_str(), later.props.topic_alias()),
            ("", Some(alias)),
            "later deliveries use the alias alone: {later:?}"
        );
    }
}

#[tokio::test]
async fn outbound_aliases_stay_within_the_clients_maximum_and_resolve_correctly() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("sub")).prop(P::TopicAliasMaximum(2));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "lru/#", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    // Five topics over two aliases: aliases must be replaced, and every delivery must still
    // resolve to the topic it was published to.
    let topics = [
        "lru/a", "lru/b", "lru/c", "lru/a", "lru/d", "lru/b", "lru/b", "lru/e", "lru/a",
    ];
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .publish_qos1(topic, i as u16 + 1, topic.as_bytes())
            .await;
    }
    let mut map = AliasMap {
        max: 2,
        map: HashMap::new(),
    };
    for topic in topics {
        let got = sub.recv_publish_acked(TIMEOUT).await;
        assert_eq!(got.payload, topic.as_bytes(), "in order");
        assert_eq!(map.resolve(&got), topic, "{got:?}");
    }
}

#[tokio::test]
async fn outbound_aliases_are_capped_by_mta() {
    let broker = Broker::start(&["-mta", "1"]);
    let connect = Connect::new(&unique_id("sub")).prop(P::TopicAliasMaximum(10));
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    sub.subscribe_ok(1, "cap/#", 1).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let topics = ["cap/a", "cap/b", "cap/c", "cap/a", "cap/b"];
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .publish_qos1(topic, i as u16 + 1, topic.as_bytes())
            .await;
    }
    let mut map = AliasMap {
        max: 1,
        map: HashMap::new(),
    };
    for topic in topics {
        let got = sub.recv_publish_acked(TIMEOUT).await;
        assert_eq!(map.resolve(&got), topic, "{got:?}");
    }
}

#[tokio::test]
async fn no_outbound_alias_to_a_client_that_allowed_none() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("sub")).await;
    sub.subscribe_ok(1, "noalias/#", 0).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for i in 0..4u16 {
        publisher.publish_qos1("noalias/t", i + 1, b"x").await;
    }
    for _ in 0..4 {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(got.topic, "noalias/t");
        assert_eq!(got.props.topic_alias(), None, "{got:?}");
    }
}

#[tokio::test]
async fn outbound_aliases_start_afresh_on_a_new_connection() {
    let broker = Broker::start(&[]);
    let id = unique_id("sub");
    let connect = Connect::new(&id)
        .clean_start(false)
        .session_expiry(60)
        .prop(P::TopicAliasMaximum(4));
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    for round in 0..2u16 {
        let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
        sub.subscribe_ok(1, "afresh/t", 1).await;
        publisher.publish_qos1("afresh/t", round + 1, b"x").await;
        let got = sub.recv_publish_acked(TIMEOUT).await;
        assert_eq!(
            got.topic, "afresh/t",
            "round {round}: the first delivery on a connection must carry the topic: {got:?}"
        );
        sub.disconnect().await;
        broker.wait_connections(1).await;
    }
}

#[tokio::test]
async fn inbound_aliases_cannot_make_the_broker_hold_more_than_a_packet_s_worth() {
    // With -mta 65535 a client could otherwise park 65535 topics of 64 KiB each (4 GiB) in
    // one connection's alias table. The table is held to -mpl bytes (here 1 MiB); beyond it
    // the client is told 0x97 (quota exceeded) and disconnected.
    let broker = Broker::start(&["-mta", "65535", "-mpl", "1048576"]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    let long = format!("big/{}", "x".repeat(60_000));
    for alias in 1..=40u16 {
        let topic = format!("{long}/{alias}");
        let _ = publisher
            .try_send(&aliased(&topic, alias, 0, 0, b"x").encode())
            .await;
    }
    let _ = publisher
        .try_send(&PublishPacket::new("big/end", 1, 1, b"end").encode())
        .await;
    publisher.expect_disconnect(reason::QUOTA_EXCEEDED).await;
}
