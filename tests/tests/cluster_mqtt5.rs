//! MQTT 5 across the cluster: sync version 2 carries a message's properties (Payload Format
//! Indicator, Content Type, Response Topic, Correlation Data, User Properties) and its Message
//! Expiry to the other nodes; each node writes a peer the newest sync version the peer
//! advertises, so a node of an earlier release (played by `-csv 1`) still gets every message,
//! without its properties.
//!
//! The tests with v3 clients, and the forged datagrams, check the sync port itself; those with
//! v5 clients need the broker's MQTT 5 support.

use std::time::Duration;

use bytes::Bytes;
use coolpy7_tests::cluster::{
    capture_sync_batch, expect_exactly_one, require_root, send_udp, signed_sync_datagram_version,
    start_cluster, unique_key, wait_full_membership, wait_until, Node, NodeConfig, Record,
    JOIN_TIMEOUT,
};
use coolpy7_tests::{unique_id, QoS, QUIET, TIMEOUT};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const DROPPED: &str = "coolpy7_cluster_dropped_total";

/// A 3-node cluster: `n1` plays an earlier release (`-csv 1`), `n2` and `n3` run the default.
async fn mixed_cluster() -> (Node, Node, Node) {
    let key = unique_key();
    let n1 = Node::start(NodeConfig::new("n1", &key).args(&["-csv", "1"]));
    let n2 = Node::start(NodeConfig::new("n2", &key).seed(n1.gossip));
    // n3 of the previous release: n2 writes it version 2 best-effort batches.
    let n3 = Node::start(
        NodeConfig::new("n3", &key)
            .seed(n1.gossip)
            .args(&["-csv", "2"]),
    );
    wait_full_membership(&[&n1, &n2, &n3], JOIN_TIMEOUT).await;
    (n1, n2, n3)
}

async fn malformed_drops(node: &Node) -> f64 {
    node.counter_sum(DROPPED, &[("port", "sync"), ("reason", "malformed")])
        .await
}

#[tokio::test]
async fn v3_messages_cross_between_version_1_and_version_2_nodes_both_ways() {
    require_root("capturing sync datagrams on lo");
    let (n1, n2, n3) = mixed_cluster().await;
    let nodes = [&n1, &n2, &n3];
    let topic = unique_id("mixed/t");
    let mut subscribers = Vec::new();
    for node in nodes {
        subscribers.push(
            node.subscriber(&unique_id("sub"), &topic, QoS::AtLeastOnce)
                .await,
        );
    }
    for node in nodes {
        let mut publisher = node.client(&unique_id("pub")).await;
        let payload = format!("from {}", node.name()).into_bytes();
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await;
        // Local delivery included: exactly once everywhere.
        for subscriber in &mut subscribers {
            expect_exactly_one(subscriber, &topic, &payload, QoS::AtLeastOnce).await;
        }
        publisher.disconnect().await;
    }
    // The version each sender chose: n1 writes only version 1; n2 writes version 1 to n1 (which
    // advertises no other) and version 2 to n3.
    for (from, to, want) in [(&n1, &n2, 1), (&n2, &n1, 1), (&n2, &n3, 2), (&n3, &n2, 2)] {
        let batch = capture_sync_batch(from, to).await;
        assert_eq!(
            batch.version,
            want,
            "sync version {} -> {}",
            from.name(),
            to.name()
        );
    }
    // The node pinned to version 1 refuses version 2, so nothing it was sent was lost that way.
    assert_eq!(malformed_drops(&n1).await, 0.0, "{}", n1.drops().await);
}

