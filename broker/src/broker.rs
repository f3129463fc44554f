//! The state every connection shares: the router, the session registry, the metrics, the
//! limits from the configuration, the memory budget of handshakes and the parker where idle
//! connections sleep. Built once by the server and handed to each connection in an `Arc`;
//! nothing in it is locked on the publish path except the mailboxes of the receivers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::warn;

use crate::abuse::Bans;
use crate::admission::HandshakeMemory;
use crate::auth::AccessControl;
use crate::cluster::handover::Handover;
use crate::cluster::sync::{ForwardBatch, Forwarder};
use crate::config::Config;
use crate::connection::Sleeping;
use crate::metrics::{Metrics, Refusal};
use crate::parker::Parker;
use crate::router::{Congested, Groups, Message, Routed, Router};
use crate::session::SessionRegistry;

pub struct Broker {
    pub config: Config,
    pub router: Router,
    pub sessions: SessionRegistry,
    pub metrics: Arc<Metrics>,
    /// What connections may buffer before CONNECT, all together (`-mhb`).
    pub handshake_memory: HandshakeMemory,
    /// Authentication and authorization; `None` when off (no `-as`, no `-acl`).
    pub access: Option<Arc<AccessControl>>,
    /// Client ids refused for a while after breaking `-pl` or `-psl` (`-dt`).
    pub bans: Bans,
    /// Hands local publishes to the other cluster members; `None` outside cluster mode.
    forwarder: Option<Forwarder>,
    /// Claims client ids from the other cluster members (see [`crate::cluster::handover`]);
    /// `None` outside cluster mode.
    pub handover: Option<Arc<Handover>>,
    /// Where idle connections sleep; started by the first that does (`None` inside when it
    /// could not be: connections then stay awake).
    parker: OnceLock<Option<Parker<Sleeping>>>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    shutting_down: AtomicBool,
}

