//! Harness for the cluster tests: nodes started with cluster flags ([`NodeConfig`], [`Node`]),
//! their `/brokers` view ([`BrokersView`]), counters that may be absent before their first
//! increment ([`Node::counter`]), bounded polling ([`wait_until`], [`wait_for`]), forged sync
//! datagrams ([`sync_datagram`]), a loopback packet capture and raw re-injection for replay tests
//! ([`UdpCapture`], [`resend_ip_packet`]) and a throw-away network of namespaces for partition
//! tests ([`NetLab`]).
//!
//! The contract under test (flags, log lines, `/brokers`, `/readyz`, metrics, the sync wire
//! format) is the one the README's cluster section describes; nothing here links the broker.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::broker::run_to_exit;
use crate::broker::{Broker, START_TIMEOUT};
use crate::client::TestClient;
use crate::http;
use crate::{unique_id, QoS, QUIET, TIMEOUT};

/// Log marker of the gossip (membership) socket, followed by its bound address.
pub const GOSSIP_MARKER: &str = "cluster gossip on udp ";
/// Log marker of the sync (forwarded PUBLISH) socket, followed by its bound address.
pub const SYNC_MARKER: &str = "cluster sync on udp ";

/// The default `-syst` token, which `/brokers` requires.
pub const DEFAULT_TOKEN: &str = "coolpy7";

/// Bound for nodes to find each other after start (or after a heal or restart).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound for the others to notice a node has failed.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(50);

/// Failure-detector timings small enough for tests: probe every 300 ms, 100 ms probe round trip,
/// suspect-to-down after 1 s; plus re-join attempts to absent seeds every second.
pub const FAST_TIMINGS: &[&str] = &["-cpp", "300", "-cpr", "100", "-csd", "1000"];

/// Size of a forwarded record without MQTT 5 properties or expiry (the same in sync versions 1
/// and 2): flags (1) + topic length (2) + topic + payload length (4) + payload.
pub fn record_size(topic: &str, payload_len: usize) -> usize {
    7 + topic.len() + payload_len
}

/// A cluster key unique to this test process and call, so that concurrently running tests can
/// never accept each other's datagrams.
pub fn unique_key() -> String {
    unique_id("cluster-key")
}

// ---------------------------------------------------------------------------------------------
// Polling.

