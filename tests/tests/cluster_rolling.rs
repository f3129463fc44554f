//! Nodes leaving under load, as Kubernetes makes them, each node in its own network namespace
//! on a bridge ([`NetLab`]: its own address, the default ports, the broker's default timings),
//! the test's clients reaching them from the root namespace as a load balancer's would:
//!
//! - a rolling restart (`helm upgrade`): three nodes, 100 persistent QoS 1 subscribers spread
//!   over them, a publisher at a steady rate; each node in turn gets SIGTERM, drains (its
//!   clients reconnect to the other nodes and take their sessions along), exits 0 and is
//!   started again with the same `-nid` on the same address;
//! - a scale-down from five nodes to three: the same load spread over five nodes; n5 and n4
//!   get SIGTERM and are not started again, one after the other, and in a second test half a
//!   second apart (a StatefulSet's `Parallel` policy stops them together); a quarter of the
//!   subscribers a drain disconnects come back only once their node has exited, and find their
//!   sessions on a node that took them in when `-dg` ran out.
//!
//! At the end every subscriber has every message, every reconnection found its session, and
//! every drained node exited 0 within its bound (before `-dg` ran out when every client came
//! back at once; soon after when sessions waited for it). The report says how many messages
//! came twice and the longest a subscriber went without one.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables), as the other [`NetLab`] tests do.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coolpy7_tests::cluster::{
    unique_key, wait_full_membership, NetLab, Node, JOIN_TIMEOUT, NET_LAB_TURN,
};
use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::raw::RecvError;
use coolpy7_tests::{unique_id, RawClient};

const SUBSCRIBERS: usize = 100;
/// Messages a second from the publisher.
const RATE: u64 = 40;
/// The most nodes a test here starts.
const MAX_NODES: usize = 5;

/// What a load balancer knows of a node.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// Ready: clients are sent there.
    Up(SocketAddr),
    /// Got SIGTERM and has not exited yet: no client is sent there.
    Draining,
    /// Exited.
    Gone,
}

/// The nodes as a load balancer sees them.
struct Pool {
    nodes: Mutex<Vec<Slot>>,
}

impl Pool {
    fn new(nodes: &[Node]) -> Pool {
        Pool {
            nodes: Mutex::new(nodes.iter().map(|n| Slot::Up(n.mqtt_addr())).collect()),
        }
    }

    /// The `turn`-th node that is up (round robin), if any: its index and address.
    fn pick(&self, turn: usize) -> Option<(usize, SocketAddr)> {
        let nodes = self.nodes.lock().expect("pool");
        let up: Vec<(usize, SocketAddr)> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                Slot::Up(addr) => Some((i, *addr)),
                _ => None,
            })
            .collect();
        (!up.is_empty()).then(|| up[turn % up.len()])
    }

    fn set(&self, index: usize, slot: Slot) {
        self.nodes.lock().expect("pool")[index] = slot;
    }

    fn slot(&self, index: usize) -> Slot {
        self.nodes.lock().expect("pool")[index]
    }
}

/// What one subscriber got.
#[derive(Default)]
struct Tally {
    got: BTreeSet<u32>,
    deliveries: usize,
    last: Option<Instant>,
    longest_gap: Duration,
    /// Connections lost (the node drained or went away).
    reconnects: usize,
    /// Reconnections made only after the node it was on had exited, per node.
    after_exit: [usize; MAX_NODES],
    /// Reconnections whose CONNACK said the session was not there.
    sessions_lost: usize,
}

