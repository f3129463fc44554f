//! The sync receiver: authenticates each datagram, checks who sent it and that it is fresh,
//! delivers best-effort records and link frames to the local router (or, on a control link,
//! to the peers' interest and the retained anti-entropy), acknowledges link segments once per
//! burst, and holds a link while a local subscriber it fills drains. It runs on a thread of
//! its own ([`ReceiverThread`]), reading a batch of datagrams per system call. The subscribers
//! a batch fills are woken once it is handled (or every few hundred deliveries, or at once when
//! one is congested), not at their first delivery: woken at once, a subscriber's task ran for a
//! handful of messages and slept again, a thread switch every ten messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

use super::super::anti_entropy::{self, FRAME_DIGEST, FRAME_LISTING};
use super::super::auth::DatagramKey;
use super::super::handover::wire::{
    FRAME_ANSWER, FRAME_CLAIM, FRAME_DRAINING, FRAME_LATE_DELIVERIES, FRAME_SESSION_PART,
    FRAME_SETTLED, FRAME_TAKE,
};
use super::super::handover::Handover;
use super::super::interest::{self, FRAME_INTEREST};
use super::super::link::{Ack, Inbox, Next, Segmented};
use super::super::membership::{Members, NodeIdentity};
use super::super::peers::Peers;
use super::super::replay::{ReceivedAt, ReplayWindow};
use super::batch::{wait_readable, Doorbell, InBatch, OutBatch, Sent};
use super::wire::*;
use super::Origin;
use crate::broker::Broker;
use crate::codec::{publish_v5_size, PublishV5Extras, QoS};
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};
use crate::router::{Congested, Groups, Message, Stamp};
use crate::session::Wakes;

/// Datagrams the receiver handles before it sends the acknowledgements they call for.
const RECEIVE_BURST: usize = 64;
/// The longest the receiver's thread sleeps without looking at its orders.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Bytes a link frame may hold beyond the PUBLISH packet its record stands for: a record's
/// own framing (a few bytes more than a PUBLISH's in the worst case) and the largest stamp
/// (a node id may be 255 bytes on the wire, though ours are at most 64).
pub(super) const FRAME_SLACK: usize = 64 + MAX_STAMP_LEN;

/// Bytes a data link frame may hold beyond that for the shared groups its record names: the
/// list a publishing node writes is at most [`MAX_GROUP_LIST_BYTES`]. The PUBLISH itself is
/// still checked against `-mpl` (see [`Limits::admit`]).
const GROUP_LIST_ALLOWANCE: usize = MAX_GROUP_LIST_BYTES;

/// The largest control link frame: a snapshot frame's filters and one filter more.
const CONTROL_MAX_FRAME: usize = interest::FRAME_BYTES + 2 * (3 + 65_535);

/// Replay windows kept before those of members that are gone are dropped.
const PRUNE_WINDOWS_AT: usize = 64;

/// The sizes a record must respect on this node, as a client PUBLISH would: `-csl` for the
/// record, and `-mpl` for the PUBLISH packet it stands for. Nodes may be configured
/// differently, so the receiver checks its own limits rather than trusting the sender's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `-csl`, if set.
    pub sync_limit: Option<usize>,
    pub max_packet_size: usize,
}

impl Limits {
    pub(super) fn admit(&self, message: &Message) -> bool {
        // A record received in version 1 has neither expiry nor properties, so its size is the
        // same in either version.
        self.sync_limit
            .is_none_or(|limit| record_len(message, 2) <= limit)
            && publish_packet_len(message) <= self.max_packet_size
    }
}

/// The size of the smallest PUBLISH packet a client could have sent for `message`: MQTT 3.1.1
/// when it carries no MQTT 5 properties or expiry (fixed header, topic with its length prefix,
/// packet identifier for QoS 1 and 2, payload), MQTT 5 with them (plus the property list).
pub(super) fn publish_packet_len(message: &Message) -> usize {
    if message.properties.is_empty() && message.expires_at.is_none() {
        let remaining = 2
            + message.topic.len()
            + if message.qos == QoS::AtMostOnce { 0 } else { 2 }
            + message.payload.len();
        let length_bytes = match remaining {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        };
        return 1 + length_bytes + remaining;
    }
    let extras = PublishV5Extras {
        // Four bytes whatever the value.
        message_expiry: message.expires_at.map(|_| 0),
        message_properties: &message.properties,
        ..PublishV5Extras::default()
    };
    publish_v5_size(
        message.qos,
        message.topic.len(),
        &extras,
        message.payload.len(),
    )
}