/// Polls `probe` every [`POLL`] until it returns `Ok`, at most `timeout` (the number of polls is
/// bounded by the time). Returns the value and how long it took; panics with `desc` and the last
/// `Err` (why the condition did not hold yet) otherwise.
pub async fn wait_for<T, F, Fut>(desc: &str, timeout: Duration, mut probe: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut polls: u64 = 0;
    loop {
        polls += 1;
        let last = match probe().await {
            Ok(value) => return (value, start.elapsed()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {:?} ({polls} polls) waiting for {desc}; last state: {last}",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` every [`POLL`] until it holds, at most `timeout`; returns how long it took, and
/// panics with `desc` if it never holds.
pub async fn wait_until<F, Fut>(desc: &str, timeout: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(desc, timeout, || {
        let check = cond();
        async move {
            if check.await {
                Ok(())
            } else {
                Err("condition still false".to_string())
            }
        }
    })
    .await
    .1
}

// ---------------------------------------------------------------------------------------------
// Nodes.

/// How to start one cluster node. Built with [`NodeConfig::new`] and the chained setters; turned
/// into command-line flags by [`NodeConfig::args`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The value of `-nid` (a name, or `name@addr`).
    pub nid: String,
    /// `-csk`; `None` leaves the flag out.
    pub key: Option<String>,
    /// `-mbs` entries (`host:port`); empty leaves the flag out.
    pub seeds: Vec<String>,
    /// `-crp`; 0 = ephemeral.
    pub gossip_port: u16,
    /// `-csp`; 0 = ephemeral.
    pub sync_port: u16,
    /// Pass [`FAST_TIMINGS`] (the default) or leave the broker's default timings.
    pub fast: bool,
    /// `-ol` (re-join interval, seconds); `None` leaves the broker's default.
    pub rejoin_secs: Option<u32>,
    /// `-syst`, the token of `/brokers`.
    pub token: String,
    /// `-l` and `-hl`; `None` lets the harness pick `127.0.0.1:0`.
    pub listen: Option<(String, String)>,
    /// A command the binary runs under (e.g. `ip netns exec NS`).
    pub prefix: Vec<String>,
    /// Any other flags, appended last.
    pub extra: Vec<String>,
    /// Environment variables for the broker (e.g. `COOLPY7_CSK`).
    pub env: Vec<(String, String)>,
}

impl NodeConfig {
    /// Node `nid` with cluster key `key`, ephemeral ports, fast timings, `-ol 1`, no seeds.
    pub fn new(nid: &str, key: &str) -> NodeConfig {
        NodeConfig {
            nid: nid.to_string(),
            key: Some(key.to_string()),
            seeds: Vec::new(),
            gossip_port: 0,
            sync_port: 0,
            fast: true,
            rejoin_secs: Some(1),
            token: DEFAULT_TOKEN.to_string(),
            listen: None,
            prefix: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Leaves `-csk` out (e.g. to give the key as `COOLPY7_CSK` with [`NodeConfig::env`]).
    pub fn without_key_flag(mut self) -> NodeConfig {
        self.key = None;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> NodeConfig {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn seed(mut self, addr: impl ToString) -> NodeConfig {
        self.seeds.push(addr.to_string());
        self
    }

    pub fn gossip_port(mut self, port: u16) -> NodeConfig {
        self.gossip_port = port;
        self
    }

    pub fn sync_port(mut self, port: u16) -> NodeConfig {
        self.sync_port = port;
        self
    }

    /// Use the broker's default failure-detector timings instead of [`FAST_TIMINGS`], and its
    /// default `-ol`.
    pub fn default_timings(mut self) -> NodeConfig {
        self.fast = false;
        self.rejoin_secs = None;
        self
    }

    /// `-syst`: the token `/brokers` requires.
    pub fn token(mut self, token: &str) -> NodeConfig {
        self.token = token.to_string();
        self
    }

    pub fn listen(mut self, mqtt: &str, http: &str) -> NodeConfig {
        self.listen = Some((mqtt.to_string(), http.to_string()));
        self
    }

    pub fn prefix(mut self, prefix: &[String]) -> NodeConfig {
        self.prefix = prefix.to_vec();
        self
    }

    pub fn arg(mut self, arg: &str) -> NodeConfig {
        self.extra.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> NodeConfig {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The node name: `-nid` without any `@addr`.
    pub fn name(&self) -> &str {
        self.nid.split('@').next().unwrap_or(&self.nid)
    }

    /// The broker flags for this configuration.
    pub fn args_vec(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-nid".into(), self.nid.clone()];
        if let Some(key) = &self.key {
            args.extend(["-csk".into(), key.clone()]);
        }
        if !self.seeds.is_empty() {
            args.extend(["-mbs".into(), self.seeds.join(",")]);
        }
        args.extend([
            "-crp".into(),
            self.gossip_port.to_string(),
            "-csp".into(),
            self.sync_port.to_string(),
        ]);
        if let Some(secs) = self.rejoin_secs {
            args.extend(["-ol".into(), secs.to_string()]);
        }
        if self.fast {
            args.extend(FAST_TIMINGS.iter().map(|a| a.to_string()));
        }
        if self.token != DEFAULT_TOKEN {
            args.extend(["-syst".into(), self.token.clone()]);
        }
        if let Some((mqtt, http)) = &self.listen {
            args.extend(["-l".into(), mqtt.clone(), "-hl".into(), http.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// A running cluster node: the [`Broker`] (which it dereferences to), its configuration and the
/// gossip and sync addresses it logged.
pub struct Node {
    pub broker: Broker,
    pub config: NodeConfig,
    pub gossip: SocketAddr,
    pub sync: SocketAddr,
}

impl Deref for Node {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Broker {
        &mut self.broker
    }
}

/// Waits (at most [`START_TIMEOUT`]) for `marker` followed by an address in `broker`'s log.
fn wait_logged_address(broker: &mut Broker, marker: &str) -> SocketAddr {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(addr) = broker.logged_address(marker) {
            return addr;
        }
        if let Some(status) = broker.try_exit_status() {
            panic!(
                "coolpy7 {:?} exited with {status} before logging {marker:?}; log:\n{}",
                broker.args(),
                broker.logs()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "coolpy7 {:?} did not log a line containing {marker:?}ADDR within \
                 {START_TIMEOUT:?}; log:\n{}",
                broker.args(),
                broker.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Node {
    /// Starts the node (waiting for `/healthz` as [`Broker::start`] does) and for its gossip and
    /// sync lines in the log.
    pub fn start(config: NodeConfig) -> Node {
        let args = config.args_vec();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let prefix: Vec<&str> = config.prefix.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let broker = Broker::start_with_prefix(&prefix, &args, &env);
        Node::from_broker(broker, config)
    }

    /// Starts `coolpy7` in a network namespace (`prefix`) with exactly `args` (plus the
    /// harness's `--log-level`), listening on every interface (`-l :1883 -hl :8081`, the
    /// defaults, given explicitly so that the harness does not pick loopback); the test reaches
    /// it at `reach`. `name` and `key` are what `args` says, for the helpers.
    pub fn start_exact(
        prefix: &[String],
        args: &[String],
        reach: std::net::IpAddr,
        name: &str,
        key: &str,
    ) -> Node {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["-l", ":1883", "-hl", ":8081"]);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let broker = Broker::start_reached_at(&prefix, &all, &[], reach);
        let mut node = Node::from_broker(broker, NodeConfig::new(name, key));
        for addr in [&mut node.gossip, &mut node.sync] {
            if addr.ip().is_unspecified() {
                addr.set_ip(reach);
            }
        }
        node
    }

    /// Like [`Node::start`] without waiting for `/healthz` (only for the listener lines).
    pub fn start_without_readiness_wait(config: NodeConfig) -> Node {
        assert!(
            config.prefix.is_empty() && config.env.is_empty(),
            "no prefix or environment support here"
        );
        let args = config.args_vec();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Node::from_broker(Broker::start_without_readiness_wait(&args), config)
    }

    fn from_broker(mut broker: Broker, config: NodeConfig) -> Node {
        let gossip = wait_logged_address(&mut broker, GOSSIP_MARKER);
        let sync = wait_logged_address(&mut broker, SYNC_MARKER);
        if config.gossip_port != 0 {
            assert_eq!(
                gossip.port(),
                config.gossip_port,
                "the logged gossip port is the -crp port"
            );
        }
        if config.sync_port != 0 {
            assert_eq!(
                sync.port(),
                config.sync_port,
                "the logged sync port is the -csp port"
            );
        }
        Node {
            broker,
            config,
            gossip,
            sync,
        }
    }

    /// The node name (`-nid` without `@addr`).
    pub fn name(&self) -> &str {
        self.config.name()
    }

    /// The configuration to start this node again on the same gossip and sync ports.
    pub fn restart_config(&self) -> NodeConfig {
        self.config
            .clone()
            .gossip_port(self.gossip.port())
            .sync_port(self.sync.port())
    }

    /// `GET /brokers?token=...` parsed; `Err` on a non-200 answer or a document that does not
    /// follow the contract.
    pub async fn brokers(&self) -> Result<BrokersView, String> {
        let (status, body) = self
            .http_get(&format!("/brokers?token={}", self.config.token))
            .await;
        if status != 200 {
            return Err(format!(
                "{}: GET /brokers answered {status}: {body}",
                self.name()
            ));
        }
        BrokersView::parse(&body).map_err(|e| format!("{}: /brokers {e}: {body}", self.name()))
    }

    /// [`Node::brokers`], panicking on an error.
    pub async fn expect_brokers(&self) -> BrokersView {
        self.brokers()
            .await
            .unwrap_or_else(|e| panic!("/brokers of {}: {e}", self.name()))
    }

    /// The status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        self.http_get("/readyz").await.0
    }

    /// The value of `series`, 0 when it is absent (counters may appear on first increment).
    pub async fn counter(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        match http::find_metric(&text, series) {
            Ok(value) => value.unwrap_or(0.0),
            Err(e) => panic!("/metrics of {} is not valid ({e}):\n{text}", self.name()),
        }
    }

    /// The sum over every sample of metric `name` whose labels include all of `labels` (0 when
    /// there is none), e.g. `("coolpy7_cluster_dropped_total", &[("reason", "too_big")])` for any
    /// port.
    pub async fn counter_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_text().await;
        let samples = http::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("/metrics of {} is not valid ({e}):\n{text}", self.name()));
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every `coolpy7_cluster_dropped_total` sample that is not zero, for diagnostics.
    pub async fn drops(&self) -> String {
        let text = self.metrics_text().await;
        let samples = http::parse_prometheus(&text).unwrap_or_default();
        let parts: Vec<String> = samples
            .iter()
            .filter(|s| s.name == "coolpy7_cluster_dropped_total" && s.value != 0.0)
            .map(|s| format!("{:?}={}", s.labels, s.value))
            .collect();
        format!("{}: [{}]", self.name(), parts.join(", "))
    }

    /// The state of member `name` as this node sees it (not counting its own entry), or `None`
    /// when it is not listed.
    pub async fn member_state(&self, name: &str) -> Result<Option<String>, String> {
        let view = self.brokers().await?;
        Ok(view.remote(name).map(|m| m.state.clone()))
    }

    /// Whether the log has a line containing every one of `parts`.
    pub fn log_has_line(&self, parts: &[&str]) -> bool {
        self.log_lines_with(parts) > 0
    }

    /// How many log lines contain every one of `parts`.
    pub fn log_lines_with(&self, parts: &[&str]) -> usize {
        self.logs()
            .lines()
            .filter(|line| parts.iter().all(|p| line.contains(p)))
            .count()
    }
}

/// One entry of `/brokers` `members`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    pub node_id: String,
    pub gossip_addr: String,
    pub sync_addr: String,
    pub mqtt_port: u64,
    pub state: String,
    pub version: String,
    pub uptime_secs: u64,
    pub local: bool,
}

/// The `/brokers` document.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokersView {
    pub cluster: bool,
    pub node_id: Option<String>,
    pub duplicate_node_id: bool,
    pub members: Vec<MemberView>,
}

fn field<'a>(object: &'a Value, name: &str) -> Result<&'a Value, String> {
    object
        .get(name)
        .ok_or_else(|| format!("has no field {name:?} in {object}"))
}

fn string_field(object: &Value, name: &str) -> Result<String, String> {
    field(object, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("field {name:?} is not a string in {object}"))
}

fn u64_field(object: &Value, name: &str) -> Result<u64, String> {
    field(object, name)?
        .as_u64()
        .ok_or_else(|| format!("field {name:?} is not an unsigned integer in {object}"))
}

fn bool_field(object: &Value, name: &str) -> Result<bool, String> {
    field(object, name)?
        .as_bool()
        .ok_or_else(|| format!("field {name:?} is not a boolean in {object}"))
}

impl BrokersView {
    /// Parses the document, requiring every field of the contract.
    pub fn parse(body: &str) -> Result<BrokersView, String> {
        let doc: Value = serde_json::from_str(body).map_err(|e| format!("is not JSON ({e})"))?;
        let node_id = match field(&doc, "node_id")? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => return Err(format!("node_id is neither null nor a string: {other}")),
        };
        let members = field(&doc, "members")?
            .as_array()
            .ok_or("members is not an array")?
            .iter()
            .map(|m| {
                Ok(MemberView {
                    node_id: string_field(m, "node_id")?,
                    gossip_addr: string_field(m, "gossip_addr")?,
                    sync_addr: string_field(m, "sync_addr")?,
                    mqtt_port: u64_field(m, "mqtt_port")?,
                    state: string_field(m, "state")?,
                    version: string_field(m, "version")?,
                    uptime_secs: u64_field(m, "uptime_secs")?,
                    local: bool_field(m, "local")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        for m in &members {
            if !matches!(m.state.as_str(), "up" | "suspect" | "down") {
                return Err(format!("member state {:?} is not up/suspect/down", m.state));
            }
        }
        Ok(BrokersView {
            cluster: bool_field(&doc, "cluster")?,
            node_id,
            duplicate_node_id: bool_field(&doc, "duplicate_node_id")?,
            members,
        })
    }

    /// The entry for `name` that is not the local node, if any.
    pub fn remote(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| !m.local && m.node_id == name)
    }

    /// The local node's entry, if any.
    pub fn local(&self) -> Option<&MemberView> {
        self.members.iter().find(|m| m.local)
    }

    /// `name=state` for every member, for messages.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "{}@{}={}{}",
                    m.node_id,
                    m.gossip_addr,
                    m.state,
                    if m.local { "(local)" } else { "" }
                )
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }
}

/// What a node should see of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Listed with state `up`.
    Up,
    /// Listed as `down`, or no longer listed at all.
    Gone,
}

/// Waits until `observer` sees `name` as `want`; returns how long it took.
pub async fn wait_member(observer: &Node, name: &str, want: Seen, timeout: Duration) -> Duration {
    let desc = format!("{} to see {name} {want:?}", observer.name());
    let (state, took) = wait_for(&desc, timeout, || async move {
        let view = observer.brokers().await?;
        let state = view.remote(name).map(|m| m.state.clone());
        let ok = match want {
            Seen::Up => state.as_deref() == Some("up"),
            Seen::Gone => matches!(state.as_deref(), None | Some("down")),
        };
        if ok {
            Ok(state)
        } else {
            Err(view.summary())
        }
    })
    .await;
    println!(
        "{} saw {name} {want:?} (state {}) after {:.2} s",
        observer.name(),
        state.as_deref().unwrap_or("not listed"),
        took.as_secs_f64()
    );
    took
}

/// Waits until every node in `nodes` sees every other one as `up`; returns how long it took.
pub async fn wait_full_membership(nodes: &[&Node], timeout: Duration) -> Duration {
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_string()).collect();
    let (_, took) = wait_for("full membership", timeout, || {
        let names = names.clone();
        async move {
            let mut missing = Vec::new();
            for node in nodes {
                let view = node.brokers().await?;
                for name in names.iter().filter(|n| *n != node.name()) {
                    if view.remote(name).map(|m| m.state.as_str()) != Some("up") {
                        missing.push(format!("{} sees {}", node.name(), view.summary()));
                        break;
                    }
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(missing.join("; "))
            }
        }
    })
    .await;
    println!(
        "full membership of {names:?} after {:.2} s",
        took.as_secs_f64()
    );
    took
}

/// Starts `n` nodes `n1..=n{n}` with the same fresh key, fast timings and `extra` flags; `n1`
/// has no seeds, the others seed on `n1`'s gossip address. Waits for full membership.
pub async fn start_cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    let key = unique_key();
    let first = Node::start(NodeConfig::new("n1", &key).args(extra));
    let seed = first.gossip;
    let mut nodes = vec![first];
    for i in 2..=n {
        nodes.push(Node::start(
            NodeConfig::new(&format!("n{i}"), &key)
                .seed(seed)
                .args(extra),
        ));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_full_membership(&refs, JOIN_TIMEOUT).await;
    nodes
}

/// Receives exactly one PUBLISH of `payload` on `topic` (at `qos`, retain 0) and nothing more
/// within [`QUIET`].
pub async fn expect_exactly_one(client: &mut TestClient, topic: &str, payload: &[u8], qos: QoS) {
    let got = client.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.qos, got.retain),
        (topic, payload, qos, false),
        "client {:?}: (topic, payload, qos, retain) of the delivery",
        client.id()
    );
    client.expect_no_publish(QUIET).await;
}

/// Sends signal `signal` (e.g. `libc::SIGKILL`) to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}) failed: {}",
        io::Error::last_os_error()
    );
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    socket.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------------------------
// Datagrams.

/// One record of a sync publish batch.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub payload: Vec<u8>,
    /// Version 2: the seconds of Message Expiry left when sent (flag bit 3).
    pub expiry: Option<u32>,
    /// Version 2: the MQTT 5 properties, in wire form without their length (flag bit 4; empty
    /// = absent).
    pub properties: Vec<u8>,
}

/// A sync datagram (version 1, kind 1 = publish batch) as the contract describes it, ending with
/// `tag` (which the test cannot compute, so it is always wrong). Version 1 records carry no
/// expiry or properties.
pub fn sync_datagram(
    origin: (&str, u64),
    destination: (&str, u64),
    sequence: u64,
    records: &[Record],
    tag: &[u8; 32],
) -> Vec<u8> {
    sync_datagram_version(1, origin, destination, sequence, records, tag)
}

/// A sync datagram of `version` (1 or 2): version 2 writes each record's expiry and properties
/// when present.
pub fn sync_datagram_version(
    version: u8,
    origin: (&str, u64),
    destination: (&str, u64),
    sequence: u64,
    records: &[Record],
    tag: &[u8; 32],
) -> Vec<u8> {
    let mut out = vec![version, 1u8];
    for (id, epoch) in [origin, destination] {
        out.push(u8::try_from(id.len()).expect("node id up to 255 bytes"));
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
    }
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(
        &u16::try_from(records.len())
            .expect("record count fits u16")
            .to_be_bytes(),
    );
    for record in records {
        let extras = version >= 2;
        let expiry = record.expiry.filter(|_| extras);
        let properties = !record.properties.is_empty() && extras;
        assert!(
            extras || (record.expiry.is_none() && record.properties.is_empty()),
            "version 1 has no room for an expiry or properties"
        );
        out.push(
            (record.qos & 0b11)
                | if record.retain { 0b100 } else { 0 }
                | if expiry.is_some() { 0b1000 } else { 0 }
                | if properties { 0b1_0000 } else { 0 },
        );
        out.extend_from_slice(
            &u16::try_from(record.topic.len())
                .expect("topic fits u16")
                .to_be_bytes(),
        );
        out.extend_from_slice(record.topic.as_bytes());
        if let Some(secs) = expiry {
            out.extend_from_slice(&secs.to_be_bytes());
        }
        if properties {
            out.extend_from_slice(
                &u16::try_from(record.properties.len())
                    .expect("properties fit u16")
                    .to_be_bytes(),
            );
            out.extend_from_slice(&record.properties);
        }
        out.extend_from_slice(
            &u32::try_from(record.payload.len())
                .expect("payload fits u32")
                .to_be_bytes(),
        );
        out.extend_from_slice(&record.payload);
    }
    out.extend_from_slice(tag);
    out
}

/// The two cluster ports; each has its own key derived from `-csk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Gossip,
    Sync,
}

/// `body` followed by the HMAC-SHA256 tag a node with cluster key `cluster_key` puts on a
/// datagram for `port`: the port's key is HMAC-SHA256(`-csk`, label), the label being
/// `coolpy7 cluster gossip v1` or `coolpy7 cluster sync v1`, and the tag is HMAC-SHA256(port
/// key, body). This is what someone who holds the key (or a buggy peer) can send.
pub fn seal(port: Port, cluster_key: &str, body: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    type HmacSha256 = Hmac<sha2::Sha256>;
    let label: &[u8] = match port {
        Port::Gossip => b"coolpy7 cluster gossip v1",
        Port::Sync => b"coolpy7 cluster sync v1",
    };
    let port_key = <HmacSha256 as KeyInit>::new_from_slice(cluster_key.as_bytes())
        .expect("HMAC takes keys of any length")
        .chain_update(label)
        .finalize()
        .into_bytes();
    let tag = <HmacSha256 as KeyInit>::new_from_slice(&port_key)
        .expect("HMAC takes keys of any length")
        .chain_update(body)
        .finalize()
        .into_bytes();
    let mut out = body.to_vec();
    out.extend_from_slice(&tag);
    out
}

/// A sync publish batch as [`sync_datagram`] builds it, signed with `cluster_key`.
pub fn signed_sync_datagram(
    cluster_key: &str,
    origin: (&str, u64),
    destination: (&str, u64),
    sequence: u64,
    records: &[Record],
) -> Vec<u8> {
    let unsigned = sync_datagram(origin, destination, sequence, records, &[0; 32]);
    seal(Port::Sync, cluster_key, &unsigned[..unsigned.len() - 32])
}

/// A sync publish batch of `version` as [`sync_datagram_version`] builds it, signed with
/// `cluster_key`.
pub fn signed_sync_datagram_version(
    version: u8,
    cluster_key: &str,
    origin: (&str, u64),
    destination: (&str, u64),
    sequence: u64,
    records: &[Record],
) -> Vec<u8> {
    let unsigned = sync_datagram_version(version, origin, destination, sequence, records, &[0; 32]);
    seal(Port::Sync, cluster_key, &unsigned[..unsigned.len() - 32])
}

/// A gossip datagram's envelope: `[1][kind][sender id len][sender id][sender boot u64][seq u64]
/// [body][tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipEnvelope {
    pub kind: u8,
    pub sender: String,
    pub epoch: u64,
    pub sequence: u64,
    pub body: Vec<u8>,
}

impl GossipEnvelope {
    /// Parses a gossip datagram (its tag is not checked, only that 32 bytes of it are there).
    pub fn parse(datagram: &[u8]) -> Result<GossipEnvelope, String> {
        let body_end = datagram.len().checked_sub(32).ok_or("shorter than a tag")?;
        let d = &datagram[..body_end];
        let [version, kind, id_len, rest @ ..] = d else {
            return Err("truncated header".into());
        };
        if *version != 1 {
            return Err(format!("version {version}, want 1"));
        }
        let id_len = usize::from(*id_len);
        if rest.len() < id_len + 16 {
            return Err("truncated sender, boot or sequence".into());
        }
        let sender = String::from_utf8(rest[..id_len].to_vec())
            .map_err(|e| format!("sender id not UTF-8: {e}"))?;
        let number = |at: usize| u64::from_be_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
        Ok(GossipEnvelope {
            kind: *kind,
            sender,
            epoch: number(id_len),
            sequence: number(id_len + 8),
            body: rest[id_len + 16..].to_vec(),
        })
    }

    /// The datagram, signed with `cluster_key`.
    pub fn signed(&self, cluster_key: &str) -> Vec<u8> {
        let mut out = vec![1, self.kind];
        out.push(u8::try_from(self.sender.len()).expect("node id up to 255 bytes"));
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.body);
        seal(Port::Gossip, cluster_key, &out)
    }
}

/// A parsed sync publish batch, after checking the version and kind bytes and that exactly a
/// 32-byte tag follows the records.
#[derive(Debug)]
pub struct SyncBatch {
    /// 1 or 2.
    pub version: u8,
    pub origin: String,
    pub epoch: u64,
    pub destination: String,
    pub destination_epoch: u64,
    pub sequence: u64,
    pub records: Vec<Record>,
}

/// Parses a sync datagram as the contract describes it.
pub fn parse_sync_datagram(datagram: &[u8]) -> Result<SyncBatch, String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err(format!("truncated at {what}"));
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn uint(&mut self, n: usize, what: &str) -> Result<u64, String> {
            Ok(self
                .take(n, what)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
    }
    let mut r = Reader(datagram);
    let version = r.uint(1, "version")? as u8;
    let kind = r.uint(1, "kind")?;
    if !matches!(version, 1 | 2) || kind != 1 {
        return Err(format!("version {version} kind {kind}, want 1 or 2, and 1"));
    }
    let id_len = r.uint(1, "origin id length")? as usize;
    let origin = String::from_utf8(r.take(id_len, "origin id")?.to_vec())
        .map_err(|e| format!("origin id not UTF-8: {e}"))?;
    let epoch = r.uint(8, "epoch")?;
    let id_len = r.uint(1, "destination id length")? as usize;
    let destination = String::from_utf8(r.take(id_len, "destination id")?.to_vec())
        .map_err(|e| format!("destination id not UTF-8: {e}"))?;
    let destination_epoch = r.uint(8, "destination epoch")?;
    let sequence = r.uint(8, "sequence")?;
    let count = r.uint(2, "record count")?;
    let mut records = Vec::new();
    for i in 0..count {
        let flags = r.uint(1, &format!("record {i} flags"))? as u8;
        let known = if version >= 2 { 0b1_1111 } else { 0b111 };
        if flags & !known != 0 {
            return Err(format!(
                "record {i} flags {flags:#010b} in version {version}"
            ));
        }
        let topic_len = r.uint(2, &format!("record {i} topic length"))? as usize;
        let topic = String::from_utf8(r.take(topic_len, "topic")?.to_vec())
            .map_err(|e| format!("topic not UTF-8: {e}"))?;
        let expiry = if flags & 0b1000 != 0 {
            Some(r.uint(4, &format!("record {i} expiry"))? as u32)
        } else {
            None
        };
        let properties = if flags & 0b1_0000 != 0 {
            let len = r.uint(2, &format!("record {i} properties length"))? as usize;
            r.take(len, "properties")?.to_vec()
        } else {
            Vec::new()
        };
        let payload_len = r.uint(4, &format!("record {i} payload length"))? as usize;
        let payload = r.take(payload_len, "payload")?.to_vec();
        records.push(Record {
            qos: flags & 0b11,
            retain: flags & 0b100 != 0,
            topic,
            payload,
            expiry,
            properties,
        });
    }
    if r.0.len() != 32 {
        return Err(format!(
            "{} bytes after the records, want a 32-byte tag",
            r.0.len()
        ));
    }
    Ok(SyncBatch {
        version,
        origin,
        epoch,
        destination,
        destination_epoch,
        sequence,
        records,
    })
}

/// A link segment (sync version 3, kind 2) as the contract describes it: the parties, the link
/// and segment numbers, what the sender had acknowledged, and the stream bytes between them
/// and the 32-byte tag.
#[derive(Debug, Clone)]
pub struct LinkSegment {
    pub origin: String,
    pub epoch: u64,
    pub destination: String,
    pub destination_epoch: u64,
    pub link: u64,
    pub seq: u64,
    /// Every segment up to this one was acknowledged when it was sent.
    pub sender_acked: u64,
    pub data: Vec<u8>,
}

/// Parses a link segment datagram.
pub fn parse_link_segment(datagram: &[u8]) -> Result<LinkSegment, String> {
    let (version, kind) = match datagram {
        [version, kind, ..] => (*version, *kind),
        _ => return Err("shorter than two bytes".into()),
    };
    if (version, kind) != (3, 2) {
        return Err(format!("version {version} kind {kind}, want 3 and 2"));
    }
    let mut at = 2;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        let part = datagram
            .get(at..at + n)
            .ok_or_else(|| format!("truncated at {what}"))?;
        at += n;
        Ok(part)
    };
    let number = |bytes: &[u8]| bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let id_len = usize::from(take(1, "origin id length")?[0]);
    let origin = String::from_utf8_lossy(take(id_len, "origin id")?).into_owned();
    let epoch = number(take(8, "origin epoch")?);
    let id_len = usize::from(take(1, "destination id length")?[0]);
    let destination = String::from_utf8_lossy(take(id_len, "destination id")?).into_owned();
    let destination_epoch = number(take(8, "destination epoch")?);
    let link = number(take(8, "link")?);
    let seq = number(take(8, "segment number")?);
    let sender_acked = number(take(8, "acknowledged up to")?);
    let end = datagram
        .len()
        .checked_sub(32)
        .filter(|&end| end >= at)
        .ok_or("no room for the 32-byte tag")?;
    Ok(LinkSegment {
        origin,
        epoch,
        destination,
        destination_epoch,
        link,
        seq,
        sender_acked,
        data: datagram[at..end].to_vec(),
    })
}

/// The publish records in link stream bytes that start at a frame boundary: frames
/// `[length u32][kind u8][body]` of kind 1, each holding one version 2 record. Stops at a frame
/// the bytes do not hold whole.
pub fn parse_link_records(stream: &[u8]) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut rest = stream;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 {
            return Err("a frame of length 0".into());
        }
        let Some(frame) = rest.get(4..4 + len) else {
            break;
        };
        if frame[0] != 1 {
            return Err(format!("frame kind {}, want 1 (publish)", frame[0]));
        }
        // A version 2 batch of one record, to reuse its parser.
        // Version, kind, two empty node ids with their epochs, a sequence number, count 1.
        let mut batch = vec![2, 1, 0];
        batch.extend_from_slice(&[0; 8]);
        batch.push(0);
        batch.extend_from_slice(&[0; 16]);
        batch.extend_from_slice(&1u16.to_be_bytes());
        batch.extend_from_slice(&frame[1..]);
        batch.extend_from_slice(&[0; 32]);
        let parsed = parse_sync_datagram(&batch).map_err(|e| format!("frame record: {e}"))?;
        records.extend(parsed.records);
        rest = &rest[4 + len..];
    }
    Ok(records)
}