impl Broker {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        forwarder: Option<Forwarder>,
        access: Option<Arc<AccessControl>>,
    ) -> Broker {
        // Before any connection: a sleeping connection keeps its instants on this clock.
        crate::connection::SleepClock::start();
        Broker {
            forwarder,
            handover: None,
            access,
            bans: Bans::new(config.limits.ban),
            router: Router::new(metrics.clone()),
            sessions: SessionRegistry::new(config.max_queued, metrics.clone()),
            handshake_memory: HandshakeMemory::new(
                config.handshake_bytes,
                metrics.handshake_bytes.clone(),
            ),
            config,
            metrics,
            parker: OnceLock::new(),
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Claims client ids through `handover` (cluster mode), before the broker is shared.
    pub fn with_handover(mut self, handover: Option<Arc<Handover>>) -> Broker {
        self.handover = handover;
        self
    }

    /// Routes a message published on this node (by a client or as a will) to the local
    /// subscribers, then to the other cluster members. Messages from peers go to the router
    /// directly: they are never forwarded again.
    pub fn publish(&self, message: Arc<Message>) -> Routed {
        let mut batch = ForwardBatch::default();
        let mut routed = self.publish_batched(message, &mut batch);
        if let Some(peer) = self.flush_forwards(&mut batch) {
            routed.congested.get_or_insert(Congested::Peer(peer));
        }
        routed
    }

    /// [`Broker::publish`], with the message's way to the other cluster members staged in
    /// `batch` (see [`crate::cluster::sync::ForwardBatch`]), which the caller flushes with
    /// [`Broker::flush_forwards`] before it waits for anything.
    pub fn publish_batched(&self, message: Arc<Message>, batch: &mut ForwardBatch) -> Routed {
        // Cloned only for a forwarder: two atomic operations on the message's count per
        // publish otherwise.
        let Some(forwarder) = &self.forwarder else {
            return self.router.publish(message);
        };
        // A message that does not cross is served here by every local shared group.
        let Some(mut prepared) = forwarder.prepare(&message, batch) else {
            return self.router.publish(message);
        };
        // Each shared group that peers have members of too is served by one node, chosen here.
        let mut routed = if prepared.chooser.is_empty() {
            self.router.publish_to(message.clone(), Groups::All)
        } else {
            let chooser = &mut prepared.chooser;
            let mut serve_here =
                |name: &str, filter: &str, online: bool| chooser.serve_here(name, filter, online);
            self.router
                .publish_to(message.clone(), Groups::Choose(&mut serve_here))
        };
        let forwarded = forwarder.forward(&message, routed.stamp.as_ref(), prepared, batch);
        // A message no local session took is not dropped if another node's may (that node
        // counts it if none there does).
        if !routed.matched && !forwarded.for_subscribers {
            self.router.count_unmatched();
        }
        if routed.congested.is_none() {
            routed.congested = forwarded.congested.map(Congested::Peer);
        }
        routed
    }

    /// Queues what `batch` staged for the other cluster members; returns a peer whose link is
    /// congested, which the publisher should wait for.
    pub fn flush_forwards(
        &self,
        batch: &mut ForwardBatch,
    ) -> Option<Arc<crate::cluster::peers::Peer>> {
        self.forwarder.as_ref()?.flush(batch)
    }

    /// What a SUBSCRIBE waits for before its SUBACK in a cluster: the other members taking the
    /// filters it added (see [`crate::cluster::peers::Peers::interest_wait`]); `None` when there
    /// is nothing to wait for.
    pub fn interest_wait(&self) -> Option<crate::cluster::peers::InterestWait> {
        self.forwarder.as_ref()?.interest_wait()
    }

    /// Whether this node forwards to other cluster members (so it cannot know that nobody
    /// subscribes to a topic).
    pub fn is_clustered(&self) -> bool {
        self.forwarder.is_some()
    }

    /// Marks the broker as shutting down (a drain began): connections still in their handshake
    /// close once they have claimed their session, and the others as they are asked to (see
    /// [`crate::drain`]).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Closes every connection that holds a session at once; connections still in their
    /// handshake see [`Broker::is_shutting_down`] once they have claimed theirs.
    pub fn shut_down(&self) {
        self.begin_shutdown();
        self.sessions.kick_all();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The parker idle connections sleep in, started on first use from within the runtime
    /// (woken connections are spawned on it); `None` if it could not be started.
    pub fn parker(self: &Arc<Self>) -> Option<&Parker<Sleeping>> {
        self.parker
            .get_or_init(|| {
                // Weak: the parker belongs to the broker, and its thread must not keep it alive.
                let broker = Arc::downgrade(self);
                let runtime = tokio::runtime::Handle::current();
                let started = Parker::start(move |sleeping: Sleeping| {
                    if let Some(broker) = broker.upgrade() {
                        runtime.spawn(sleeping.wake(broker));
                    }
                });
                started
                    .map_err(|error| {
                        warn!(%error, "idle connections cannot sleep: the parker did not start");
                    })
                    .ok()
            })
            .as_ref()
    }

    /// How many connections sleep in the parker.
    pub fn sleeping(&self) -> usize {
        self.parker
            .get()
            .and_then(Option::as_ref)
            .map_or(0, Parker::len)
    }

    /// A number that names a TCP connection in logs and in session hand-overs.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an MQTT connection against `-mc`; `None` when the limit is reached. A takeover
    /// (`replaces_connection`) is always admitted: the connection it replaces is about to close,
    /// and refusing it would lock a client out behind its own half-open connection.
    pub fn admit(self: &Arc<Self>, replaces_connection: bool) -> Option<Admission> {
        let open = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let limited = self.config.max_connections.is_some_and(|max| open > max);
        if limited && !replaces_connection {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused(Refusal::MaxConnections).inc();
            return None;
        }
        self.metrics.connections.inc();
        Some(Admission {
            broker: self.clone(),
        })
    }
}

/// An admitted connection; dropping it frees its place.
pub struct Admission {
    broker: Arc<Broker>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.broker.connections.fetch_sub(1, Ordering::AcqRel);
        self.broker.metrics.connections.dec();
    }
}
