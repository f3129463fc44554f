//! The members this node forwards to, and what it holds for each of them.
//!
//! The sync sender keeps [`Peers`] in step with membership: a member that is up or suspect and
//! reads a sync version this node writes is a [`Peer`]; one declared down, restarted (a new
//! boot) or renewed is retired, and what it still held is given up (counted as `peer_gone`).
//! Publishing connections push their messages into the peers' queues through [`Peer::pushing`]
//! (a batch at a time, without waiting: the queues are bounded), the sender takes datagrams'
//! worth from them, and the receiver applies the peers' acknowledgements.
//!
//! Each peer has three queues: records packed into best-effort datagrams (everything for a
//! peer of an earlier release, without links); its link's [`Outbox`] (every message for a peer
//! of this release, QoS 0 in at most three quarters of it), which holds up to `-csb` bytes until
//! they are acknowledged; and its control link's, which carries this node's interest (see
//! [`super::interest`]) and the retained digests and listings (see [`super::anti_entropy`]).
//! A message goes to a peer only when the peer's interest asks for it, or is not known, or the
//! message is retained (every node keeps the retained messages: to a peer with links they go
//! on the link, whatever their QoS, stamped, so that no retained write is lost on the way).
//! Past half of that, a publisher is told the peer is congested and waits for it as for a slow
//! local subscriber; when it is full, QoS 1 and 2 messages for that peer are dropped and
//! counted (`buffer_full`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::anti_entropy::{
    self, DigestAnswer, Part, CONTROL_BACKLOG, FRAME_DIGEST, FRAME_LISTING, LISTING_CREDIT,
    RANGE_MAX,
};
use super::interest::{self, RemoteInterest, FRAME_INTEREST};
use super::link::{earliest, Ack, Outbox, Pushed, FRAME_HEADER, SEGMENT_BYTES};
use super::membership::{MemberInfo, MemberState, Members, NodeIdentity};
use super::sync::{
    encode_link_record, encode_record, encode_stamped_record, groups_len, record_len,
    stamped_record_len, version_for, Transmitter, Wakeup, BATCH_BYTES, FRAME_PUBLISH,
    FRAME_RETAINED, HANDOVER_VERSION, MAX_DATAGRAM_RECORD, SNAPSHOT_2_VERSION, STAMP_VERSION,
};
use crate::broker::Broker;
use crate::codec::QoS;
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};
use crate::router::{FilterWatcher, Message, Stamp};
use crate::session::Drain;

/// A push that makes a segment sendable sends it at once (wakes the sender, or sends in place)
/// only while fewer segments than this are unacknowledged: under load, what publishers add
/// while a burst is in flight goes with the acknowledgement of that burst (the receiver sends
/// in place on every acknowledgement that opens the window), as one batch of datagrams instead
/// of one system call and one wake-up of the peer's receiver per segment. At a low rate
/// nothing is in flight and each message goes at once. (Two nodes on one 2-core machine: a
/// batch of 2.3 datagrams per call on average, almost all of one, became about 30.) Nothing
/// waits longer than the outbox's hold (two round trips; `Outbox::hold_until`): a push after
/// it sends, and the sender's thread wakes for it when no push comes.
const EAGER_WHILE_OUTSTANDING: u64 = 2;
/// ... and never more than this many bytes (32 segments) wait for an acknowledgement: a burst
/// that large goes anyway, so that a fast publisher is not held to one burst per round trip.
const BURST_BYTES: usize = 32 * SEGMENT_BYTES;

/// Best-effort records held per peer before more are dropped (`queue_full`): a few
/// milliseconds of the sender's work.
const BEST_EFFORT_BYTES: usize = 2 << 20;
/// The newest sync version that best-effort datagrams are written in (to peers without links).
const NEWEST_PUBLISH_VERSION: u8 = super::sync::NEWEST_BATCH_VERSION;
/// The sync version that brought links.
pub const LINK_VERSION: u8 = 3;
/// What a control link may hold unacknowledged before a change is queued: interest changes
/// of a peer that does not answer (hand-over frames do not count, see [`HandoverBacklog`]).
/// Beyond it the control link starts over with a snapshot (which is queued whatever its size).
#[cfg(not(test))]
const CONTROL_CAPACITY: usize = 64 << 20;
/// Smaller in unit tests, which cross it.
#[cfg(test)]
const CONTROL_CAPACITY: usize = 1 << 20;
/// The longest a SUBSCRIBE waits for the peers to acknowledge the interest change it made (see
/// [`Peers::interest_wait`]); a peer that has taken nothing for as long is not waited for.
pub const INTEREST_WAIT: Duration = Duration::from_millis(500);

/// Every peer this node forwards to.
pub struct Peers {
    list: ArcSwap<Vec<Arc<Peer>>>,
    members: Arc<Members>,
    /// The membership snapshot `list` follows, and its address for a check without the lock
    /// (held here, so no later snapshot can have the same address).
    synced: Mutex<Arc<Vec<MemberInfo>>>,
    synced_at: AtomicUsize,
    /// Wakes the sender: something was queued, or a window opened.
    wake: Wakeup,
    /// Sends in the sender thread's place (set when the sender starts).
    transmitter: OnceLock<Arc<Transmitter>>,
    /// Wakes the SUBSCRIBEs waiting for the peers: a peer took interest frames.
    interest_taken: Notify,
    /// Bytes a link may hold (`-csb`).
    capacity: usize,
    /// The newest sync version this node writes (`-csv`).
    version: u8,
    /// `-csl`, if set: no repair is larger, as no message forwarded is.
    limit: Option<usize>,
    /// Links are named by the microseconds since `started` when they were made.
    started: Instant,
    last_link: Mutex<u64>,
    metrics: Arc<Metrics>,
    /// What the peers subscribe to.
    pub interest: RemoteInterest,
    /// Where this node's own filters are read from, for the snapshots that start control links
    /// (unset until the broker exists; a peer never sent one forwards everything here).
    broker: OnceLock<Weak<Broker>>,
}

impl Peers {
    pub fn new(
        members: Arc<Members>,
        capacity: usize,
        version: u8,
        limit: Option<usize>,
        started: Instant,
        metrics: Arc<Metrics>,
    ) -> Peers {
        let synced = Arc::new(Vec::new());
        Peers {
            list: ArcSwap::from_pointee(Vec::new()),
            members,
            synced_at: AtomicUsize::new(Arc::as_ptr(&synced) as usize),
            synced: Mutex::new(synced),
            wake: Wakeup::default(),
            transmitter: OnceLock::new(),
            interest_taken: Notify::new(),
            capacity,
            version,
            limit,
            started,
            last_link: Mutex::new(0),
            metrics,
            interest: RemoteInterest::default(),
            broker: OnceLock::new(),
        }
    }

    /// Reads this node's filters from `broker`'s router from now on, and follows its changes.
    pub fn attach(self: &Arc<Self>, broker: &Arc<Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
        broker.router.watch_filters(self.clone());
        let local = self.members.local().node_id.clone();
        broker
            .router
            .enable_stamps(Bytes::copy_from_slice(local.as_bytes()));
    }

    /// The peers, following membership as it is now: a member that has just come up is
    /// forwarded to from the first message after.
    pub fn list(&self) -> arc_swap::Guard<Arc<Vec<Arc<Peer>>>> {
        let others = self.members.others_now();
        if Arc::as_ptr(&others) as usize != self.synced_at.load(Ordering::Acquire) {
            let mut synced = self.synced.lock();
            let others = self.members.others();
            if !Arc::ptr_eq(&synced, &others) {
                self.update(&others);
                self.synced_at
                    .store(Arc::as_ptr(&others) as usize, Ordering::Release);
                *synced = others;
            }
        }
        self.list.load()
    }

    /// The peer named `node_id`, if this node forwards to it.
    pub fn find(&self, node_id: &[u8]) -> Option<Arc<Peer>> {
        self.list
            .load()
            .iter()
            .find(|peer| peer.identity.node_id.as_bytes() == node_id)
            .cloned()
    }

    /// The peer named `node_id`, following membership as it is now (see [`Peers::list`]): a
    /// member that has just come up may send before the sender task has looked.
    pub fn find_now(&self, node_id: &[u8]) -> Option<Arc<Peer>> {
        self.list()
            .iter()
            .find(|peer| peer.identity.node_id.as_bytes() == node_id)
            .cloned()
    }

    /// Bytes each peer's link holds (`-csb`).
    pub fn link_capacity(&self) -> usize {
        self.capacity
    }

    /// Wakes the sender.
    pub fn wake_sender(&self) {
        self.wake.wake();
    }

    /// Sends what the peers hold from this thread when nobody else is sending, or wakes the
    /// sender (see [`Transmitter::send_now`]). Not to be called under the router's locks, this
    /// `Peers`' or a peer's: a pass takes them.
    pub fn send_soon(&self) {
        match self.transmitter.get() {
            Some(transmitter) => transmitter.send_now(self),
            None => self.wake_sender(),
        }
    }

    /// Lets [`Peers::send_soon`] send through `transmitter`.
    pub(in crate::cluster) fn attach_transmitter(&self, transmitter: Arc<Transmitter>) {
        // One sender per node: a second would number best-effort datagrams on its own.
        let attached = self.transmitter.set(transmitter).is_ok();
        debug_assert!(attached, "a second sender for the same peers");
    }

    /// Wakes the sender if it sleeps past `deadline`.
    pub fn wake_sender_by(&self, deadline: Instant) {
        self.wake.wake_by(deadline);
    }

    /// Whether the sender was woken and has not yet looked.
    #[cfg(test)]
    pub(in crate::cluster) fn sender_woken_for_tests(&self) -> bool {
        self.wake.is_pending()
    }

    /// The sender starts a pass (see [`Wakeup::forget_plan`]).
    pub(in crate::cluster) fn forget_sender_plan(&self) {
        self.wake.forget_plan();
    }

    /// Tells when the sender will wake by itself.
    pub(in crate::cluster) fn plan_sender_wake(&self, at: Instant) {
        self.wake.plan(at);
    }

