//! Who is in the cluster: SWIM gossip with `foca` on the gossip port (`-crp`).
//!
//! One task owns the `Foca` instance, the gossip socket and the timer queue. Datagrams, timers,
//! seed resolutions and the leave signal come in; foca's sends, timers and notifications come
//! out, and after each step the task publishes a snapshot of the members ([`Members`]) that the
//! sync sender, the sync receiver and `GET /brokers` read without talking to this task.
//!
//! Wire format of a gossip datagram: `[version = 1][kind][sender id length: u8][sender id]
//! [sender boot epoch: u64][seq: u64][body][HMAC-SHA256 tag, 32 bytes]`. The receiver refuses a
//! sequence number it has seen from that boot of the sender, or one further ahead than the
//! sender's clock allows (see [`super::replay`]); what an
//! earlier boot said loses to the newer identity in foca anyway.
//! Kind 1: a foca packet (postcard-encoded header and updates). Kind 2: a join request, whose
//! body is the sender's identity (a foca member, postcard-encoded); the receiver answers it by
//! announcing itself to that identity, which makes both sides members. Seeds are addresses, not
//! identities, so joining needs this one extra message before foca's own Announce.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use foca::{AccumulatingRuntime, Codec, Foca, Identity, Member, OwnedNotification, PostcardCodec};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

use super::auth::DatagramKey;
use super::config::{ClusterConfig, Seed};
use super::replay::{ReceivedAt, ReplayWindow, SequenceClock};
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};

pub const VERSION: u8 = 1;
pub(crate) const KIND_FOCA: u8 = 1;
pub(crate) const KIND_JOIN: u8 = 2;
/// The envelope before the body, at its largest: version, kind, sender id, boot, seq.
const HEADER_LEN: usize = 2 + 1 + super::config::MAX_NODE_ID_LEN + 8 + 8;
/// Replay windows kept before those of senders that are no longer members are dropped.
const PRUNE_WINDOWS_AT: usize = 64;
/// Largest gossip datagram: below the usual 1500-byte MTU with IP and UDP headers.
const MAX_DATAGRAM: usize = 1400;
/// How long evidence of a namesake counts (in `/brokers`, and for pacing rejoins).
const DUPLICATE_MEMORY: Duration = Duration::from_secs(60);
/// Rejoins in a row that the cluster refused at once before a namesake is reported.
const QUICK_DOWNS_FOR_DUPLICATE: u32 = 3;
/// Least time between two "the cluster marked this node down" warnings.
const DOWN_WARNING_EVERY: Duration = Duration::from_secs(10);
/// How long resolving one seed may take before the attempt is given up until the next round.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node as the cluster knows it. `node_id` is foca's address: a newer identity with the same
/// name replaces the older one (a restart, possibly at another IP), and the newer boot wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: String,
    pub gossip: SocketAddr,
    pub sync_port: u16,
    pub mqtt_port: u16,
    /// The release, and the sync versions the node reads (see
    /// [`NodeIdentity::advertised_version`]).
    pub version: String,
    /// Milliseconds since the Unix epoch when the process started: one per boot.
    pub boot_ms: u64,
    /// Bumped when the cluster declared this boot down and it rejoins.
    pub renewal: u32,
}

impl Identity for NodeIdentity {
    type Addr = String;

    /// Rejoining is done by the gossip task (see `GossipTask::rejoin`), which can pace it: two
    /// live nodes with one name would otherwise take turns declaring each other down, as fast
    /// as the network allows.
    fn renew(&self) -> Option<Self> {
        None
    }

    fn addr(&self) -> String {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot_ms, self.renewal) > (adversary.boot_ms, adversary.renewal)
    }
}

impl NodeIdentity {
    /// The same boot under a new renewal, which wins over this one.
    pub fn renewed(&self) -> NodeIdentity {
        NodeIdentity {
            renewal: self.renewal.wrapping_add(1),
            ..self.clone()
        }
    }

    pub fn sync_addr(&self) -> SocketAddr {
        SocketAddr::new(self.gossip.ip(), self.sync_port)
    }

    /// The `version` of a node of `release` that reads sync versions 1 to `newest_sync`: the
    /// release alone when that is version 1 only, as every release before sync version 2 sends
    /// it, and `<release>+sync.1.2` (semver build metadata) otherwise.
    ///
    /// The sync versions travel inside this string because it is the only field an earlier
    /// release can receive more in: identities are postcard-encoded inside foca's messages,
    /// which tell no field's length, so a new field would make an earlier release misread every
    /// message that carries such an identity, and a rolling upgrade would split the cluster.
    pub fn advertised_version(release: &str, newest_sync: u8) -> String {
        if newest_sync <= 1 {
            return release.to_string();
        }
        let versions: Vec<String> = (1..=newest_sync).map(|v| v.to_string()).collect();
        format!("{release}{SYNC_MARK}{}", versions.join("."))
    }

    /// The release the node runs, without the sync versions.
    pub fn release(&self) -> &str {
        self.version
            .rsplit_once(SYNC_MARK)
            .map_or(&self.version, |(release, _)| release)
    }

    /// Whether the node reads sync `version`: only 1 for a node that advertises none.
    pub fn reads_sync(&self, version: u8) -> bool {
        match self.version.rsplit_once(SYNC_MARK) {
            None => version == 1,
            Some((_, list)) => list
                .split('.')
                .any(|listed| listed.parse::<u8>() == Ok(version)),
        }
    }
}

/// What separates the release from the sync versions a node reads in [`NodeIdentity::version`].
const SYNC_MARK: &str = "+sync.";

/// A member's state as `/brokers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Up,
    Suspect,
    Down,
}

/// One entry of the members snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub identity: NodeIdentity,
    pub state: MemberState,
}

