//! A partition of a two-node cluster, where each side is left with no member at all: both must
//! find each other again within about one probe period of the heal, with the default flags.
//! (A node alone knocks on the members it lost itself, since foca does so only while some member
//! is up.) Own test binary: network namespaces are named per test process.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); without them the test fails with a message
//! saying so.

use std::time::Duration;

use coolpy7_tests::cluster::{
    expect_exactly_one, unique_key, wait_full_membership, wait_member, NetLab, Node, NodeConfig,
    Seen, DETECT_TIMEOUT, JOIN_TIMEOUT,
};
use coolpy7_tests::{unique_id, QoS};

/// Three default probe periods; the design target is one.
const HEAL_BOUND: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_split_pair_heals_within_a_probe_period() {
    let lab = NetLab::create(2);
    let key = unique_key();
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let addr = lab.addr(i);
            Node::start(
                NodeConfig::new(&format!("n{}", i + 1), &key)
                    .default_timings()
                    .listen(&format!("{addr}:1883"), &format!("{addr}:8081"))
                    .gossip_port(7946)
                    .sync_port(7947)
                    .prefix(&lab.exec_prefix(i))
                    .seed(format!("{}:7946", lab.addr(1 - i))),
            )
        })
        .collect();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    wait_full_membership(&[n1, n2], JOIN_TIMEOUT).await;

    lab.cut_udp(1);
    wait_member(n1, "n2", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n2, "n1", Seen::Gone, DETECT_TIMEOUT).await;
    lab.heal(1);
    let took = wait_full_membership(&[n1, n2], JOIN_TIMEOUT).await;
    println!("the split pair healed in {:.2} s", took.as_secs_f64());
    assert!(
        took <= HEAL_BOUND,
        "healing took {took:?}, more than {HEAL_BOUND:?} (default probe period 1 s)"
    );
    for (from, to) in [(n1, n2), (n2, n1)] {
        let topic = unique_id("pair/t");
        let mut subscriber = to
            .subscriber(&unique_id("sub"), &topic, QoS::AtLeastOnce)
            .await;
        let mut publisher = from.client(&unique_id("pub")).await;
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, b"across".to_vec())
            .await;
        expect_exactly_one(&mut subscriber, &topic, b"across", QoS::AtLeastOnce).await;
        publisher.disconnect().await;
    }
    drop(nodes);
    drop(lab);
}
