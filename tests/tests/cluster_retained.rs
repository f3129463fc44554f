//! Retained messages converge cluster-wide (anti-entropy): a node that was down (killed, then
//! restarted) or cut off (a partition between network namespaces) holds, once it is back, the
//! same retained messages as the others, whatever was set or cleared meanwhile; and a topic
//! written on both sides of a partition ends with the later write on every node.
//!
//! What a node holds is read as a client sees it: a fresh subscription to the test's prefix,
//! whose retained messages (topics and payloads) are compared with what is expected, cleared
//! topics absent. Every wait is bounded; the partition test needs root, `ip` and `nft`, and
//! its namespaces (with their nft tables) go with the [`NetLab`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coolpy7_tests::cluster::{
    send_signal, start_cluster, unique_key, wait_full_membership, wait_member, wait_until, NetLab,
    Node, NodeConfig, Seen, DETECT_TIMEOUT, JOIN_TIMEOUT, NET_LAB_TURN,
};
use coolpy7_tests::{unique_id, QoS, TIMEOUT};

/// How long the stores may take to agree once the nodes see each other: a new control link
/// starts with the full digest (a round trip, then the repairs); the periodic digest (10 s)
/// bounds a round whose first digest found the peer not yet listed. Twice that, plus margin.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often each node sends its digest's summary to each peer (`DIGEST_PERIOD` in
/// `broker/src/cluster/anti_entropy.rs`).
const DIGEST_PERIOD: Duration = Duration::from_secs(10);

const DROPPED: &str = "coolpy7_cluster_dropped_total";
const SKIPPED: &str = "coolpy7_cluster_records_skipped_total";

/// How long a fresh subscription is given to receive the retained messages it matches.
const RETAINED_WINDOW: Duration = Duration::from_millis(400);

/// Topic (without the prefix) to payload.
type RetainedSet = BTreeMap<String, String>;

fn set_of(pairs: &[(&str, &str)]) -> RetainedSet {
    pairs
        .iter()
        .map(|(topic, payload)| (topic.to_string(), payload.to_string()))
        .collect()
}

/// The retained messages under `prefix/` on `node`, as a new subscriber gets them.
async fn retained_on(node: &Node, prefix: &str) -> RetainedSet {
    let mut client = node
        .broker
        .subscriber(&unique_id("look"), &format!("{prefix}/#"), QoS::AtMostOnce)
        .await;
    let got = client.drain_publishes(RETAINED_WINDOW).await;
    client.disconnect().await;
    got.iter()
        .filter(|publish| publish.retain)
        .map(|publish| {
            (
                publish.topic[prefix.len() + 1..].to_string(),
                String::from_utf8_lossy(&publish.payload).into_owned(),
            )
        })
        .collect()
}