/// Deterministic pseudo-random bytes (xorshift64*), seeded by `seed`.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A seed that differs between runs, printed by the tests that use it so a failure can be
/// reproduced.
pub fn run_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Sends `datagram` to `to` from a fresh socket on 127.0.0.1.
pub fn send_udp(to: SocketAddr, datagram: &[u8]) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
    let sent = socket
        .send_to(datagram, to)
        .unwrap_or_else(|e| panic!("send {} bytes to {to}: {e}", datagram.len()));
    assert_eq!(sent, datagram.len(), "whole datagram sent to {to}");
}

// ---------------------------------------------------------------------------------------------
// Capture and re-injection on the loopback interface (root only).

/// Panics with a clear message unless the test runs as root.
pub fn require_root(what: &str) {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} requires root (the CI runs the tests as root); this test does not pass \
         silently without it: run it as root"
    );
}

/// A UDP datagram seen on `lo`.
#[derive(Debug, Clone)]
pub struct CapturedPacket {
    /// The whole IPv4 packet, headers included.
    pub ip_packet: Vec<u8>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Parses an IPv4/UDP packet.
pub fn parse_ipv4_udp(packet: &[u8]) -> Option<CapturedPacket> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if packet[9] != 17 || ihl < 20 || total > packet.len() || total < ihl + 8 {
        return None;
    }
    let packet = &packet[..total];
    let src_ip = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst_ip = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = &packet[ihl..];
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    Some(CapturedPacket {
        ip_packet: packet.to_vec(),
        src: SocketAddrV4::new(src_ip, src_port),
        dst: SocketAddrV4::new(dst_ip, dst_port),
        payload: udp[8..udp_len].to_vec(),
    })
}