/// The members as last seen by the gossip task; read by everyone else.
pub struct Members {
    local: ArcSwap<NodeIdentity>,
    others: ArcSwap<Vec<MemberInfo>>,
    /// Set once this node has been in contact with at least one other member.
    joined: AtomicBool,
    /// Set when the seed list (without this node itself) is empty.
    seedless: AtomicBool,
    /// When (ms since the Unix epoch) another live node was last seen using this node's `-nid`;
    /// 0 = never.
    duplicate_seen_ms: AtomicU64,
}

impl Members {
    pub fn new(local: NodeIdentity, has_seeds: bool) -> Members {
        Members {
            local: ArcSwap::from_pointee(local),
            others: ArcSwap::from_pointee(Vec::new()),
            joined: AtomicBool::new(false),
            seedless: AtomicBool::new(!has_seeds),
            duplicate_seen_ms: AtomicU64::new(0),
        }
    }

    pub fn local(&self) -> Arc<NodeIdentity> {
        self.local.load_full()
    }

    pub fn others(&self) -> Arc<Vec<MemberInfo>> {
        self.others.load_full()
    }

    /// The same, for a moment's look (no reference count taken).
    pub fn others_now(&self) -> arc_swap::Guard<Arc<Vec<MemberInfo>>> {
        self.others.load()
    }

    /// The newest identity this node knows for member `node_id`, in any state: the one that is
    /// up or suspect if there is one, else the newest that is down. What a node sends can be
    /// trusted whatever our view of it says (it is authenticated, addressed to this boot of
    /// this node and fresh): while a member renews its identity, a peer may briefly hold its
    /// old identity as down before it hears of the new one, and must not drop its traffic then.
    pub fn known(&self, node_id: &[u8]) -> Option<NodeIdentity> {
        let others = self.others.load();
        let named = others
            .iter()
            .filter(|m| m.identity.node_id.as_bytes() == node_id);
        let live = named.clone().find(|m| m.state != MemberState::Down);
        live.or_else(|| named.max_by_key(|m| (m.identity.boot_ms, m.identity.renewal)))
            .map(|m| m.identity.clone())
    }

    /// Whether `/readyz` may say yes: joined a peer, or there is nobody to join.
    pub fn ready(&self) -> bool {
        self.joined.load(Ordering::Acquire) || self.seedless.load(Ordering::Acquire)
    }

    /// Whether another live node used this node's `-nid` within the last
    /// [`DUPLICATE_MEMORY`]: a namesake that has gone (or one false alarm) is forgotten.
    pub fn duplicate_seen(&self) -> bool {
        let seen = self.duplicate_seen_ms.load(Ordering::Acquire);
        seen != 0 && boot_ms().saturating_sub(seen) < DUPLICATE_MEMORY.as_millis() as u64
    }

    fn note_duplicate(&self) {
        self.duplicate_seen_ms
            .store(boot_ms().max(1), Ordering::Release);
    }

    #[cfg(test)]
    pub fn set_others_for_tests(&self, others: Vec<MemberInfo>) {
        self.others.store(Arc::new(others));
    }
}

