//! The cluster: several `coolpy7` nodes that share PUBLISH messages, as the original Coolpy7
//! does, with authenticated and replay-protected datagrams.
//!
//! - [`membership`]: who is in the cluster (SWIM gossip with `foca` on UDP `-crp`).
//! - [`sync`]: forwarding each locally published message to the members that are up (UDP
//!   `-csp`), and delivering what peers forward.
//! - [`peers`]: the members this node forwards to, and what it holds for each.
//! - [`link`]: the acknowledged, ordered streams that carry QoS 1 and 2 messages to each peer.
//! - [`handover`]: one connection per client id in the cluster, and sessions that move to the
//!   node their client reconnects to (claims and sessions on the control links).
//! - [`anti_entropy`]: how the nodes' retained stores converge (digests, listings, repairs).
//! - [`shared`]: which node serves each shared subscription group for a message (`-ssp`).
//! - [`auth`]: the HMAC-SHA256 tags on every datagram, with per-port keys derived from `-csk`.
//! - [`replay`]: the sliding windows that refuse repeated datagrams on both ports.
//! - [`config`]: the cluster flags' rules.
//!
//! Subscriptions stay on the node of their session, and a session on the node its client is
//! connected to (or was last); messages travel, and sessions move with their clients. [`Bound::start`] is
//! called by the server once the MQTT listener is bound, and [`Cluster::leave`] on shutdown.

pub mod anti_entropy;
pub mod auth;
pub mod config;
pub mod handover;
pub mod interest;
pub mod link;
pub mod membership;
pub mod peers;
pub mod replay;
pub mod shared;
pub mod sync;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::metrics::Metrics;
use auth::DatagramKey;
use config::ClusterConfig;
use membership::{Gossip, Members, NodeIdentity};
use peers::Peers;
use sync::{Forwarder, Origin};

/// Keys shorter than this are warned about at start.
const SHORT_KEY: usize = 16;

/// Receive and send buffer asked for on the sync socket.
const SYNC_SOCKET_BUFFER: usize = 4 << 20;

/// How long shutdown waits for the last forwards, and for the leave announcement, to go out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster's sockets, bound before anything else starts so that a port clash fails the start.
pub struct Bound {
    config: ClusterConfig,
    gossip: UdpSocket,
    sync: std::net::UdpSocket,
    members: Arc<Members>,
    boot_ms: u64,
    /// This boot on the monotonic clock: where sequence numbers and replay windows count from.
    started: Instant,
    /// Made with the forwarder.
    peers: Option<Arc<Peers>>,
}

impl Bound {
    /// Binds the gossip and sync ports on `host` (the MQTT listen host; every interface when it
    /// names none) and works out this node's identity.
    pub async fn bind(
        config: ClusterConfig,
        host: Option<IpAddr>,
        mqtt_port: u16,
    ) -> anyhow::Result<Bound> {
        let host = host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let gossip = UdpSocket::bind(SocketAddr::new(host, config.gossip_port))
            .await
            .with_context(|| {
                format!(
                    "cannot bind the cluster gossip port {host}:{}",
                    config.gossip_port
                )
            })?;
        // Read and written by threads of their own, not the runtime's (see `sync`).
        let sync = std::net::UdpSocket::bind(SocketAddr::new(host, config.sync_port))
            .with_context(|| {
                format!(
                    "cannot bind the cluster sync port {host}:{}",
                    config.sync_port
                )
            })?;
        // Room for bursts of segments while the receiver is busy delivering the last ones: a
        // datagram the socket has no room for is lost and must wait for its retransmission.
        // The kernel caps it (net.core.rmem_max, wmem_max); less is not an error.
        // Non-blocking: two threads share it, and each waits in poll(2) rather than in a call.
        sync.set_nonblocking(true)?;
        let socket = socket2::SockRef::from(&sync);
        let _ = socket.set_recv_buffer_size(SYNC_SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SYNC_SOCKET_BUFFER);
        // Bursts from a peer may come up as one (see `sync::batch`); a kernel without it hands
        // up each datagram, as before.
        let coalescing = sync::coalesce_received(&sync);
        tracing::debug!(coalescing, "UDP_GRO on the sync socket");
        if config.key.0.len() < SHORT_KEY {
            // Datagrams are public: a captured one lets anyone test guesses of the key offline.
            warn!(
                "-csk is {} bytes; use at least {SHORT_KEY} random bytes so the cluster key \
                 cannot be guessed",
                config.key.0.len()
            );
        }
        let gossip_addr = gossip.local_addr()?;
        let sync_addr = sync.local_addr()?;
        info!("cluster gossip on udp {gossip_addr}");
        info!("cluster sync on udp {sync_addr}");
        let advertised = membership::advertised_ip(&config, gossip_addr).await;
        let boot_ms = membership::boot_ms();
        let started = Instant::now();
        let identity = NodeIdentity {
            node_id: config.node_id.clone(),
            gossip: SocketAddr::new(advertised, gossip_addr.port()),
            sync_port: sync_addr.port(),
            mqtt_port,
            version: NodeIdentity::advertised_version(crate::VERSION, config.sync_version),
            boot_ms,
            renewal: 0,
        };
        info!(node_id = %identity.node_id, advertised = %identity.gossip, seeds = config.seeds.len(),
              "cluster mode");
        let members = Arc::new(Members::new(identity, !config.seeds.is_empty()));
        Ok(Bound {
            config,
            gossip,
            sync,
            members,
            boot_ms,
            started,
            peers: None,
        })
    }