    /// The sender's sleep, until woken or `deadline`.
    pub fn sleep_sender_until(&self, deadline: Instant) {
        self.wake.sleep_until(deadline)
    }

    /// Follows membership: keeps the peers whose identity is unchanged, adds those that came up
    /// and retires the rest.
    fn update(&self, others: &[MemberInfo]) {
        let current = self.list.load_full();
        let mut next = Vec::with_capacity(others.len());
        let mut new = Vec::new();
        for member in others.iter().filter(|m| m.state != MemberState::Down) {
            if let Some(peer) = current.iter().find(|p| p.identity == member.identity) {
                next.push(peer.clone());
                continue;
            }
            let Some(version) = version_for(&member.identity, self.version) else {
                debug!(peer = %member.identity.node_id, advertised = %member.identity.version,
                       "peer reads no sync version this node writes; not forwarded to it");
                continue;
            };
            let slot = self
                .interest
                .slot(&member.identity.node_id, member.identity.boot_ms);
            let peer = Arc::new(Peer::new(
                member.identity.clone(),
                version,
                [self.new_link(), self.new_link()],
                self.capacity,
                slot,
            ));
            if peer.has_link {
                new.push(peer.clone());
            }
            next.push(peer);
        }
        for gone in current
            .iter()
            .filter(|p| !next.iter().any(|n| Arc::ptr_eq(n, p)))
        {
            gone.retire(&self.metrics);
            self.interest_taken.notify_waiters();
            // Down, or replaced by a later boot (whose interest may be here already and
            // stays); not merely renewed (the same boot keeps its control link, and so its
            // interest).
            let renewed = next.iter().any(|p| {
                p.identity.node_id == gone.identity.node_id
                    && p.identity.boot_ms == gone.identity.boot_ms
            });
            if !renewed {
                self.interest
                    .forget(&gone.identity.node_id, gone.identity.boot_ms);
            }
        }
        // Members that are down or gone hold no slot: one that comes back sends a snapshot.
        self.interest.retain(|node_id| {
            others
                .iter()
                .any(|m| m.state != MemberState::Down && m.identity.node_id == node_id)
        });
        // The new control links start with a snapshot of this node's filters, taken while
        // none can change, and the peers are listed for the changes before any can: each
        // change comes after the snapshot, and none is lost.
        let next = Arc::new(next);
        match self.broker.get().and_then(Weak::upgrade) {
            Some(broker) => {
                // The new control links go on with the full retained digest, so that the
                // stores converge at once (see [`anti_entropy`]).
                let digest = (!new.is_empty())
                    .then(|| broker.router.retained_digest())
                    .flatten()
                    .map(|hashes| anti_entropy::encode_digest(&hashes, true));
                broker.router.with_filters(|filters| {
                    if !new.is_empty() {
                        let frames = snapshot_of(&filters, true);
                        let without_groups = snapshot_of(&filters, false);
                        for peer in &new {
                            // Shared groups only to a peer that reads them (version 4).
                            let frames = if peer.stamps {
                                &frames
                            } else {
                                &without_groups
                            };
                            peer.push_control(frames, true);
                            if let Some(digest) = digest.as_ref().filter(|_| peer.stamps) {
                                peer.push_full_digest(digest);
                            }
                        }
                    }
                    self.list.store(next);
                })
            }
            None => self.list.store(next),
        }
        if !new.is_empty() {
            self.wake_sender();
        }
    }

    /// Starts `peer`'s control link over, with a snapshot: its receiver refused the current
    /// one, or it could not take the last change.
    pub fn restart_control(&self, peer: &Peer) {
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        let digest = broker
            .router
            .retained_digest()
            .map(|hashes| anti_entropy::encode_digest(&hashes, true));
        broker.router.with_filters(|filters| {
            let frames = snapshot_of(&filters, peer.stamps);
            let mut queues = peer.queues.lock();
            if peer.gone.load(Ordering::Relaxed) {
                return;
            }
            // Named under the lock: of two restarts at once (sender and receiver), the later
            // name is the one installed, which the receiver then follows.
            queues.control = Outbox::new(self.new_link(), usize::MAX);
            queues.handover = HandoverBacklog::default();
            peer.note_control(&queues.control);
            queues
                .interest
                .restarted(frames.len() as u64, Instant::now());
            peer.control_lost.store(false, Ordering::Relaxed);
            for frame in &frames {
                queues.control.push(FRAME_INTEREST, frame.len(), |out| {
                    out.extend_from_slice(frame)
                });
            }
            if let Some(digest) = digest.as_ref().filter(|_| peer.stamps) {
                queues.control.push(FRAME_DIGEST, digest.len(), |out| {
                    out.extend_from_slice(digest)
                });
                queues.interest.queued(1, Instant::now());
                peer.listing_credit.store(LISTING_CREDIT, Ordering::Relaxed);
            }
        });
        debug!(peer = %peer.identity.node_id, "control link restarted with a snapshot");
        self.wake_sender();
    }

    /// A link name larger than every earlier one of this boot.
    fn new_link(&self) -> u64 {
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        let mut last = self.last_link.lock();
        *last = (*last + 1).max(now);
        *last
    }

    /// Starts a new link to `peer`, whose receiver refused the current one.
    pub fn reset_link(&self, peer: &Peer) {
        let link = self.new_link();
        let given_up = {
            let mut queues = peer.queues.lock();
            let given_up = queues.outbox.pending_frames();
            let freed = queues.outbox.buffered();
            queues.outbox = Outbox::new(link, self.capacity);
            peer.note_congestion(&queues.outbox);
            self.metrics.cluster.buffered_bytes.dec_by(freed as i64);
            given_up
        };
        warn!(peer = %peer.identity.node_id, given_up, "peer refused the link; starting a new one");
        self.metrics
            .cluster
            .dropped(ClusterPort::Sync, ClusterDrop::PeerGone)
            .inc_by(given_up as u64);
        peer.drained.notify_waiters();
    }

    /// Whether nothing is waiting to be sent or acknowledged.
    pub fn all_idle(&self) -> bool {
        self.list.load().iter().all(|peer| peer.is_idle())
    }

    /// Sends every peer with a control link the summary of this node's retained digest (every
    /// [`anti_entropy::DIGEST_PERIOD`]).
    pub fn send_digests(&self) {
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        let Some(hashes) = broker.router.retained_digest() else {
            return;
        };
        let frame = anti_entropy::encode_digest(&hashes, false);
        let mut wake = false;
        for peer in self.list().iter().filter(|p| p.stamps) {
            wake |= peer.push_anti_entropy(FRAME_DIGEST, std::slice::from_ref(&frame));
        }
        if wake {
            self.wake_sender();
        }
    }

    /// Answers a digest that `peer` sent: nothing when the stores agree, the full digest when
    /// only the summaries differ, else a listing of the buckets that differ, as much of it as
    /// the control link has room for (see [`CONTROL_BACKLOG`]), from where the last one to
    /// the peer stopped.
    pub fn on_digest(&self, peer: &Peer, digest: &anti_entropy::Digest) {
        if !peer.stamps {
            return;
        }
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        let Some(ours) = broker.router.retained_digest() else {
            return;
        };
        let room = peer.control_room();
        if room == 0 {
            debug!(peer = %peer.identity.node_id, "retained digest not answered: the control link is backlogged");
            return;
        }
        let resume = peer.listing_next.lock().clone();
        // Where the last listing stopped, else another first bucket each time.
        let start = resume.as_ref().map_or_else(
            || usize::try_from(crate::router::now_ms() / 7).unwrap_or(0),
            |(bucket, _)| *bucket,
        );
        let wake = match anti_entropy::answer(&ours, digest, start) {
            DigestAnswer::Same => return,
            DigestAnswer::SendFull => {
                peer.push_full_digest(&anti_entropy::encode_digest(&ours, true))
            }
            DigestAnswer::List(buckets) => {
                debug!(peer = %peer.identity.node_id, buckets = buckets.len(),
                       "retained stores differ; listing the buckets");
                let listing = anti_entropy::listing_frames(
                    &buckets,
                    room,
                    resume
                        .as_ref()
                        .map(|(bucket, after)| (*bucket, after.as_deref())),
                    |bucket, after, max| broker.router.retained_stamps(bucket, after, None, max),
                );
                *peer.listing_next.lock() = listing.next;
                peer.push_anti_entropy(FRAME_LISTING, &listing.frames)
            }
        };
        if wake {
            self.wake_sender();
        }
    }

    /// Acts on a part of a listing that `peer` sent: pushes it, on its data link, each entry
    /// of this node's in the part's range that wins over the peer's or that the peer lacks,
    /// while the link has room (the rest waits for the next round) and the peer's listings
    /// have credit (see [`LISTING_CREDIT`]).
    pub fn on_listing(&self, peer: &Peer, part: &Part) {
        if !peer.stamps {
            return;
        }
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        // Nothing to push to, nothing to compare: no entry is read.
        if !peer.repair_room() {
            return;
        }
        let credit = peer.listing_credit.load(Ordering::Relaxed);
        if credit <= part.entries.len() {
            debug!(peer = %peer.identity.node_id, "retained listing part beyond its credit skipped");
            peer.listing_credit.store(0, Ordering::Relaxed);
            return;
        }
        let ours = broker.router.retained_stamps(
            part.bucket,
            part.after.as_deref(),
            part.upto(),
            RANGE_MAX.min(credit - part.entries.len()),
        );
        peer.listing_credit
            .store(credit - part.entries.len() - ours.len(), Ordering::Relaxed);
        let now = Instant::now();
        let mut pushed = 0u64;
        for topic in anti_entropy::to_push(&part.entries, &ours) {
            let Some((message, stamp)) = broker.router.retained_entry(&topic) else {
                continue;
            };
            // A tombstone travels as a clear: an empty retained message.
            let message = message.unwrap_or_else(|| {
                Arc::new(Message::new(topic, Bytes::new(), QoS::AtMostOnce, true))
            });
            // Expired, and a tombstone at the next sweep.
            if message.is_expired(now) {
                continue;
            }
            match peer.push_repair(&message, &stamp, self.limit, now, &self.metrics) {
                Repair::Queued => pushed += 1,
                // This entry cannot go; the others may.
                Repair::Skipped => {}
                Repair::Busy => {
                    debug!(peer = %peer.identity.node_id,
                           "retained repairs paused: the link is busy; the next round goes on");
                    break;
                }
            }
        }
        if pushed > 0 {
            self.metrics.cluster.retained_repaired.inc_by(pushed);
            self.wake_sender();
        }
    }
}