#[tokio::test]
async fn forged_version_2_records_are_checked_like_a_publish() {
    require_root("capturing sync datagrams on lo");
    let key = unique_key();
    // Version 2: best-effort batches, whose checks are under test (a node of this release
    // sends links).
    let n1 = Node::start(NodeConfig::new("n1", &key).args(&["-csv", "2"]));
    let n2 = Node::start(NodeConfig::new("n2", &key).seed(n1.gossip));
    let old = Node::start(
        NodeConfig::new("old", &key)
            .seed(n1.gossip)
            .args(&["-csv", "1"]),
    );
    wait_full_membership(&[&n1, &n2, &old], JOIN_TIMEOUT).await;
    let to_n2 = capture_sync_batch(&n1, &n2).await;
    let to_old = capture_sync_batch(&n1, &old).await;
    let topic = unique_id("forged5/t");
    let mut on_n2 = n2
        .subscriber(&unique_id("on-n2"), &topic, QoS::AtLeastOnce)
        .await;
    let mut on_old = old
        .subscriber(&unique_id("on-old"), &topic, QoS::AtLeastOnce)
        .await;
    let record = |payload: &[u8], properties: &[u8]| Record {
        qos: 1,
        topic: topic.clone(),
        payload: payload.to_vec(),
        expiry: Some(60),
        properties: properties.to_vec(),
        ..Default::default()
    };
    let mut seq = to_n2.sequence.max(to_old.sequence) + 100;
    let mut forge = |batch: &coolpy7_tests::cluster::SyncBatch, records: &[Record]| {
        seq += 1;
        signed_sync_datagram_version(
            2,
            &key,
            (&batch.origin, batch.epoch),
            (&batch.destination, batch.destination_epoch),
            seq,
            records,
        )
    };
    // Content Type "t" and a user property: a v3 subscriber gets the message without them.
    let good: &[u8] = b"\x03\x00\x01t\x26\x00\x01k\x00\x01v";
    send_udp(n2.sync, &forge(&to_n2, &[record(b"good", good)]));
    expect_exactly_one(&mut on_n2, &topic, b"good", QoS::AtLeastOnce).await;

    for (what, properties) in [
        ("topic alias inside the properties", &b"\x23\x00\x01"[..]),
        (
            "message expiry inside the properties",
            b"\x02\x00\x00\x00\x05",
        ),
        ("payload format indicator 7", b"\x01\x07"),
        ("a string running past the list", b"\x03\x00\x09t"),
    ] {
        let before = malformed_drops(&n2).await;
        send_udp(n2.sync, &forge(&to_n2, &[record(b"bad", properties)]));
        wait_until(
            &format!("n2's dropped{{reason=malformed}} to rise for {what}"),
            TIMEOUT,
            || async { malformed_drops(&n2).await > before },
        )
        .await;
    }
    on_n2.expect_no_publish(QUIET).await;

    // A node that reads only version 1 refuses version 2, however good.
    let before = malformed_drops(&old).await;
    send_udp(old.sync, &forge(&to_old, &[record(b"good", good)]));
    wait_until(
        "old's dropped{reason=malformed} to rise",
        TIMEOUT,
        || async { malformed_drops(&old).await > before },
    )
    .await;
    on_old.expect_no_publish(QUIET).await;
    assert!(n2.counter("coolpy7_cluster_records_received_total").await >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 clients.

/// An MQTT 5 client (rumqttc's v5 event loop in a task) that hands over what it receives.
struct Client5 {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    task: JoinHandle<()>,
}

impl Client5 {
    /// Connects to `node` and waits for the CONNACK; `session_expiry` > 0 keeps the session
    /// after a disconnect.
    async fn connect(node: &Node, id: &str, clean_start: bool, session_expiry: u32) -> Client5 {
        let addr = node.mqtt_addr();
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_start(clean_start);
        if session_expiry > 0 {
            options.set_session_expiry_interval(Some(session_expiry));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Ends when the connection fails or the test drops the receiver.
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
            }
        });
        let mut client = Client5 {
            client,
            incoming,
            task,
        };
        match client
            .expect(|p| matches!(p, Packet::ConnAck(_)), "CONNACK")
            .await
        {
            Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}"),
            _ => unreachable!("matched a CONNACK"),
        }
        client
    }

    /// The next packet for which `want` holds, skipping others, within [`TIMEOUT`].
    async fn expect(&mut self, want: impl Fn(&Packet) -> bool, what: &str) -> Packet {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(packet)) if want(&packet) => return packet,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("connection closed while waiting for {what}"),
                Err(_) => panic!("no {what} within {TIMEOUT:?}"),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS5::AtLeastOnce)
            .await
            .expect("SUBSCRIBE queued");
        self.expect(|p| matches!(p, Packet::SubAck(_)), "SUBACK")
            .await;
    }

    async fn publish(&self, topic: &str, payload: &[u8], properties: PublishProperties) {
        self.client
            .publish_with_properties(
                topic,
                QoS5::AtLeastOnce,
                false,
                payload.to_vec(),
                properties,
            )
            .await
            .expect("PUBLISH queued");
    }

    async fn recv_publish(&mut self) -> Publish {
        match self
            .expect(|p| matches!(p, Packet::Publish(_)), "PUBLISH")
            .await
        {
            Packet::Publish(publish) => publish,
            _ => unreachable!("matched a PUBLISH"),
        }
    }

    async fn expect_no_publish(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(packet)) = tokio::time::timeout_at(deadline, self.incoming.recv()).await {
            assert!(
                !matches!(packet, Packet::Publish(_)),
                "unexpected PUBLISH: {packet:?}"
            );
        }
    }

    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        // Bounded: the event loop ends once the DISCONNECT is out.
        let _ = tokio::time::timeout(TIMEOUT, self.task).await;
    }
}

/// Every property that travels with a message, and a Message Expiry of `expiry` seconds.
fn travelling_properties(expiry: u32) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(expiry),
        content_type: Some("application/json".into()),
        response_topic: Some(unique_id("reply/to")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    }
}