/// Connects `client_id` (clean session 0) to a node of the pool, trying the next on a refusal;
/// bounded. Returns the client, the node's index and the CONNACK's session present.
async fn connect(pool: &Pool, client_id: &str, turn: &mut usize) -> (RawClient, usize, bool) {
    let connect = Connect::v311(client_id).clean_session(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        *turn += 1;
        let Some((index, addr)) = pool.pick(*turn) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut client = RawClient::over(Box::new(stream), addr);
        if client.try_send(&connect.encode()).await.is_err() {
            continue;
        }
        match client.try_recv(Duration::from_secs(5)).await {
            Ok(Packet::ConnAck {
                code: 0,
                session_present,
            }) => return (client, index, session_present),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("{client_id}: no node let it in within 30 s");
}

/// A subscriber that stays subscribed to `topic` through the drains until it has every message
/// published (once `total` says how many). Disconnected by a draining node, it reconnects at
/// once to a node of the pool; a `late` one first waits for that node to exit.
struct Subscriber {
    pool: Arc<Pool>,
    client_id: String,
    topic: String,
    tally: Arc<Mutex<Tally>>,
    total: Arc<AtomicU32>,
    start_turn: usize,
    late: bool,
}

impl Subscriber {
    async fn run(self) {
        let mut turn = self.start_turn;
        let mut subscribed = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let (mut client, node, present) = connect(&self.pool, &self.client_id, &mut turn).await;
            if !subscribed {
                assert_eq!(client.subscribe(1, &[(&self.topic, 1)]).await, vec![1]);
                subscribed = true;
            } else if !present {
                self.tally.lock().expect("tally").sessions_lost += 1;
            }
            loop {
                match client.try_recv(Duration::from_millis(200)).await {
                    Ok(Packet::Publish(publish)) => {
                        let n: u32 = std::str::from_utf8(&publish.payload)
                            .expect("text")
                            .parse()
                            .expect("number");
                        {
                            let mut tally = self.tally.lock().expect("tally");
                            let now = Instant::now();
                            if let Some(last) = tally.last {
                                tally.longest_gap = tally.longest_gap.max(now - last);
                            }
                            tally.last = Some(now);
                            tally.got.insert(n);
                            tally.deliveries += 1;
                        }
                        // A PUBACK that cannot go out: the message comes again after the
                        // reconnect.
                        let _ = client.try_send(&packets::puback(publish.pkid)).await;
                    }
                    Ok(_) => {}
                    Err(RecvError::Timeout) => {
                        let published = self.total.load(Ordering::Acquire);
                        // Counting only those published: one that was sent but never
                        // acknowledged as the publisher stopped may have come too.
                        let done = published != u32::MAX
                            && self
                                .tally
                                .lock()
                                .expect("tally")
                                .got
                                .range(..published)
                                .count()
                                >= published as usize;
                        if done {
                            return;
                        }
                    }
                    Err(_) => {
                        self.tally.lock().expect("tally").reconnects += 1;
                        break;
                    }
                }
            }
            if self.late && self.pool.slot(node) == Slot::Draining {
                drop(client);
                let wait_until = Instant::now() + Duration::from_secs(40);
                while self.pool.slot(node) == Slot::Draining && Instant::now() < wait_until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if self.pool.slot(node) != Slot::Draining {
                    self.tally.lock().expect("tally").after_exit[node] += 1;
                }
            }
        }
    }
}

/// Publishes `0..` to `topic` at [`RATE`], each QoS 1 message until acknowledged (again on
/// another node when its node goes away), until `stop`; returns how many it published.
async fn publish(pool: Arc<Pool>, topic: String, start_turn: usize, stop: Arc<AtomicBool>) -> u32 {
    let id = unique_id("steady-pub");
    let mut turn = start_turn;
    let mut client = connect(&pool, &id, &mut turn).await.0;
    let mut next = 0u32;
    let mut pkid = 0u16;
    let period = Duration::from_millis(1000 / RATE);
    while !stop.load(Ordering::Acquire) {
        pkid = pkid.wrapping_add(1).max(1);
        let sent = client
            .try_send(&packets::publish(
                &topic,
                1,
                pkid,
                next.to_string().as_bytes(),
            ))
            .await;
        let acked = sent.is_ok()
            && loop {
                match client.try_recv(Duration::from_secs(5)).await {
                    Ok(Packet::PubAck(id)) if id == pkid => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
        if acked {
            next += 1;
            tokio::time::sleep(period).await;
        } else {
            // Its node went away: the same message again on another one (a duplicate at worst).
            client = connect(&pool, &id, &mut turn).await.0;
        }
    }
    next
}

/// The subscribers and the publisher at work on a cluster.
struct Load {
    pool: Arc<Pool>,
    total: Arc<AtomicU32>,
    tallies: Vec<Arc<Mutex<Tally>>>,
    late: Vec<bool>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    publisher: tokio::task::JoinHandle<u32>,
}

impl Load {
    /// [`SUBSCRIBERS`] subscribers spread over `nodes` round robin (those for which `late`
    /// holds wait for a drained node to exit before they reconnect), every one subscribed
    /// before the publisher, which starts on node `publisher_on`, begins.
    async fn start(nodes: &[Node], late: impl Fn(usize) -> bool, publisher_on: usize) -> Load {
        let pool = Arc::new(Pool::new(nodes));
        let topic = format!("roll/{}", unique_id("t"));
        let total = Arc::new(AtomicU32::new(u32::MAX));
        let tallies: Vec<Arc<Mutex<Tally>>> = (0..SUBSCRIBERS)
            .map(|_| Arc::new(Mutex::new(Tally::default())))
            .collect();
        let late: Vec<bool> = (0..SUBSCRIBERS).map(late).collect();
        let subscribers = tallies
            .iter()
            .enumerate()
            .map(|(i, tally)| {
                tokio::spawn(
                    Subscriber {
                        pool: pool.clone(),
                        client_id: unique_id("roller"),
                        topic: topic.clone(),
                        tally: tally.clone(),
                        total: total.clone(),
                        // `connect` counts the turn up before it picks.
                        start_turn: i + nodes.len() - 1,
                        late: late[i],
                    }
                    .run(),
                )
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut subscriptions = 0.0;
            for node in nodes {
                subscriptions += node.metric("coolpy7_subscriptions").await;
            }
            if subscriptions >= SUBSCRIBERS as f64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "subscribers not subscribed: {subscriptions}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn(publish(
            pool.clone(),
            topic,
            publisher_on + nodes.len() - 1,
            stop.clone(),
        ));
        Load {
            pool,
            total,
            tallies,
            late,
            subscribers,
            stop,
            publisher,
        }
    }

    /// Stops the publisher, waits (bounded) for every subscriber to have every message, and
    /// asserts that they do and that every reconnection found its session.
    async fn finish(self) -> Figures {
        self.stop.store(true, Ordering::Release);
        let published = self.publisher.await.expect("publisher");
        self.total.store(published, Ordering::Release);
        // Each subscriber stops once it has everything; what one still lacks after 30 s is lost.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && self.subscribers.iter().any(|s| !s.is_finished()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for subscriber in self.subscribers {
            if subscriber.is_finished() {
                subscriber.await.expect("subscriber task");
            } else {
                subscriber.abort();
            }
        }
        let mut figures = Figures {
            published,
            ..Figures::default()
        };
        for (i, tally) in self.tallies.iter().enumerate() {
            let tally = tally.lock().expect("tally");
            let missing: Vec<u32> = (0..published).filter(|n| !tally.got.contains(n)).collect();
            assert!(
                missing.is_empty(),
                "subscriber {i}: {} of {published} messages lost (first: {:?}); {} \
                 reconnections without the session",
                missing.len(),
                &missing[..missing.len().min(10)],
                tally.sessions_lost
            );
            assert_eq!(
                tally.sessions_lost, 0,
                "subscriber {i} reconnected without its session"
            );
            figures.duplicates += tally.deliveries - published as usize;
            figures.reconnects += tally.reconnects;
            let gap = if self.late[i] {
                &mut figures.longest_gap_late
            } else {
                &mut figures.longest_gap
            };
            *gap = (*gap).max(tally.longest_gap);
            for (total, n) in figures.after_exit.iter_mut().zip(tally.after_exit) {
                *total += n;
            }
        }
        figures
    }
}

#[derive(Default)]
struct Figures {
    published: u32,
    duplicates: usize,
    reconnects: usize,
    /// The longest a subscriber that reconnects at once went without a message.
    longest_gap: Duration,
    /// The same for those that waited for their node to exit.
    longest_gap_late: Duration,
    /// Reconnections after the node had exited, per node.
    after_exit: [usize; MAX_NODES],
}

impl Figures {
    fn summary(&self) -> String {
        format!(
            "{SUBSCRIBERS} subscribers x {} QoS 1 messages, all delivered; {} duplicates \
             ({:.2} %), {} reconnects, longest gap {} ms",
            self.published,
            self.duplicates,
            100.0 * self.duplicates as f64 / (SUBSCRIBERS as f64 * f64::from(self.published)),
            self.reconnects,
            self.longest_gap.as_millis()
        )
    }
}

/// Sends SIGTERM to node `k`, out of the pool first (as a pod's `/readyz` turns 503 and it
/// leaves the Service's endpoints); returns when.
fn terminate(nodes: &[Node], pool: &Pool, k: usize) -> Instant {
    pool.set(k, Slot::Draining);
    nodes[k].sigterm();
    Instant::now()
}

/// Waits for node `k`, sent SIGTERM at `since` with `-dg` `grace`, to exit, marks it gone, and
/// asserts that it exited 0 within `bound` of the signal (`why` says why that bound); returns
/// how long it took.
async fn wait_drained(
    nodes: &mut [Node],
    pool: &Pool,
    k: usize,
    since: Instant,
    grace: Duration,
    bound: Duration,
    why: &str,
) -> Duration {
    // What the operator gives a pod before SIGKILL: the grace plus 20 s.
    let kill_after = grace + Duration::from_secs(20);
    let left = kill_after.saturating_sub(since.elapsed());
    let status = nodes[k].wait_exit(left).await;
    let took = since.elapsed();
    pool.set(k, Slot::Gone);
    let log = || -> String {
        let logs = nodes[k].logs();
        logs.lines()
            .filter(|l| !l.contains(" DEBUG "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let status = status.unwrap_or_else(|| {
        panic!(
            "n{} still running {kill_after:?} after SIGTERM (-dg {grace:?}); log (no DEBUG):\n{}",
            k + 1,
            log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "n{} exit; log (no DEBUG):\n{}",
        k + 1,
        log()
    );
    assert!(
        took <= bound,
        "n{} exited {:.1} s after SIGTERM, not within {bound:?} (-dg {grace:?}; {why}); log (no \
         DEBUG):\n{}",
        k + 1,
        took.as_secs_f64(),
        log()
    );
    took
}

/// How many sessions `node` asked the others to take in when its grace ran out (from its log;
/// for the report).
fn sessions_pushed(node: &Node) -> usize {
    node.logs()
        .lines()
        .filter(|l| l.contains("asking the other nodes to take in the sessions"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("sessions=")?;
            rest.split_whitespace().next()?.parse::<usize>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_in_namespaces_loses_no_message() {
    let _lab_turn = NET_LAB_TURN.lock().await;
    // Declared first, so dropped last: the nodes stop before their namespaces go.
    let lab = NetLab::create(3);
    let key = unique_key();
    let grace = Duration::from_secs(3);
    let mut nodes = lab.start_nodes(3, &key, &["-dg", "3", "-dr", "100"]);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_full_membership(&refs, JOIN_TIMEOUT).await;
    let load = Load::start(&nodes, |_| false, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut exits = Vec::new();
    for k in 0..nodes.len() {
        let since = terminate(&nodes, &load.pool, k);
        exits.push(
            wait_drained(
                &mut nodes,
                &load.pool,
                k,
                since,
                grace,
                grace,
                "every client reconnects at once and takes its session along: nothing is left \
                 for the grace to wait for",
            )
            .await,
        );
        let config = nodes[k].restart_config();
        // Starting blocks (it waits for the log and /healthz): off the clients' threads.
        nodes[k] = tokio::task::spawn_blocking(move || Node::start(config))
            .await
            .expect("start");
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_full_membership(&refs, JOIN_TIMEOUT).await;
        load.pool.set(k, Slot::Up(nodes[k].mqtt_addr()));
        // As the StatefulSet's minReadySeconds: the node takes its share before the next goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rolled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let figures = load.finish().await;
    println!(
        "rolling restart of 3 nodes in namespaces in {:.1} s (-dg 3 s; exits {} s after \
         SIGTERM): {}",
        rolled.as_secs_f64(),
        exits
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        figures.summary()
    );
    drop(nodes);
    drop(lab);
}

/// Five nodes lose n5 and n4 under load; the second SIGTERM comes `stagger` after the first,
/// or once the first node has exited (and a second more) when `None`.
async fn scale_down_from_five_to_three(stagger: Option<Duration>) {
    let _lab_turn = NET_LAB_TURN.lock().await;
    let lab = NetLab::create(5);
    let key = unique_key();
    // 20 subscribers a node, and n4 gets about 5 more from n5: 10 a second spreads each drain
    // over 2 to 3 s, within the grace.
    let grace = Duration::from_secs(3);
    let mut nodes = lab.start_nodes(5, &key, &["-dg", "3", "-dr", "10"]);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_full_membership(&refs, JOIN_TIMEOUT).await;
    // A quarter of the subscribers come back only after their node exited; the publisher starts
    // on n5 and moves with the drains too.
    let load = Load::start(&nodes, |i| i % 4 == 0, 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The sessions of those that wait are still on the node when the grace runs out: the
    // node then has the others take them in (within 5 s, usually a few ms) and leaves.
    let bound = grace + Duration::from_secs(2);
    let why = "a quarter of its sessions wait for the grace, then move to the other nodes";
    let started = Instant::now();
    let mut exits = Vec::new();
    match stagger {
        None => {
            for k in [4, 3] {
                let since = terminate(&nodes, &load.pool, k);
                exits.push(wait_drained(&mut nodes, &load.pool, k, since, grace, bound, why).await);
                // The remaining nodes see it gone before the next drain.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Some(stagger) => {
            let first = terminate(&nodes, &load.pool, 4);
            tokio::time::sleep(stagger).await;
            let second = terminate(&nodes, &load.pool, 3);
            for (k, since) in [(4, first), (3, second)] {
                exits.push(wait_drained(&mut nodes, &load.pool, k, since, grace, bound, why).await);
            }
        }
    }
    let scaled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let figures = load.finish().await;
    for k in [4, 3] {
        assert!(
            figures.after_exit[k] > 0,
            "no subscriber reconnected after n{} exited (the test did not do what it says)",
            k + 1
        );
    }
    println!(
        "scale-down 5 -> 3 in namespaces ({}) in {:.1} s (-dg 3 s; n5 exited {:.1} s after \
         SIGTERM, n4 {:.1} s; sessions taken in by the others when the grace ran out: n5 {}, n4 \
         {}; reconnections after the exit: n5 {}, n4 {}): {}; longest gap of those that waited \
         for the exit {} ms",
        match stagger {
            None => "one after the other".to_string(),
            Some(d) => format!("second SIGTERM {} ms after the first", d.as_millis()),
        },
        scaled.as_secs_f64(),
        exits[0].as_secs_f64(),
        exits[1].as_secs_f64(),
        sessions_pushed(&nodes[4]),
        sessions_pushed(&nodes[3]),
        figures.after_exit[4],
        figures.after_exit[3],
        figures.summary(),
        figures.longest_gap_late.as_millis()
    );
    drop(nodes);
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_from_five_to_three_in_namespaces_loses_no_message() {
    scale_down_from_five_to_three(None).await;
}

/// As a StatefulSet scales down (its `Parallel` policy): the two nodes drain at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_with_overlapping_drains_loses_no_message() {
    scale_down_from_five_to_three(Some(Duration::from_millis(500))).await;
}