impl Peers {
    /// What a SUBSCRIBE that has just changed this node's filters waits for before its SUBACK:
    /// each peer taking the interest frames queued for it so far (and so the new filter).
    /// `None` when every peer has them already. A peer that took nothing for
    /// [`INTEREST_WAIT`] is not waited for (it is down or cut off; membership will tell).
    pub fn interest_wait(self: &Arc<Self>) -> Option<InterestWait> {
        let now = Instant::now();
        let owed: Vec<_> = self
            .list()
            .iter()
            .filter_map(|peer| Some((peer.clone(), peer.interest_owed(now)?)))
            .collect();
        (!owed.is_empty()).then(|| InterestWait {
            peers: self.clone(),
            owed,
        })
    }
}

/// Peers that have not yet taken this node's latest interest, and how far they must (see
/// [`Peers::interest_wait`]).
pub struct InterestWait {
    peers: Arc<Peers>,
    owed: Vec<(Arc<Peer>, u64)>,
}

impl InterestWait {
    /// Waits until every peer has taken its frames, is gone, or has lagged for
    /// [`INTEREST_WAIT`], and for at most [`INTEREST_WAIT`].
    pub async fn settled(self) {
        let deadline = tokio::time::Instant::now() + INTEREST_WAIT;
        loop {
            let taken = self.peers.interest_taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            let now = Instant::now();
            if self
                .owed
                .iter()
                .all(|(peer, mark)| peer.interest_taken(*mark, now))
            {
                return;
            }
            tokio::select! {
                _ = taken => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// The interest frames of a snapshot of this node's filters and its shared groups; without
/// `groups` (for a peer of version 3, which reads no group entry), the groups' filters as
/// plain filters, as that release counted them.
fn snapshot_of(filters: &crate::router::Filters<'_>, groups: bool) -> Vec<BytesMut> {
    interest::snapshot_frames(|visit| {
        filters.for_each(|filter| visit(None, filter));
        filters.for_each_group(|group, filter| {
            let group = groups.then_some(group.as_bytes());
            visit(group, filter.as_bytes())
        });
    })
}

impl FilterWatcher for Peers {
    fn filter_added(&self, filter: &[u8]) {
        self.tell(None, filter, true, false);
    }

    fn filter_removed(&self, filter: &[u8], groups_left: bool) {
        self.tell(None, filter, false, groups_left);
    }

    fn group_added(&self, group: &str, filter: &str) {
        self.tell(Some(group.as_bytes()), filter.as_bytes(), true, false);
    }

    fn group_removed(&self, group: &str, filter: &str) {
        self.tell(Some(group.as_bytes()), filter.as_bytes(), false, false);
    }
}

impl Peers {
    /// Tells every peer with a control link of a filter (or with `group`, a shared group)
    /// added or removed here. Called under the router's write lock, so the list is read as it
    /// is (refreshing it would take the lock again).
    fn tell(&self, group: Option<&[u8]>, filter: &[u8], added: bool, groups_left: bool) {
        let Some(frame) = interest::change_frame(group, filter, added) else {
            return;
        };
        // A peer of version 3 reads no group entry: a group's filter is a plain one to it, as
        // that release counted it, added but never removed (it may be a direct subscription's
        // too; more interest costs traffic, less would lose messages) until its next snapshot.
        let as_filter = match group {
            Some(_) if added => interest::change_frame(None, filter, true),
            _ => None,
        };
        let mut wake = false;
        for peer in self.list.load().iter().filter(|p| p.has_link) {
            let frame = match (&as_filter, group) {
                _ if peer.stamps => &frame,
                (Some(as_filter), _) => as_filter,
                (None, Some(_)) => continue,
                // Its groups' filter (which it was told as a plain one) stays.
                (None, None) if groups_left => continue,
                (None, None) => &frame,
            };
            wake |= peer.push_control(std::slice::from_ref(frame), false);
        }
        if wake {
            self.wake_sender();
        }
    }
}

/// One member this node forwards to.
pub struct Peer {
    pub identity: NodeIdentity,
    /// Where its interest is kept in [`Peers::interest`]; `None`: beyond the slots, it gets
    /// every message.
    slot: Option<usize>,
    /// Its control link could not take a change: it starts over with a snapshot.
    control_lost: AtomicBool,
    /// The version of the best-effort datagrams it gets (1 or 2).
    pub publish_version: u8,
    /// Whether it reads links (sync version 3).
    pub has_link: bool,
    /// Whether it reads retained anti-entropy (sync version 4): stamped records, repairs,
    /// digests and listings. A peer of version 3 refuses each.
    pub stamps: bool,
    /// Whether it reads claims and sessions handed over (sync version 5, see
    /// [`super::handover`]). A peer of version 4 refuses each.
    pub handover: bool,
    /// The version of the session snapshots it is handed (see [`crate::session::snapshot`]):
    /// 2 from sync version 6, else 1.
    pub snapshot_version: u8,
    /// Where the next listing to it starts (see [`anti_entropy::Listing::next`]).
    listing_next: Mutex<Option<(usize, Option<Bytes>)>>,
    /// Entries this node still compares for its listing parts (see [`LISTING_CREDIT`]).
    listing_credit: AtomicUsize,
    queues: Mutex<Queues>,
    /// Notified when what the link holds falls to a quarter of its capacity, or the peer goes.
    drained: Notify,
    /// Frames acknowledged so far: how a waiting publisher tells progress.
    acked_frames: AtomicU64,
    /// The control link's name, and below which stream offset every frame of it is
    /// acknowledged: what [`Peer::handover_taken`] reads without the queues' lock (which
    /// publishers take), written under it.
    control_name: AtomicU64,
    control_acked_below: AtomicU64,
    gone: AtomicBool,
    /// The link held half its capacity or more at the last push or acknowledgement (see
    /// [`Peer::is_congested`]). Written under the queues' lock.
    congested: AtomicBool,
}

struct Queues {
    outbox: Outbox,
    control: Outbox,
    best_effort: BestEffort,
    interest: InterestProgress,
    handover: HandoverBacklog,
}

/// What the hand-over frames a control link holds unacknowledged may come to (see
/// [`Peer::push_handover_all`]).
#[cfg(not(test))]
const HANDOVER_CAPACITY: usize = 256 << 20;
#[cfg(test)]
const HANDOVER_CAPACITY: usize = 4 << 20;

/// Hand-over frames queued: whether the sender must be woken, and where the last of them ends
/// on which control link (see [`Peer::handover_taken`]).
#[derive(Debug, Clone, Copy)]
pub struct HandoverQueued {
    pub wake: bool,
    pub link: u64,
    pub end: u64,
}

/// The hand-over frames (claims, answers, sessions' parts, messages sent on) that the control
/// link holds unacknowledged: they do not count towards [`CONTROL_CAPACITY`], which bounds
/// what a peer that stopped acknowledging is owed in interest changes. A session of tens of
/// megabytes on its way is not such a peer, and starting the link over would drop it.
#[derive(Debug, Default)]
struct HandoverBacklog {
    /// Where each frame ends in the control link's stream, and its bytes (header included).
    frames: VecDeque<(u64, usize)>,
    bytes: usize,
    /// Over [`HANDOVER_CAPACITY`] at the last look (said once when it becomes so).
    over: bool,
}

impl HandoverBacklog {
    fn queued(&mut self, end: u64, len: usize) {
        self.frames.push_back((end, len));
        self.bytes += len;
    }

    /// Forgets the frames acknowledged: those that end before `first_pending_end` (every one
    /// when `None`).
    fn acknowledged(&mut self, first_pending_end: Option<u64>) {
        while let Some(&(end, len)) = self.frames.front() {
            if first_pending_end.is_some_and(|pending| end >= pending) {
                break;
            }
            self.frames.pop_front();
            self.bytes -= len;
        }
    }
}

/// How far a peer has taken this node's interest, in frames counted across its control
/// links, so that a SUBSCRIBE can wait until the peer has its filter. Every frame of the
/// control link counts (anti-entropy ones too), as its acknowledgements do.
#[derive(Debug)]
struct InterestProgress {
    /// Frames queued so far (and changes refused by a control link about to start over).
    queued: u64,
    /// Every frame up to this count has been taken by the peer, or made moot by a snapshot it
    /// has taken.
    taken: u64,
    /// `queued` when the current control link started, the frames of its snapshot, and the
    /// frames of the link taken: a restarted link's frames count once its snapshot is taken.
    link_base: u64,
    snapshot: u64,
    taken_on_link: u64,
    /// When the peer last took a frame, or was owed one while owed none.
    progressed_at: Instant,
}

impl InterestProgress {
    fn new(now: Instant) -> InterestProgress {
        InterestProgress {
            queued: 0,
            taken: 0,
            link_base: 0,
            snapshot: 0,
            taken_on_link: 0,
            progressed_at: now,
        }
    }

    fn queued(&mut self, frames: u64, now: Instant) {
        if self.taken == self.queued {
            self.progressed_at = now;
        }
        self.queued += frames;
    }

    /// A new control link, starting with a snapshot of `frames` frames.
    fn restarted(&mut self, frames: u64, now: Instant) {
        // Owed nothing until now: the wait for a lagging peer counts from the snapshot.
        if self.taken == self.queued {
            self.progressed_at = now;
        }
        self.link_base = self.queued;
        self.snapshot = frames;
        self.taken_on_link = 0;
        self.queued += frames;
    }

    /// The peer took `frames` more frames of the current link; says whether that was progress.
    fn took(&mut self, frames: u64, now: Instant) -> bool {
        if frames == 0 {
            return false;
        }
        self.taken_on_link += frames;
        self.progressed_at = now;
        if self.taken_on_link >= self.snapshot {
            self.taken = self.taken.max(self.link_base + self.taken_on_link);
        }
        true
    }

    fn lagging(&self, now: Instant) -> bool {
        self.taken < self.queued
            && now.saturating_duration_since(self.progressed_at) >= INTEREST_WAIT
    }
}

/// What the sender takes from a peer in one turn.
#[derive(Default)]
pub struct Transmits {
    /// Record runs for best-effort datagrams: record count and bytes.
    pub runs: Vec<(u16, Bytes)>,
    /// The link's name, and the segment up to which all are acknowledged.
    pub link: (u64, u64),
    /// Link segments: number and bytes.
    pub segments: Vec<(u64, Bytes)>,
    pub control_link: (u64, u64),
    pub control_segments: Vec<(u64, Bytes)>,
    /// When the link's timer next runs out.
    pub deadline: Option<Instant>,
    /// Whether more could be sent at once.
    pub more: bool,
    /// Segments among them that are sent again.
    pub retransmitted: u64,
}

impl Peer {
    /// A peer reading sync `version`, with new links named `links` (data, control).
    fn new(
        identity: NodeIdentity,
        version: u8,
        links: [u64; 2],
        capacity: usize,
        slot: Option<usize>,
    ) -> Peer {
        info!(peer = %identity.node_id, version, "forwarding to peer");
        Peer {
            identity,
            slot,
            control_lost: AtomicBool::new(false),
            publish_version: version.min(NEWEST_PUBLISH_VERSION),
            has_link: version >= LINK_VERSION,
            stamps: version >= STAMP_VERSION,
            handover: version >= HANDOVER_VERSION,
            snapshot_version: if version >= SNAPSHOT_2_VERSION {
                crate::session::snapshot::VERSION
            } else {
                crate::session::snapshot::VERSION_1
            },
            listing_next: Mutex::new(None),
            listing_credit: AtomicUsize::new(0),
            queues: Mutex::new(Queues {
                outbox: Outbox::new(links[0], capacity),
                control: Outbox::new(links[1], usize::MAX),
                best_effort: BestEffort::default(),
                interest: InterestProgress::new(Instant::now()),
                handover: HandoverBacklog::default(),
            }),
            drained: Notify::new(),
            acked_frames: AtomicU64::new(0),
            control_name: AtomicU64::new(links[1]),
            control_acked_below: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            congested: AtomicBool::new(false),
        }
    }

    /// Where its interest is kept in [`Peers::interest`], if it has a control link (a peer
    /// without one chooses nothing and names no shared groups).
    pub fn interest_slot(&self) -> Option<usize> {
        self.slot.filter(|_| self.has_link)
    }

    /// Whether this peer may deliver `message`, given the interest slots that want its topic
    /// (`wanted`, from [`RemoteInterest::matching`]): retained messages go everywhere.
    pub fn wants(&self, message: &Message, wanted: u64) -> bool {
        message.retain || self.may_subscribe(wanted)
    }

    /// Whether this peer may have a subscriber to a topic that the interest slots `wanted`
    /// match: its filters say so, or they are not known (no link, or no slot yet).
    pub fn may_subscribe(&self, wanted: u64) -> bool {
        !self.has_link || self.slot.is_none_or(|slot| wanted & (1 << slot) != 0)
    }

    /// Queues interest frames on the control link (a snapshot's whatever their size, a change
    /// while what is unacknowledged stays below [`CONTROL_CAPACITY`]); says whether the sender
    /// must be woken.
    fn push_control(&self, frames: &[BytesMut], snapshot: bool) -> bool {
        let mut queues = self.queues.lock();
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        // A change the link cannot take still counts: a SUBSCRIBE waiting for it waits for the
        // snapshot that replaces the link.
        queues.interest.queued(frames.len() as u64, Instant::now());
        if self.control_lost() {
            return false;
        }
        let backlog = queues
            .control
            .buffered()
            .saturating_sub(queues.handover.bytes);
        if !snapshot && backlog > CONTROL_CAPACITY {
            warn!(peer = %self.identity.node_id,
                  "peer does not acknowledge interest changes; its control link starts over");
            self.control_lost.store(true, Ordering::Relaxed);
            return true;
        }
        let was_idle = !queues.control.has_transmit();
        for frame in frames {
            queues.control.push(FRAME_INTEREST, frame.len(), |out| {
                out.extend_from_slice(frame)
            });
        }
        was_idle
    }

    /// The count of interest frames this peer must take to have all queued so far; `None`
    /// when it has them, or is gone, or lags (see [`Peers::interest_wait`]).
    fn interest_owed(&self, now: Instant) -> Option<u64> {
        if !self.has_link || self.gone.load(Ordering::Relaxed) {
            return None;
        }
        let queues = self.queues.lock();
        let progress = &queues.interest;
        (progress.taken < progress.queued && !progress.lagging(now)).then_some(progress.queued)
    }

    /// Whether this peer has taken `mark` interest frames, or is gone, or lags.
    fn interest_taken(&self, mark: u64, now: Instant) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return true;
        }
        let queues = self.queues.lock();
        queues.interest.taken >= mark || queues.interest.lagging(now)
    }

    /// Queues anti-entropy frames of `kind` on the control link, unless it holds more than
    /// [`CONTROL_BACKLOG`] unacknowledged (a peer that does not acknowledge is not sent more);
    /// says whether the sender must be woken.
    fn push_anti_entropy(&self, kind: u8, frames: &[BytesMut]) -> bool {
        let mut queues = self.queues.lock();
        if self.gone.load(Ordering::Relaxed)
            || self.control_lost()
            || queues.control.buffered() > CONTROL_BACKLOG
        {
            return false;
        }
        let was_idle = !queues.control.has_transmit();
        for frame in frames {
            queues
                .control
                .push(kind, frame.len(), |out| out.extend_from_slice(frame));
        }
        // Counted with the interest frames: acknowledgements count every frame of the link.
        queues.interest.queued(frames.len() as u64, Instant::now());
        was_idle
    }

    /// Queues hand-over frames of `kind` on the control link, whatever it holds (claims and
    /// answers are small; a session's parts were a session in memory already); says whether
    /// the sender must be woken. `None` and nothing queued for a peer that is gone or whose
    /// control link starts over: the claim they belong to completes at its deadline.
    pub fn push_handover(&self, kind: u8, frames: &[BytesMut]) -> Option<bool> {
        self.push_handover_all(&[(kind, frames)], false)
            .map(|queued| queued.wake)
    }

    /// [`Peer::push_handover`] for groups of frames of several kinds, all on one link or none.
    /// A `session` (its parts) is also refused while the hand-over frames the link holds
    /// unacknowledged pass [`HANDOVER_CAPACITY`]: a peer that takes none of them is handed no
    /// more sessions, which stay where they are (claims, answers and what is sent on for a
    /// session already on its way are small, and bounded in time).
    pub fn push_handover_all(
        &self,
        groups: &[(u8, &[BytesMut])],
        session: bool,
    ) -> Option<HandoverQueued> {
        let mut queues = self.queues.lock();
        if !self.handover || self.gone.load(Ordering::Relaxed) || self.control_lost() {
            return None;
        }
        // Current: acknowledged frames are forgotten as acknowledgements come.
        let over = queues.handover.bytes > HANDOVER_CAPACITY;
        if over != queues.handover.over {
            queues.handover.over = over;
            if over {
                warn!(peer = %self.identity.node_id, bytes = queues.handover.bytes,
                      "peer does not acknowledge the sessions it is handed; no more go to it until it does");
            }
        }
        if session && over {
            return None;
        }
        let was_idle = !queues.control.has_transmit();
        let mut count = 0;
        for (kind, frames) in groups {
            for frame in *frames {
                queues
                    .control
                    .push(*kind, frame.len(), |out| out.extend_from_slice(frame));
                let end = queues.control.pushed_to();
                queues.handover.queued(end, FRAME_HEADER + frame.len());
            }
            count += frames.len();
        }
        // Counted with the interest frames: acknowledgements count every frame of the link.
        queues.interest.queued(count as u64, Instant::now());
        Some(HandoverQueued {
            wake: was_idle,
            link: queues.control.link(),
            end: queues.control.pushed_to(),
        })
    }

    /// Whether the peer has every hand-over frame up to `end` of control link `link`
    /// ([`HandoverQueued`]): `None` when that link is gone (started over, or the peer went)
    /// and what it held unacknowledged with it.
    pub fn handover_taken(&self, link: u64, end: u64) -> Option<bool> {
        // The name read on both sides of the offset: a link that started over in between is
        // seen, and an offset of another link never taken for this one's.
        let name = self.control_name.load(Ordering::SeqCst);
        let acked_below = self.control_acked_below.load(Ordering::SeqCst);
        if self.gone.load(Ordering::SeqCst)
            || name != link
            || self.control_name.load(Ordering::SeqCst) != link
        {
            return None;
        }
        Some(end < acked_below)
    }

    /// Publishes `control` (this peer's control link, its lock held) for
    /// [`Peer::handover_taken`]: its name first, then below which offset its frames are all
    /// acknowledged (with none pending, every frame pushed so far).
    fn note_control(&self, control: &Outbox) {
        self.control_name.store(control.link(), Ordering::SeqCst);
        let acked_below = control
            .first_pending_end()
            .unwrap_or_else(|| control.pushed_to() + 1);
        self.control_acked_below
            .store(acked_below, Ordering::SeqCst);
    }

    /// Whether it is gone (declared down, left, or replaced by a later boot).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Queues this node's full digest on the control link (see [`Peer::push_anti_entropy`]),
    /// and gives the listing that answers it its credit; says whether the sender must be
    /// woken.
    fn push_full_digest(&self, digest: &BytesMut) -> bool {
        let wake = self.push_anti_entropy(FRAME_DIGEST, std::slice::from_ref(digest));
        self.listing_credit.store(LISTING_CREDIT, Ordering::Relaxed);
        wake
    }

    /// The anti-entropy bytes the control link takes now: what it holds unacknowledged below
    /// [`CONTROL_BACKLOG`].
    fn control_room(&self) -> usize {
        CONTROL_BACKLOG.saturating_sub(self.queues.lock().control.buffered())
    }

    /// Whether the data link takes repairs: it holds at most a quarter of its capacity.
    fn repair_room(&self) -> bool {
        let queues = self.queues.lock();
        !self.gone.load(Ordering::Relaxed)
            && queues.outbox.buffered() <= queues.outbox.capacity() / 4
    }

    /// Queues a retained entry (a tombstone when its payload is empty) with its stamp on the
    /// data link, for the peer's store only, while the link holds less than a quarter of its
    /// capacity (so that repairs never hold live messages back). An entry that no link frame
    /// may carry (over `limit`, this node's `-csl`, or with properties over 64 KiB, as
    /// [`super::sync::Forwarder::forward`] checks), or too large for the link's capacity, is
    /// skipped: its receiver would refuse it, and it would be sent again every round.
    fn push_repair(
        &self,
        message: &Message,
        stamp: &Stamp,
        limit: Option<usize>,
        now: Instant,
        metrics: &Metrics,
    ) -> Repair {
        if message.properties.len() > usize::from(u16::MAX)
            || limit.is_some_and(|limit| record_len(message, 2) > limit)
        {
            debug!(peer = %self.identity.node_id, topic_len = message.topic.len(),
                   "retained repair over -csl or with over 64 KiB of properties skipped");
            return Repair::Skipped;
        }
        let mut queues = self.queues.lock();
        if self.gone.load(Ordering::Relaxed)
            || !self.stamps
            || queues.outbox.buffered() > queues.outbox.capacity() / 4
        {
            return Repair::Busy;
        }
        let len = stamped_record_len(message, Some(stamp));
        let before = queues.outbox.buffered();
        let pushed = queues.outbox.push(FRAME_RETAINED, len, |out| {
            encode_stamped_record(out, message, Some(stamp), now)
        });
        // One large entry can take a link from a quarter to past half.
        self.note_congestion(&queues.outbox);
        let grown = queues.outbox.buffered() - before;
        drop(queues);
        metrics.cluster.buffered_bytes.inc_by(grown as i64);
        if pushed == Pushed::Full {
            // The link held at most a quarter of its capacity: the entry is the problem.
            debug!(peer = %self.identity.node_id, len, "retained repair larger than the link (-csb) skipped");
            return Repair::Skipped;
        }
        Repair::Queued
    }

    /// Whether the link held half its capacity or more at the last push or acknowledgement:
    /// a publisher that stages a message for this peer flushes at once and waits (see
    /// [`super::sync::ForwardBatch`]), as one that pushed past the mark itself would.
    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed)
    }

