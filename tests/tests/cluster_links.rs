//! Acknowledged forwarding between nodes (sync version 3, "links"): every message (QoS 0 too)
//! travels on an ordered stream per peer that the receiver acknowledges and the sender
//! retransmits. The contract under test is the README's cluster
//! section: nothing a client may publish is too big to forward; a lost, repeated or replayed
//! segment loses or repeats nothing; a peer frozen for less than the failure detector's timeout
//! gets everything published meanwhile, in order; what a peer's buffer (`-csb`) cannot hold is
//! dropped and counted, never silently; a node of an earlier release (`-csv 2`) still gets QoS 1
//! messages, best effort.
//!
//! The loss test runs two nodes in network namespaces with nft dropping a random 5 % of the sync
//! datagrams each way; it and the replay test need root (and `ip`, `nft`).

use std::time::{Duration, Instant};

use coolpy7_tests::cluster::{
    parse_link_records, parse_link_segment, pseudo_random_bytes, require_root, resend_ip_packet,
    send_signal, send_udp, start_cluster, unique_key, wait_full_membership, wait_until, NetLab,
    Node, NodeConfig, JOIN_TIMEOUT, NET_LAB_TURN,
};
use coolpy7_tests::packets;
use coolpy7_tests::raw::{qos1_bursts, receive_distinct_acking};
use coolpy7_tests::{unique_id, QoS, RawClient, QUIET, TIMEOUT};

const DROPPED: &str = "coolpy7_cluster_dropped_total";
const RETRANSMITTED: &str = "coolpy7_cluster_segments_retransmitted_total";
const REPEATED: &str = "coolpy7_cluster_segments_repeated_total";

/// The numbers `0..n` as payloads, in the order received; panics on anything else.
fn numbers(publishes: &[rumqttc::Publish]) -> Vec<u32> {
    publishes
        .iter()
        .map(|p| {
            std::str::from_utf8(&p.payload)
                .ok()
                .and_then(|s| s.trim_end().parse().ok())
                .unwrap_or_else(|| panic!("unexpected payload {:?}", p.payload))
        })
        .collect()
}