/// The address peers reach this node at: `-cad` / `-nid=name@addr`; else the listen host when
/// it is a specific address; else the local address on the route to the seeds (on a host with
/// several networks, the one the cluster is on; see [`source_towards_seeds`]); else the address
/// of the default route's interface; else the first private address of a directly connected
/// network (a host with no default route, as on isolated plant networks); else loopback, which
/// is logged as an error when the seeds are elsewhere. `gossip` is the bound gossip socket.
pub async fn advertised_ip(config: &ClusterConfig, gossip: SocketAddr) -> IpAddr {
    let seeds = resolve_seeds_once(&config.seeds).await;
    let bind = gossip.ip();
    let chosen = config
        .advertise
        .or_else(|| (!bind.is_unspecified()).then_some(bind))
        .or_else(|| source_towards_seeds(&seeds, gossip, source_ip_towards))
        .or_else(|| source_ip_towards(SocketAddr::from((Ipv4Addr::new(10, 254, 254, 254), 9))))
        .or_else(|| {
            std::fs::read_to_string("/proc/net/route")
                .ok()
                .and_then(|table| connected_network_ip(&table))
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if chosen.is_loopback() {
        if let Some(seed) = seeds.iter().find(|seed| !seed.ip().is_loopback()) {
            error!(
                advertised = %chosen,
                seed = %seed,
                "this node advertises a loopback address but its seeds are on another host: \
                 they cannot reach it and the cluster will not form; give the address peers \
                 should use with -cad"
            );
        }
    }
    chosen
}

/// The local address `route` gives towards the first seed that says something about where the
/// cluster is: seeds that are this node (a seed list naming every host, this one included; on
/// Debian the host's own name resolves to 127.0.1.1) and seeds of the other address family than
/// the gossip socket (which could not reach them) are skipped, and a loopback source is taken
/// only when every remaining seed is on loopback (a cluster on one host).
fn source_towards_seeds(
    seeds: &[SocketAddr],
    gossip: SocketAddr,
    route: impl Fn(SocketAddr) -> Option<IpAddr>,
) -> Option<IpAddr> {
    let others: Vec<SocketAddr> = seeds
        .iter()
        .copied()
        .filter(|seed| seed.is_ipv4() == gossip.is_ipv4())
        .filter(|seed| !is_this_node(*seed, gossip, Some(gossip)))
        .collect();
    let all_loopback = others.iter().all(|seed| seed.ip().is_loopback());
    others
        .iter()
        .find_map(|seed| route(*seed).filter(|ip| all_loopback || !ip.is_loopback()))
}

/// The seeds' addresses as they resolve now (names that do not resolve within a second are left
/// out; the gossip task keeps trying them).
async fn resolve_seeds_once(seeds: &[Seed]) -> Vec<SocketAddr> {
    let lookups = async {
        let mut addrs = Vec::new();
        for seed in seeds {
            if let Ok(found) = tokio::net::lookup_host((seed.host.as_str(), seed.port)).await {
                addrs.extend(found);
            }
        }
        addrs
    };
    tokio::time::timeout(Duration::from_secs(1), lookups)
        .await
        .unwrap_or_default()
}

/// The source address the kernel would use to reach `to`, if there is a route. Connecting a UDP
/// socket sends nothing; it only asks the kernel.
fn source_ip_towards(to: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = StdUdpSocket::bind((any, 0)).ok()?;
    socket.connect(to).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// From Linux's IPv4 routing table (`/proc/net/route`), the local address on the first directly
/// connected network (no gateway) other than loopback, preferring private networks.
fn connected_network_ip(table: &str) -> Option<IpAddr> {
    let mut networks: Vec<Ipv4Addr> = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [iface, destination, gateway, flags, ..] = fields[..] else {
            continue;
        };
        let hex = |field: &str| u32::from_str_radix(field, 16).ok();
        let (Some(destination), Some(gateway), Some(flags)) =
            (hex(destination), hex(gateway), hex(flags))
        else {
            continue;
        };
        // The kernel prints each address as the integer its bytes make in native order.
        let destination = Ipv4Addr::from(destination.to_ne_bytes());
        const ROUTE_UP: u32 = 0x1;
        if iface == "lo"
            || flags & ROUTE_UP == 0
            || gateway != 0
            || destination.is_unspecified()
            || destination.is_loopback()
        {
            continue;
        }
        networks.push(destination);
    }
    networks.sort_by_key(|network| !network.is_private());
    networks.into_iter().find_map(|network| {
        // Any address inside the network is routed through its interface.
        let inside = Ipv4Addr::from(u32::from(network) | 1);
        source_ip_towards(SocketAddr::from((inside, 9))).filter(|ip| !ip.is_loopback())
    })
}

/// This boot's epoch.
pub fn boot_ms() -> u64 {
    super::replay::wall_ms()
}

fn foca_config(config: &ClusterConfig) -> foca::Config {
    let mut foca_config = foca::Config::simple();
    foca_config.probe_period = config.probe_period;
    foca_config.probe_rtt = config.probe_rtt;
    foca_config.num_indirect_probes =
        NonZeroUsize::new(config.indirect_probes).unwrap_or(NonZeroUsize::MIN);
    foca_config.max_transmissions = NonZeroU8::new(10).unwrap_or(NonZeroU8::MIN);
    foca_config.suspect_to_down_after = config.suspect_to_down;
    foca_config.max_packet_size =
        NonZeroUsize::new(MAX_DATAGRAM - HEADER_LEN - super::auth::TAG_LEN)
            .unwrap_or(NonZeroUsize::MIN);
    // A member declared down while it was only cut off learns it and rejoins at once.
    foca_config.notify_down_members = true;
    foca_config.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(30),
        num_members: NonZeroUsize::MIN,
    });
    // How partitions heal: each side keeps knocking on the members it lost, once per probe
    // period, so that a partition heals within about one probe period of its end (a node left
    // with no member at all knocks itself; see `GossipTask::knock_when_alone`).
    foca_config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: config.probe_period,
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    foca_config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
    });
    foca_config
}

/// The gossip task's inputs besides the socket.
pub struct Gossip {
    pub config: ClusterConfig,
    pub socket: UdpSocket,
    pub key: DatagramKey,
    pub members: Arc<Members>,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the node shuts down: leave the cluster, then return.
    pub leave: watch::Receiver<bool>,
    /// This boot on the monotonic clock (sequence numbers and replay windows count from it).
    pub started: std::time::Instant,
}

type Timer = foca::Timer<NodeIdentity>;

struct GossipTask {
    foca: Foca<NodeIdentity, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    /// To start foca afresh when rejoining alone.
    foca_config: foca::Config,
    runtime: AccumulatingRuntime<NodeIdentity>,
    socket: UdpSocket,
    key: DatagramKey,
    members: Arc<Members>,
    metrics: Arc<Metrics>,
    /// Due time and insertion order, so that timers due at the same moment fire in order.
    timers: BTreeMap<(Instant, u64), Timer>,
    next_timer: u64,
    /// Other identities seen using our name; each is reported once.
    duplicates: HashSet<(SocketAddr, u64)>,
    /// Set on shutdown: being marked down is then what we asked for.
    leaving: bool,
    /// Numbers the datagrams sent.
    sequence: SequenceClock,
    started: std::time::Instant,
    /// Per sender node id and boot, the sequence numbers seen.
    windows: HashMap<(Vec<u8>, u64), ReplayWindow>,
    /// When to rejoin after the cluster marked this node down.
    rejoin_at: Option<Instant>,
    last_rejoin: Option<Instant>,
    rejoin_interval: Duration,
    /// Consecutive times this node was marked down again right after rejoining.
    quick_downs: u32,
    /// When "the cluster marked this node down" was last logged, and how many times it was
    /// not logged since (a backlog of datagrams can repeat it dozens of times in a millisecond).
    last_down_warning: Option<Instant>,
    unlogged_down_warnings: u64,
    probe_period: Duration,
    out: Vec<u8>,
}