    /// Notes whether `outbox` (this peer's link, its lock held) is congested. Read on every
    /// publish: written only when it changes.
    fn note_congestion(&self, outbox: &Outbox) {
        // A retired peer's link holds nothing and has no capacity: never congested.
        let congested = outbox.capacity() > 0 && outbox.buffered() >= outbox.capacity() / 2;
        if self.congested.load(Ordering::Relaxed) != congested {
            self.congested.store(congested, Ordering::Relaxed);
        }
    }

    /// What the data link holds that was not yet cut into segments.
    #[cfg(test)]
    pub(in crate::cluster) fn unsent_for_tests(&self) -> Vec<u8> {
        self.queues.lock().outbox.unsent_bytes().to_vec()
    }

    /// Whether the control link must start over (see [`Peers::restart_control`]).
    pub fn control_lost(&self) -> bool {
        self.control_lost.load(Ordering::Relaxed)
    }

    /// Queues `message` (not expired at `now`; with its `stamp` when retained; naming the
    /// shared `groups` this peer must serve) for this peer; says whether the sender must be
    /// woken, and whether the link is congested. One message of [`Peer::pushing`].
    pub fn push(
        &self,
        message: &Message,
        stamp: Option<&Stamp>,
        groups: &[(Bytes, Bytes)],
        now: Instant,
        metrics: &Metrics,
    ) -> PushOutcome {
        let mut pushing = self.pushing(now);
        pushing.push(message, stamp, groups, metrics);
        pushing.finish(metrics)
    }

