//! A network partition, for real: three nodes in their own network namespaces on a bridge, on
//! the default ports (gossip 7946, sync 7947). Cutting one node off (nft drops all UDP in and out
//! of its namespace) makes the others mark it down and stops forwarding to it; healing the cut
//! brings it back and forwarding resumes.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); without them the test fails with a message
//! saying so.

use std::time::Instant;

use coolpy7_tests::cluster::{
    expect_exactly_one, unique_key, wait_full_membership, wait_member, NetLab, Node, NodeConfig,
    Seen, DETECT_TIMEOUT, JOIN_TIMEOUT,
};
use coolpy7_tests::{unique_id, QoS, QUIET};

#[tokio::test]
async fn a_partitioned_node_is_marked_down_and_rejoins_after_the_heal() {
    // Declared first, so dropped last: the nodes stop before their namespaces go.
    let lab = NetLab::create(3);
    let key = unique_key();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let addr = lab.addr(i);
            let mut config = NodeConfig::new(&format!("n{}", i + 1), &key)
                .listen(&format!("{addr}:1883"), &format!("{addr}:8081"))
                .gossip_port(7946)
                .sync_port(7947)
                .prefix(&lab.exec_prefix(i));
            for j in (0..3).filter(|&j| j != i) {
                config = config.seed(format!("{}:7946", lab.addr(j)));
            }
            Node::start(config)
        })
        .collect();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.gossip.to_string(),
            format!("{}:7946", lab.addr(i)),
            "the gossip socket binds the -l host"
        );
    }
    let took = wait_full_membership(&[n1, n2, n3], JOIN_TIMEOUT).await;
    println!(
        "namespaced cluster formed after {:.2} s",
        took.as_secs_f64()
    );
    for node in [n1, n2, n3] {
        let view = node.expect_brokers().await;
        for (i, other) in nodes.iter().enumerate() {
            let member = view
                .members
                .iter()
                .find(|m| m.node_id == other.name())
                .unwrap_or_else(|| panic!("{} lists {}", node.name(), other.name()));
            assert_eq!(
                member.sync_addr,
                format!("{}:7947", lab.addr(i)),
                "{}'s entry for {}: advertised sync address",
                node.name(),
                other.name()
            );
        }
    }

    let topic = unique_id("part/t");
    let mut on_n3 = n3
        .subscriber(&unique_id("on-n3"), &topic, QoS::AtLeastOnce)
        .await;
    let mut on_n1 = n1
        .subscriber(&unique_id("on-n1"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"before".to_vec())
        .await;
    expect_exactly_one(&mut on_n3, &topic, b"before", QoS::AtLeastOnce).await;
    expect_exactly_one(&mut on_n1, &topic, b"before", QoS::AtLeastOnce).await;

    lab.cut_udp(2);
    let cut = Instant::now();
    wait_member(n1, "n3", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n2, "n3", Seen::Gone, DETECT_TIMEOUT).await;
    println!(
        "n1 and n2 marked the cut-off n3 down after {:.2} s",
        cut.elapsed().as_secs_f64()
    );
    // And n3, alone, sees the others gone (its HTTP API is on TCP, which still works).
    wait_member(n3, "n1", Seen::Gone, DETECT_TIMEOUT).await;
    wait_member(n3, "n2", Seen::Gone, DETECT_TIMEOUT).await;

    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"during".to_vec())
        .await;
    expect_exactly_one(&mut on_n1, &topic, b"during", QoS::AtLeastOnce).await;
    on_n3.expect_no_publish(QUIET).await;

    lab.heal(2);
    let took = wait_full_membership(&[n1, n2, n3], JOIN_TIMEOUT).await;
    println!(
        "after the heal, n3 up everywhere in {:.2} s",
        took.as_secs_f64()
    );
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"after".to_vec())
        .await;
    expect_exactly_one(&mut on_n1, &topic, b"after", QoS::AtLeastOnce).await;
    expect_exactly_one(&mut on_n3, &topic, b"after", QoS::AtLeastOnce).await;
    publisher.disconnect().await;
    drop(nodes);
    drop(lab);
}