impl Gossip {
    pub async fn run(self) {
        let Gossip {
            config,
            socket,
            key,
            members,
            metrics,
            mut leave,
            started,
        } = self;
        let identity = (*members.local()).clone();
        let own_gossip = identity.gossip;
        let bound = socket.local_addr().ok();
        let rng: StdRng = rand::make_rng();
        let mut task = GossipTask {
            foca: Foca::new(identity, foca_config(&config), rng, PostcardCodec),
            foca_config: foca_config(&config),
            runtime: AccumulatingRuntime::new(),
            socket,
            key,
            members,
            metrics,
            timers: BTreeMap::new(),
            next_timer: 0,
            duplicates: HashSet::new(),
            leaving: false,
            sequence: SequenceClock::new(started),
            started,
            windows: HashMap::new(),
            rejoin_at: None,
            last_rejoin: None,
            rejoin_interval: config.rejoin_interval,
            quick_downs: 0,
            last_down_warning: None,
            unlogged_down_warnings: 0,
            probe_period: config.probe_period,
            out: Vec::with_capacity(MAX_DATAGRAM),
        };
        let (resolved_tx, mut resolved) = mpsc::channel(4);
        let seeds = config.seeds.clone();
        let has_seeds = !seeds.is_empty();
        let resolver = tokio::spawn(resolve_seeds(seeds, config.rejoin_interval, resolved_tx));
        let mut buf = vec![0u8; 65_536];
        let mut knocks = tokio::time::interval(config.probe_period);
        knocks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = task.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                received = task.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => task.handle_datagram(&buf[..n], from),
                    // ICMP errors from earlier sends surface here on some systems; keep going.
                    Err(error) => {
                        debug!(%error, "gossip receive failed");
                        // Never spin on an error that repeats.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(addrs) = resolved.recv(), if has_seeds => {
                    task.join_seeds(addrs, own_gossip, bound).await;
                }
                () = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    task.fire_due_timers();
                }
                () = sleep_until(task.rejoin_at.unwrap_or_else(Instant::now)), if task.rejoin_at.is_some() => {
                    task.rejoin();
                }
                _ = knocks.tick() => task.knock_when_alone(),
                // The only value ever sent is true; a dropped sender means stopping too.
                _ = leave.changed() => {
                    task.leaving = true;
                    if let Err(error) = task.foca.leave_cluster(&mut task.runtime) {
                        warn!(%error, "could not announce leaving the cluster");
                    }
                    task.flush().await;
                    info!("left the cluster");
                    break;
                }
            }
            task.flush().await;
        }
        resolver.abort();
    }
}