    /// Opens this peer's queues for a run of messages (see [`Pushing`]): one lock, one
    /// decision about waking the sender and one update of the buffered-bytes gauge for the
    /// run. Publishers on every worker push to the same peer; taken per message, its lock was
    /// a tenth of the publishing node's time across two nodes on two cores.
    pub fn pushing(&self, now: Instant) -> Pushing<'_> {
        let queues = self.queues.lock();
        let gone = self.gone.load(Ordering::Relaxed);
        Pushing {
            was_idle: !queues.outbox.has_transmit(),
            unsent_before: queues.outbox.unsent(),
            buffered_before: queues.outbox.buffered(),
            best_effort_was_empty: queues.best_effort.is_empty(),
            queues,
            peer: self,
            gone,
            now,
            outcome: PushOutcome::default(),
        }
    }

    /// What to send now: every best-effort run, and up to `max_segments` link segments.
    pub fn take_transmits(&self, now: Instant, max_segments: usize) -> Transmits {
        let mut queues = self.queues.lock();
        let mut transmits = Transmits {
            runs: queues.best_effort.take(),
            link: (queues.outbox.link(), queues.outbox.acked()),
            ..Transmits::default()
        };
        transmits.control_link = (queues.control.link(), queues.control.acked());
        let held = &mut *queues;
        for (outbox, segments) in [
            (&mut held.control, &mut transmits.control_segments),
            (&mut held.outbox, &mut transmits.segments),
        ] {
            outbox.on_timeout(now);
            while segments.len() < max_segments {
                let Some(segment) = outbox.poll_transmit(now) else {
                    break;
                };
                segments.push(segment);
            }
        }
        transmits.more = queues.outbox.has_transmit() || queues.control.has_transmit();
        transmits.deadline = earliest(queues.outbox.deadline(), queues.control.deadline());
        let retransmitted =
            queues.outbox.take_retransmitted() + queues.control.take_retransmitted();
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(peer = %self.identity.node_id, flow = %queues.outbox.flow(), "link");
        }
        drop(queues);
        transmits.retransmitted = retransmitted;
        transmits
    }

    /// Applies an acknowledgement from the peer; says whether the link refused to go on.
    pub fn on_ack(&self, ack: &Ack, now: Instant, peers: &Peers, metrics: &Metrics) -> bool {
        let (acked, buffered, capacity, wake) = {
            let mut queues = self.queues.lock();
            let acked = queues.outbox.on_ack(ack, now);
            self.note_congestion(&queues.outbox);
            // Idle matters to a sender that is stopping: it waits for nothing more (a pass in
            // place wakes it then).
            let wake = queues.outbox.has_transmit() || queues.outbox.is_idle();
            (
                acked,
                queues.outbox.buffered(),
                queues.outbox.capacity(),
                wake,
            )
        };
        if acked.reset {
            return true;
        }
        metrics.cluster.buffered_bytes.dec_by(acked.freed as i64);
        if acked.frames > 0 {
            self.acked_frames
                .fetch_add(acked.frames as u64, Ordering::Relaxed);
        }
        if acked.freed > 0 && buffered <= capacity / 4 {
            self.drained.notify_waiters();
        }
        if wake {
            peers.send_soon();
        }
        false
    }

    /// Applies an acknowledgement of the control link; says whether the link refused to go
    /// on.
    pub fn on_control_ack(&self, ack: &Ack, now: Instant, peers: &Peers) -> bool {
        let mut queues = self.queues.lock();
        let acked = queues.control.on_ack(ack, now);
        let pending = queues.control.first_pending_end();
        queues.handover.acknowledged(pending);
        self.note_control(&queues.control);
        if queues.control.has_transmit() {
            peers.wake_sender();
        }
        if queues.interest.took(acked.frames as u64, now) {
            peers.interest_taken.notify_waiters();
        }
        acked.reset
    }

    fn is_idle(&self) -> bool {
        let queues = self.queues.lock();
        queues.outbox.is_idle() && queues.best_effort.is_empty()
    }

    /// Gives up what is held for a peer that membership no longer lists as up.
    fn retire(&self, metrics: &Metrics) {
        let (given_up, freed) = {
            let mut queues = self.queues.lock();
            self.gone.store(true, Ordering::Relaxed);
            let given_up = queues.outbox.pending_frames();
            let freed = queues.outbox.buffered();
            queues.outbox = Outbox::new(0, 0);
            queues.control = Outbox::new(0, 0);
            queues.handover = HandoverBacklog::default();
            self.note_control(&queues.control);
            self.congested.store(false, Ordering::Relaxed);
            queues.best_effort = BestEffort::default();
            (given_up, freed)
        };
        metrics.cluster.buffered_bytes.dec_by(freed as i64);
        if given_up > 0 {
            warn!(peer = %self.identity.node_id, given_up,
                  "peer is down or restarted: messages not acknowledged by it are given up");
            metrics
                .cluster
                .dropped(ClusterPort::Sync, ClusterDrop::PeerGone)
                .inc_by(given_up as u64);
        } else {
            info!(peer = %self.identity.node_id, "no longer forwarding to peer");
        }
        self.drained.notify_waiters();
    }

    /// The bytes the link holds while over a quarter of its capacity.
    fn congested_bytes(&self) -> Option<usize> {
        if self.gone.load(Ordering::Relaxed) {
            return None;
        }
        let queues = self.queues.lock();
        let buffered = queues.outbox.buffered();
        (buffered > queues.outbox.capacity() / 4).then_some(buffered)
    }

    /// Waits (at most `limit`) until the link holds no more than a quarter of its capacity, as
    /// [`crate::session::Mailbox::drained`] does for a subscriber's queue.
    pub async fn drained(&self, limit: Duration) -> Drain {
        let notified = self.drained.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(before) = self.congested_bytes() else {
            return Drain::Drained;
        };
        let acked_before = self.acked_frames.load(Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, notified).await;
        match self.congested_bytes() {
            None => Drain::Drained,
            Some(after)
                if after < before && self.acked_frames.load(Ordering::Relaxed) != acked_before =>
            {
                Drain::Progressing
            }
            Some(_) => Drain::Stalled,
        }
    }
}

