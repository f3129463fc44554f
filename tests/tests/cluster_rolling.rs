//! A rolling restart under load, as `helm upgrade` does it: three nodes, 100 persistent QoS 1
//! subscribers spread over them, a publisher at a steady rate; each node in turn gets SIGTERM,
//! drains (its clients reconnect to the other nodes, as a load balancer would send them, and
//! take their sessions along), exits 0 and is started again with the same `-nid`. At the end
//! every subscriber has every message; the report says how many came twice and the longest a
//! subscriber went without one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coolpy7_tests::cluster::{start_cluster, wait_full_membership, Node, JOIN_TIMEOUT};
use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::raw::RecvError;
use coolpy7_tests::{unique_id, RawClient};

const SUBSCRIBERS: usize = 100;
/// Messages a second from the publisher.
const RATE: u64 = 40;

/// The MQTT addresses a load balancer would send clients to: the nodes that are up and not
/// draining.
#[derive(Default)]
struct Pool {
    nodes: Mutex<Vec<Option<SocketAddr>>>,
}

impl Pool {
    /// The `turn`-th live node (round robin), if any.
    fn pick(&self, turn: usize) -> Option<SocketAddr> {
        let nodes = self.nodes.lock().expect("pool");
        let live: Vec<SocketAddr> = nodes.iter().flatten().copied().collect();
        (!live.is_empty()).then(|| live[turn % live.len()])
    }

    fn set(&self, index: usize, addr: Option<SocketAddr>) {
        self.nodes.lock().expect("pool")[index] = addr;
    }
}

/// What one subscriber got.
#[derive(Default)]
struct Tally {
    got: BTreeSet<u32>,
    deliveries: usize,
    last: Option<Instant>,
    longest_gap: Duration,
    reconnects: usize,
}

/// Connects `client_id` (clean session 0) to a node of the pool, trying the next on a refusal;
/// bounded.
async fn connect(pool: &Pool, client_id: &str, turn: &mut usize) -> RawClient {
    let connect = Connect::v311(client_id).clean_session(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        *turn += 1;
        let Some(addr) = pool.pick(*turn) else {
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
        let mut client = RawClient::over(Box::new(stream), addr);
        if client.try_send(&connect.encode()).await.is_err() {
            continue;
        }
        match client.try_recv(Duration::from_secs(5)).await {
            Ok(Packet::ConnAck { code: 0, .. }) => return client,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("{client_id}: no node let it in within 30 s");
}

/// A subscriber that stays subscribed to `topic` through the restarts until it has `until`
/// messages' worth or `stop` is set and it has waited for stragglers.
async fn subscribe(
    pool: Arc<Pool>,
    client_id: String,
    topic: String,
    tally: Arc<Mutex<Tally>>,
    total: Arc<std::sync::atomic::AtomicU32>,
    start_turn: usize,
) {
    let mut turn = start_turn;
    let mut subscribed = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let mut client = connect(&pool, &client_id, &mut turn).await;
        if !subscribed {
            assert_eq!(client.subscribe(1, &[(&topic, 1)]).await, vec![1]);
            subscribed = true;
        }
        loop {
            match client.try_recv(Duration::from_millis(200)).await {
                Ok(Packet::Publish(publish)) => {
                    let n: u32 = std::str::from_utf8(&publish.payload)
                        .expect("text")
                        .parse()
                        .expect("number");
                    {
                        let mut tally = tally.lock().expect("tally");
                        let now = Instant::now();
                        if let Some(last) = tally.last {
                            tally.longest_gap = tally.longest_gap.max(now - last);
                        }
                        tally.last = Some(now);
                        tally.got.insert(n);
                        tally.deliveries += 1;
                    }
                    // A PUBACK that cannot go out: the message comes again after the reconnect.
                    let _ = client.try_send(&packets::puback(publish.pkid)).await;
                }
                Ok(_) => {}
                Err(RecvError::Timeout) => {
                    let published = total.load(std::sync::atomic::Ordering::Acquire);
                    let done = published != u32::MAX
                        && tally.lock().expect("tally").got.len() >= published as usize;
                    if done {
                        return;
                    }
                }
                Err(_) => {
                    tally.lock().expect("tally").reconnects += 1;
                    break;
                }
            }
        }
    }
}

/// Publishes `0..` to `topic` at [`RATE`], each QoS 1 message until acknowledged (again on
/// another node when its node goes away), until `stop`; returns how many it published.
async fn publish(pool: Arc<Pool>, topic: String, stop: Arc<std::sync::atomic::AtomicBool>) -> u32 {
    let id = unique_id("roller-pub");
    let mut turn = 0;
    let mut client = connect(&pool, &id, &mut turn).await;
    let mut next = 0u32;
    let mut pkid = 0u16;
    let period = Duration::from_millis(1000 / RATE);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
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
            client = connect(&pool, &id, &mut turn).await;
        }
    }
    next
}