impl GossipTask {
    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        self.metrics.cluster.datagram_in(ClusterPort::Gossip);
        // Nothing we send is larger; refusing before the MAC bounds a flood's cost.
        if datagram.len() > MAX_DATAGRAM {
            self.drop_datagram(ClusterDrop::Malformed, from);
            return;
        }
        let Some(body) = self.key.open(datagram) else {
            self.drop_datagram(ClusterDrop::BadTag, from);
            return;
        };
        let Some(envelope) = Envelope::decode(body) else {
            self.drop_datagram(ClusterDrop::Malformed, from);
            return;
        };
        if !self.fresh(&envelope) {
            self.drop_datagram(ClusterDrop::Replay, from);
            return;
        }
        let body = envelope.body;
        if envelope.kind == KIND_FOCA && self.lost_member_speaks_to_us_alone(body) {
            // Every member is down in our eyes and one of them talks to us: the partition is
            // over and we are the side that was cut off. Telling it that *it* is down (foca's
            // answer) would make a healthy node renew and spread the news to the others; rather
            // forget our stale view, come back under a new renewal, and let the fresh foca
            // answer the packet.
            info!("a member this node had lost is back while no other was reachable");
            self.rejoin();
        }
        match envelope.kind {
            KIND_FOCA => match self.foca.handle_data(body, &mut self.runtime) {
                Ok(()) => {}
                Err(foca::Error::DataFromOurselves) => self.check_duplicate(body),
                Err(error) => {
                    debug!(%error, %from, "gossip datagram refused");
                    self.metrics
                        .cluster
                        .dropped(ClusterPort::Gossip, ClusterDrop::Malformed)
                        .inc();
                }
            },
            KIND_JOIN => match Codec::<NodeIdentity>::decode_member(&mut PostcardCodec, body) {
                Ok(member) => {
                    let joiner = member.id().clone();
                    let local = self.members.local();
                    if joiner.node_id == local.node_id {
                        if joiner.boot_ms != local.boot_ms || joiner.gossip != local.gossip {
                            self.report_duplicate(&joiner);
                        }
                    } else if let Err(error) = self.foca.announce(joiner, &mut self.runtime) {
                        debug!(%error, "cannot answer a join request");
                    }
                }
                Err(_) => self.drop_datagram(ClusterDrop::Malformed, from),
            },
            _ => self.drop_datagram(ClusterDrop::Malformed, from),
        }
    }

    /// Whether `packet` (a foca packet) comes from an identity that foca holds as down while no
    /// member at all is up: this node is the one that was cut off.
    fn lost_member_speaks_to_us_alone(&self, packet: &[u8]) -> bool {
        if self.leaving || self.foca.num_members() > 0 {
            return false;
        }
        let Ok(header) = Codec::<NodeIdentity>::decode_header(&mut PostcardCodec, packet) else {
            return false;
        };
        self.foca
            .iter_membership_state()
            .any(|m| m.state() == foca::State::Down && *m.id() == header.src)
    }

    /// Once per probe period, when no member is up, announces this node to every member it
    /// lost. foca does that itself only while some member is up; a node left alone (cut off,
    /// or one of two) would otherwise wait for the next seed round (`-ol`) to be heard.
    fn knock_when_alone(&mut self) {
        if self.leaving || self.foca.num_members() > 0 {
            return;
        }
        let local = self.members.local();
        let lost: Vec<NodeIdentity> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Down && m.id().node_id != local.node_id)
            .map(|m| m.id().clone())
            .collect();
        for identity in lost {
            if let Err(error) = self.foca.announce(identity, &mut self.runtime) {
                debug!(%error, "cannot announce to a lost member");
            }
        }
    }

    /// Whether the envelope's sequence number is new for its sender's boot; records it. Each
    /// boot of a name has its own window: two live nodes with one name must both be heard,
    /// or the older one would never learn that it has a namesake.
    fn fresh(&mut self, envelope: &Envelope<'_>) -> bool {
        let key = (envelope.sender.to_vec(), envelope.boot_ms);
        if self.windows.len() >= PRUNE_WINDOWS_AT && !self.windows.contains_key(&key) {
            let known: HashSet<(Vec<u8>, u64)> = self
                .foca
                .iter_membership_state()
                .map(|m| (m.id().node_id.as_bytes().to_vec(), m.id().boot_ms))
                .collect();
            self.windows.retain(|sender, _| known.contains(sender));
        }
        self.windows.entry(key).or_default().accept(
            envelope.boot_ms,
            envelope.seq,
            ReceivedAt::now(self.started),
        )
    }

    /// Wraps `body` in this node's envelope and tag.
    fn seal(&mut self, out: &mut Vec<u8>, kind: u8, body: &[u8]) {
        let seq = self.sequence.next_seq();
        let local = self.members.local();
        out.clear();
        Envelope {
            kind,
            sender: local.node_id.as_bytes(),
            boot_ms: local.boot_ms,
            seq,
            body,
        }
        .encode(out);
        self.key.seal(out);
    }

    fn drop_datagram(&self, reason: ClusterDrop, from: SocketAddr) {
        debug!(%from, reason = reason.label(), "gossip datagram dropped");
        self.metrics
            .cluster
            .dropped(ClusterPort::Gossip, reason)
            .inc();
    }

    /// foca refused a packet whose sender has our name: either stale news about this node's
    /// earlier boot, or another live node using our `-nid`.
    fn check_duplicate(&mut self, packet: &[u8]) {
        if let Ok(header) = Codec::<NodeIdentity>::decode_header(&mut PostcardCodec, packet) {
            let local = self.members.local();
            if header.src.boot_ms != local.boot_ms || header.src.gossip != local.gossip {
                self.report_duplicate(&header.src);
            }
        }
    }

    fn report_duplicate(&mut self, other: &NodeIdentity) {
        let local = self.members.local();
        // An earlier boot of this node that the cluster still remembers is not a duplicate;
        // a live one talking to us with an older boot and another address is.
        if other.boot_ms < local.boot_ms && other.gossip == local.gossip {
            return;
        }
        self.metrics.cluster.duplicate_node_id.inc();
        self.members.note_duplicate();
        if self.duplicates.insert((other.gossip, other.boot_ms)) {
            error!(
                node_id = %local.node_id,
                other = %other.gossip,
                "duplicate node id: another live node uses -nid {}; node names must be unique",
                local.node_id
            );
        }
    }

    /// Sends a join request to every resolved seed that is neither this node nor a live member.
    async fn join_seeds(
        &mut self,
        addrs: Vec<SocketAddr>,
        own: SocketAddr,
        bound: Option<SocketAddr>,
    ) {
        let others = self.members.others();
        let live: HashSet<SocketAddr> = others
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| m.identity.gossip)
            .collect();
        let mut identity = Vec::new();
        let local = Member::alive((*self.members.local()).clone());
        if PostcardCodec.encode_member(&local, &mut identity).is_err() {
            return;
        }
        let mut anyone = false;
        let mut request = Vec::new();
        for addr in addrs {
            if is_this_node(addr, own, bound) || live.contains(&addr) {
                continue;
            }
            anyone = true;
            debug!(seed = %addr, "asking seed to join");
            // Sealed for each seed: every datagram has its own sequence number.
            self.seal(&mut request, KIND_JOIN, &identity);
            self.send(&request, addr).await;
        }
        // Nobody to wait for this round: every seed is this node, a member already, or does not
        // resolve (yet). Decided again each round, so that a node started before its seeds'
        // names existed waits for them once they do.
        self.members
            .seedless
            .store(!anyone && others.is_empty(), Ordering::Release);
    }

    /// A node marked down again and again as soon as it rejoins has a namesake: the others keep
    /// the newer boot of the name and refuse this one. This node never hears of the other
    /// directly (it is not a member in its eyes), so this is how it finds out.
    fn note_quick_down(&mut self, now: Instant) {
        let quick = self
            .last_rejoin
            .is_some_and(|last| now.duration_since(last) < self.probe_period * 2);
        self.quick_downs = if quick { self.quick_downs + 1 } else { 0 };
        if self.quick_downs < QUICK_DOWNS_FOR_DUPLICATE {
            return;
        }
        self.metrics.cluster.duplicate_node_id.inc();
        self.members.note_duplicate();
        if self.quick_downs == QUICK_DOWNS_FOR_DUPLICATE {
            let local = self.members.local();
            error!(
                node_id = %local.node_id,
                "duplicate node id: this node is marked down each time it rejoins, so another \
                 live node probably uses -nid {}; node names must be unique",
                local.node_id
            );
        }
    }

    /// Comes back under a new renewal of this boot, which wins over the one marked down.
    ///
    /// With some member still up, foca changes identity in place: it keeps its view and tells
    /// the members it has. With none up, its view is stale (it holds every other node as down,
    /// and foca never takes a down identity back), so it starts afresh and announces itself to
    /// every node it knew; their answers bring the current view. A fresh foca also has none of
    /// the old "down" news to spread, which would make healthy nodes renew in turn.
    fn rejoin(&mut self) {
        self.rejoin_at = None;
        self.last_rejoin = Some(Instant::now());
        let local = self.members.local();
        let renewed = local.renewed();
        if self.foca.num_members() > 0 {
            match self
                .foca
                .change_identity(renewed.clone(), &mut self.runtime)
            {
                Ok(()) => {
                    info!(renewal = renewed.renewal, "rejoining the cluster");
                    self.members.local.store(Arc::new(renewed));
                }
                Err(error) => warn!(%error, "cannot rejoin the cluster"),
            }
            return;
        }
        let known: Vec<NodeIdentity> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().clone())
            .filter(|id| id.node_id != local.node_id)
            .collect();
        self.foca = Foca::new(
            renewed.clone(),
            self.foca_config.clone(),
            rand::make_rng(),
            PostcardCodec,
        );
        // The old instance's timers mean nothing to the new one.
        self.timers.clear();
        info!(renewal = renewed.renewal, "rejoining the cluster afresh");
        self.members.local.store(Arc::new(renewed));
        for identity in known {
            if let Err(error) = self.foca.announce(identity, &mut self.runtime) {
                debug!(%error, "cannot announce to a former member");
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                debug!(%error, "gossip timer failed");
            }
        }
    }

    async fn send(&mut self, datagram: &[u8], to: SocketAddr) {
        match self.socket.send_to(datagram, to).await {
            Ok(_) => self.metrics.cluster.datagram_out(ClusterPort::Gossip),
            Err(error) => {
                debug!(%error, %to, "gossip send failed");
                self.metrics
                    .cluster
                    .dropped(ClusterPort::Gossip, ClusterDrop::SendError)
                    .inc();
            }
        }
    }

    /// Carries out what foca asked for, then publishes the members snapshot.
    async fn flush(&mut self) {
        while let Some((to, packet)) = self.runtime.to_send() {
            let mut out = std::mem::take(&mut self.out);
            self.seal(&mut out, KIND_FOCA, &packet);
            self.send(&out, to.gossip).await;
            self.out = out;
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers
                .insert((Instant::now() + after, self.next_timer), timer);
            self.next_timer += 1;
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            changed = true;
            self.log_notification(notification);
        }
        self.publish_members(changed);
    }

    fn log_notification(&mut self, notification: OwnedNotification<NodeIdentity>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                info!(node_id = %id.node_id, gossip = %id.gossip, "member up");
            }
            OwnedNotification::MemberDown(id) => {
                info!(node_id = %id.node_id, gossip = %id.gossip, "member down");
            }
            OwnedNotification::Rename(old, new) => {
                info!(node_id = %new.node_id, old = %old.gossip, new = %new.gossip,
                      "member restarted");
            }
            OwnedNotification::Active => {
                self.members.joined.store(true, Ordering::Release);
                info!("joined the cluster");
            }
            OwnedNotification::Idle => warn!("no other cluster member is reachable"),
            OwnedNotification::Rejoin(_) => {}
            OwnedNotification::Defunct if self.leaving => {}
            OwnedNotification::Defunct => {
                let now = Instant::now();
                self.note_quick_down(now);
                // With a namesake alive, rejoining at once would only knock it out in turn.
                let earliest = match self.last_rejoin {
                    Some(last) if self.members.duplicate_seen() => last + self.rejoin_interval,
                    _ => now,
                };
                self.warn_marked_down(now);
                self.rejoin_at = Some(earliest.max(now));
            }
        }
    }

    /// Logs that the cluster marked this node down, at most once per [`DOWN_WARNING_EVERY`]
    /// (each datagram of a backlog can say it again), with how many were not logged.
    fn warn_marked_down(&mut self, now: Instant) {
        if self
            .last_down_warning
            .is_some_and(|last| now.duration_since(last) < DOWN_WARNING_EVERY)
        {
            self.unlogged_down_warnings += 1;
            debug!("the cluster marked this node down (again)");
            return;
        }
        self.last_down_warning = Some(now);
        let repeats = std::mem::take(&mut self.unlogged_down_warnings);
        warn!(repeats, "the cluster marked this node down; rejoining");
    }

    /// Rebuilds the snapshot from foca's view when it differs (suspicion changes no
    /// notification, so it is compared every time; clusters are small).
    fn publish_members(&mut self, force: bool) {
        let local = self.members.local();
        let mut duplicate_of: Option<NodeIdentity> = None;
        let mut snapshot: Vec<MemberInfo> = Vec::new();
        for member in self.foca.iter_membership_state() {
            let identity = member.id();
            if identity.node_id == local.node_id {
                // foca keeps other identities with our name as down. A newer boot than ours
                // is alive somewhere.
                if identity.boot_ms > local.boot_ms {
                    duplicate_of = Some(identity.clone());
                }
                continue;
            }
            let state = match member.state() {
                foca::State::Alive => MemberState::Up,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            snapshot.push(MemberInfo {
                identity: identity.clone(),
                state,
            });
        }
        if let Some(other) = duplicate_of {
            if !self.duplicates.contains(&(other.gossip, other.boot_ms)) {
                self.report_duplicate(&other);
            }
        }
        snapshot.sort_by(|a, b| a.identity.node_id.cmp(&b.identity.node_id));
        if !force && **self.members.others.load() == snapshot {
            return;
        }
        let count = |state| snapshot.iter().filter(|m| m.state == state).count() as i64;
        let gauges = &self.metrics.cluster.members;
        gauges[0].set(count(MemberState::Up));
        gauges[1].set(count(MemberState::Suspect));
        gauges[2].set(count(MemberState::Down));
        if snapshot.iter().any(|m| m.state != MemberState::Down) {
            self.members.joined.store(true, Ordering::Release);
        }
        self.members.others.store(Arc::new(snapshot));
    }
}