/// What [`Peer::push_repair`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    Queued,
    /// Not queued, nor anything more this round: the link is busy (or gone).
    Busy,
    /// Not queued: this entry cannot go (see [`Peer::push_repair`]); others may.
    Skipped,
}

/// What [`Peer::push`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    pub queued: bool,
    /// The sender has nothing else of this peer's to send: wake it.
    pub wake: bool,
    /// Otherwise, what the push left ready waits for an acknowledgement until then: the
    /// sender's thread must be awake by then.
    pub wake_by: Option<Instant>,
    /// The link holds half its capacity or more.
    pub congested: bool,
}

/// A peer's queues open for a run of messages ([`Peer::pushing`]); [`Pushing::finish`] says
/// what the run did.
pub struct Pushing<'a> {
    peer: &'a Peer,
    queues: parking_lot::MutexGuard<'a, Queues>,
    /// The peer was retired: nothing is queued.
    gone: bool,
    now: Instant,
    /// The link's state before the run, for the decision to wake the sender.
    was_idle: bool,
    unsent_before: usize,
    buffered_before: usize,
    best_effort_was_empty: bool,
    outcome: PushOutcome,
}

impl Pushing<'_> {
    /// Queues `message` (not expired at the run's time; with its `stamp` when retained; naming
    /// the shared `groups` this peer must serve); says whether it was queued. Drops are
    /// counted here; congestion is told by [`Pushing::finish`].
    pub fn push(
        &mut self,
        message: &Message,
        stamp: Option<&Stamp>,
        groups: &[(Bytes, Bytes)],
        metrics: &Metrics,
    ) -> bool {
        if self.gone {
            return false;
        }
        let peer = self.peer;
        let now = self.now;
        let queues = &mut *self.queues;
        // Every message goes on the link of a peer that has one, QoS 0 too: the link carries
        // the peer's back-pressure (a subscriber there that cannot keep up makes this node's
        // publishers wait, as one here would), where best-effort datagrams were sent as fast as
        // the sender could and lost at the peer's socket or its subscriber's queue (a QoS 0
        // flood across nodes delivered 1 % of the single-node rate). A retained message must
        // reach the peer's store in any case.
        if peer.has_link {
            // A peer of version 3 gets retained messages without their stamps, which it would
            // refuse.
            let stamp = stamp.filter(|_| peer.stamps);
            // Nor the shared groups it is chosen for: it is never chosen (it announces none).
            let groups = if peer.stamps { groups } else { &[] };
            let len = stamped_record_len(message, stamp) + groups_len(groups);
            // QoS 0 takes at most three quarters of the link's buffer: the rest stays for QoS 1
            // and 2 and retained writes, whose publishers were told they are delivered, against
            // QoS 0 publishers that do not wait (HTTP, CoAP, wills) or stopped waiting.
            let best_effort = message.qos == QoS::AtMostOnce && !message.retain;
            let capacity = queues.outbox.capacity();
            let buffered = queues.outbox.buffered();
            if best_effort && buffered > 0 && buffered + len > capacity / 4 * 3 {
                debug!(peer = %peer.identity.node_id, "link buffer three quarters full; QoS 0 message not forwarded");
                metrics
                    .cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::QueueFull)
                    .inc();
                self.outcome.congested = true;
                return false;
            }
            return match queues.outbox.push(FRAME_PUBLISH, len, |out| {
                encode_link_record(out, message, stamp, now, groups)
            }) {
                Pushed::Full => {
                    debug!(peer = %peer.identity.node_id, "link buffer full (-csb); message not forwarded");
                    metrics
                        .cluster
                        .dropped(ClusterPort::Sync, ClusterDrop::BufferFull)
                        .inc();
                    // Still congested: the publisher waits before it sends more.
                    self.outcome.congested = true;
                    false
                }
                pushed => {
                    self.outcome.queued = true;
                    self.outcome.congested |= pushed == Pushed::Congested;
                    true
                }
            };
        }
        // A peer without links chooses nothing, and is named no groups: it serves all its
        // groups, as before.
        let best_effort_len = record_len(message, peer.publish_version);
        if best_effort_len > MAX_DATAGRAM_RECORD {
            debug!(peer = %peer.identity.node_id, len = best_effort_len,
                   "message too big for one datagram to a peer without links; not forwarded");
            metrics
                .cluster
                .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                .inc();
            return false;
        }
        if !queues
            .best_effort
            .push(message, peer.publish_version, best_effort_len, now)
        {
            debug!(peer = %peer.identity.node_id, "best-effort queue full; message not forwarded");
            metrics
                .cluster
                .dropped(ClusterPort::Sync, ClusterDrop::QueueFull)
                .inc();
            return false;
        }
        self.outcome.queued = true;
        true
    }

    /// Closes the run: whether the sender must be woken (or by when), whether the link is
    /// congested, whether anything was queued.
    pub fn finish(self, metrics: &Metrics) -> PushOutcome {
        let Pushing {
            peer,
            queues,
            now,
            was_idle,
            unsent_before,
            buffered_before,
            best_effort_was_empty,
            mut outcome,
            ..
        } = self;
        if !outcome.queued {
            return outcome;
        }
        if !peer.has_link {
            outcome.wake = best_effort_was_empty;
            return outcome;
        }
        let outbox = &queues.outbox;
        peer.note_congestion(outbox);
        let held_until = outbox.hold_until();
        let wake = outbox.has_transmit()
            && ((was_idle && outbox.outstanding() < EAGER_WHILE_OUTSTANDING)
                || unsent_before / BURST_BYTES != outbox.unsent() / BURST_BYTES
                || held_until.is_some_and(|until| now >= until));
        let grown = outbox.buffered() - buffered_before;
        drop(queues);
        metrics.cluster.buffered_bytes.inc_by(grown as i64);
        outcome.wake = wake;
        // What waits for an acknowledgement goes by the end of its hold even if none comes,
        // nor another push: the sender's thread wakes for it.
        outcome.wake_by = held_until.filter(|_| !wake);
        outcome
    }
}

/// Records for best-effort datagrams, packed into runs of up to [`BATCH_BYTES`] as they come.
#[derive(Default)]
struct BestEffort {
    ready: VecDeque<(u16, Bytes)>,
    filling: BytesMut,
    count: u16,
    bytes: usize,
}

impl BestEffort {
    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn push(&mut self, message: &Message, version: u8, len: usize, now: Instant) -> bool {
        if self.bytes + len > BEST_EFFORT_BYTES {
            return false;
        }
        if self.count > 0 && (self.filling.len() + len > BATCH_BYTES || self.count == u16::MAX) {
            self.seal();
        }
        encode_record(&mut self.filling, message, version, now);
        self.count += 1;
        self.bytes += len;
        true
    }

    fn seal(&mut self) {
        let run = self.filling.split().freeze();
        self.ready.push_back((std::mem::take(&mut self.count), run));
    }