/// Waits until every node in `nodes` holds exactly `want` under `prefix/`; returns how long it
/// took.
async fn wait_retained(nodes: &[&Node], prefix: &str, want: &RetainedSet) -> Duration {
    let start = Instant::now();
    let mut last = Vec::new();
    // Bounded by the timeout, each turn by the retained window.
    while start.elapsed() < CONVERGE_TIMEOUT {
        last.clear();
        for node in nodes {
            let held = retained_on(node, prefix).await;
            if &held != want {
                last.push(format!("{}: {held:?}", node.name()));
            }
        }
        if last.is_empty() {
            let took = start.elapsed();
            println!(
                "{:?} hold {want:?} after {:.2} s",
                nodes.iter().map(|n| n.name()).collect::<Vec<_>>(),
                took.as_secs_f64()
            );
            return took;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "the retained stores did not converge on {want:?} within {CONVERGE_TIMEOUT:?}; {last:?}"
    );
}

/// Publishes a retained message (an empty `payload` clears the topic) on `node`, at QoS 1, and
/// waits for its PUBACK.
async fn retain(node: &Node, prefix: &str, topic: &str, payload: &str) {
    let mut client = node.client(&unique_id("writer")).await;
    client
        .publish(
            &format!("{prefix}/{topic}"),
            QoS::AtLeastOnce,
            true,
            payload.as_bytes().to_vec(),
        )
        .await;
    client.disconnect().await;
}

async fn repaired(nodes: &[&Node]) -> f64 {
    let mut total = 0.0;
    for node in nodes {
        total += node
            .counter("coolpy7_cluster_retained_repaired_total")
            .await;
    }
    total
}

#[tokio::test]
async fn a_restarted_node_gets_what_was_set_and_cleared_while_it_was_down() {
    let mut nodes = start_cluster(3, &[]).await;
    let prefix = unique_id("conv");
    for (topic, payload) in [("a", "1"), ("b", "2"), ("c", "3")] {
        retain(&nodes[0], &prefix, topic, payload).await;
    }
    let before = set_of(&[("a", "1"), ("b", "2"), ("c", "3")]);
    wait_retained(&[&nodes[0], &nodes[1], &nodes[2]], &prefix, &before).await;

    let mut n3 = nodes.pop().expect("three nodes");
    let restart = n3.restart_config();
    send_signal(n3.pid(), libc::SIGKILL);
    assert!(n3.wait_exit(TIMEOUT).await.is_some(), "n3 did not die");
    drop(n3);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    wait_member(n1, "n3", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n2, "n3", Seen::Gone, DETECT_TIMEOUT).await;

    // While n3 is down: an update and a clear on n1, a new topic on n2.
    retain(n1, &prefix, "a", "1b").await;
    retain(n1, &prefix, "b", "").await;
    retain(n2, &prefix, "d", "4").await;
    let after = set_of(&[("a", "1b"), ("c", "3"), ("d", "4")]);
    wait_retained(&[n1, n2], &prefix, &after).await;

    let repaired_before = repaired(&[n1, n2]).await;
    let n3 = Node::start(restart);
    wait_full_membership(&[n1, n2, &n3], JOIN_TIMEOUT).await;
    // The restarted node's store starts empty: everything it holds came by anti-entropy.
    wait_retained(&[n1, n2, &n3], &prefix, &after).await;
    assert!(
        repaired(&[n1, n2]).await >= repaired_before + 3.0,
        "n1 and n2 repaired n3's store"
    );

    // It goes on as before: a write on the restarted node reaches the others.
    retain(&n3, &prefix, "c", "").await;
    let last = set_of(&[("a", "1b"), ("d", "4")]);
    wait_retained(&[n1, n2, &n3], &prefix, &last).await;
}

#[tokio::test]
async fn a_partitioned_node_converges_and_the_later_write_wins_everywhere() {
    let _lab_turn = NET_LAB_TURN.lock().await;
    // Declared first, so dropped last: the nodes stop before their namespaces go.
    let lab = NetLab::create(3);
    let key = unique_key();
    let nodes = lab.start_nodes(3, &key, &[]);
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    wait_full_membership(&[n1, n2, n3], JOIN_TIMEOUT).await;
    let prefix = unique_id("part");
    for (topic, payload) in [
        ("keep", "k"),
        ("upd", "old"),
        ("clr", "x"),
        ("c1", "0"),
        ("c2", "0"),
    ] {
        retain(n1, &prefix, topic, payload).await;
    }
    let before = set_of(&[
        ("keep", "k"),
        ("upd", "old"),
        ("clr", "x"),
        ("c1", "0"),
        ("c2", "0"),
    ]);
    wait_retained(&[n1, n2, n3], &prefix, &before).await;

    lab.cut_udp(2);
    wait_member(n1, "n3", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n2, "n3", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n3, "n1", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n3, "n2", Seen::Gone, DETECT_TIMEOUT).await;

    // On the connected side: an update, a clear, a new topic.
    retain(n1, &prefix, "upd", "new").await;
    retain(n2, &prefix, "clr", "").await;
    retain(n1, &prefix, "n1only", "1").await;
    // On the cut-off side: a clear and a new topic.
    retain(n3, &prefix, "keep", "").await;
    retain(n3, &prefix, "n3only", "3").await;
    // Conflicts: the later write wins, on whichever side it was made. The nodes share the
    // machine's clock, so 50 ms apart orders them.
    retain(n1, &prefix, "c1", "n1-early").await;
    retain(n3, &prefix, "c2", "n3-early").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    retain(n3, &prefix, "c1", "n3-later").await;
    retain(n2, &prefix, "c2", "n2-later").await;
    wait_retained(
        &[n1, n2],
        &prefix,
        &set_of(&[
            ("keep", "k"),
            ("upd", "new"),
            ("n1only", "1"),
            ("c1", "n1-early"),
            ("c2", "n2-later"),
        ]),
    )
    .await;
    assert_eq!(
        retained_on(n3, &prefix).await,
        set_of(&[
            ("upd", "old"),
            ("clr", "x"),
            ("n3only", "3"),
            ("c1", "n3-later"),
            ("c2", "n3-early"),
        ]),
        "n3, cut off, holds only its own writes"
    );

    lab.heal(2);
    wait_full_membership(&[n1, n2, n3], JOIN_TIMEOUT).await;
    let after = set_of(&[
        ("upd", "new"),
        ("n1only", "1"),
        ("n3only", "3"),
        ("c1", "n3-later"),
        ("c2", "n2-later"),
    ]);
    let took = wait_retained(&[n1, n2, n3], &prefix, &after).await;
    println!(
        "after the heal the stores agree in {:.2} s; repairs sent: {}",
        took.as_secs_f64(),
        repaired(&[n1, n2, n3]).await
    );
    drop(nodes);
    drop(lab);
}

/// Sync records and frames a node refused as malformed.
async fn malformed(node: &Node) -> f64 {
    node.counter_sum(DROPPED, &[("reason", "malformed")]).await
}

#[tokio::test]
async fn a_node_of_the_previous_release_gets_retained_messages_as_it_expects() {
    // n3 plays the release before anti-entropy (sync version 3): it refuses stamped records,
    // repairs, digests and listings (and took an unknown control frame for a lost interest
    // change), so it must be sent none.
    let key = unique_key();
    let n1 = Node::start(NodeConfig::new("n1", &key));
    let n2 = Node::start(NodeConfig::new("n2", &key).seed(n1.gossip));
    let old = Node::start(
        NodeConfig::new("n3", &key)
            .seed(n1.gossip)
            .args(&["-csv", "3"]),
    );
    wait_full_membership(&[&n1, &n2, &old], JOIN_TIMEOUT).await;
    let prefix = unique_id("prev");
    retain(&n1, &prefix, "a", "1").await;
    retain(&n2, &prefix, "b", "2").await;
    retain(&old, &prefix, "c", "3").await;
    retain(&n1, &prefix, "d", "4").await;
    retain(&n2, &prefix, "d", "").await;
    let want = set_of(&[("a", "1"), ("b", "2"), ("c", "3")]);
    wait_retained(&[&n1, &n2, &old], &prefix, &want).await;

    // n1 and n2 each stamped n3's write as their own when it came: the next digest round makes
    // them agree; after it, nothing more is repaired, round after round.
    tokio::time::sleep(DIGEST_PERIOD + Duration::from_secs(1)).await;
    let settled = repaired(&[&n1, &n2, &old]).await;
    tokio::time::sleep(2 * DIGEST_PERIOD).await;
    assert_eq!(
        repaired(&[&n1, &n2, &old]).await,
        settled,
        "the stores agree: nothing repaired over two digest periods"
    );
    wait_retained(&[&n1, &n2, &old], &prefix, &want).await;
    for node in [&n1, &n2, &old] {
        assert_eq!(malformed(node).await, 0.0, "{}", node.drops().await);
    }

    // n3 still knows what n1 and n2 subscribe to (an unknown frame would have made it
    // forward everything to them): a message no one there wants is not sent.
    let skipped = old.counter(SKIPPED).await;
    let mut client = old.client(&unique_id("pub")).await;
    client
        .publish(
            &format!("{prefix}/unwanted"),
            QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
        )
        .await;
    client.disconnect().await;
    wait_until("n3 to skip n1 and n2", TIMEOUT, || async {
        old.counter(SKIPPED).await >= skipped + 2.0
    })
    .await;
}