    /// The members snapshot, for the HTTP API.
    pub fn members(&self) -> Arc<Members> {
        self.members.clone()
    }

    /// The forwarder the broker publishes through.
    pub fn forwarder(&mut self, metrics: Arc<Metrics>) -> Forwarder {
        let peers = self.peers(&metrics);
        Forwarder::new(
            peers,
            self.config.sync_limit,
            self.config.sync_version,
            self.config.shared_policy,
            metrics,
        )
    }

    /// Claims client ids from the peers (see [`handover`]).
    pub fn handover(&mut self, metrics: Arc<Metrics>) -> Arc<handover::Handover> {
        let peers = self.peers(&metrics);
        Arc::new(handover::Handover::new(
            peers,
            &self.config.node_id,
            self.config.handover_timeout,
        ))
    }

    /// The peers this node forwards to, made on first use.
    fn peers(&mut self, metrics: &Arc<Metrics>) -> Arc<Peers> {
        self.peers
            .get_or_insert_with(|| {
                Arc::new(Peers::new(
                    self.members.clone(),
                    self.config.sync_buffer,
                    self.config.sync_version,
                    self.config.sync_limit,
                    self.started,
                    metrics.clone(),
                ))
            })
            .clone()
    }

    /// Starts gossip, the sync sender and the sync receiver.
    pub fn start(mut self, broker: Arc<Broker>) -> std::io::Result<Cluster> {
        let peers = self.peers(&broker.metrics);
        let Bound {
            config,
            gossip,
            sync,
            members,
            boot_ms,
            started,
            peers: _,
        } = self;
        let key = &config.key.0;
        let sync_key = DatagramKey::sync(key);
        let gossip_key = DatagramKey::gossip(key);
        let sync = Arc::new(sync);
        let origin = Origin {
            node_id: config.node_id.clone(),
            boot_ms,
            started,
            version: config.sync_version,
        };
        peers.attach(&broker);
        if let Some(handover) = &broker.handover {
            handover.attach(&broker);
        }
        let (leave, leaving) = watch::channel(false);
        let metrics = broker.metrics.clone();
        let digests = tokio::spawn(send_digests(peers.clone()));
        let sender = sync::Sender::spawn(
            sync.clone(),
            peers.clone(),
            sync_key.clone(),
            origin.clone(),
            metrics.clone(),
        )?;
        let receiver = sync::ReceiverThread::spawn(
            sync,
            sync::Receiver {
                handover: broker.handover.clone(),
                broker,
                members: members.clone(),
                peers,
                key: sync_key,
                sync_limit: config.sync_limit,
                version: config.sync_version,
                origin,
            },
            tokio::runtime::Handle::current(),
        )?;
        let gossip = tokio::spawn(
            Gossip {
                config,
                socket: gossip,
                key: gossip_key,
                members: members.clone(),
                metrics,
                leave: leaving,
                started,
            }
            .run(),
        );
        Ok(Cluster {
            leave,
            gossip,
            sender,
            receiver,
            digests,
        })
    }
}

/// Sends each peer the summary of the retained digest every [`anti_entropy::DIGEST_PERIOD`]
/// (a new control link starts with the full digest). Runs until aborted.
async fn send_digests(peers: Arc<Peers>) {
    let mut ticks = tokio::time::interval(anti_entropy::DIGEST_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once, when every control link has just sent the full digest.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        peers.send_digests();
    }
}

/// The running cluster tasks.
pub struct Cluster {
    leave: watch::Sender<bool>,
    gossip: JoinHandle<()>,
    sender: sync::Sender,
    /// Stops its thread when dropped.
    receiver: sync::ReceiverThread,
    digests: JoinHandle<()>,
}

impl Cluster {
    /// Sends what is still queued for the other members (the wills of the connections that
    /// shutdown closed) and waits for their acknowledgements, tells them this node is leaving (so they mark it down at once rather
    /// than after the failure detector's timeouts), then stops the tasks. Call it once the
    /// connections are closed.
    pub async fn leave(self) {
        self.digests.abort();
        if !self.sender.finish(LEAVE_TIMEOUT).await {
            warn!("forwarding the last messages took longer than {LEAVE_TIMEOUT:?}");
        }
        let _ = self.leave.send(true);
        let mut gossip = self.gossip;
        if tokio::time::timeout(LEAVE_TIMEOUT, &mut gossip)
            .await
            .is_err()
        {
            warn!("leaving the cluster took longer than {LEAVE_TIMEOUT:?}");
            gossip.abort();
        }
        drop(self.receiver);
    }
}