/// Captures UDP datagrams addressed to one port as they are received on `lo` (an `AF_PACKET`
/// socket; only packets with `sll_pkttype == PACKET_HOST`, so each datagram is seen once). A
/// thread reads until the capture is dropped.
pub struct UdpCapture {
    packets: tokio::sync::mpsc::UnboundedReceiver<CapturedPacket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn set_timeout(fd: &Fd, option: libc::c_int, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl UdpCapture {
    /// Opens the capture for datagrams to UDP port `dst_port` on `lo`. Requires root.
    pub fn start(dst_port: u16) -> UdpCapture {
        require_root("capturing packets on lo (AF_PACKET)");
        let protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2) call.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        if raw < 0 {
            panic!(
                "socket(AF_PACKET, SOCK_DGRAM) failed: {} (root with CAP_NET_RAW is required)",
                io::Error::last_os_error()
            );
        }
        let fd = Fd(raw);
        // SAFETY: the name is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(
            ifindex,
            0,
            "no interface lo: {}",
            io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = protocol;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: sll is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.0,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind(AF_PACKET) to lo: {}",
            io::Error::last_os_error()
        );
        set_timeout(&fd, libc::SO_RCVTIMEO, Duration::from_millis(100))
            .expect("SO_RCVTIMEO on the capture socket");

        let (tx, packets) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_reader = stop.clone();
        let thread = std::thread::spawn(move || {
            // Own the whole descriptor here (a closure would otherwise capture only `fd.0`,
            // and the socket would close when `start` returns).
            let fd = fd;
            let mut buf = vec![0u8; 65_536];
            while !stop_reader.load(Ordering::Relaxed) {
                // SAFETY: sockaddr_ll is plain data.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buf and from are valid for the lengths passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.0,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::addr_of_mut!(from).cast(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    match err.kind() {
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted => continue,
                        _ => {
                            eprintln!("capture on lo: recvfrom failed: {err}");
                            return;
                        }
                    }
                }
                if from.sll_pkttype != libc::PACKET_HOST {
                    continue;
                }
                let Some(packet) = parse_ipv4_udp(&buf[..n as usize]) else {
                    continue;
                };
                if packet.dst.port() == dst_port && tx.send(packet).is_err() {
                    return;
                }
            }
        });
        UdpCapture {
            packets,
            stop,
            thread: Some(thread),
        }
    }

    /// The next captured datagram for which `pred` holds, within `timeout`.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&CapturedPacket) -> bool,
    ) -> Option<CapturedPacket> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.packets.recv()).await {
                Ok(Some(packet)) if pred(&packet) => return Some(packet),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Publishes `count` QoS 0 messages on `from`, one per 100 ms, and returns how many a new
/// subscriber on `to` received: whether forwarding from one to the other works over that time.
pub async fn forwarded_over_time(from: &Node, to: &Node, count: u32) -> usize {
    let topic = unique_id("forwarded/t");
    let mut subscriber = to
        .subscriber(&unique_id("sub"), &topic, QoS::AtMostOnce)
        .await;
    let mut publisher = from.client(&unique_id("pub")).await;
    let mut got = 0;
    for i in 0..count {
        publisher
            .publish(&topic, QoS::AtMostOnce, false, i.to_string())
            .await;
        got += subscriber
            .drain_publishes(Duration::from_millis(100))
            .await
            .len();
    }
    got
}

/// Publishes a message on `from` and captures the best-effort sync datagram that carries it to
/// `to` (one of them must be of an earlier release, `-csv 2` or less: nodes of this release
/// send each other links): the
/// origin's and destination's boot epochs and a current sequence number, which a test needs to
/// forge datagrams that pass every check but the ones under test. Requires root.
pub async fn capture_sync_batch(from: &Node, to: &Node) -> SyncBatch {
    let topic = unique_id("capture/t");
    // A subscriber on `to`, so that a node forwarding by interest sends it the message; it
    // may take a moment to hear of the subscription, so the message is published again until
    // a datagram carrying it is seen (a node of an earlier release forwards everything).
    let subscriber = to
        .subscriber(&unique_id("capture-sub"), &topic, QoS::AtMostOnce)
        .await;
    let mut capture = UdpCapture::start(to.sync.port());
    let mut publisher = from.client(&unique_id("capture-pub")).await;
    let topic_bytes = topic.as_bytes().to_vec();
    let mut packet = None;
    for _ in 0..10 {
        publisher
            .publish(&topic, QoS::AtMostOnce, false, b"capture".to_vec())
            .await;
        packet = capture
            .next_matching(TIMEOUT / 10, |p| {
                (p.payload.starts_with(&[1, 1]) || p.payload.starts_with(&[2, 1]))
                    && p.payload
                        .windows(topic_bytes.len())
                        .any(|w| w == topic_bytes.as_slice())
            })
            .await;
        if packet.is_some() {
            break;
        }
    }
    let packet = packet.unwrap_or_else(|| {
        panic!(
            "no sync datagram from {} to {} carrying {topic:?} was seen on lo",
            from.name(),
            to.name()
        )
    });
    subscriber.disconnect().await;
    publisher.disconnect().await;
    parse_sync_datagram(&packet.payload)
        .unwrap_or_else(|e| panic!("the captured sync datagram does not parse: {e}"))
}

/// Captures the next gossip datagram `from` sends to `to` (gossip flows all the time). Requires
/// root.
pub async fn capture_gossip(from: &Node, to: &Node) -> GossipEnvelope {
    let mut capture = UdpCapture::start(to.gossip.port());
    let from_port = from.gossip.port();
    let packet = capture
        .next_matching(TIMEOUT, |p| {
            p.src.port() == from_port && p.payload.first() == Some(&1)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no gossip datagram from {} to {} was seen on lo",
                from.name(),
                to.name()
            )
        });
    GossipEnvelope::parse(&packet.payload)
        .unwrap_or_else(|e| panic!("the captured gossip datagram does not parse: {e}"))
}