#[tokio::test]
async fn qos1_crosses_on_a_link_and_a_replayed_segment_delivers_nothing() {
    require_root("the link replay test (it captures packets on lo with AF_PACKET)");
    let nodes = start_cluster(3, &[]).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = unique_id("link/t");
    let mut subscriber = n2
        .subscriber(&unique_id("sub"), &topic, QoS::AtLeastOnce)
        .await;
    let mut bystander = n3
        .subscriber(&unique_id("sub3"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;

    let mut capture = coolpy7_tests::cluster::UdpCapture::start(n2.sync.port());
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"original".to_vec())
        .await;
    for client in [&mut subscriber, &mut bystander] {
        let got = client.recv_publish(TIMEOUT).await;
        assert_eq!(&got.payload[..], b"original");
        assert_eq!(got.qos, QoS::AtLeastOnce);
    }
    let topic_bytes = topic.as_bytes().to_vec();
    let packet = capture
        .next_matching(TIMEOUT, |p| {
            p.payload.starts_with(&[3, 2])
                && p.payload
                    .windows(topic_bytes.len())
                    .any(|w| w == topic_bytes.as_slice())
        })
        .await
        .unwrap_or_else(|| panic!("no link segment carrying {topic:?} to n2 was seen on lo"));
    drop(capture);

    // The wire format the README describes.
    let segment = parse_link_segment(&packet.payload)
        .unwrap_or_else(|e| panic!("the captured segment does not parse: {e}"));
    assert_eq!(
        (segment.origin.as_str(), segment.destination.as_str()),
        (n1.name(), n2.name())
    );
    assert!(segment.seq >= 1 && segment.link >= 1, "{segment:?}");
    assert!(segment.sender_acked < segment.seq, "{segment:?}");
    let records = parse_link_records(&segment.data)
        .unwrap_or_else(|e| panic!("the segment's frames do not parse: {e}"));
    assert!(
        records
            .iter()
            .any(|r| r.topic == topic && r.payload == b"original" && r.qos == 1),
        "the segment carries the record: {records:?}"
    );

    // Replayed as it was: a repeat, acknowledged again, delivered to nobody.
    let repeated = n2.counter(REPEATED).await;
    resend_ip_packet(&packet);
    wait_until("n2 to count the repeated segment", TIMEOUT, || async {
        n2.counter(REPEATED).await > repeated
    })
    .await;
    // From another source port: the same.
    send_udp(n2.sync, &packet.payload);
    wait_until("n2 to count the second repeat", TIMEOUT, || async {
        n2.counter(REPEATED).await > repeated + 1.0
    })
    .await;
    // To another member: addressed to someone else.
    let misaddressed = [("port", "sync"), ("reason", "wrong_destination")];
    let before = n3.counter_sum(DROPPED, &misaddressed).await;
    send_udp(n3.sync, &packet.payload);
    wait_until("n3 to drop the misaddressed segment", TIMEOUT, || async {
        n3.counter_sum(DROPPED, &misaddressed).await > before
    })
    .await;
    // Tampered: bad tag.
    let mut tampered = packet.clone();
    let at = tampered.ip_packet.len() - 33;
    tampered.ip_packet[at] ^= 0x01;
    let bad_tag = [("port", "sync"), ("reason", "bad_tag")];
    let before = n2.counter_sum(DROPPED, &bad_tag).await;
    resend_ip_packet(&tampered);
    wait_until("n2 to drop the tampered segment", TIMEOUT, || async {
        n2.counter_sum(DROPPED, &bad_tag).await > before
    })
    .await;
    subscriber.expect_no_publish(QUIET).await;
    bystander.expect_no_publish(QUIET).await;

    // The link goes on: later messages arrive once each.
    for i in 0..3u8 {
        let payload = vec![b'n', b'0' + i];
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await;
        assert_eq!(
            &subscriber.recv_publish(TIMEOUT).await.payload[..],
            &payload[..]
        );
    }
    subscriber.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
}

#[tokio::test]
async fn messages_larger_than_a_datagram_cross_by_default() {
    let nodes = start_cluster(2, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let topic = unique_id("big/t");
    let mut subscriber = n2
        .subscriber(&unique_id("sub"), &topic, QoS::ExactlyOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;
    let sizes = [
        (QoS::AtLeastOnce, 300_000),
        (QoS::AtMostOnce, 100_000),
        (QoS::ExactlyOnce, 70_000),
        (QoS::AtMostOnce, 1_500),
    ];
    for (i, &(qos, len)) in sizes.iter().enumerate() {
        let payload = pseudo_random_bytes(len, i as u64 + 1);
        publisher.publish(&topic, qos, false, payload.clone()).await;
        let got = subscriber.recv_publish(TIMEOUT).await;
        assert_eq!(got.payload.len(), len, "message {i}");
        assert!(got.payload[..] == payload[..], "message {i} intact");
        assert_eq!(got.qos, qos, "message {i}");
    }
    subscriber.expect_no_publish(QUIET).await;
    let too_big = n1.counter_sum(DROPPED, &[("reason", "too_big")]).await;
    assert_eq!(too_big, 0.0, "nothing was too big: {}", n1.drops().await);
    publisher.disconnect().await;
}

#[tokio::test]
async fn a_node_of_an_earlier_release_still_gets_qos1_best_effort() {
    let key = unique_key();
    let n1 = Node::start(NodeConfig::new("n1", &key));
    let n2 = Node::start(
        NodeConfig::new("n2", &key)
            .seed(n1.gossip)
            .args(&["-csv", "2"]),
    );
    wait_full_membership(&[&n1, &n2], JOIN_TIMEOUT).await;
    let topic = unique_id("old/t");
    let mut on_n1 = n1
        .subscriber(&unique_id("sub1"), &topic, QoS::AtLeastOnce)
        .await;
    let mut on_n2 = n2
        .subscriber(&unique_id("sub2"), &topic, QoS::AtLeastOnce)
        .await;
    let mut pub1 = n1.client(&unique_id("pub1")).await;
    let mut pub2 = n2.client(&unique_id("pub2")).await;
    pub1.publish(&topic, QoS::AtLeastOnce, false, b"from n1".to_vec())
        .await;
    pub2.publish(&topic, QoS::AtLeastOnce, false, b"from n2".to_vec())
        .await;
    for client in [&mut on_n1, &mut on_n2] {
        let mut got: Vec<Vec<u8>> = client
            .recv_publishes(2, TIMEOUT)
            .await
            .iter()
            .map(|p| p.payload.to_vec())
            .collect();
        got.sort();
        assert_eq!(got, [b"from n1".to_vec(), b"from n2".to_vec()]);
    }
    // A record too big for one datagram cannot reach a node without links: counted, not sent.
    let too_big = n1.counter_sum(DROPPED, &[("reason", "too_big")]).await;
    pub1.publish(&topic, QoS::AtMostOnce, false, vec![b'x'; 70_000])
        .await;
    assert_eq!(on_n1.recv_publish(TIMEOUT).await.payload.len(), 70_000);
    wait_until("n1 to count the record too big for n2", TIMEOUT, || async {
        n1.counter_sum(DROPPED, &[("reason", "too_big")]).await > too_big
    })
    .await;
    on_n2.expect_no_publish(QUIET).await;
    assert_eq!(
        n1.counter(RETRANSMITTED).await,
        0.0,
        "nothing went on a link"
    );
}

#[tokio::test]
async fn a_peer_frozen_for_a_moment_gets_everything_published_meanwhile_in_order() {
    // A freeze of about 1.5 s is not a failure (a member is declared down after -csd).
    let key = unique_key();
    let slow_detector = ["-csd", "10000"];
    let n1 = Node::start(
        NodeConfig::new("n1", &key)
            .default_timings()
            .args(&slow_detector),
    );
    let n2 = Node::start(
        NodeConfig::new("n2", &key)
            .default_timings()
            .args(&slow_detector)
            .seed(n1.gossip),
    );
    wait_full_membership(&[&n1, &n2], JOIN_TIMEOUT).await;
    let topic = unique_id("freeze/t");
    let mut subscriber = n2
        .subscriber(&unique_id("sub"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;
    const N: u32 = 150;
    let frozen_at = 30;
    let mut thawed = false;
    for i in 0..N {
        if i == frozen_at {
            send_signal(n2.pid(), libc::SIGSTOP);
        }
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if i == frozen_at + 100 {
            send_signal(n2.pid(), libc::SIGCONT);
            thawed = true;
        }
    }
    assert!(thawed);
    let got = numbers(&subscriber.recv_publishes(N as usize, TIMEOUT * 2).await);
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all, once, in order");
    subscriber.expect_no_publish(QUIET).await;
    assert!(
        n1.counter(RETRANSMITTED).await > 0.0,
        "the frozen peer's segments were sent again"
    );
    let gone = n1.counter_sum(DROPPED, &[("reason", "peer_gone")]).await;
    assert_eq!(gone, 0.0, "nothing given up: {}", n1.drops().await);
    publisher.disconnect().await;
}

#[tokio::test]
async fn what_a_full_peer_buffer_cannot_hold_is_dropped_and_counted() {
    let key = unique_key();
    let n1 = Node::start(
        NodeConfig::new("n1", &key)
            .default_timings()
            .args(&["-csb", "65536", "-csd", "10000"]),
    );
    let n2 = Node::start(
        NodeConfig::new("n2", &key)
            .default_timings()
            .args(&["-csd", "10000"])
            .seed(n1.gossip),
    );
    wait_full_membership(&[&n1, &n2], JOIN_TIMEOUT).await;
    let topic = unique_id("full/t");
    let mut subscriber = n2
        .subscriber(&unique_id("sub"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;
    send_signal(n2.pid(), libc::SIGSTOP);
    const N: u32 = 24;
    let started = Instant::now();
    for i in 0..N {
        let mut payload = i.to_string().into_bytes();
        payload.resize(4_000, b' ');
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await;
    }
    let took = started.elapsed();
    send_signal(n2.pid(), libc::SIGCONT);
    let full = [("port", "sync"), ("reason", "buffer_full")];
    let dropped = n1.counter_sum(DROPPED, &full).await as u32;
    println!(
        "{N} publishes of 4 kB to a frozen peer with -csb 65536 took {took:?}; {dropped} dropped"
    );
    assert!(
        (1..N).contains(&dropped),
        "some, not all, over 64 KiB: {dropped}"
    );
    // What was held arrives once the peer thaws: exactly the messages not counted as dropped,
    // the earliest ones, in order.
    let got = subscriber
        .recv_publishes((N - dropped) as usize, TIMEOUT * 2)
        .await;
    let got: Vec<u32> = got
        .iter()
        .map(|p| {
            let text = std::str::from_utf8(&p.payload).expect("text");
            text.trim_end().parse().expect("number")
        })
        .collect();
    assert_eq!(got, (0..N - dropped).collect::<Vec<_>>());
    subscriber.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
}

#[tokio::test]
async fn qos1_and_qos0_are_all_delivered_through_five_percent_loss_between_namespaces() {
    let _lab_turn = NET_LAB_TURN.lock().await;
    // Declared first, so dropped last: the nodes stop before their namespaces go.
    let lab = NetLab::create(2);
    let key = unique_key();
    let nodes = lab.start_nodes(2, &key, &[]);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    wait_full_membership(&[n1, n2], JOIN_TIMEOUT).await;
    lab.drop_udp_randomly(1, 7947, 5);

    let topic = unique_id("loss/t");
    let mut subscriber = n2
        .subscriber(&unique_id("sub"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;
    const N: u32 = 2_000;
    for i in 0..N {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    let got = numbers(&subscriber.recv_publishes(N as usize, TIMEOUT * 6).await);
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all, once, in order");
    subscriber.expect_no_publish(QUIET).await;
    let retransmitted = n1.counter(RETRANSMITTED).await;
    println!("QoS 1: {N} of {N} delivered; {retransmitted} segments sent again");
    assert!(retransmitted > 0.0, "the nft rule lost segments");

    // QoS 0 rides the link too: the loss costs retransmissions, not messages. Padded: QoS 0
    // publishes come in bursts, which the publishing node forwards as few full segments, and
    // the test needs enough datagrams (~700 here) for the rule to drop some for certain.
    let retransmitted = n1.counter(RETRANSMITTED).await;
    let qos0 = unique_id("loss/q0");
    let mut subscriber0 = n2
        .subscriber(&unique_id("sub0"), &qos0, QoS::AtMostOnce)
        .await;
    for i in 0..N {
        let mut payload = i.to_string().into_bytes();
        payload.resize(500, b' ');
        publisher
            .publish(&qos0, QoS::AtMostOnce, false, payload)
            .await;
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let got0 = subscriber0.recv_publishes(N as usize, TIMEOUT * 2).await;
    assert!(
        got0.iter().all(|p| p.payload.len() == 500),
        "whole payloads"
    );
    assert_eq!(
        numbers(&got0),
        (0..N).collect::<Vec<_>>(),
        "all, once, in order"
    );
    subscriber0.expect_no_publish(QUIET).await;
    let again = n1.counter(RETRANSMITTED).await - retransmitted;
    println!("QoS 0: {N} of {N} delivered; {again} segments sent again");
    assert!(again > 0.0, "the nft rule lost segments");
    lab.stop_dropping(1);
    publisher.disconnect().await;
}

/// Flow control across nodes: bursts of QoS 1 messages published on n1, four times what the
/// queue (`-mq`) of their subscriber on n2 holds, which takes them much more slowly (a window of
/// 10, each acknowledged a millisecond later). n2 holds the link while the subscriber drains
/// (n1's link fills and its publishers wait, as they would for a subscriber of their own node):
/// every message n1 acknowledged arrives, and n2 drops none.
#[tokio::test]
async fn bursts_into_a_slower_subscriber_on_another_node_lose_nothing_acknowledged() {
    const PUBLISHERS: usize = 20;
    const EACH: usize = 100;
    let key = unique_key();
    let n1 = Node::start(NodeConfig::new("n1", &key));
    let n2 = Node::start(
        NodeConfig::new("n2", &key)
            .seed(n1.gossip)
            .args(&["-mq", "500", "-mif", "10"]),
    );
    wait_full_membership(&[&n1, &n2], JOIN_TIMEOUT).await;
    let mut subscriber = RawClient::connect_v311(n2.mqtt_addr(), &unique_id("slow-sub")).await;
    subscriber.subscribe(1, &[("flood/+", 1)]).await;
    let addr = n1.mqtt_addr();
    let mut primer = RawClient::connect_v311(addr, &unique_id("primer")).await;
    primer.publish_qos1("flood/primer", 1, b"primer").await;
    let first = subscriber.recv_publish(TIMEOUT).await;
    subscriber.send(&packets::puback(first.pkid)).await;

    let mut bursts = qos1_bursts(addr, "flood/t", PUBLISHERS, EACH);
    let got = receive_distinct_acking(
        &mut subscriber,
        PUBLISHERS * EACH,
        Duration::from_millis(1),
        TIMEOUT * 8,
    )
    .await;
    assert_eq!(got.len(), PUBLISHERS * EACH);
    while let Some(joined) = bursts.join_next().await {
        joined.expect("publisher task");
    }
    assert_eq!(
        n2.metric("coolpy7_messages_dropped_total{reason=\"queue_full\"}")
            .await,
        0.0
    );
    assert_eq!(
        n1.counter_sum(DROPPED, &[("reason", "buffer_full")]).await,
        0.0
    );
}

/// A partition shorter than the failure detector's timeout (`-csd 10000` here) during a QoS 1
/// flow: nft drops all UDP in and out of n2's namespace for 1.5 s while n1 publishes. Once it
/// heals, everything published meanwhile arrives, once, in order. And a peer killed for good
/// is given up, counted, without holding back the publisher.
#[tokio::test]
async fn a_short_partition_during_a_qos1_flow_loses_nothing_and_a_killed_peer_is_given_up() {
    let _lab_turn = NET_LAB_TURN.lock().await;
    let lab = NetLab::create(3);
    let key = unique_key();
    let nodes = lab.start_nodes(3, &key, &["-csd", "10000"]);
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    wait_full_membership(&[n1, n2, n3], JOIN_TIMEOUT).await;
    let topic = unique_id("part/t");
    let mut on_n2 = n2
        .subscriber(&unique_id("sub2"), &topic, QoS::AtLeastOnce)
        .await;
    let mut on_n3 = n3
        .subscriber(&unique_id("sub3"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = n1.client(&unique_id("pub")).await;
    // Both subscriptions known to n1 before the count starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    const N: u32 = 300;
    for i in 0..N {
        if i == 50 {
            lab.cut_udp(1);
        }
        if i == 200 {
            lab.heal(1);
        }
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (name, subscriber) in [("n2", &mut on_n2), ("n3", &mut on_n3)] {
        let got = numbers(&subscriber.recv_publishes(N as usize, TIMEOUT * 3).await);
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "{name}: all, once, in order"
        );
    }
    let gone = n1.counter_sum(DROPPED, &[("reason", "peer_gone")]).await;
    assert_eq!(gone, 0.0, "nothing given up: {}", n1.drops().await);

    // n3 is killed: once declared down, what it had not acknowledged is given up and counted,
    // and n2 goes on getting every message.
    send_signal(n3.pid(), libc::SIGSTOP);
    for i in 0..20u32 {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, (N + i).to_string())
            .await;
    }
    let got = numbers(&on_n2.recv_publishes(20, TIMEOUT).await);
    assert_eq!(got, (N..N + 20).collect::<Vec<_>>());
    wait_until("n1 to give up on n3", Duration::from_secs(30), || async {
        n1.counter_sum(DROPPED, &[("reason", "peer_gone")]).await > 0.0
    })
    .await;
    send_signal(n3.pid(), libc::SIGKILL);
    publisher.disconnect().await;
}