    fn take(&mut self) -> Vec<(u16, Bytes)> {
        if self.count > 0 {
            self.seal();
        }
        self.bytes = 0;
        self.ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::MemberState;
    use bytes::Bytes;

    fn identity(name: &str, version: u8) -> NodeIdentity {
        NodeIdentity {
            node_id: name.to_string(),
            gossip: "127.0.0.1:7946".parse().expect("address"),
            sync_port: 7947,
            mqtt_port: 1883,
            version: NodeIdentity::advertised_version("0", version),
            boot_ms: 1,
            renewal: 0,
        }
    }

    fn peers_of(others: &[(&str, u8)], capacity: usize) -> (Arc<Members>, Peers) {
        let members = Arc::new(Members::new(identity("local", 4), false));
        members.set_others_for_tests(
            others
                .iter()
                .map(|&(name, version)| MemberInfo {
                    identity: identity(name, version),
                    state: MemberState::Up,
                })
                .collect(),
        );
        let peers = Peers::new(
            members.clone(),
            capacity,
            4,
            None,
            Instant::now(),
            Arc::new(Metrics::new()),
        );
        (members, peers)
    }

    /// A stamp this node gave a retained write.
    fn local_stamp() -> Stamp {
        Stamp {
            ms: 1_700_000_000_000,
            count: 0,
            node: Bytes::from_static(b"local"),
        }
    }

    fn message(topic: &str, len: usize, qos: QoS, retain: bool) -> Message {
        Message::new(
            Bytes::copy_from_slice(topic.as_bytes()),
            Bytes::from(vec![0; len]),
            qos,
            retain,
        )
    }

    #[test]
    fn a_peer_wants_what_matches_its_interest_and_every_retained_message() {
        let (_members, peers) = peers_of(&[("new", 3), ("old", 2)], 1 << 20);
        let list = peers.list();
        let (new, old) = (&list[0], &list[1]);
        assert!(new.has_link && !old.has_link);
        let plain = message("a/b", 1, QoS::AtLeastOnce, false);
        let retained = message("a/b", 1, QoS::AtLeastOnce, true);
        // Not known yet: everything.
        assert!(new.wants(&plain, peers.interest.matching(&Bytes::from_static(b"a/b"))));
        let changes = interest::Changes {
            snapshot: true,
            filters: vec![(b"x/#".to_vec(), true)],
            groups: Vec::new(),
        };
        peers.interest.apply("new", 1, &changes);
        let wanted = peers.interest.matching(&Bytes::from_static(b"a/b"));
        assert!(!new.wants(&plain, wanted));
        assert!(new.wants(&retained, wanted));
        assert!(old.wants(&plain, wanted), "a peer without links gets all");
        assert!(new.wants(&plain, peers.interest.matching(&Bytes::from_static(b"x/y"))));
    }

    #[test]
    fn a_run_of_pushes_decides_once_for_all_its_messages() {
        let (_members, peers) = peers_of(&[("new", 4)], 1 << 20);
        let peer = peers.list()[0].clone();
        let metrics = Metrics::new();
        let now = Instant::now();
        let one = message("a/b", 100, QoS::AtLeastOnce, false);
        let mut pushing = peer.pushing(now);
        for _ in 0..3 {
            assert!(pushing.push(&one, None, &[], &metrics));
        }
        let outcome = pushing.finish(&metrics);
        // An idle link: the run's first segment goes at once.
        assert!(
            outcome.queued && outcome.wake && !outcome.congested,
            "{outcome:?}"
        );
        let frame = crate::cluster::link::FRAME_HEADER + stamped_record_len(&one, None);
        assert_eq!(metrics.cluster.buffered_bytes.get(), 3 * frame as i64);
        assert!(!peer.is_congested());
        // A run that takes the link past half its capacity tells of it, and so does the peer
        // from then on, until acknowledgements bring it back.
        let big = message("a/b", 300 << 10, QoS::AtLeastOnce, false);
        let mut pushing = peer.pushing(now);
        assert!(pushing.push(&big, None, &[], &metrics));
        assert!(!pushing.finish(&metrics).congested);
        assert!(!peer.is_congested());
        let mut pushing = peer.pushing(now);
        assert!(pushing.push(&big, None, &[], &metrics));
        assert!(pushing.finish(&metrics).congested);
        assert!(peer.is_congested());
        peers.reset_link(&peer);
        assert!(!peer.is_congested(), "a new link holds nothing");
        // A run on a retired peer queues nothing.
        peer.retire(&metrics);
        let mut pushing = peer.pushing(now);
        assert!(!pushing.push(&one, None, &[], &metrics));
        assert_eq!(pushing.finish(&metrics), PushOutcome::default());
    }

    #[test]
    fn a_congested_link_is_told_until_acknowledgements_bring_it_below_half() {
        let (_members, peers) = peers_of(&[("new", 4)], 64 << 10);
        let peer = peers.list()[0].clone();
        let metrics = Metrics::new();
        let now = Instant::now();
        let big = message("a/b", 20 << 10, QoS::AtLeastOnce, false);
        assert!(!peer.push(&big, None, &[], now, &metrics).congested);
        assert!(peer.push(&big, None, &[], now, &metrics).congested);
        assert!(peer.is_congested());
        let sent = peer.take_transmits(now, usize::MAX);
        let (link, _) = sent.link;
        let last = sent.segments.last().expect("segments").0;
        let ack = Ack {
            link,
            cumulative: last,
            selective: 0,
            window: 64,
            reset: false,
        };
        assert!(!peer.on_ack(&ack, now, &peers, &metrics));
        assert!(!peer.is_congested(), "everything sent was acknowledged");
    }

    /// A session larger than [`CONTROL_CAPACITY`] on its way to a peer, then an interest
    /// change: the control link goes on (starting it over would drop the session); interest
    /// changes beyond the capacity still start it over, and once the session is acknowledged
    /// it no longer counts for anything.
    /// One peer, of this release.
    fn newest_peer() -> (Arc<Members>, Peers) {
        let members = Arc::new(Members::new(
            identity("local", super::super::sync::NEWEST_VERSION),
            false,
        ));
        members.set_others_for_tests(vec![MemberInfo {
            identity: identity("p", super::super::sync::NEWEST_VERSION),
            state: MemberState::Up,
        }]);
        let peers = Peers::new(
            members.clone(),
            1 << 20,
            super::super::sync::NEWEST_VERSION,
            None,
            Instant::now(),
            Arc::new(Metrics::new()),
        );
        (members, peers)
    }

    /// Hand-over frames a peer does not acknowledge have a bound of their own: beyond it
    /// nothing more is queued for it.
    #[test]
    fn hand_over_frames_a_peer_does_not_take_are_bounded() {
        let (_members, peers) = newest_peer();
        let peer = peers.list()[0].clone();
        let part = BytesMut::from(&vec![7u8; 1 << 16][..]);
        let kind = super::super::handover::wire::FRAME_SESSION_PART;
        let many: Vec<BytesMut> = (0..HANDOVER_CAPACITY / part.len())
            .map(|_| part.clone())
            .collect();
        // Checked before a push: the one that crosses the bound is queued whole.
        assert!(
            peer.push_handover_all(&[(kind, &many)], true).is_some(),
            "up to the bound"
        );
        assert!(
            peer.push_handover_all(&[(kind, &many[..1])], true)
                .is_none(),
            "beyond it"
        );
        assert!(
            peer.push_handover(kind, &many[..1]).is_some(),
            "what is not a session still goes"
        );
        assert!(!peer.control_lost(), "the link goes on");
    }

    /// What the peer has taken of the hand-over frames is read without the queues' lock, and
    /// never for another link.
    #[test]
    fn the_hand_over_frames_a_peer_acknowledges_are_taken() {
        let (_members, peers) = newest_peer();
        let peer = peers.list()[0].clone();
        let kind = super::super::handover::wire::FRAME_SESSION_PART;
        let frame = BytesMut::from(&b"session"[..]);
        let first = peer
            .push_handover_all(&[(kind, std::slice::from_ref(&frame))], true)
            .expect("queued");
        let now = Instant::now();
        let sent = peer.take_transmits(now, 64).control_segments;
        assert_eq!(sent.len(), 1);
        let second = peer
            .push_handover_all(&[(kind, std::slice::from_ref(&frame))], true)
            .expect("queued");
        assert_eq!(peer.handover_taken(first.link, first.end), Some(false));
        let ack = Ack {
            link: first.link,
            cumulative: sent[0].0,
            selective: 0,
            window: 64,
            reset: false,
        };
        assert!(!peer.on_control_ack(&ack, now, &peers));
        assert_eq!(peer.handover_taken(first.link, first.end), Some(true));
        assert_eq!(
            peer.handover_taken(second.link, second.end),
            Some(false),
            "pushed after, not acknowledged"
        );
        assert_eq!(peer.handover_taken(first.link + 1, first.end), None);
    }

    #[test]
    fn a_large_session_handed_over_does_not_make_the_control_link_start_over() {
        let (_members, peers) = newest_peer();
        let peer = peers.list()[0].clone();
        assert!(peer.handover);
        assert_eq!(peer.snapshot_version, crate::session::snapshot::VERSION);
        let part = BytesMut::from(&vec![7u8; CONTROL_CAPACITY / 2][..]);
        let parts = [part.clone(), part.clone(), part.clone()];
        let kind = super::super::handover::wire::FRAME_SESSION_PART;
        let queued = peer
            .push_handover_all(&[(kind, &parts)], true)
            .expect("queued");
        assert_eq!(
            peer.handover_taken(queued.link, queued.end),
            Some(false),
            "not acknowledged yet"
        );
        assert_eq!(
            peer.handover_taken(queued.link + 1, queued.end),
            None,
            "another link: what the one named held is gone"
        );
        let change = BytesMut::from(&b"change"[..]);
        peer.push_control(std::slice::from_ref(&change), false);
        assert!(
            !peer.control_lost(),
            "a session on its way is not a backlog"
        );
        {
            let queues = peer.queues.lock();
            assert!(queues.control.buffered() > CONTROL_CAPACITY);
            assert_eq!(queues.handover.frames.len(), 3);
        }
        let large = BytesMut::from(&vec![1u8; CONTROL_CAPACITY][..]);
        peer.push_control(std::slice::from_ref(&large), false);
        assert!(!peer.control_lost(), "at the capacity, not beyond yet");
        peer.push_control(std::slice::from_ref(&change), false);
        assert!(
            peer.control_lost(),
            "interest changes beyond it start the link over"
        );

        // Acknowledged, the frames are forgotten.
        let mut backlog = HandoverBacklog::default();
        backlog.queued(10, 10);
        backlog.queued(25, 15);
        backlog.acknowledged(Some(25));
        assert_eq!((backlog.frames.len(), backlog.bytes), (1, 15));
        backlog.acknowledged(None);
        assert_eq!((backlog.frames.len(), backlog.bytes), (0, 0));
    }

    #[test]
    fn interest_is_taken_frame_by_frame_and_a_restarted_link_once_its_snapshot_is() {
        let start = Instant::now();
        let later = |ms| start + Duration::from_millis(ms);
        let mut progress = InterestProgress::new(start);
        progress.queued(2, start);
        assert_eq!((progress.taken, progress.queued), (0, 2));
        assert!(progress.took(1, later(1)));
        assert_eq!(progress.taken, 1);
        assert!(!progress.took(0, later(2)), "no frame is no progress");
        // Owed a frame and silent for the bound: lagging; taking one ends it.
        assert!(!progress.lagging(later(1) + INTEREST_WAIT / 2));
        assert!(progress.lagging(later(1) + INTEREST_WAIT));
        // The link starts over with a 3-frame snapshot: the frame owed before is made moot by
        // the snapshot, but only once the whole snapshot is taken.
        progress.restarted(3, later(5));
        assert_eq!(progress.queued, 5);
        progress.queued(1, later(10));
        assert!(progress.took(2, later(11)));
        assert_eq!(progress.taken, 1, "two of the snapshot's three frames");
        assert!(progress.took(1, later(12)));
        assert_eq!(
            progress.taken, 5,
            "the snapshot, which covers everything before it"
        );
        assert!(progress.took(1, later(13)));
        assert_eq!((progress.taken, progress.queued), (6, 6));
        assert!(
            !progress.lagging(later(10_000)),
            "owed nothing, never lagging"
        );
        // Owed a frame after a long quiet spell: the wait counts from when it was queued.
        progress.queued(1, later(20_000));
        assert!(!progress.lagging(later(20_000) + INTEREST_WAIT / 2));
    }

    #[test]
    fn qos_0_leaves_a_quarter_of_the_link_to_qos_1_and_retained_messages() {
        let (_members, peers) = peers_of(&[("new", 3)], 64 << 10);
        let peer = peers.list()[0].clone();
        let now = Instant::now();
        let metrics = Metrics::new();
        let qos0 = message("t", 4_000, QoS::AtMostOnce, false);
        let mut queued = 0;
        for _ in 0..20 {
            if peer.push(&qos0, None, &[], now, &metrics).queued {
                queued += 1;
            }
        }
        assert_eq!(queued, 12, "12 × 4 kB fit in three quarters of 64 KiB");
        let dropped = ClusterDrop::QueueFull;
        assert_eq!(metrics.cluster.dropped(ClusterPort::Sync, dropped).get(), 8);
        let qos1 = message("t", 4_000, QoS::AtLeastOnce, false);
        let retained = message("t", 4_000, QoS::AtMostOnce, true);
        assert!(peer.push(&qos1, None, &[], now, &metrics).queued);
        assert!(peer.push(&retained, None, &[], now, &metrics).queued);
        // Alone, a QoS 0 message of any size still goes.
        let (_members, peers) = peers_of(&[("new", 3)], 64 << 10);
        let big = message("t", 60_000, QoS::AtMostOnce, false);
        assert!(peers.list()[0].push(&big, None, &[], now, &metrics).queued);
    }

    #[test]
    fn under_load_segments_wait_for_the_acknowledgement_of_the_burst_in_flight() {
        let (_members, peers) = peers_of(&[("new", 4)], 1 << 20);
        let peer = peers.list()[0].clone();
        let now = Instant::now();
        let metrics = Metrics::new();
        // A little more than a segment each.
        let message = message("t", 1_300, QoS::AtLeastOnce, false);
        let frame = stamped_record_len(&message, None) + 5;
        let push = || peer.push(&message, None, &[], now, &metrics);
        // Nothing in flight: the first message goes at once, as two segments.
        assert!(push().wake);
        assert_eq!(peer.take_transmits(now, 64).segments.len(), 2);
        // Two in flight: what follows waits for their acknowledgement, for two round trips (at
        // least a millisecond) since the last segment went; then it goes with the next push,
        // acknowledged or not, and the sender's thread is told when to look if none comes.
        let held = push();
        assert!(!held.wake);
        let held_until = peer.queues.lock().outbox.hold_until().unwrap();
        assert!(held_until <= now + Duration::from_millis(1));
        assert_eq!(
            held.wake_by,
            Some(held_until),
            "the thread is told when to look"
        );
        assert!(peer.take_transmits(now, 0).deadline.unwrap() <= held_until);
        let later = now + Duration::from_millis(5);
        assert!(peer.push(&message, None, &[], later, &metrics).wake);
        assert_eq!(peer.take_transmits(now, 64).segments.len(), 2);
        // ... and, under load, up to a burst.
        let mut pushed = 0;
        while !push().wake {
            pushed += 1;
            assert!(pushed <= 40, "a burst goes without an acknowledgement");
        }
        let waited = pushed * frame;
        assert!(
            (BURST_BYTES - 2 * frame..=BURST_BYTES).contains(&waited),
            "{waited} bytes waited"
        );
        let link = peer.take_transmits(now, 64).link.0;
        // The acknowledgement of the first two opens the window for more: it wakes the sender.
        peers.sleep_sender_until(Instant::now());
        push();
        assert!(!peers.sender_woken_for_tests());
        let ack = Ack {
            link,
            cumulative: 2,
            selective: 0,
            window: 2_048,
            reset: false,
        };
        assert!(!peer.on_ack(&ack, now, &peers, &metrics));
        assert!(peers.sender_woken_for_tests());
        assert!(!peer.take_transmits(now, 64).segments.is_empty());
    }

    #[test]
    fn every_message_goes_on_the_link_best_effort_only_to_earlier_releases() {
        let (_members, peers) = peers_of(&[("new", 3), ("old", 2)], 64 << 10);
        let list = peers.list();
        let (peer, old) = (list[0].clone(), list[1].clone());
        assert_eq!(old.identity.node_id, "old");
        let now = Instant::now();
        let metrics = Metrics::new();
        let small = message("t", 10, QoS::AtMostOnce, false);
        for target in [&peer, &old] {
            assert_eq!(
                target.push(&small, None, &[], now, &metrics),
                PushOutcome {
                    queued: true,
                    wake: true,
                    wake_by: None,
                    congested: false
                }
            );
        }
        let transmits = peer.take_transmits(now, 64);
        assert!(transmits.runs.is_empty(), "QoS 0 on the link too");
        assert_eq!(transmits.segments.len(), 1);
        let transmits = old.take_transmits(now, 64);
        assert_eq!(
            transmits.runs.len(),
            1,
            "best effort to a peer without links"
        );
        assert!(transmits.segments.is_empty());
        let big = message("t", 5_000, QoS::AtMostOnce, false);
        let buffered = metrics.cluster.buffered_bytes.get();
        assert!(peer.push(&big, None, &[], now, &metrics).queued);
        assert_eq!(
            metrics.cluster.buffered_bytes.get() - buffered,
            5_000 + 8 + 5
        );
        let full = message("t", 20_000, QoS::AtLeastOnce, false);
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(peer.push(&full, None, &[], now, &metrics));
        }
        assert!(outcomes[..3].iter().all(|o| o.queued));
        assert!(!outcomes[0].congested);
        assert!(outcomes[1].congested, "past half of -csb");
        assert!(
            !outcomes[3].queued && outcomes[3].congested,
            "full, and says so"
        );
        let full_drops = metrics
            .cluster
            .dropped(ClusterPort::Sync, ClusterDrop::BufferFull)
            .get();
        assert_eq!(full_drops, 1);
        // Given up when the peer goes: counted, and the gauge comes back to 0.
        let held = peer.queues.lock().outbox.pending_frames();
        peer.retire(&metrics);
        assert_eq!(
            metrics
                .cluster
                .dropped(ClusterPort::Sync, ClusterDrop::PeerGone)
                .get(),
            held as u64
        );
        assert_eq!(metrics.cluster.buffered_bytes.get(), 0);
        assert!(!peer.push(&full, None, &[], now, &metrics).queued, "gone");
    }

