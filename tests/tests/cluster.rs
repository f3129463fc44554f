//! Cluster mode end to end: membership as `/brokers`, `/readyz` and the metrics report it;
//! forwarding of PUBLISHes to every other node (one hop, each subscriber's granted QoS, exactly
//! once), `$` topics kept local, the record size limit (`-csl`, inclusive), retained messages
//! stored on every node; and the cluster flags.

use coolpy7_tests::cluster::{
    expect_exactly_one, free_udp_port, record_size, run_to_exit, start_cluster, unique_key,
    wait_for, wait_full_membership, wait_until, BrokersView, Node, NodeConfig, JOIN_TIMEOUT,
};
use coolpy7_tests::{unique_id, Broker, QoS, QUIET, TIMEOUT};

const DROPPED: &str = "coolpy7_cluster_dropped_total";

#[tokio::test]
async fn three_nodes_list_each_other_and_are_ready() {
    let nodes = start_cluster(3, &[]).await;
    for node in &nodes {
        let view = node.expect_brokers().await;
        let summary = view.summary();
        assert!(view.cluster, "{}: cluster is true", node.name());
        assert_eq!(view.node_id.as_deref(), Some(node.name()), "node_id");
        assert!(
            !view.duplicate_node_id,
            "{}: no duplicate node id",
            node.name()
        );
        assert_eq!(
            view.members.len(),
            3,
            "{} lists all three nodes, itself included: {summary}",
            node.name()
        );
        assert_eq!(
            view.members.iter().filter(|m| m.local).count(),
            1,
            "{}: exactly one local entry: {summary}",
            node.name()
        );
        for other in &nodes {
            let member = view
                .members
                .iter()
                .find(|m| m.node_id == other.name())
                .unwrap_or_else(|| panic!("{} lists {}: {summary}", node.name(), other.name()));
            let what = format!("{}'s entry for {}", node.name(), other.name());
            assert_eq!(member.local, other.name() == node.name(), "{what}: local");
            assert_eq!(member.state, "up", "{what}: state");
            assert_eq!(
                member.gossip_addr,
                other.gossip.to_string(),
                "{what}: gossip_addr"
            );
            assert_eq!(
                member.sync_addr,
                other.sync.to_string(),
                "{what}: sync_addr"
            );
            assert_eq!(
                member.mqtt_port,
                u64::from(other.mqtt_addr().port()),
                "{what}: mqtt_port"
            );
            assert_eq!(member.version, env!("CARGO_PKG_VERSION"), "{what}: version");
            assert!(
                member.uptime_secs < 600,
                "{what}: uptime_secs {} of a node started just now",
                member.uptime_secs
            );
        }
        assert_eq!(node.readyz().await, 200, "{}: /readyz", node.name());
        assert_eq!(
            node.counter("coolpy7_cluster_members{state=\"up\"}").await,
            2.0,
            "{}: members up (the local node not counted)",
            node.name()
        );
        for state in ["suspect", "down"] {
            assert_eq!(
                node.counter(&format!("coolpy7_cluster_members{{state=\"{state}\"}}"))
                    .await,
                0.0,
                "{}: members {state}",
                node.name()
            );
        }
        assert!(
            node.counter("coolpy7_cluster_datagrams_total{port=\"gossip\",direction=\"in\"}")
                .await
                > 0.0,
            "{}: gossip datagrams in",
            node.name()
        );
        assert!(
            node.counter("coolpy7_cluster_datagrams_total{port=\"gossip\",direction=\"out\"}")
                .await
                > 0.0,
            "{}: gossip datagrams out",
            node.name()
        );
    }
}

/// Counters of forwarding, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Flow {
    forwarded: f64,
    received: f64,
    delivered: f64,
    sync_in: f64,
    sync_out: f64,
}