/// The part of a gossip datagram between the version byte and the tag.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) kind: u8,
    pub(crate) sender: &'a [u8],
    pub(crate) boot_ms: u64,
    pub(crate) seq: u64,
    pub(crate) body: &'a [u8],
}

impl<'a> Envelope<'a> {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.push(self.kind);
        // Node ids are at most 64 bytes (checked with the flags).
        out.push(self.sender.len() as u8);
        out.extend_from_slice(self.sender);
        out.extend_from_slice(&self.boot_ms.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.body);
    }

    pub(crate) fn decode(datagram: &'a [u8]) -> Option<Envelope<'a>> {
        let [version, kind, id_len, rest @ ..] = datagram else {
            return None;
        };
        if *version != VERSION {
            return None;
        }
        let (sender, rest) = rest.split_at_checked(usize::from(*id_len))?;
        let (boot, rest) = rest.split_first_chunk::<8>()?;
        let (seq, body) = rest.split_first_chunk::<8>()?;
        Some(Envelope {
            kind: *kind,
            sender,
            boot_ms: u64::from_be_bytes(*boot),
            seq: u64::from_be_bytes(*seq),
            body,
        })
    }
}

/// Whether seed address `addr` is this node: its advertised or bound address, or, when it
/// listens on every interface, any local address with its port (a host name that resolves to
/// 127.0.1.1, or to an IPv6 address of the host).
fn is_this_node(addr: SocketAddr, advertised: SocketAddr, bound: Option<SocketAddr>) -> bool {
    if addr == advertised || Some(addr) == bound {
        return true;
    }
    let Some(bound) = bound else {
        return false;
    };
    // Only an address of this host can be bound; port 0 takes nothing from anyone.
    bound.ip().is_unspecified()
        && addr.port() == bound.port()
        && StdUdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

/// Resolves the seeds now and every `interval`, forever, and hands the addresses to the gossip
/// task. Names that do not resolve yet (a pod not yet created) are retried quietly.
async fn resolve_seeds(seeds: Vec<Seed>, interval: Duration, out: mpsc::Sender<Vec<SocketAddr>>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: HashSet<String> = HashSet::new();
    loop {
        ticks.tick().await;
        let mut addrs = Vec::new();
        for seed in &seeds {
            let lookup = tokio::net::lookup_host((seed.host.as_str(), seed.port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => {
                    if failing.remove(&seed.host) {
                        info!(seed = %seed, "seed resolves again");
                    }
                    addrs.extend(found);
                }
                Ok(Err(error)) => {
                    // Logged once per outage, not every round.
                    if failing.insert(seed.host.clone()) {
                        info!(seed = %seed, %error, "seed does not resolve yet; will retry");
                    }
                }
                Err(_) => {
                    if failing.insert(seed.host.clone()) {
                        info!(seed = %seed, "seed resolution timed out; will retry");
                    }
                }
            }
        }
        if out.send(addrs).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, boot_ms: u64, renewal: u32) -> NodeIdentity {
        NodeIdentity {
            node_id: name.to_string(),
            gossip: "127.0.0.1:7946".parse().unwrap(),
            sync_port: 7947,
            mqtt_port: 1883,
            version: "0.1.0".to_string(),
            boot_ms,
            renewal,
        }
    }

    #[test]
    fn sync_versions_travel_in_the_version_string() {
        let mut node = identity("n1", 1, 0);
        node.version = NodeIdentity::advertised_version("0.2.0", 1);
        assert_eq!(
            node.version, "0.2.0",
            "version 1 only: what earlier releases send"
        );
        assert_eq!(node.release(), "0.2.0");
        assert!(node.reads_sync(1) && !node.reads_sync(2));
        node.version = NodeIdentity::advertised_version("0.2.0", 2);
        assert_eq!(node.version, "0.2.0+sync.1.2");
        assert_eq!(node.release(), "0.2.0");
        assert!(node.reads_sync(1) && node.reads_sync(2) && !node.reads_sync(3));
        // A later release may drop version 1; what it lists is what it reads.
        node.version = "9.0.0+sync.2.3".to_string();
        assert!(!node.reads_sync(1) && node.reads_sync(2) && node.reads_sync(3));
        assert_eq!(node.release(), "9.0.0");
        // An earlier release's identity (the release alone) reads version 1.
        assert!(identity("old", 1, 0).reads_sync(1));
        assert!(!identity("old", 1, 0).reads_sync(2));
    }

    /// The identity as an earlier release declares it, to check it decodes the new one.
    #[derive(Debug, Serialize, Deserialize)]
    struct EarlierIdentity {
        node_id: String,
        gossip: SocketAddr,
        sync_port: u16,
        mqtt_port: u16,
        version: String,
        boot_ms: u64,
        renewal: u32,
    }

    #[test]
    fn an_earlier_release_decodes_an_identity_that_advertises_sync_versions() {
        let mut node = identity("n1", 7, 3);
        node.version = NodeIdentity::advertised_version("0.2.0", 2);
        let mut member = Vec::new();
        PostcardCodec
            .encode_member(&Member::alive(node.clone()), &mut member)
            .unwrap();
        let earlier: Member<EarlierIdentity> = PostcardCodec.decode_member(&member[..]).unwrap();
        let earlier = earlier.id();
        assert_eq!(
            (&earlier.node_id[..], earlier.boot_ms, earlier.renewal),
            ("n1", 7, 3)
        );
        assert_eq!(earlier.version, "0.2.0+sync.1.2");
    }

    #[test]
    fn a_newer_boot_or_renewal_wins() {
        let old = identity("n1", 100, 0);
        let restarted = identity("n1", 200, 0);
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        assert_eq!(old.renew(), None, "the gossip task paces rejoins itself");
        let renewed = old.renewed();
        assert_eq!(renewed.renewal, 1);
        assert!(renewed.win_addr_conflict(&old));
        assert!(restarted.win_addr_conflict(&renewed));
        assert_eq!(old.addr(), "n1");
    }

    #[test]
    fn a_namesake_is_forgotten_after_a_while() {
        let members = Members::new(identity("n1", 1, 0), true);
        assert!(!members.duplicate_seen());
        members.note_duplicate();
        assert!(members.duplicate_seen());
        let long_ago = boot_ms() - DUPLICATE_MEMORY.as_millis() as u64 - 1;
        members.duplicate_seen_ms.store(long_ago, Ordering::Release);
        assert!(!members.duplicate_seen());
    }

    #[test]
    fn a_connected_private_network_is_found_in_the_routing_table() {
        // A namespace with no default route: loopback is skipped, and so is a route through a
        // gateway; 127.0.0.0/8 gives the route lookup something that exists on every host.
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n\
                     eth1\t0000A8C0\t0100000A\t0003\t0\t0\t0\t00FFFFFF\n\
                     eth0\t0000007F\t00000000\t0000\t0\t0\t0\t000000FF\n";
        assert_eq!(
            connected_network_ip(table),
            None,
            "only down or gateway routes"
        );
        assert_eq!(connected_network_ip("garbage\nx y z\n"), None);
        assert_eq!(connected_network_ip(""), None);
    }

    #[test]
    fn the_advertised_address_comes_from_the_route_to_the_other_seeds() {
        let gossip: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        // A stand-in for the kernel's routes: loopback to loopback, 10.9.0.1 to anything else.
        let route = |to: SocketAddr| match to {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SocketAddr::V4(_) => Some(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))),
            SocketAddr::V6(_) => Some("fd00::1".parse().unwrap()),
        };
        let seeds = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|seed| seed.parse().unwrap()).collect()
        };
        let lan = Some(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)));
        // The seed list names every host, this one first; its own name resolves to 127.0.1.1.
        assert_eq!(
            source_towards_seeds(
                &seeds(&["127.0.1.1:7946", "10.9.0.2:7946", "10.9.0.3:7946"]),
                gossip,
                route
            ),
            lan
        );
        // A loopback seed on another port (another node on this host) among remote ones.
        assert_eq!(
            source_towards_seeds(&seeds(&["127.0.0.1:17946", "10.9.0.2:7946"]), gossip, route),
            lan
        );
        // Every other seed on loopback: a cluster on one host.
        assert_eq!(
            source_towards_seeds(&seeds(&["127.0.0.1:17946"]), gossip, route),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        // Only this node: nothing to learn from the seeds.
        assert_eq!(
            source_towards_seeds(&seeds(&["127.0.1.1:7946"]), gossip, route),
            None
        );
        // An IPv6 seed says nothing to an IPv4 socket, nor an IPv4 seed to an IPv6 one.
        assert_eq!(
            source_towards_seeds(&seeds(&["[::1]:17946", "127.0.0.1:17946"]), gossip, route),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            source_towards_seeds(&seeds(&["[fd00::2]:17946"]), gossip, route),
            None
        );
        let gossip6: SocketAddr = "[::]:7946".parse().unwrap();
        assert_eq!(
            source_towards_seeds(
                &seeds(&["10.9.0.2:7946", "[fd00::2]:17946"]),
                gossip6,
                route
            ),
            Some("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn the_route_to_a_loopback_seed_starts_on_loopback() {
        assert_eq!(
            source_ip_towards("127.0.0.1:9".parse().unwrap()),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn seeds_that_are_this_node_are_recognised() {
        let advertised: SocketAddr = "10.1.2.3:7946".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        let specific: SocketAddr = "127.0.0.2:7946".parse().unwrap();
        assert!(is_this_node(advertised, advertised, Some(any)));
        // Listening everywhere: any local address on our port is us.
        assert!(is_this_node(
            "127.0.1.1:7946".parse().unwrap(),
            advertised,
            Some(any)
        ));
        assert!(!is_this_node(
            "127.0.1.1:7947".parse().unwrap(),
            advertised,
            Some(any)
        ));
        // Bound to one address: another loopback address is another node on this host.
        assert!(is_this_node(specific, specific, Some(specific)));
        assert!(!is_this_node(
            "127.0.0.3:7946".parse().unwrap(),
            specific,
            Some(specific)
        ));
        // 192.0.2.1 (TEST-NET-1) is not an address of this host.
        assert!(!is_this_node(
            "192.0.2.1:7946".parse().unwrap(),
            advertised,
            Some(any)
        ));
    }

    #[test]
    fn the_envelope_round_trips_and_is_authenticated() {
        let key = DatagramKey::gossip(b"k");
        let me = identity("n1", 1, 0);
        let mut member = Vec::new();
        PostcardCodec
            .encode_member(&Member::alive(me.clone()), &mut member)
            .unwrap();
        let envelope = Envelope {
            kind: KIND_JOIN,
            sender: b"n1",
            boot_ms: 1,
            seq: 7,
            body: &member,
        };
        let mut datagram = Vec::new();
        envelope.encode(&mut datagram);
        key.seal(&mut datagram);
        let body = key.open(&datagram).unwrap();
        let decoded = Envelope::decode(body).unwrap();
        assert_eq!(decoded, envelope);
        let member: Member<NodeIdentity> = PostcardCodec.decode_member(decoded.body).unwrap();
        assert_eq!(member.id(), &me);
        assert!(DatagramKey::gossip(b"other").open(&datagram).is_none());
        let mut encoded = Vec::new();
        envelope.encode(&mut encoded);
        for cut in 0..2 + 1 + 2 + 16 {
            assert!(Envelope::decode(&encoded[..cut]).is_none(), "cut at {cut}");
        }
        encoded[0] = 2;
        assert!(Envelope::decode(&encoded).is_none(), "another version");
    }
}