/// Asserts `got` carries `sent`'s properties (order of user properties kept), with a Message
/// Expiry at most `sent`'s and no more than 5 seconds below it (transit, rounding, and the
/// waits of the tests).
fn assert_properties_arrived(got: &Publish, sent: &PublishProperties) {
    let props = got
        .properties
        .as_ref()
        .unwrap_or_else(|| panic!("no properties on {got:?}"));
    assert_eq!(
        (
            props.payload_format_indicator,
            &props.content_type,
            &props.response_topic,
            &props.correlation_data,
            &props.user_properties,
        ),
        (
            sent.payload_format_indicator,
            &sent.content_type,
            &sent.response_topic,
            &sent.correlation_data,
            &sent.user_properties,
        ),
        "properties of the delivery"
    );
    assert_eq!(props.topic_alias, None);
    let sent_expiry = sent.message_expiry_interval.expect("sent with an expiry");
    let expiry = props
        .message_expiry_interval
        .expect("the delivery says how long it has left");
    assert!(
        expiry <= sent_expiry && expiry + 5 >= sent_expiry,
        "expiry {expiry} s left of {sent_expiry} s"
    );
}

/// Asserts `got` carries none of the properties that travel with a message.
fn assert_no_properties(got: &Publish) {
    if let Some(props) = &got.properties {
        assert_eq!(
            (
                props.payload_format_indicator,
                props.message_expiry_interval,
                &props.content_type,
                &props.response_topic,
                &props.correlation_data,
                props.user_properties.len(),
            ),
            (None, None, &None, &None, &None, 0),
            "a message from or to a version 1 node arrives without its properties"
        );
    }
}

#[tokio::test]
async fn mqtt5_properties_and_expiry_cross_version_2_nodes() {
    let nodes = start_cluster(2, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let topic = unique_id("v5/cross");
    let mut remote = Client5::connect(n2, &unique_id("sub5"), true, 0).await;
    remote.subscribe(&topic).await;
    let publisher = Client5::connect(n1, &unique_id("pub5"), true, 0).await;
    let sent = travelling_properties(60);
    publisher.publish(&topic, b"{\"v\":5}", sent.clone()).await;
    let got = remote.recv_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (topic.as_bytes(), &b"{\"v\":5}"[..])
    );
    assert_properties_arrived(&got, &sent);
    remote.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    remote.disconnect().await;
}

#[tokio::test]
async fn mqtt5_properties_are_dropped_to_and_from_a_version_1_node_but_messages_are_not() {
    let (n1, n2, n3) = mixed_cluster().await;
    let topic = unique_id("v5/mixed");
    let mut subscribers = Vec::new();
    for node in [&n1, &n2, &n3] {
        let mut subscriber = Client5::connect(node, &unique_id("sub5"), true, 0).await;
        subscriber.subscribe(&topic).await;
        subscribers.push(subscriber);
    }
    let sent = travelling_properties(60);

    // From a version 2 node: the other version 2 node gets the properties, n1 the message.
    let on_n2 = Client5::connect(&n2, &unique_id("pub5"), true, 0).await;
    on_n2.publish(&topic, b"from n2", sent.clone()).await;
    let [to_n1, local, to_n3] = &mut subscribers[..] else {
        unreachable!("three subscribers")
    };
    assert_properties_arrived(&local.recv_publish().await, &sent);
    assert_properties_arrived(&to_n3.recv_publish().await, &sent);
    let got = to_n1.recv_publish().await;
    assert_eq!(&got.payload[..], b"from n2");
    assert_no_properties(&got);

    // From the version 1 node: everyone gets the message, only its own subscriber the
    // properties.
    let on_n1 = Client5::connect(&n1, &unique_id("pub5"), true, 0).await;
    on_n1.publish(&topic, b"from n1", sent.clone()).await;
    assert_properties_arrived(&to_n1.recv_publish().await, &sent);
    for remote in [local, to_n3] {
        let got = remote.recv_publish().await;
        assert_eq!(&got.payload[..], b"from n1");
        assert_no_properties(&got);
    }
    for subscriber in &mut subscribers {
        subscriber.expect_no_publish(QUIET).await;
    }
    on_n1.disconnect().await;
    on_n2.disconnect().await;
    for subscriber in subscribers {
        subscriber.disconnect().await;
    }
}

#[tokio::test]
async fn forwarded_message_expiry_counts_down_on_the_receiving_node() {
    let nodes = start_cluster(2, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let topic = unique_id("v5/expiry");
    let id = unique_id("offline5");
    let mut subscriber = Client5::connect(n2, &id, true, 300).await;
    subscriber.subscribe(&topic).await;
    subscriber.disconnect().await;

    let publisher = Client5::connect(n1, &unique_id("pub5"), true, 0).await;
    let short = travelling_properties(1);
    let long = travelling_properties(60);
    publisher.publish(&topic, b"short", short).await;
    publisher.publish(&topic, b"long", long.clone()).await;
    // Both are queued on n2 for the offline session; the short one expires there.
    wait_until("both records received by n2", TIMEOUT, || async {
        n2.counter("coolpy7_cluster_records_received_total").await >= 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    let mut back = Client5::connect(n2, &id, false, 300).await;
    let got = back.recv_publish().await;
    assert_eq!(
        &got.payload[..],
        b"long",
        "the expired message is not delivered"
    );
    assert_properties_arrived(&got, &long);
    back.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    back.disconnect().await;
}