async fn flow(node: &Node) -> Flow {
    Flow {
        forwarded: node
            .counter("coolpy7_cluster_records_forwarded_total")
            .await,
        received: node.counter("coolpy7_cluster_records_received_total").await,
        delivered: node
            .counter("coolpy7_cluster_records_delivered_total")
            .await,
        sync_in: node
            .counter("coolpy7_cluster_datagrams_total{port=\"sync\",direction=\"in\"}")
            .await,
        sync_out: node
            .counter("coolpy7_cluster_datagrams_total{port=\"sync\",direction=\"out\"}")
            .await,
    }
}

async fn flows(nodes: &[&Node]) -> Vec<Flow> {
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        out.push(flow(node).await);
    }
    out
}

#[tokio::test]
async fn publish_on_one_node_reaches_every_node_exactly_once() {
    let nodes = start_cluster(3, &[]).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = unique_id("fwd/t");

    let mut own = n1
        .subscriber(&unique_id("n1-q1"), &topic, QoS::AtLeastOnce)
        .await;
    let mut remote = Vec::new();
    for node in [n2, n3] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let id = unique_id(&format!("{}-q{}", node.name(), qos as u8));
            remote.push((qos, node.subscriber(&id, &topic, qos).await));
        }
    }
    let before = flows(&[n1, n2, n3]).await;

    let mut publisher = n1.client(&unique_id("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"at-qos-1".to_vec())
        .await;
    publisher
        .publish(&topic, QoS::AtMostOnce, false, b"at-qos-0".to_vec())
        .await;

    // The local subscriber: both, once each.
    let mut got: Vec<(Vec<u8>, QoS)> = own
        .recv_publishes(2, TIMEOUT)
        .await
        .into_iter()
        .map(|p| (p.payload.to_vec(), p.qos))
        .collect();
    got.sort_by_key(|g| g.0.clone());
    assert_eq!(
        got,
        vec![
            (b"at-qos-0".to_vec(), QoS::AtMostOnce),
            (b"at-qos-1".to_vec(), QoS::AtLeastOnce)
        ],
        "n1's own subscriber"
    );
    own.expect_no_publish(QUIET).await;

    // Every remote subscriber: both, once each, at min(published, granted) QoS, retain 0.
    for (granted, client) in &mut remote {
        let mut got: Vec<(Vec<u8>, QoS, bool, String)> = client
            .recv_publishes(2, TIMEOUT)
            .await
            .into_iter()
            .map(|p| (p.payload.to_vec(), p.qos, p.retain, p.topic))
            .collect();
        got.sort_by_key(|g| g.0.clone());
        let want_q1 = if *granted == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        assert_eq!(
            got,
            vec![
                (b"at-qos-0".to_vec(), QoS::AtMostOnce, false, topic.clone()),
                (b"at-qos-1".to_vec(), want_q1, false, topic.clone())
            ],
            "subscriber {:?} granted {granted:?}",
            client.id()
        );
    }
    for (_, client) in &mut remote {
        client.expect_no_publish(QUIET).await;
    }

    // The counters moved accordingly.
    let (after, took) = wait_for("forwarding counters to rise", TIMEOUT, || {
        let before = before.clone();
        async move {
            let now = flows(&[n1, n2, n3]).await;
            let ok = now[0].forwarded >= before[0].forwarded + 2.0
                && now[0].sync_out > before[0].sync_out
                && (1..3).all(|i| {
                    now[i].received >= before[i].received + 2.0
                        && now[i].delivered >= before[i].delivered + 2.0
                        && now[i].sync_in > before[i].sync_in
                });
            if ok {
                Ok(now)
            } else {
                Err(format!("before {before:?}, now {now:?}"))
            }
        }
    })
    .await;
    println!("forwarding counters after {took:?}: before {before:?}, after {after:?}");
    assert_eq!(
        after[0].received, before[0].received,
        "n1 received no records (nothing was published elsewhere)"
    );
    publisher.disconnect().await;
}

#[tokio::test]
async fn dollar_topics_are_not_forwarded() {
    let nodes = start_cluster(3, &[]).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = format!("$custom/{}", unique_id("t"));
    let control = unique_id("ctl/t");

    let mut own = n1
        .subscriber(&unique_id("own"), &topic, QoS::AtLeastOnce)
        .await;
    let mut remote = Vec::new();
    for node in [n2, n3] {
        let mut client = node
            .subscriber(&unique_id(node.name()), &topic, QoS::AtLeastOnce)
            .await;
        client.subscribe_ok(&control, QoS::AtLeastOnce).await;
        remote.push(client);
    }
    let dollar_before = n1.counter_sum(DROPPED, &[("reason", "dollar_topic")]).await;
    let received_before = [
        n2.counter("coolpy7_cluster_records_received_total").await,
        n3.counter("coolpy7_cluster_records_received_total").await,
    ];

    let mut publisher = n1.client(&unique_id("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"local only".to_vec())
        .await;
    expect_exactly_one(&mut own, &topic, b"local only", QoS::AtLeastOnce).await;
    for client in &mut remote {
        client.expect_no_publish(QUIET).await;
    }
    wait_until(
        "n1's dropped{reason=dollar_topic} to rise",
        TIMEOUT,
        || async { n1.counter_sum(DROPPED, &[("reason", "dollar_topic")]).await > dollar_before },
    )
    .await;
    for (node, before) in [n2, n3].iter().zip(received_before) {
        assert_eq!(
            node.counter("coolpy7_cluster_records_received_total").await,
            before,
            "{} received no record for a $ topic",
            node.name()
        );
    }

    // Not vacuous: an ordinary topic does cross to the same subscribers.
    publisher
        .publish(&control, QoS::AtLeastOnce, false, b"crosses".to_vec())
        .await;
    for client in &mut remote {
        expect_exactly_one(client, &control, b"crosses", QoS::AtLeastOnce).await;
    }
    publisher.disconnect().await;
}

#[tokio::test]
async fn record_limit_is_inclusive() {
    let nodes = start_cluster(2, &["-csl", "512"]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let topic = unique_id("lim/t");
    let fits = 512 - record_size(&topic, 0);
    assert_eq!(record_size(&topic, fits), 512);

    let mut own = n1
        .subscriber(&unique_id("own"), &topic, QoS::AtLeastOnce)
        .await;
    let mut remote = n2
        .subscriber(&unique_id("remote"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;

    let exact: Vec<u8> = (0..fits).map(|i| b'a' + (i % 26) as u8).collect();
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, exact.clone())
        .await;
    expect_exactly_one(&mut own, &topic, &exact, QoS::AtLeastOnce).await;
    expect_exactly_one(&mut remote, &topic, &exact, QoS::AtLeastOnce).await;

    let too_big_before = n1.counter_sum(DROPPED, &[("reason", "too_big")]).await;
    let over: Vec<u8> = (0..=fits).map(|i| b'A' + (i % 26) as u8).collect();
    assert_eq!(record_size(&topic, over.len()), 513);
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, over.clone())
        .await;
    // Still delivered locally.
    expect_exactly_one(&mut own, &topic, &over, QoS::AtLeastOnce).await;
    remote.expect_no_publish(QUIET).await;
    wait_until("n1's dropped{reason=too_big} to rise", TIMEOUT, || async {
        n1.counter_sum(DROPPED, &[("reason", "too_big")]).await > too_big_before
    })
    .await;
    println!("{}", n1.drops().await);

    // Forwarding goes on after a record that was too big.
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"small".to_vec())
        .await;
    expect_exactly_one(&mut remote, &topic, b"small", QoS::AtLeastOnce).await;
    publisher.disconnect().await;
}

#[tokio::test]
async fn retained_messages_are_stored_on_every_node() {
    let nodes = start_cluster(3, &[]).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = unique_id("ret/t");
    let mut live = n2
        .subscriber(&unique_id("live"), &topic, QoS::AtLeastOnce)
        .await;

    let mut publisher = n1.client(&unique_id("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"kept".to_vec())
        .await;
    expect_exactly_one(&mut live, &topic, b"kept", QoS::AtLeastOnce).await;
    for node in [n1, n2, n3] {
        node.wait_metric(
            "coolpy7_retained_messages",
            &format!("1 retained message on {}", node.name()),
            TIMEOUT,
            |v| v == 1.0,
        )
        .await;
    }

    let mut late = n3
        .subscriber(&unique_id("late"), &topic, QoS::AtLeastOnce)
        .await;
    let got = late.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.qos, got.retain),
        (topic.as_str(), &b"kept"[..], QoS::AtLeastOnce, true),
        "the retained message on n3, sent on subscribe with retain 1"
    );
    late.expect_no_publish(QUIET).await;

    // An empty retained payload deletes it everywhere.
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, Vec::new())
        .await;
    for node in [n1, n2, n3] {
        node.wait_metric(
            "coolpy7_retained_messages",
            &format!("no retained message on {}", node.name()),
            TIMEOUT,
            |v| v == 0.0,
        )
        .await;
    }
    let mut later = n3
        .subscriber(&unique_id("later"), &topic, QoS::AtLeastOnce)
        .await;
    later.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
}

#[test]
fn seeds_without_a_node_id_exit_with_code_2() {
    let (code, output) =
        run_to_exit(&["-mbs", "127.0.0.1:7946", "-l", "127.0.0.1:0", "-hl", "nil"]);
    assert_eq!(code, Some(2), "-mbs without -nid: output {output}");
    assert!(
        output.contains("nid") && output.contains("mbs"),
        "the error names -mbs and -nid: {output}"
    );
}

#[test]
fn node_id_without_a_cluster_key_exits_with_code_2() {
    let (code, output) = run_to_exit(&[
        "-nid",
        "n1",
        "-crp",
        "0",
        "-csp",
        "0",
        "-l",
        "127.0.0.1:0",
        "-hl",
        "nil",
    ]);
    assert_eq!(code, Some(2), "-nid without -csk: output {output}");
    assert!(output.contains("csk"), "the error names -csk: {output}");
}

#[tokio::test]
async fn brokers_requires_the_token() {
    let node = Node::start(NodeConfig::new("solo", &unique_key()));
    for path in [
        "/brokers",
        "/brokers?token=",
        "/brokers?token=wrong",
        "/brokers?token=coolpy",
    ] {
        let (status, body) = node.http_get(path).await;
        assert_eq!(status, 401, "GET {path}: {body}");
    }
    let view = node.expect_brokers().await;
    assert!(view.cluster);
    assert_eq!(view.node_id.as_deref(), Some("solo"));

    let custom = Node::start(NodeConfig::new("solo2", &unique_key()).token("s3cret"));
    let (status, body) = custom.http_get("/brokers?token=coolpy7").await;
    assert_eq!(
        status, 401,
        "the default token is refused with -syst: {body}"
    );
    let view = custom.expect_brokers().await;
    assert_eq!(view.node_id.as_deref(), Some("solo2"));
}

#[tokio::test]
async fn without_a_node_id_the_broker_is_not_clustered() {
    let broker = Broker::start(&[]);
    let (status, body) = broker.http_get("/brokers?token=coolpy7").await;
    assert_eq!(status, 200, "/brokers: {body}");
    let view = BrokersView::parse(&body).unwrap_or_else(|e| panic!("/brokers {e}: {body}"));
    assert_eq!(
        view,
        BrokersView {
            cluster: false,
            node_id: None,
            duplicate_node_id: false,
            members: Vec::new(),
        }
    );
    let (status, body) = broker.http_get("/brokers").await;
    assert_eq!(status, 401, "/brokers without the token: {body}");
    let (status, body) = broker.http_get("/readyz").await;
    assert_eq!(status, 200, "/readyz of a single broker: {body}");
    let text = broker.metrics_text().await;
    let up = coolpy7_tests::http::find_metric(&text, "coolpy7_cluster_members{state=\"up\"}")
        .unwrap_or_else(|e| panic!("bad /metrics ({e}): {text}"));
    assert!(
        matches!(up, None | Some(0.0)),
        "no cluster members without cluster mode: {up:?}"
    );
}

#[tokio::test]
async fn a_node_seeded_only_with_itself_is_ready() {
    let port = free_udp_port();
    let node = Node::start(
        NodeConfig::new("self", &unique_key())
            .gossip_port(port)
            .seed(format!("127.0.0.1:{port}")),
    );
    let took = wait_until("/readyz 200 on a self-seeded node", TIMEOUT, || async {
        node.readyz().await == 200
    })
    .await;
    println!("self-seeded node ready after {took:?}");
    let view = node.expect_brokers().await;
    assert_eq!(view.members.len(), 1, "only itself: {}", view.summary());
    assert!(view.members[0].local, "{}", view.summary());
    assert_eq!(view.members[0].gossip_addr, format!("127.0.0.1:{port}"));

    let lone = Node::start(NodeConfig::new("lone", &unique_key()));
    wait_until("/readyz 200 on a node without seeds", TIMEOUT, || async {
        lone.readyz().await == 200
    })
    .await;
}

#[tokio::test]
async fn node_id_with_an_address_and_the_key_from_the_environment() {
    let key = unique_key();
    let n1 = Node::start(NodeConfig::new("n1@127.0.0.1", &key));
    // The key as Kubernetes passes it: COOLPY7_CSK, no -csk flag.
    let n2 = Node::start(
        NodeConfig::new("n2", &key)
            .without_key_flag()
            .env("COOLPY7_CSK", &key)
            .seed(n1.gossip),
    );
    wait_full_membership(&[&n1, &n2], JOIN_TIMEOUT).await;
    let view = n1.expect_brokers().await;
    assert_eq!(
        view.node_id.as_deref(),
        Some("n1"),
        "-nid name@addr names the node without the address"
    );
    let local = view.local().expect("the local entry");
    assert_eq!(
        (local.node_id.as_str(), local.gossip_addr.clone()),
        ("n1", n1.gossip.to_string()),
        "{}",
        view.summary()
    );
    let seen = n2.expect_brokers().await;
    assert_eq!(
        seen.remote("n1").map(|m| m.gossip_addr.clone()),
        Some(format!("127.0.0.1:{}", n1.gossip.port())),
        "n2 reaches n1 at the address of -nid n1@127.0.0.1: {}",
        seen.summary()
    );
}

#[tokio::test]
async fn forwarded_messages_reach_shared_groups_on_the_receiving_node_once_per_group() {
    let nodes = start_cluster(2, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let topic = unique_id("group/t");
    let filter = format!("$share/g/{topic}");
    let mut members = Vec::new();
    for i in 0..2 {
        members.push(
            n2.subscriber(&unique_id(&format!("member{i}")), &filter, QoS::AtLeastOnce)
                .await,
        );
    }
    let mut publisher = n1.client(&unique_id("pub")).await;
    for i in 0..4u8 {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, vec![b'm', b'0' + i])
            .await;
    }
    // Each message goes to exactly one member of the group, and the members take turns.
    let mut got = Vec::new();
    for member in &mut members {
        let received = member.drain_publishes(QUIET).await;
        assert!(
            !received.is_empty(),
            "every member of the group on n2 gets some of the forwarded messages"
        );
        got.extend(received.into_iter().map(|p| p.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            b"m0".to_vec(),
            b"m1".to_vec(),
            b"m2".to_vec(),
            b"m3".to_vec()
        ]
    );
    publisher.disconnect().await;
}
