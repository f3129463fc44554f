//! The original Coolpy7's cluster command line, as written, on hosts with no default route (as
//! on isolated plant networks): three nodes in their own network namespaces on a bridge, each
//! started with `-csk=... -nid=nodeN -mbs=<the other two>:7946` and nothing else about
//! addresses (no `-cad`, every interface). They must advertise the address on their network
//! (not loopback), form a cluster and forward messages. A fourth node without seeds (the first
//! node of a cluster) must advertise its interface address too.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); without them the test fails with a message
//! saying so.

use std::process::Command;

use coolpy7_tests::cluster::{
    expect_exactly_one, unique_key, wait_full_membership, NetLab, Node, JOIN_TIMEOUT, NET_LAB_TURN,
};
use coolpy7_tests::{unique_id, QoS};

#[tokio::test]
async fn the_seed_command_line_forms_a_cluster_without_a_default_route() {
    let _lab_turn = NET_LAB_TURN.lock().await;
    // Declared first, so dropped last: the nodes stop before their namespaces go.
    let lab = NetLab::create(4);
    for i in 0..4 {
        let out = Command::new("ip")
            .args(["-n", lab.ns(i), "route", "show", "default"])
            .output()
            .expect("ip route");
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "namespace {} must have no default route: {}",
            lab.ns(i),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let key = unique_key();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let seeds: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("{}:7946", lab.addr(j)))
                .collect();
            let name = format!("node{}", i + 1);
            let args = [
                format!("-csk={key}"),
                format!("-nid={name}"),
                format!("-mbs={}", seeds.join(",")),
            ];
            Node::start_exact(&lab.exec_prefix(i), &args, lab.addr(i).into(), &name, &key)
        })
        .collect();
    let solo_key = unique_key();
    let solo = Node::start_exact(
        &lab.exec_prefix(3),
        &[format!("-csk={solo_key}"), "-nid=solo".to_string()],
        lab.addr(3).into(),
        "solo",
        &solo_key,
    );

    let refs: Vec<&Node> = nodes.iter().collect();
    let took = wait_full_membership(&refs, JOIN_TIMEOUT).await;
    println!(
        "cluster without a default route formed in {:.2} s",
        took.as_secs_f64()
    );
    for (i, node) in nodes.iter().enumerate() {
        let view = node.expect_brokers().await;
        for (j, other) in nodes.iter().enumerate() {
            let member = view
                .members
                .iter()
                .find(|m| m.node_id == other.name())
                .unwrap_or_else(|| {
                    panic!("{} lists {}: {}", node.name(), other.name(), view.summary())
                });
            assert_eq!(
                member.gossip_addr,
                format!("{}:7946", lab.addr(j)),
                "{}'s entry for {}: the advertised address is the one on the network",
                node.name(),
                other.name()
            );
        }
        assert!(
            !node.log_has_line(&["ERROR", "loopback"]),
            "node{} logged a loopback error:\n{}",
            i + 1,
            node.logs()
        );
    }
    let solo_view = solo.expect_brokers().await;
    assert_eq!(
        solo_view.local().map(|m| m.gossip_addr.clone()),
        Some(format!("{}:7946", lab.addr(3))),
        "a node without seeds advertises its interface address: {}",
        solo_view.summary()
    );

    let topic = unique_id("noroute/t");
    let mut on_3 = nodes[2]
        .subscriber(&unique_id("on-3"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = nodes[0].client(&unique_id("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"across".to_vec())
        .await;
    expect_exactly_one(&mut on_3, &topic, b"across", QoS::AtLeastOnce).await;
    publisher.disconnect().await;
    drop(solo);
    drop(nodes);
    drop(lab);
}

/// A node that can only advertise loopback (a namespace with nothing but `lo`) while its seed is
/// on another host says so with an error, instead of failing silently.
#[tokio::test]
async fn advertising_loopback_to_remote_seeds_is_an_error() {
    coolpy7_tests::cluster::require_root("creating a network namespace");
    struct Namespace(String);
    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ns = Namespace(format!("c7t{}-lonely", std::process::id()));
    let added = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .expect("ip netns add");
    assert!(added.success(), "ip netns add {}", ns.0);
    let up = Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .expect("ip link set lo up");
    assert!(up.success());
    let prefix = ["ip", "netns", "exec", ns.0.as_str()];
    // 10.231.0.0/16 is what the tests' own networks use; nothing routes there from here.
    let mut broker = coolpy7_tests::Broker::start_with_prefix(
        &prefix,
        &[
            "-csk=lonely-key",
            "-nid=lonely",
            "-mbs=10.231.0.2:7946",
            "-l",
            ":1883",
            "-hl",
            "nil",
        ],
        &[],
    );
    let deadline = std::time::Instant::now() + coolpy7_tests::TIMEOUT;
    while !broker.logs().contains("advertises a loopback address") {
        broker.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no error about advertising loopback; log:\n{}",
            broker.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = broker
        .logs()
        .lines()
        .find(|l| l.contains("advertises a loopback address"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    drop(broker);
    drop(ns);
}

/// Seed lists that name this node too (in a list shared by every host, this one first, under a
/// name that resolves to 127.0.1.1 as a Debian host's own name does) or an IPv6 address while
/// the gossip socket is IPv4 say nothing about where the cluster is: each node must still
/// advertise its address on the network, and the two must form a cluster.
#[tokio::test]
async fn seeds_that_are_this_node_or_of_another_family_do_not_set_the_advertised_address() {
    let _lab_turn = NET_LAB_TURN.lock().await;
    let lab = NetLab::create(2);
    let key = unique_key();
    let seed_lists = [
        format!("127.0.1.1:7946,{}:7946", lab.addr(1)),
        format!("[::1]:7946,{}:7946", lab.addr(0)),
    ];
    let nodes: Vec<Node> = seed_lists
        .iter()
        .enumerate()
        .map(|(i, seeds)| {
            let name = format!("node{}", i + 1);
            let args = [
                format!("-csk={key}"),
                format!("-nid={name}"),
                format!("-mbs={seeds}"),
            ];
            Node::start_exact(&lab.exec_prefix(i), &args, lab.addr(i).into(), &name, &key)
        })
        .collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_full_membership(&refs, JOIN_TIMEOUT).await;
    for (i, node) in nodes.iter().enumerate() {
        let view = node.expect_brokers().await;
        assert_eq!(
            view.local().map(|m| m.gossip_addr.clone()),
            Some(format!("{}:7946", lab.addr(i))),
            "{} with -mbs={} advertises its network address: {}",
            node.name(),
            seed_lists[i],
            view.summary()
        );
    }
    drop(nodes);
    drop(lab);
}