    /// The frames (kind, body) of the data link segments `peer` has to send.
    fn data_frames(peer: &Peer, now: Instant) -> Vec<(u8, Vec<u8>)> {
        let stream: Vec<u8> = peer
            .take_transmits(now, usize::MAX)
            .segments
            .iter()
            .flat_map(|(_, bytes)| bytes.to_vec())
            .collect();
        let mut frames = Vec::new();
        let mut rest = &stream[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + len {
                break;
            }
            frames.push((rest[4], rest[5..4 + len].to_vec()));
            rest = &rest[4 + len..];
        }
        frames
    }

    #[test]
    fn a_peer_of_version_3_gets_retained_messages_unstamped_and_no_repairs() {
        use crate::cluster::sync::decode_frame_record;
        let (_members, peers) = peers_of(&[("new", 4), ("old", 3)], 1 << 20);
        let list = peers.list();
        let (new, old) = (list[0].clone(), list[1].clone());
        assert!(new.stamps && old.has_link && !old.stamps);
        let now = Instant::now();
        let metrics = Metrics::new();
        let stamp = local_stamp();
        let retained = message("r/t", 3, QoS::AtLeastOnce, true);
        for peer in [&new, &old] {
            assert!(
                peer.push(&retained, Some(&stamp), &[], now, &metrics)
                    .queued
            );
        }
        let frames = data_frames(&old, now);
        assert_eq!(frames.len(), 1);
        // As a node of version 3 reads it: no stamp.
        let (got, got_stamp) = decode_frame_record(&frames[0].1, false, now).expect("readable");
        assert!(got.retain && got_stamp.is_none());
        let frames = data_frames(&new, now);
        assert!(decode_frame_record(&frames[0].1, false, now).is_none());
        assert_eq!(
            decode_frame_record(&frames[0].1, true, now).map(|(_, s)| s),
            Some(Some(stamp.clone()))
        );
        // No repair goes to it.
        assert_eq!(
            old.push_repair(&retained, &stamp, None, now, &metrics),
            Repair::Busy
        );
        assert!(data_frames(&old, now).is_empty());
    }

    #[test]
    fn repairs_no_link_frame_may_carry_are_skipped_and_the_next_ones_go() {
        let capacity = 64 << 10;
        let (_members, peers) = peers_of(&[("new", 4)], capacity);
        let peer = peers.list()[0].clone();
        let now = Instant::now();
        let metrics = Metrics::new();
        let stamp = local_stamp();
        let small = message("r/t", 10, QoS::AtMostOnce, true);
        let mut big_properties = message("r/p", 10, QoS::AtMostOnce, true);
        big_properties.properties = Bytes::from(vec![0; usize::from(u16::MAX) + 1]);
        assert_eq!(
            peer.push_repair(&big_properties, &stamp, None, now, &metrics),
            Repair::Skipped,
            "its properties' length would be cut to 16 bits"
        );
        let over_limit = message("r/l", 2_000, QoS::AtMostOnce, true);
        assert_eq!(
            peer.push_repair(&over_limit, &stamp, Some(1_000), now, &metrics),
            Repair::Skipped,
            "over -csl"
        );
        assert_eq!(
            peer.push_repair(&small, &stamp, Some(1_000), now, &metrics),
            Repair::Queued
        );
        let larger_than_the_link = message("r/big", capacity, QoS::AtMostOnce, true);
        assert_eq!(
            peer.push_repair(&larger_than_the_link, &stamp, None, now, &metrics),
            Repair::Skipped,
            "the link cannot take it, whatever it holds"
        );
        // Past a quarter of the link's capacity: busy, nothing more this round.
        let quarter = message("r/q", capacity / 4, QoS::AtMostOnce, true);
        assert_eq!(
            peer.push_repair(&quarter, &stamp, None, now, &metrics),
            Repair::Queued
        );
        assert_eq!(
            peer.push_repair(&small, &stamp, None, now, &metrics),
            Repair::Busy
        );
        assert_eq!(peer.queues.lock().outbox.pending_frames(), 2);
        assert!(data_frames(&peer, now)
            .iter()
            .all(|(kind, _)| *kind == FRAME_RETAINED));
    }
}