/// The largest data link frame a node with `-mpl` `max_packet_size` takes: a record of a
/// PUBLISH up to that size, with its stamp and a list of shared groups.
pub(super) fn max_data_frame(max_packet_size: usize) -> usize {
    max_packet_size
        .saturating_add(FRAME_SLACK)
        .saturating_add(GROUP_LIST_ALLOWANCE)
}

/// What the receiver needs besides the socket.
pub struct Receiver {
    pub broker: Arc<Broker>,
    /// Takes the claims, answers and sessions on the control links (sync version 5).
    pub handover: Option<Arc<Handover>>,
    pub members: Arc<Members>,
    pub peers: Arc<Peers>,
    pub key: DatagramKey,
    /// `-csl`, if set.
    pub sync_limit: Option<usize>,
    /// The newest sync version this node reads (`-csv`).
    pub version: u8,
    /// This node, as the acknowledgements it sends name it.
    pub origin: Origin,
}

/// Sends the acknowledgements `batch` holds, counted.
fn send_batch(batch: &mut OutBatch, socket: &std::net::UdpSocket, metrics: &Metrics) {
    let Sent { sent, failed } = batch.send(socket, true);
    metrics
        .cluster
        .datagrams_out(ClusterPort::Sync, sent as u64);
    if failed > 0 {
        metrics
            .cluster
            .dropped(ClusterPort::Sync, ClusterDrop::SendError)
            .inc_by(failed as u64);
    }
}

/// Which of a peer's links: the one for messages, or its control link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LinkKey {
    origin: Bytes,
    control: bool,
}

/// The receiving half of one peer's link, for one boot of that peer.
struct Incoming {
    boot_ms: u64,
    inbox: Inbox,
    /// Its sender writes version 4 and names the shared groups each record is for (a sender of
    /// version 3 names none: every group here serves its records). Fixed with the link: a
    /// later boot of the peer, of another version, has a link of its own.
    names_groups: bool,
}

/// The running receiver: a thread of its own, like the sender (see [`super::send`]), so that
/// the local subscribers it fills run on the runtime's workers while it reads on.
pub struct ReceiverThread {
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
}

impl ReceiverThread {
    /// Starts the receiver's thread; the waits for congested subscribers run on `runtime`.
    pub fn spawn(
        socket: Arc<std::net::UdpSocket>,
        receiver: Receiver,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<ReceiverThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let doorbell = Arc::new(Doorbell::new()?);
        let (resume, resumed) = std::sync::mpsc::channel();
        let state = ReceiverState {
            limits: Limits {
                sync_limit: receiver.sync_limit,
                max_packet_size: receiver.broker.config.max_packet_size,
            },
            max_frame: max_data_frame(receiver.broker.config.max_packet_size),
            windows: HashMap::new(),
            incoming: HashMap::new(),
            acks_due: Vec::new(),
            resume,
            doorbell: doorbell.clone(),
            runtime,
            acks: OutBatch::default(),
            wakes: Wakes::default(),
            receiver,
        };
        let (thread_stop, thread_doorbell) = (stop.clone(), doorbell.clone());
        std::thread::Builder::new()
            .name("coolpy7-sync-recv".into())
            .spawn(move || {
                receive_loop(&socket, state, &resumed, &thread_stop, &thread_doorbell)
            })?;
        Ok(ReceiverThread { stop, doorbell })
    }
}

impl Drop for ReceiverThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.doorbell.ring();
    }
}