impl Drop for UdpCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends a captured IPv4 packet again, byte for byte (same source address and port), through a
/// raw socket; only the UDP checksum is cleared (loopback packets carry a partial checksum,
/// and 0 means "none" in IPv4). Requires root.
pub fn resend_ip_packet(packet: &CapturedPacket) {
    require_root("re-injecting a packet (SOCK_RAW)");
    let mut bytes = packet.ip_packet.clone();
    let ihl = usize::from(bytes[0] & 0x0f) * 4;
    bytes[ihl + 6] = 0;
    bytes[ihl + 7] = 0;
    // SAFETY: plain socket(2) call.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        panic!(
            "socket(AF_INET, SOCK_RAW, IPPROTO_RAW) failed: {} (root is required)",
            io::Error::last_os_error()
        );
    }
    let fd = Fd(raw);
    // SAFETY: sockaddr_in is plain data.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(packet.dst.ip().octets()),
    };
    // SAFETY: bytes and to are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd.0,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        sent,
        bytes.len() as isize,
        "raw resend of {} bytes to {}: {}",
        bytes.len(),
        packet.dst,
        io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------------
// Network namespaces.

/// Runs a command, returning its output or a message with its stderr.
fn run(cmd: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let (program, args) = cmd.split_first().expect("a command");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: could not run: {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{cmd:?}: writing stdin: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// A private network of namespaces, removed on drop (also when the test panics):
/// a hub namespace holding a bridge, one namespace per node with a veth into the bridge
/// (`eth0`, address `10.231.S.(11+i)/24`), and a veth from the root namespace into the bridge
/// (address `10.231.S.1/24`) so that the test process reaches every node's MQTT and HTTP ports.
/// The bridge lives in its own namespace so that the root namespace's firewall
/// (`bridge-nf-call-iptables`) never sees the bridged traffic. All names contain the test
/// process id; `S` is chosen so that the subnet is not in use on this machine.
/// A test process has one [`NetLab`] at a time (its namespaces are named after the process):
/// tests that make one hold this first.
pub static NET_LAB_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct NetLab {
    tag: String,
    hub: String,
    root_link: String,
    subnet: u8,
    namespaces: Vec<String>,
    hub_created: bool,
}

impl NetLab {
    /// Creates the network with `n` node namespaces; panics with a clear message when that is
    /// impossible (not root, `ip` or `nft` missing).
    pub fn create(n: usize) -> NetLab {
        require_root("creating network namespaces");
        for (tool, version) in [("ip", "-V"), ("nft", "--version")] {
            if let Err(e) = run(&[tool, version], None) {
                panic!(
                    "this test needs `{tool}` (apt-get install -y iproute2 nftables) and does \
                     not pass silently without it: {e}"
                );
            }
        }
        let pid = std::process::id();
        let tag = format!("c7t{pid}");
        let in_use = run(&["ip", "-4", "-o", "addr", "show"], None).unwrap_or_default()
            + &run(&["ip", "-4", "route", "show", "table", "all"], None).unwrap_or_default();
        let mut subnet = (pid % 200) as u8 + 20;
        for _ in 0..200 {
            if !in_use.contains(&format!("10.231.{subnet}.")) {
                break;
            }
            subnet = if subnet >= 250 { 20 } else { subnet + 1 };
        }
        let mut lab = NetLab {
            hub: format!("{tag}-hub"),
            root_link: format!("{tag}r"),
            tag,
            subnet,
            namespaces: Vec::new(),
            hub_created: false,
        };
        lab.build(n)
            .unwrap_or_else(|e| panic!("could not create the test network: {e}"));
        lab
    }

    fn build(&mut self, n: usize) -> Result<(), String> {
        let hub = self.hub.clone();
        run(&["ip", "netns", "add", &hub], None)?;
        self.hub_created = true;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"], None)?;
        run(
            &["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"], None)?;
        // Root namespace <-> bridge.
        let root_link = self.root_link.clone();
        run(
            &[
                "ip", "link", "add", &root_link, "type", "veth", "peer", "name", "uplink", "netns",
                &hub,
            ],
            None,
        )?;
        run(
            &["ip", "-n", &hub, "link", "set", "uplink", "master", "br0"],
            None,
        )?;
        run(&["ip", "-n", &hub, "link", "set", "uplink", "up"], None)?;
        let root_addr = format!("{}/24", self.gateway());
        run(&["ip", "addr", "add", &root_addr, "dev", &root_link], None)?;
        run(&["ip", "link", "set", &root_link, "up"], None)?;
        for i in 0..n {
            let ns = format!("{}-n{}", self.tag, i + 1);
            run(&["ip", "netns", "add", &ns], None)?;
            self.namespaces.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"], None)?;
            let port = format!("p{}", i + 1);
            run(
                &[
                    "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
                None,
            )?;
            run(
                &["ip", "-n", &hub, "link", "set", &port, "master", "br0"],
                None,
            )?;
            run(&["ip", "-n", &hub, "link", "set", &port, "up"], None)?;
            let addr = format!("{}/24", self.addr(i));
            run(
                &["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"],
                None,
            )?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"], None)?;
        }
        Ok(())
    }

    /// The root namespace's address on the test network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// The address of node `i` (0-based).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 11 + i as u8)
    }

    /// The namespace of node `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// The prefix that runs a command in node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespaces[i].clone(),
        ]
    }

    /// Starts a broker named `n<i+1>` in each of the first `n` namespaces, on the default ports
    /// (MQTT 1883 and HTTP 8081 on its address, gossip 7946, sync 7947), with the broker's
    /// default timings, seeded with the others, and `extra` flags.
    pub fn start_nodes(&self, n: usize, key: &str, extra: &[&str]) -> Vec<Node> {
        (0..n)
            .map(|i| {
                let addr = self.addr(i);
                let mut config = NodeConfig::new(&format!("n{}", i + 1), key)
                    .default_timings()
                    .args(extra)
                    .listen(&format!("{addr}:1883"), &format!("{addr}:8081"))
                    .gossip_port(7946)
                    .sync_port(7947)
                    .prefix(&self.exec_prefix(i));
                for j in (0..n).filter(|&j| j != i) {
                    config = config.seed(format!("{}:7946", self.addr(j)));
                }
                Node::start(config)
            })
            .collect()
    }

    /// Drops every UDP datagram in and out of node `i`'s namespace (nft table `inet cut`).
    pub fn cut_udp(&self, i: usize) {
        self.add_nft_table(
            i,
            "table inet cut {\n\
             chain in { type filter hook input priority 0; policy accept; meta l4proto udp drop; }\n\
             chain out { type filter hook output priority 0; policy accept; meta l4proto udp drop; }\n\
             }\n",
        );
    }

    /// Removes the cut of [`NetLab::cut_udp`].
    pub fn heal(&self, i: usize) {
        self.delete_nft_table(i, "cut");
    }

    /// Drops every UDP datagram node `i` sends, letting in what it receives (nft table
    /// `inet mute`): it hears its peers, and they hear nothing from it.
    pub fn mute_udp(&self, i: usize) {
        self.add_nft_table(
            i,
            "table inet mute {\n\
             chain out { type filter hook output priority 0; policy accept; meta l4proto udp drop; }\n\
             }\n",
        );
    }

    /// Removes the mute of [`NetLab::mute_udp`].
    pub fn unmute(&self, i: usize) {
        self.delete_nft_table(i, "mute");
    }

    /// Drops a random `percent` of the UDP datagrams node `i` receives on, and sends from,
    /// `port` (nft table `inet loss`).
    pub fn drop_udp_randomly(&self, i: usize, port: u16, percent: u32) {
        self.add_nft_table(
            i,
            &format!(
                "table inet loss {{\n\
                 chain in {{ type filter hook input priority 0; policy accept; \
                 udp dport {port} numgen random mod 100 < {percent} drop; }}\n\
                 chain out {{ type filter hook output priority 0; policy accept; \
                 udp sport {port} numgen random mod 100 < {percent} drop; }}\n\
                 }}\n"
            ),
        );
    }

    /// Removes the loss of [`NetLab::drop_udp_randomly`].
    pub fn stop_dropping(&self, i: usize) {
        self.delete_nft_table(i, "loss");
    }

    /// Loads nft `rules` (one table) in node `i`'s namespace.
    fn add_nft_table(&self, i: usize, rules: &str) {
        run(
            &["ip", "netns", "exec", self.ns(i), "nft", "-f", "-"],
            Some(rules),
        )
        .unwrap_or_else(|e| panic!("adding nft rules in {}: {e}", self.ns(i)));
    }

    /// Deletes nft table `inet <table>` in node `i`'s namespace.
    fn delete_nft_table(&self, i: usize, table: &str) {
        let ns = self.ns(i);
        run(
            &[
                "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table,
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("deleting the nft table {table} in {ns}: {e}"));
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let mut all: Vec<String> = self.namespaces.clone();
        if self.hub_created {
            all.push(self.hub.clone());
        }
        for ns in &all {
            // Anything still running in a namespace of ours was started by this test.
            if let Ok(pids) = run(&["ip", "netns", "pids", ns], None) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for ns in &all {
            if let Err(e) = run(&["ip", "netns", "del", ns], None) {
                eprintln!("cleanup: {e}");
            }
        }
        // Deleting the hub removed the peer and with it this end; make sure.
        let _ = run(&["ip", "link", "del", &self.root_link], None);
    }
}