#[tokio::test]
async fn a_rolling_restart_under_load_loses_no_message() {
    let mut nodes = start_cluster(3, &["-dg", "2", "-dr", "100"]).await;
    let pool = Arc::new(Pool::default());
    *pool.nodes.lock().expect("pool") = nodes.iter().map(|n| Some(n.mqtt_addr())).collect();
    let topic = format!("roll/{}", unique_id("t"));
    let total = Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..SUBSCRIBERS)
        .map(|_| Arc::new(Mutex::new(Tally::default())))
        .collect();
    let mut subscribers = Vec::new();
    for (i, tally) in tallies.iter().enumerate() {
        subscribers.push(tokio::spawn(subscribe(
            pool.clone(),
            unique_id("roller"),
            topic.clone(),
            tally.clone(),
            total.clone(),
            i,
        )));
    }
    // Every subscriber subscribed before the first message.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sessions: f64 = {
            let mut sum = 0.0;
            for node in &nodes {
                sum += node.metric("coolpy7_subscriptions").await;
            }
            sum
        };
        if sessions >= SUBSCRIBERS as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers not subscribed: {sessions}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn(publish(pool.clone(), topic.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    for k in 0..nodes.len() {
        // The load balancer stops sending clients there as /readyz turns.
        pool.set(k, None);
        nodes[k].sigterm();
        let status = nodes[k]
            .wait_exit(Duration::from_secs(40))
            .await
            .unwrap_or_else(|| panic!("n{} still running after its drain", k + 1));
        assert_eq!(
            status.code(),
            Some(0),
            "n{} exit; log:\n{}",
            k + 1,
            nodes[k].logs()
        );
        let config = nodes[k].restart_config();
        nodes[k] = Node::start(config);
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_full_membership(&refs, JOIN_TIMEOUT).await;
        pool.set(k, Some(nodes[k].mqtt_addr()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rolled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let published = publisher.await.expect("publisher");
    total.store(published, std::sync::atomic::Ordering::Release);
    // Each subscriber stops once it has everything; what one still lacks after 30 s is lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && subscribers.iter().any(|s| !s.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for subscriber in subscribers {
        if subscriber.is_finished() {
            subscriber.await.expect("subscriber task");
        } else {
            subscriber.abort();
        }
    }
    let mut duplicates = 0;
    let mut longest_gap = Duration::ZERO;
    let mut reconnects = 0;
    for (i, tally) in tallies.iter().enumerate() {
        let tally = tally.lock().expect("tally");
        let missing: Vec<u32> = (0..published).filter(|n| !tally.got.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "subscriber {i}: {} of {published} messages lost (first: {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        duplicates += tally.deliveries - published as usize;
        longest_gap = longest_gap.max(tally.longest_gap);
        reconnects += tally.reconnects;
    }
    println!(
        "rolling restart of 3 nodes in {:.1} s: {SUBSCRIBERS} subscribers x {published} QoS 1 \
         messages, all delivered; {duplicates} duplicates ({:.2} %), {reconnects} reconnects, \
         longest gap {} ms",
        rolled.as_secs_f64(),
        100.0 * duplicates as f64 / (SUBSCRIBERS as f64 * published as f64),
        longest_gap.as_millis()
    );
}