/// Receives datagrams from peers: delivers their records locally, acknowledges link segments
/// (once per burst of datagrams) and hands acknowledgements to the peers' outboxes, until
/// `stop`.
fn receive_loop(
    socket: &std::net::UdpSocket,
    mut state: ReceiverState,
    resumed: &std::sync::mpsc::Receiver<Held>,
    stop: &AtomicBool,
    doorbell: &Doorbell,
) {
    let mut batch = InBatch::default();
    while !stop.load(Ordering::Acquire) {
        while let Ok(held) = resumed.try_recv() {
            state.resume(held);
        }
        state.wakes.wake_all();
        let mut handled = 0;
        let mut idle = false;
        while handled < RECEIVE_BURST {
            match batch.receive(socket) {
                Ok(count) => {
                    for i in 0..count {
                        if let Some((datagram, from)) = batch.get(i) {
                            state.handle(datagram, from);
                        }
                    }
                    // The subscribers this batch queued for run once it is all queued.
                    state.wakes.wake_all();
                    handled += count;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    idle = true;
                    break;
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    debug!(%error, "sync receive failed");
                    // Never spin on an error that repeats.
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        // Never asleep with a subscriber left unwoken.
        state.wakes.wake_all();
        state.send_acks(socket);
        if idle {
            // Bounded, so that a stop is seen even if the doorbell were lost.
            wait_readable(socket, doorbell, IDLE_WAIT);
        }
    }
}

struct ReceiverState {
    receiver: Receiver,
    limits: Limits,
    max_frame: usize,
    windows: HashMap<Bytes, ReplayWindow>,
    incoming: HashMap<LinkKey, Incoming>,
    /// Links that have something to acknowledge.
    acks_due: Vec<LinkKey>,
    /// Where a held link is named once the wait for its congested subscriber is over (one
    /// message per held link at most), with the doorbell that wakes the thread for it.
    resume: std::sync::mpsc::Sender<Held>,
    doorbell: Arc<Doorbell>,
    /// Where the waits for congested subscribers run.
    runtime: tokio::runtime::Handle,
    /// Acknowledgements (and refusals) to send at the end of a burst.
    acks: OutBatch,
    /// The local subscribers given something since the last batch of datagrams was handled.
    wakes: Wakes,
}

/// A link held for a congested subscriber, when the wait for it is over.
struct Held {
    key: LinkKey,
    /// The link then (it may have been replaced since).
    link: u64,
    /// The subscriber did not drain: it stopped keeping up, or took longer than the wait.
    gave_up: bool,
}

impl ReceiverState {
    fn handle(&mut self, datagram: &[u8], from: Option<SocketAddr>) {
        let receiver = &self.receiver;
        let metrics = receiver.broker.metrics.clone();
        let cluster = &metrics.cluster;
        cluster.datagram_in(ClusterPort::Sync);
        let Some(body) = receiver.key.open(datagram) else {
            debug!(?from, "sync datagram dropped: bad tag");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::BadTag)
                .inc();
            return;
        };
        if body.get(1) != Some(&KIND_PUBLISH) {
            if let Err(reason) = self.handle_link(body) {
                debug!(?from, reason = reason.label(), "sync datagram dropped");
                cluster.dropped(ClusterPort::Sync, reason).inc();
            }
            return;
        }
        let receiver = &self.receiver;
        let at = ReceivedAt::now(receiver.origin.started);
        match accept_publish(
            body,
            &receiver.members,
            &mut self.windows,
            at,
            receiver.version,
        ) {
            Ok(records) => {
                cluster.records_received.inc_by(records.len() as u64);
                // Best effort comes from nodes of an earlier release only, which choose no
                // shared groups: every group here serves their messages, as before.
                for message in records {
                    deliver(
                        &self.receiver,
                        &self.limits,
                        message,
                        None,
                        Groups::All,
                        &mut self.wakes,
                    );
                }
            }
            Err(reason) => {
                debug!(?from, reason = reason.label(), "sync datagram dropped");
                cluster.dropped(ClusterPort::Sync, reason).inc();
            }
        }
    }

    /// Takes the frames `key`'s link has complete, until a local subscriber they go to is
    /// congested: then the link is held, and resumed when that subscriber has drained, or
    /// has stopped keeping up, or a second has passed (as a publisher of this node would wait
    /// for it).
    fn take_frames(&mut self, key: &LinkKey) {
        let Some(incoming) = self.incoming.get_mut(key) else {
            return;
        };
        let Some(congested) = take_frames_of(
            incoming,
            key,
            &self.receiver,
            &self.limits,
            true,
            &mut self.wakes,
        ) else {
            return;
        };
        incoming.inbox.hold(true);
        let (resume, doorbell) = (self.resume.clone(), self.doorbell.clone());
        let held = Held {
            key: key.clone(),
            link: incoming.inbox.link(),
            gave_up: false,
        };
        self.runtime.spawn(async move {
            let drained = congested.wait_while_draining(|| false).await;
            let _ = resume.send(Held {
                gave_up: !drained,
                ..held
            });
            doorbell.ring();
        });
    }

    /// Takes the frames of a held link again. When the wait for its subscriber gave up, what
    /// the link holds is delivered at once (the subscriber's queue drops its oldest, as for a
    /// publisher of this node that stopped waiting), and later frames are held again.
    fn resume(&mut self, held: Held) {
        let Some(incoming) = self.incoming.get_mut(&held.key) else {
            return;
        };
        // A resume for a link since replaced is about nothing.
        if incoming.inbox.link() != held.link {
            return;
        }
        incoming.inbox.hold(false);
        if held.gave_up {
            take_frames_of(
                incoming,
                &held.key,
                &self.receiver,
                &self.limits,
                false,
                &mut self.wakes,
            );
        } else {
            self.take_frames(&held.key);
        }
        if !self.acks_due.contains(&held.key) {
            self.acks_due.push(held.key);
        }
    }

    /// A version 3 datagram: a segment of a peer's link, or a peer's acknowledgement of ours.
    fn handle_link(&mut self, body: &[u8]) -> Result<(), ClusterDrop> {
        let receiver = &self.receiver;
        let (parties, datagram) =
            decode_link(body, receiver.version).ok_or(ClusterDrop::Malformed)?;
        let member = check_parties(&parties, &receiver.members)?;
        match datagram {
            LinkDatagram::Ack { control, ack } => {
                // An acknowledgement of a link to a peer this node no longer forwards to (or
                // to an earlier boot of it) is about nothing.
                if let Some(peer) = receiver.peers.find(&parties.origin) {
                    if peer.identity.boot_ms == parties.boot_ms {
                        let metrics = &receiver.broker.metrics;
                        let now = Instant::now();
                        if control {
                            if peer.on_control_ack(&ack, now, &receiver.peers) {
                                receiver.peers.restart_control(&peer);
                            }
                        } else if peer.on_ack(&ack, now, &receiver.peers, metrics) {
                            receiver.peers.reset_link(&peer);
                        }
                    }
                }
                Ok(())
            }
            LinkDatagram::Segment {
                control,
                link,
                seq,
                sender_acked,
                data,
            } => {
                let key = LinkKey {
                    origin: parties.origin.clone(),
                    control,
                };
                let incoming = match self.incoming.get_mut(&key) {
                    Some(known)
                        if known.boot_ms == parties.boot_ms && link == known.inbox.link() =>
                    {
                        known
                    }
                    Some(known)
                        if known.boot_ms == parties.boot_ms && link < known.inbox.link() =>
                    {
                        return Err(ClusterDrop::StaleLink);
                    }
                    _ => {
                        // What a link held that its sender replaced (a restart of the sender,
                        // or a new link after it gave up on this node) and this node had
                        // acknowledged is delivered before it goes.
                        if let Some(old) = self.incoming.remove(&key) {
                            flush(old, &key, receiver, &self.limits, &mut self.wakes);
                        }
                        // A snapshot frame holds up to 64 KiB of filters and one more, whatever
                        // -mpl allows a message.
                        let max_frame = if control {
                            self.max_frame.max(CONTROL_MAX_FRAME)
                        } else {
                            self.max_frame
                        };
                        let Some(inbox) = Inbox::join(link, seq, sender_acked, max_frame) else {
                            // This node lost track of a link its peer kept (it forgot the peer
                            // for a while): ask for a new one.
                            let refusal = Ack {
                                link,
                                cumulative: 0,
                                selective: 0,
                                window: 0,
                                reset: true,
                            };
                            let datagram = self.acks.next(member.sync_addr());
                            encode_ack(datagram, &receiver.origin, &member, control, &refusal);
                            receiver.key.seal(datagram);
                            return Err(ClusterDrop::StaleLink);
                        };
                        if self.incoming.len() >= PRUNE_WINDOWS_AT
                            && !self.incoming.contains_key(&key)
                        {
                            let members = &receiver.members;
                            self.incoming
                                .retain(|key, _| members.known(&key.origin).is_some());
                        }
                        let incoming = Incoming {
                            boot_ms: parties.boot_ms,
                            inbox,
                            names_groups: receiver.version >= STAMP_VERSION
                                && version_for(&member, receiver.version)
                                    .is_some_and(|version| version >= STAMP_VERSION),
                        };
                        self.incoming.insert(key.clone(), incoming);
                        self.incoming.get_mut(&key).ok_or(ClusterDrop::StaleLink)?
                    }
                };
                let cluster = &receiver.broker.metrics.cluster;
                match incoming.inbox.on_segment(seq, data) {
                    Segmented::New => {}
                    Segmented::Repeat => {
                        cluster.segments_repeated.inc();
                    }
                    Segmented::Beyond => debug!(seq, "link segment beyond the window dropped"),
                    Segmented::Refused => {}
                }
                if !self.acks_due.contains(&key) {
                    self.acks_due.push(key.clone());
                }
                self.take_frames(&key);
                Ok(())
            }
        }
    }

    /// Acknowledges what the burst of datagrams just handled brought.
    fn send_acks(&mut self, socket: &std::net::UdpSocket) {
        for key in std::mem::take(&mut self.acks_due) {
            let Some(incoming) = self.incoming.get_mut(&key) else {
                continue;
            };
            if !incoming.inbox.ack_due() {
                continue;
            }
            let Some(member) = self.receiver.members.known(&key.origin) else {
                continue;
            };
            if member.boot_ms != incoming.boot_ms {
                continue;
            }
            let ack = incoming.inbox.ack();
            if self.acks.is_full() {
                send_batch(&mut self.acks, socket, &self.receiver.broker.metrics);
            }
            let datagram = self.acks.next(member.sync_addr());
            encode_ack(datagram, &self.receiver.origin, &member, key.control, &ack);
            self.receiver.key.seal(datagram);
        }
        send_batch(&mut self.acks, socket, &self.receiver.broker.metrics);
    }
}

/// Takes the complete frames of `inbox` (of link `key`) and acts on them: interest changes
/// on a control link, records on a data link. With `hold`, stops at the first record that
/// congests a local subscriber and returns that subscriber. The subscribers given records are
/// left in `wakes`.
fn take_frames_of(
    incoming: &mut Incoming,
    key: &LinkKey,
    receiver: &Receiver,
    limits: &Limits,
    hold: bool,
    wakes: &mut Wakes,
) -> Option<Congested> {
    let cluster = &receiver.broker.metrics.cluster;
    let now = Instant::now();
    let origin = String::from_utf8_lossy(&key.origin);
    let stamps = receiver.version >= STAMP_VERSION;
    let handovers = receiver.version >= HANDOVER_VERSION;
    // An interest frame that could not be taken leaves the peer's interest unknown (it gets
    // every message, and serves none of its shared groups) rather than wrong, and the control
    // link is refused: its sender starts another, with a snapshot, at the acknowledgement.
    let interest_lost = |inbox: &mut Inbox| {
        if key.control {
            receiver.peers.interest.unknown(&origin);
            inbox.refuse();
        }
    };
    let dropped = |reason: ClusterDrop| cluster.dropped(ClusterPort::Sync, reason).inc();
    while let Some(next) = incoming.inbox.next_frame() {
        match next {
            Next::Frame(frame) if key.control && frame.kind == FRAME_INTEREST => {
                match interest::decode(&frame.body) {
                    Some(changes) => {
                        receiver
                            .peers
                            .interest
                            .apply(&origin, incoming.boot_ms, &changes);
                    }
                    None => {
                        debug!(peer = %origin, "malformed interest frame skipped");
                        dropped(ClusterDrop::Malformed);
                        interest_lost(&mut incoming.inbox);
                    }
                }
            }
            // Anti-entropy frames are for a node that reads version 4; one of version 3 (or
            // playing it) skips them as that release did.
            Next::Frame(frame)
                if key.control
                    && stamps
                    && (frame.kind == FRAME_DIGEST || frame.kind == FRAME_LISTING) =>
            {
                // Answered on this node's own links to the peer, when it still forwards to
                // that boot of it.
                let peer = receiver
                    .peers
                    .find_now(&key.origin)
                    .filter(|peer| peer.identity.boot_ms == incoming.boot_ms);
                let handled = if frame.kind == FRAME_DIGEST {
                    anti_entropy::decode_digest(&frame.body).map(|digest| {
                        if let Some(peer) = &peer {
                            receiver.peers.on_digest(peer, &digest);
                        }
                    })
                } else {
                    anti_entropy::decode_part(&frame.body).map(|part| {
                        if let Some(peer) = &peer {
                            receiver.peers.on_listing(peer, &part);
                        }
                    })
                };
                if handled.is_none() {
                    debug!(peer = %origin, kind = frame.kind, "malformed retained digest or listing skipped");
                    dropped(ClusterDrop::Malformed);
                }
            }
            Next::Frame(frame)
                if key.control
                    && handovers
                    && matches!(
                        frame.kind,
                        FRAME_CLAIM
                            | FRAME_ANSWER
                            | FRAME_SESSION_PART
                            | FRAME_LATE_DELIVERIES
                            | FRAME_SETTLED
                            | FRAME_DRAINING
                            | FRAME_TAKE
                    ) =>
            {
                let handled = receiver.handover.as_ref().is_some_and(|handover| {
                    handover.on_frame(&key.origin, incoming.boot_ms, frame.kind, &frame.body)
                });
                if !handled {
                    debug!(peer = %origin, kind = frame.kind, "malformed hand-over frame skipped");
                    dropped(ClusterDrop::Malformed);
                }
            }
            Next::Frame(frame) if !key.control && frame.kind == FRAME_PUBLISH => {
                // A record naming a malformed list of groups is malformed: dropped, counted.
                let Some((message, stamp, groups)) = decode_publish_frame(&frame.body, stamps, now)
                else {
                    dropped(ClusterDrop::Malformed);
                    continue;
                };
                cluster.records_received.inc();
                // A peer that writes version 3 names no shared groups: every group here serves
                // its records, as in the release before groups were chosen across nodes.
                let serving = if incoming.names_groups {
                    Groups::Only(&groups)
                } else {
                    Groups::All
                };
                let congested = deliver(receiver, limits, message, stamp, serving, wakes);
                if hold && congested.is_some() {
                    return congested;
                }
            }
            Next::Frame(frame) if !key.control && stamps && frame.kind == FRAME_RETAINED => {
                // A repair: for the retained store only, never delivered.
                let Some((message, Some(stamp))) = decode_frame_record(&frame.body, stamps, now)
                else {
                    dropped(ClusterDrop::Malformed);
                    continue;
                };
                cluster.records_received.inc();
                if !limits.admit(&message) {
                    debug!("retained repair over -csl or -mpl dropped");
                    dropped(ClusterDrop::TooBig);
                } else if !receiver.broker.router.store_retained(&message, stamp) {
                    cluster.retained_stale.inc();
                }
            }
            Next::Frame(frame) => {
                debug!(kind = frame.kind, "link frame of an unknown kind skipped");
                dropped(ClusterDrop::Malformed);
                interest_lost(&mut incoming.inbox);
            }
            Next::Oversized(len) => {
                debug!(len, "link frame over -mpl skipped");
                dropped(ClusterDrop::TooBig);
                interest_lost(&mut incoming.inbox);
            }
            Next::Unreadable => {
                warn!(peer = %origin, "a peer's link cannot be read; refused");
                dropped(ClusterDrop::Malformed);
                interest_lost(&mut incoming.inbox);
            }
        }
    }
    None
}

/// Delivers every complete frame of a link that is going away, whatever the congestion: its
/// sender counts them as delivered.
fn flush(
    mut old: Incoming,
    key: &LinkKey,
    receiver: &Receiver,
    limits: &Limits,
    wakes: &mut Wakes,
) {
    old.inbox.hold(false);
    take_frames_of(&mut old, key, receiver, limits, false, wakes);
}

/// Routes a record from a peer (with its `stamp`, when retained) to the local subscribers and
/// the shared `groups` it names, if it is within this node's limits; returns a subscriber it
/// congested. The subscribers it queued for are left in `wakes`.
fn deliver(
    receiver: &Receiver,
    limits: &Limits,
    message: Message,
    stamp: Option<Stamp>,
    groups: Groups<'_>,
    wakes: &mut Wakes,
) -> Option<Congested> {
    let broker = &receiver.broker;
    let cluster = &broker.metrics.cluster;
    if !limits.admit(&message) {
        debug!("forwarded record over -csl or -mpl dropped");
        cluster
            .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
            .inc();
        return None;
    }
    let routed = broker
        .router
        .publish_from_peer(Arc::new(message), stamp, groups, wakes);
    // One datagram may release a whole window of frames (a segment that fills a gap).
    if wakes.due() {
        wakes.wake_all();
    }
    cluster.records_delivered.inc_by(routed.deliveries as u64);
    routed.congested
}

/// The checks every datagram passes, in order: destination (this boot of this node), origin
/// (a member), boot (the member's current one). Returns the origin's identity.
fn check_parties(parties: &Parties, members: &Members) -> Result<NodeIdentity, ClusterDrop> {
    check_addressing(
        (&parties.origin, parties.boot_ms),
        (&parties.destination, parties.destination_boot_ms),
        members,
    )
}

/// [`check_parties`] on a datagram from `origin` (node id, boot) to `destination`.
pub(super) fn check_addressing(
    origin: (&[u8], u64),
    destination: (&[u8], u64),
    members: &Members,
) -> Result<NodeIdentity, ClusterDrop> {
    let local = members.local();
    if destination != (local.node_id.as_bytes(), local.boot_ms) {
        return Err(ClusterDrop::WrongDestination);
    }
    let member = members.known(origin.0).ok_or(ClusterDrop::UnknownOrigin)?;
    if member.boot_ms != origin.1 {
        return Err(ClusterDrop::StaleEpoch);
    }
    Ok(member)
}

/// The checks, in order: tag, then those of [`accept_publish`].
#[cfg(test)]
pub(super) fn accept(
    datagram: &[u8],
    key: &DatagramKey,
    members: &Members,
    windows: &mut HashMap<Bytes, ReplayWindow>,
    at: ReceivedAt,
    version: u8,
) -> Result<Vec<Message>, ClusterDrop> {
    let body = key.open(datagram).ok_or(ClusterDrop::BadTag)?;
    accept_publish(body, members, windows, at, version)
}

/// The checks of a best-effort datagram's authenticated body, in order: format (a version up to
/// `version`, properties included), destination, origin, boot, replay (received `at`; see
/// [`ReplayWindow::accept`]). Only a datagram that passes all of them marks its sequence
/// number as seen. Returns its records.
pub(super) fn accept_publish(
    body: &[u8],
    members: &Members,
    windows: &mut HashMap<Bytes, ReplayWindow>,
    at: ReceivedAt,
    version: u8,
) -> Result<Vec<Message>, ClusterDrop> {
    let batch = decode_batch(body, version, Instant::now()).ok_or(ClusterDrop::Malformed)?;
    check_addressing(
        (&batch.origin, batch.boot_ms),
        (&batch.destination, batch.destination_boot_ms),
        members,
    )?;
    // Only a known member's name gets this far; names foca has forgotten are pruned now
    // and then, so renamed pods cannot grow the map.
    if windows.len() >= PRUNE_WINDOWS_AT && !windows.contains_key(&batch.origin) {
        windows.retain(|origin, _| members.known(origin).is_some());
    }
    let window = windows.entry(batch.origin).or_default();
    if !window.accept(batch.boot_ms, batch.seq, at) {
        return Err(ClusterDrop::Replay);
    }
    Ok(batch.records)
}

#[cfg(test)]
mod interest_frame_tests {
    use super::*;
    use crate::cluster::interest::Changes;
    use crate::cluster::membership::{MemberInfo, MemberState};

    fn identity(name: &str) -> NodeIdentity {
        NodeIdentity {
            node_id: name.to_string(),
            gossip: "127.0.0.1:7946".parse().expect("address"),
            sync_port: 7947,
            mqtt_port: 1883,
            version: NodeIdentity::advertised_version("0", NEWEST_VERSION),
            boot_ms: 1,
            renewal: 0,
        }
    }

    #[test]
    fn an_unreadable_interest_frame_forgets_the_peers_groups_and_asks_for_a_snapshot() {
        let metrics = Arc::new(Metrics::new());
        let members = Arc::new(Members::new(identity("local"), false));
        members.set_others_for_tests(vec![MemberInfo {
            identity: identity("a"),
            state: MemberState::Up,
        }]);
        let peers = Arc::new(Peers::new(
            members.clone(),
            1 << 20,
            NEWEST_VERSION,
            None,
            Instant::now(),
            metrics.clone(),
        ));
        let slot = peers.list()[0].interest_slot().expect("a slot");
        let receiver = Receiver {
            handover: None,
            broker: Arc::new(Broker::new(
                crate::config::Config::for_tests(),
                metrics,
                None,
                None,
            )),
            members,
            peers: peers.clone(),
            key: DatagramKey::sync(b"k"),
            sync_limit: None,
            version: NEWEST_VERSION,
            origin: Origin {
                node_id: "local".into(),
                boot_ms: 1,
                started: Instant::now(),
                version: NEWEST_VERSION,
            },
        };
        let limits = Limits {
            sync_limit: None,
            max_packet_size: 1 << 20,
        };
        let groups = Changes {
            snapshot: true,
            filters: Vec::new(),
            groups: vec![(b"g".to_vec(), b"t/+".to_vec(), true)],
        };
        peers.interest.apply("a", 1, &groups);
        assert!(!peers.interest.groups_matching(b"t/x").is_empty());
        assert!(peers.interest.is_known(slot));

        // A control link whose next frame is an interest frame that cannot be read.
        let key = LinkKey {
            origin: Bytes::from_static(b"a"),
            control: true,
        };
        let mut incoming = Incoming {
            boot_ms: 1,
            inbox: Inbox::join(7, 1, 0, CONTROL_MAX_FRAME).expect("a new link"),
            names_groups: true,
        };
        let mut segment = vec![0, 0, 0, 2, FRAME_INTEREST, 0b10];
        // And a good one after it, which is not taken: the link is refused.
        segment.extend_from_slice(&[0, 0, 0, 2, FRAME_INTEREST, 0b01]);
        incoming.inbox.on_segment(1, &segment);
        assert!(take_frames_of(
            &mut incoming,
            &key,
            &receiver,
            &limits,
            true,
            &mut Wakes::default()
        )
        .is_none());

        // Its groups are forgotten (the nodes with members serve them meanwhile), it gets
        // every message, and its sender is told to start over with a snapshot.
        assert!(peers.interest.groups_matching(b"t/x").is_empty());
        assert!(!peers.interest.is_known(slot));
        assert!(incoming.inbox.ack().reset);
        assert!(incoming.inbox.next_frame().is_none());
        // The snapshot on the new link makes it known again, groups included.
        peers.interest.apply("a", 1, &groups);
        assert!(!peers.interest.groups_matching(b"t/x").is_empty());
    }
}
