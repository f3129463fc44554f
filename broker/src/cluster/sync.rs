//! Forwarding PUBLISH messages between nodes over UDP (`-csp`).
//!
//! After a client's PUBLISH (or a will) is routed locally, [`Forwarder::forward`] queues it for
//! each peer whose subscriptions match it (see [`super::interest`]), without waiting: QoS 0 in
//! best-effort datagrams (a full queue drops and counts), QoS 1 and 2, and anything larger than
//! one datagram, on the peer's link (see [`super::link`]), which holds up to `-csb` bytes until
//! they are acknowledged; a publisher waits for a congested link as for a slow subscriber. The
//! sender task sends what is queued from one socket (UDP does not block per peer, so a dead
//! peer stalls nobody) and retransmits what is not acknowledged. The receiver task
//! authenticates, checks the origin and freshness, hands the records to the local router (it
//! never forwards them again: one hop, no loops), acknowledges link segments once per burst of
//! datagrams, and holds a link while a local subscriber it fills drains.
//!
//! Wire format (all integers big-endian), every datagram ending with an HMAC-SHA256 tag of 32
//! bytes and starting with `[version][kind][origin id length: u8][origin id][origin boot
//! epoch: u64][destination id length: u8][destination id][destination boot epoch: u64]`:
//! ```text
//! version 1 or 2, kind 1, a best-effort batch: [seq: u64][record count: u16] records...
//! version 3, kind 2 (4 on the control link), a link segment:
//!     [link: u64][segment number: u64][acknowledged up to: u64][stream bytes, at most 1200]
//! version 3, kind 3 (5 on the control link), an acknowledgement:
//!     [link: u64][cumulative: u64][selective: u64][window: u32][flags: u8 (bit 0 reset)]
//! frames in a link's stream: [length of kind and body: u32][kind: u8][body]; on the data
//!     link kind 1 holds one version 2 record, on the control link kind 1 interest changes
//! record, version 1: [flags: u8 (bits 0-1 QoS, bit 2 retain)][topic length: u16][topic]
//!                    [payload length: u32][payload]
//! record, version 2: [flags: u8 (bits 0-1 QoS, bit 2 retain, bit 3 expiry, bit 4 properties)]
//!                    [topic length: u16][topic]
//!                    [only with bit 3: seconds of Message Expiry left when sent: u32]
//!                    [only with bit 4: properties length: u16 (never 0)][properties]
//!                    [payload length: u32][payload]
//! ```
//! Version 2 adds what an MQTT 5 message carries: its properties (Payload Format Indicator,
//! Content Type, Response Topic, Correlation Data, User Properties, in MQTT 5 wire form without
//! the length prefix, checked by the receiver as the codec checks a PUBLISH's, see
//! [`crate::codec::properties::decode_message_properties`]) and the Message Expiry left, rounded
//! up so that a message still alive is never sent as expired; the receiver counts it down again
//! from when it arrives (on a link, from when it was queued). A record without either is byte
//! for byte a version 1 record. Version 3 brings links and interest; its best-effort batches are
//! those of version 2.
//!
//! Each node tells the others in gossip which versions it reads (see
//! [`NodeIdentity::reads_sync`]), and the sender writes to each peer the newest version both
//! know: to a node of a release without links, every message best effort and every message
//! whatever its topic; version 1 to one without MQTT 5, which then delivers the message
//! without its properties or expiry. `-csv` caps the version a node writes, reads and
//! advertises, so that a test can play an earlier release. A message expired before it is
//! queued is not sent.
//!
//! A record's size, which `-csl` limits when set, is [`record_len`] in version 2: 7 bytes plus
//! topic plus payload, plus 4 with an expiry, plus 2 and the properties with any.
//! A best-effort batch's `seq` increases strictly per origin boot and never lags the origin's
//! monotonic clock in microseconds, which bounds how far ahead a plausible one can be (see
//! [`super::replay`]); a link segment is taken once per link, whatever its number, and a link
//! is one sender boot talking to one receiver boot. The destination makes each datagram good
//! for one boot of one node only: a datagram captured on its way to one member cannot be
//! replayed to another, nor to the same node after it restarts with an empty replay window.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::auth::DatagramKey;
use super::interest::{self, FRAME_INTEREST};
use super::link::{Ack, Inbox, Next, Segmented, SEGMENT_BYTES};
use super::membership::{Members, NodeIdentity};
use super::peers::{Peer, Peers, LINK_VERSION};
use super::replay::{ReceivedAt, ReplayWindow, SequenceClock};
use crate::broker::Broker;
use crate::codec::properties::decode_message_properties;
use crate::codec::{publish_v5_size, PublishV5Extras, QoS};
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};
use crate::router::{Congested, Message};
use crate::topic;

/// The sync versions this release knows: version 1 (topic, payload, QoS and retain), version 2
/// (also the MQTT 5 properties and expiry) and version 3 (links: acknowledged, ordered
/// streams of records, see [`super::link`]).
pub const OLDEST_VERSION: u8 = 1;
pub const NEWEST_VERSION: u8 = 3;
const KIND_PUBLISH: u8 = 1;
/// Version 3: a segment of a link, and an acknowledgement of a link's segments.
const KIND_SEGMENT: u8 = 2;
const KIND_ACK: u8 = 3;
/// Version 3: the same for a peer's control link (see [`super::interest`]).
const KIND_CONTROL_SEGMENT: u8 = 4;
const KIND_CONTROL_ACK: u8 = 5;
/// The kind of a link frame that holds one record (in the version 2 record format).
pub const FRAME_PUBLISH: u8 = 1;
/// Framing bytes of one record besides its topic and payload (and, in version 2, its expiry
/// and properties).
pub const RECORD_OVERHEAD: usize = 7;
/// Version 2 record flags: the expiry, and the properties, follow the topic.
const FLAG_EXPIRY: u8 = 0b1000;
const FLAG_PROPERTIES: u8 = 0b1_0000;
/// Acknowledgement flags: the receiver refuses the link.
const ACK_RESET: u8 = 0b1;
/// Bytes of a version 2 record's expiry, and of its properties' length prefix.
const EXPIRY_LEN: usize = 4;
const PROPERTIES_PREFIX_LEN: usize = 2;
/// Records are packed into one best-effort datagram up to this many bytes (below a 1500-byte
/// MTU); a larger record travels alone, or on the link of a peer that has one.
pub const BATCH_BYTES: usize = 1200;
/// The largest record a best-effort datagram carries (to a peer without links, which
/// reassembles nothing): a UDP datagram's size with room for the header and tag.
pub const MAX_DATAGRAM_RECORD: usize = 60_000;
/// Link segments taken from one peer per turn of the sender, so that one busy peer does not
/// hold the others back.
const SEGMENTS_PER_TURN: usize = 64;
/// How often the sender looks for membership changes when nothing else wakes it.
const MEMBERS_POLL: Duration = Duration::from_millis(100);
/// Datagrams the receiver handles before it sends the acknowledgements they call for.
const RECEIVE_BURST: usize = 64;
/// Bytes a link frame may hold beyond the PUBLISH packet its record stands for.
const FRAME_SLACK: usize = 64;
/// The largest control link frame: a snapshot frame's filters and one filter more.
const CONTROL_MAX_FRAME: usize = interest::FRAME_BYTES + 2 * (3 + 65_535);
/// Replay windows kept before those of members that are gone are dropped.
const PRUNE_WINDOWS_AT: usize = 64;

/// The size of `message` as a record of sync `version`, which `-csl` limits (in the newest
/// version the node writes, so that whether a message is forwarded never depends on the peer).
pub fn record_len(message: &Message, version: u8) -> usize {
    let mut len = RECORD_OVERHEAD + message.topic.len() + message.payload.len();
    if version >= 2 {
        if message.expires_at.is_some() {
            len += EXPIRY_LEN;
        }
        if !message.properties.is_empty() {
            len += PROPERTIES_PREFIX_LEN + message.properties.len();
        }
    }
    len
}

/// The version to write to `peer`: the newest that this node writes (at most `newest`) and the
/// peer reads; `None` if there is none.
pub fn version_for(peer: &NodeIdentity, newest: u8) -> Option<u8> {
    (OLDEST_VERSION..=newest.min(NEWEST_VERSION))
        .rev()
        .find(|&version| peer.reads_sync(version))
}

/// The publishing side's handle: cheap to call from any connection.
pub struct Forwarder {
    peers: Arc<Peers>,
    /// `-csl`, if set.
    limit: Option<usize>,
    /// The newest sync version this node writes (`-csv`), whose record size `limit` applies to.
    version: u8,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub fn new(
        peers: Arc<Peers>,
        limit: Option<usize>,
        version: u8,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        Forwarder {
            peers,
            limit,
            version,
            metrics,
        }
    }

    /// Queues a locally published message for the other members, unless it must stay here;
    /// returns a peer whose link is congested, which the publisher should wait for.
    pub fn forward(&self, message: &Arc<Message>) -> Option<Arc<Peer>> {
        let cluster = &self.metrics.cluster;
        if message.topic.first() == Some(&b'$') {
            debug!("$ topic not forwarded");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::DollarTopic)
                .inc();
            return None;
        }
        // Lengths a record carries in 16 bits: an MQTT 5 message may have more properties.
        if message.properties.len() > usize::from(u16::MAX) {
            debug!("message with over 64 KiB of properties not forwarded");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                .inc();
            return None;
        }
        if let Some(limit) = self.limit {
            let len = record_len(message, self.version.min(2));
            if len > limit {
                debug!(len, limit, "message too big to forward (-csl)");
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                    .inc();
                return None;
            }
        }
        let now = Instant::now();
        if message.is_expired(now) {
            return None;
        }
        let peers = self.peers.list();
        let wanted = if peers.iter().any(|p| p.has_link) {
            self.peers.interest.matching(&message.topic)
        } else {
            u64::MAX
        };
        let (mut queued, mut wake, mut congested) = (false, false, None);
        for peer in peers.iter() {
            if !peer.wants(message, wanted) {
                cluster.records_skipped.inc();
                continue;
            }
            let pushed = peer.push(message, now, &self.metrics);
            queued |= pushed.queued;
            wake |= pushed.wake;
            if pushed.congested && congested.is_none() {
                congested = Some(peer.clone());
            }
        }
        if queued {
            cluster.records_forwarded.inc();
        }
        if wake {
            self.peers.wake_sender();
        }
        congested
    }
}

/// Who this node is in the datagrams it sends.
#[derive(Debug, Clone)]
pub struct Origin {
    pub node_id: String,
    pub boot_ms: u64,
    /// The same boot on the monotonic clock, which sequence numbers follow.
    pub started: Instant,
    /// The newest sync version this node writes (`-csv`).
    pub version: u8,
}

/// Sends what is queued for the peers, as best-effort datagrams and link segments, and keeps
/// the peers in step with membership. When `stop` fires, it goes on until nothing is left to
/// send or to be acknowledged (the wills of the connections closed at shutdown), and returns.
pub async fn send_loop(
    socket: Arc<UdpSocket>,
    peers: Arc<Peers>,
    mut stop: watch::Receiver<bool>,
    key: DatagramKey,
    origin: Origin,
    metrics: Arc<Metrics>,
) {
    let mut sequence = SequenceClock::new(origin.started);
    let mut datagram = Vec::with_capacity(BATCH_BYTES + 512);
    let mut stopping = false;
    loop {
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut more = false;
        let list = peers.list().clone();
        for peer in list.iter() {
            if peer.control_lost() {
                peers.restart_control(peer);
            }
            let transmits = peer.take_transmits(now, SEGMENTS_PER_TURN);
            metrics
                .cluster
                .segments_retransmitted
                .inc_by(transmits.retransmitted);
            more |= transmits.more;
            deadline = match (deadline, transmits.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let to = peer.identity.sync_addr();
            for (count, run) in &transmits.runs {
                datagram.clear();
                encode_header(
                    &mut datagram,
                    peer.publish_version,
                    &origin,
                    &peer.identity,
                    sequence.next_seq(),
                );
                datagram.put_u16(*count);
                datagram.extend_from_slice(run);
                key.seal(&mut datagram);
                send(&socket, &datagram, to, &metrics).await;
            }
            for (kind, (link, acked), segments) in [
                (
                    KIND_CONTROL_SEGMENT,
                    transmits.control_link,
                    &transmits.control_segments,
                ),
                (KIND_SEGMENT, transmits.link, &transmits.segments),
            ] {
                for (seq, data) in segments {
                    datagram.clear();
                    encode_parties(&mut datagram, LINK_VERSION, kind, &origin, &peer.identity);
                    datagram.put_u64(link);
                    datagram.put_u64(*seq);
                    datagram.put_u64(acked);
                    datagram.extend_from_slice(data);
                    key.seal(&mut datagram);
                    send(&socket, &datagram, to, &metrics).await;
                }
            }
        }
        if stopping && peers.all_idle() {
            return;
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let wake_at = deadline.map_or(now + MEMBERS_POLL, |d| d.min(now + MEMBERS_POLL));
        tokio::select! {
            _ = peers.woken() => {}
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            _ = stop.changed(), if !stopping => stopping = true,
        }
    }
}

async fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr, metrics: &Metrics) {
    match socket.send_to(datagram, to).await {
        Ok(_) => metrics.cluster.datagram_out(ClusterPort::Sync),
        Err(error) => {
            debug!(%error, %to, "sync send failed");
            metrics
                .cluster
                .dropped(ClusterPort::Sync, ClusterDrop::SendError)
                .inc();
        }
    }
}

pub(crate) fn encode_header(
    out: &mut Vec<u8>,
    version: u8,
    origin: &Origin,
    destination: &NodeIdentity,
    seq: u64,
) {
    encode_parties(out, version, KIND_PUBLISH, origin, destination);
    out.put_u64(seq);
}

/// The start of every sync datagram: version, kind, and who sends it to whom.
pub(crate) fn encode_parties(
    out: &mut Vec<u8>,
    version: u8,
    kind: u8,
    origin: &Origin,
    destination: &NodeIdentity,
) {
    out.put_u8(version);
    out.put_u8(kind);
    put_node(out, &origin.node_id, origin.boot_ms);
    put_node(out, &destination.node_id, destination.boot_ms);
}

fn put_node(out: &mut Vec<u8>, node_id: &str, boot_ms: u64) {
    // Our node id is checked with the flags; a peer's longer one (not a node of ours) is cut,
    // and that peer refuses the datagram.
    let id = &node_id.as_bytes()[..node_id.len().min(usize::from(u8::MAX))];
    out.put_u8(id.len() as u8);
    out.put_slice(id);
    out.put_u64(boot_ms);
}

/// Appends `message` as a record of sync `version` ([`record_len`] bytes), with the expiry left
/// at `now`.
pub(crate) fn encode_record(out: &mut impl BufMut, message: &Message, version: u8, now: Instant) {
    let (expiry, properties) = if version >= 2 {
        (message.remaining_expiry(now), &message.properties[..])
    } else {
        (None, &[][..])
    };
    let mut flags = message.qos as u8 | if message.retain { 0b100 } else { 0 };
    if expiry.is_some() {
        flags |= FLAG_EXPIRY;
    }
    if !properties.is_empty() {
        flags |= FLAG_PROPERTIES;
    }
    out.put_u8(flags);
    // A topic is at most 65,535 bytes (MQTT's own limit), properties too (the forwarder sends
    // no record with more), a payload less than -mpl.
    out.put_u16(message.topic.len() as u16);
    out.put_slice(&message.topic);
    if let Some(secs) = expiry {
        out.put_u32(secs);
    }
    if !properties.is_empty() {
        out.put_u16(properties.len() as u16);
        out.put_slice(properties);
    }
    out.put_u32(message.payload.len() as u32);
    out.put_slice(&message.payload);
}

/// A sync datagram, authenticated and parsed.
#[derive(Debug)]
pub(crate) struct Batch {
    // Read by the tests and the fuzz targets; the receiver needs no more than the records.
    #[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
    pub(crate) version: u8,
    pub(crate) origin: Bytes,
    pub(crate) boot_ms: u64,
    pub(crate) destination: Bytes,
    pub(crate) destination_boot_ms: u64,
    pub(crate) seq: u64,
    pub(crate) records: Vec<Message>,
}

/// Who sent a datagram to whom, as its header says.
#[derive(Debug)]
pub(crate) struct Parties {
    pub(crate) version: u8,
    pub(crate) kind: u8,
    pub(crate) origin: Bytes,
    pub(crate) boot_ms: u64,
    pub(crate) destination: Bytes,
    pub(crate) destination_boot_ms: u64,
}

fn decode_parties(buf: &mut &[u8]) -> Option<Parties> {
    let version = take_u8(buf)?;
    let kind = take_u8(buf)?;
    let id_len = usize::from(take_u8(buf)?);
    let origin = take(buf, id_len)?;
    let boot_ms = take_u64(buf)?;
    let id_len = usize::from(take_u8(buf)?);
    let destination = take(buf, id_len)?;
    let destination_boot_ms = take_u64(buf)?;
    Some(Parties {
        version,
        kind,
        origin,
        boot_ms,
        destination,
        destination_boot_ms,
    })
}

/// Parses an authenticated body received at `now`; `None` when it is not a well-formed publish
/// batch of a version from 1 to `newest` (the newest this node reads).
pub(crate) fn decode_batch(body: &[u8], newest: u8, now: Instant) -> Option<Batch> {
    let mut buf = body;
    let parties = decode_parties(&mut buf)?;
    let version = parties.version;
    if !(OLDEST_VERSION..=newest.min(NEWEST_VERSION)).contains(&version)
        || parties.kind != KIND_PUBLISH
    {
        return None;
    }
    let seq = take_u64(&mut buf)?;
    let count = take_u16(&mut buf)?;
    let mut records = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        records.push(decode_record(&mut buf, version, now)?);
    }
    if buf.has_remaining() {
        return None;
    }
    Some(Batch {
        version,
        origin: parties.origin,
        boot_ms: parties.boot_ms,
        destination: parties.destination,
        destination_boot_ms: parties.destination_boot_ms,
        seq,
        records,
    })
}

/// One record of sync `version`, received at `now`; `None` when it is malformed.
fn decode_record(buf: &mut &[u8], version: u8, now: Instant) -> Option<Message> {
    let known_flags = if version >= 2 {
        0b111 | FLAG_EXPIRY | FLAG_PROPERTIES
    } else {
        0b111
    };
    let flags = take_u8(buf)?;
    if flags & !known_flags != 0 {
        return None;
    }
    let qos = QoS::from_u8(flags & 0b11)?;
    let retain = flags & 0b100 != 0;
    let topic_len = usize::from(take_u16(buf)?);
    let topic = take(buf, topic_len)?;
    let expiry = if flags & FLAG_EXPIRY != 0 {
        Some(take_u32(buf)?)
    } else {
        None
    };
    let properties = if flags & FLAG_PROPERTIES != 0 {
        let len = usize::from(take_u16(buf)?);
        if len == 0 {
            return None;
        }
        take(buf, len)?
    } else {
        Bytes::new()
    };
    let payload_len = usize::try_from(take_u32(buf)?).ok()?;
    let payload = take(buf, payload_len)?;
    // Peers only forward what their clients could publish: valid, non-$ topic names in
    // UTF-8 without U+0000 (the codec's rule for every MQTT string); anything else is not
    // from a peer of ours.
    if topic.first() == Some(&b'$')
        || !topic::is_valid_topic_name(&topic)
        || topic.contains(&0)
        || std::str::from_utf8(&topic).is_err()
    {
        return None;
    }
    if !properties.is_empty() && !properties_could_be_published(&properties, &payload) {
        return None;
    }
    let mut message = Message::new(topic, payload, qos, retain);
    message.properties = properties;
    // Beyond what an Instant can hold (over a century): as good as never.
    message.expires_at = expiry.and_then(|secs| now.checked_add(Duration::from_secs(secs.into())));
    Some(message)
}

/// The record a link frame of kind [`FRAME_PUBLISH`] holds, received at `now`.
pub(crate) fn decode_frame_record(body: &[u8], now: Instant) -> Option<Message> {
    let mut buf = body;
    let message = decode_record(&mut buf, 2, now)?;
    (!buf.has_remaining()).then_some(message)
}

/// A version 3 datagram, authenticated and parsed.
#[derive(Debug)]
pub(crate) enum LinkDatagram {
    Segment {
        control: bool,
        link: u64,
        seq: u64,
        /// Every segment up to this one had been acknowledged when it was sent.
        sender_acked: u64,
        data: Bytes,
    },
    Ack {
        control: bool,
        ack: Ack,
    },
}

/// Parses an authenticated version 3 body; `None` when it is not a well-formed segment or
/// acknowledgement, or this node reads no version 3 (`newest`).
pub(crate) fn decode_link(body: &[u8], newest: u8) -> Option<(Parties, LinkDatagram)> {
    let mut buf = body;
    let parties = decode_parties(&mut buf)?;
    if parties.version != LINK_VERSION || newest < LINK_VERSION {
        return None;
    }
    let link = take_u64(&mut buf)?;
    let datagram = match parties.kind {
        KIND_SEGMENT | KIND_CONTROL_SEGMENT => {
            let seq = take_u64(&mut buf)?;
            let sender_acked = take_u64(&mut buf)?;
            if seq == 0 || sender_acked >= seq || buf.len() > SEGMENT_BYTES {
                return None;
            }
            LinkDatagram::Segment {
                control: parties.kind == KIND_CONTROL_SEGMENT,
                link,
                seq,
                sender_acked,
                data: Bytes::copy_from_slice(buf),
            }
        }
        KIND_ACK | KIND_CONTROL_ACK => {
            let cumulative = take_u64(&mut buf)?;
            let selective = take_u64(&mut buf)?;
            let window = take_u32(&mut buf)?;
            let flags = take_u8(&mut buf)?;
            if flags & !ACK_RESET != 0 || buf.has_remaining() {
                return None;
            }
            LinkDatagram::Ack {
                control: parties.kind == KIND_CONTROL_ACK,
                ack: Ack {
                    link,
                    cumulative,
                    selective,
                    window,
                    reset: flags & ACK_RESET != 0,
                },
            }
        }
        _ => return None,
    };
    Some((parties, datagram))
}

/// Appends the acknowledgement datagram body `ack` of a data (or `control`) link, from
/// `origin` to `destination`.
pub(crate) fn encode_ack(
    out: &mut Vec<u8>,
    origin: &Origin,
    destination: &NodeIdentity,
    control: bool,
    ack: &Ack,
) {
    let kind = if control { KIND_CONTROL_ACK } else { KIND_ACK };
    encode_parties(out, LINK_VERSION, kind, origin, destination);
    out.put_u64(ack.link);
    out.put_u64(ack.cumulative);
    out.put_u64(ack.selective);
    out.put_u32(ack.window);
    out.put_u8(if ack.reset { ACK_RESET } else { 0 });
}

/// Whether a version 2 record's properties are what the origin's broker lets a client publish:
/// only the properties that travel with a message, valid as in a PUBLISH, a Response Topic that
/// is a topic name, and a payload that is UTF-8 when the Payload Format Indicator says so.
fn properties_could_be_published(properties: &Bytes, payload: &[u8]) -> bool {
    let Ok(values) = decode_message_properties(properties.clone()) else {
        return false;
    };
    let response_topic_ok = values
        .response_topic
        .as_deref()
        .is_none_or(|name| topic::is_valid_topic_name(name.as_bytes()));
    let payload_ok =
        values.payload_format_indicator != Some(true) || std::str::from_utf8(payload).is_ok();
    response_topic_ok && payload_ok
}

fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
}

fn take_u16(buf: &mut &[u8]) -> Option<u16> {
    (buf.remaining() >= 2).then(|| buf.get_u16())
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    (buf.remaining() >= 4).then(|| buf.get_u32())
}

fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    (buf.remaining() >= 8).then(|| buf.get_u64())
}

/// The next `len` bytes, copied: records outlive the receive buffer.
fn take(buf: &mut &[u8], len: usize) -> Option<Bytes> {
    if buf.remaining() < len {
        return None;
    }
    let bytes = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    Some(bytes)
}

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
    fn admit(&self, message: &Message) -> bool {
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
fn publish_packet_len(message: &Message) -> usize {
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

/// What the receiver needs besides the socket.
pub struct Receiver {
    pub broker: Arc<Broker>,
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
}

/// Receives datagrams from peers: delivers their records locally, acknowledges link segments
/// (once per burst of datagrams) and hands acknowledgements to the peers' outboxes. Runs until
/// the task is aborted.
pub async fn receive_loop(socket: Arc<UdpSocket>, receiver: Receiver) {
    let (resume, mut resumed) = mpsc::unbounded_channel();
    let mut state = ReceiverState {
        limits: Limits {
            sync_limit: receiver.sync_limit,
            max_packet_size: receiver.broker.config.max_packet_size,
        },
        max_frame: receiver
            .broker
            .config
            .max_packet_size
            .saturating_add(FRAME_SLACK),
        windows: HashMap::new(),
        incoming: HashMap::new(),
        acks_due: Vec::new(),
        resume: resume.clone(),
        receiver,
    };
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(256);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let mut received = received;
                for _ in 0..RECEIVE_BURST {
                    match received {
                        Ok((n, from)) => state.handle(&socket, &buf[..n], from, &mut out).await,
                        Err(error) => {
                            debug!(%error, "sync receive failed");
                            // Never spin on an error that repeats.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            break;
                        }
                    }
                    received = match socket.try_recv_from(&mut buf) {
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                        other => other,
                    };
                }
            }
            Some(held) = resumed.recv() => state.resume(held),
        }
        state.send_acks(&socket, &mut out).await;
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
    /// message per held link at most).
    resume: mpsc::UnboundedSender<Held>,
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
    async fn handle(
        &mut self,
        socket: &UdpSocket,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut Vec<u8>,
    ) {
        let receiver = &self.receiver;
        let metrics = receiver.broker.metrics.clone();
        let cluster = &metrics.cluster;
        cluster.datagram_in(ClusterPort::Sync);
        let Some(body) = receiver.key.open(datagram) else {
            debug!(%from, "sync datagram dropped: bad tag");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::BadTag)
                .inc();
            return;
        };
        if body.get(1) != Some(&KIND_PUBLISH) {
            if let Err(reason) = self.handle_link(socket, body, out).await {
                debug!(%from, reason = reason.label(), "sync datagram dropped");
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
                for message in records {
                    self.deliver(message);
                }
            }
            Err(reason) => {
                debug!(%from, reason = reason.label(), "sync datagram dropped");
                cluster.dropped(ClusterPort::Sync, reason).inc();
            }
        }
    }

    /// Routes a record from a peer to the local subscribers, if it is within this node's limits.
    fn deliver(&self, message: Message) {
        deliver(&self.receiver, &self.limits, message);
    }

    /// Takes the frames `key`'s link has complete, until a local subscriber they go to is
    /// congested: then the link is held, and resumed when that subscriber has drained, or
    /// has stopped keeping up, or a second has passed (as a publisher of this node would wait
    /// for it).
    fn take_frames(&mut self, key: &LinkKey) {
        let Some(incoming) = self.incoming.get_mut(key) else {
            return;
        };
        let Some(congested) = take_frames_of(incoming, key, &self.receiver, &self.limits, true)
        else {
            return;
        };
        incoming.inbox.hold(true);
        let resume = self.resume.clone();
        let held = Held {
            key: key.clone(),
            link: incoming.inbox.link(),
            gave_up: false,
        };
        tokio::spawn(async move {
            let drained = congested.wait_while_draining(|| false).await;
            let _ = resume.send(Held {
                gave_up: !drained,
                ..held
            });
        });
    }

    /// Delivers every complete frame of a link that is going away, whatever the congestion:
    /// its sender counts them as delivered.
    fn flush(&self, key: &LinkKey, mut old: Incoming) {
        old.inbox.hold(false);
        take_frames_of(&mut old, key, &self.receiver, &self.limits, false);
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
            take_frames_of(incoming, &held.key, &self.receiver, &self.limits, false);
        } else {
            self.take_frames(&held.key);
        }
        if !self.acks_due.contains(&held.key) {
            self.acks_due.push(held.key);
        }
    }

    /// A version 3 datagram: a segment of a peer's link, or a peer's acknowledgement of ours.
    async fn handle_link(
        &mut self,
        socket: &UdpSocket,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ClusterDrop> {
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
                            self.flush(&key, old);
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
                            out.clear();
                            encode_ack(out, &receiver.origin, &member, control, &refusal);
                            receiver.key.seal(out);
                            send(socket, out, member.sync_addr(), &receiver.broker.metrics).await;
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
    async fn send_acks(&mut self, socket: &UdpSocket, out: &mut Vec<u8>) {
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
            out.clear();
            encode_ack(out, &self.receiver.origin, &member, key.control, &ack);
            self.receiver.key.seal(out);
            send(
                socket,
                out,
                member.sync_addr(),
                &self.receiver.broker.metrics,
            )
            .await;
        }
    }
}

/// Takes the complete frames of `inbox` (of link `key`) and acts on them: interest changes
/// on a control link, records on a data link. With `hold`, stops at the first record that
/// congests a local subscriber and returns that subscriber.
fn take_frames_of(
    incoming: &mut Incoming,
    key: &LinkKey,
    receiver: &Receiver,
    limits: &Limits,
    hold: bool,
) -> Option<Congested> {
    let cluster = &receiver.broker.metrics.cluster;
    let now = Instant::now();
    let origin = String::from_utf8_lossy(&key.origin);
    // An interest frame that could not be taken leaves the peer's interest unknown (it gets
    // every message) rather than wrong.
    let interest_lost = || {
        if key.control {
            receiver.peers.interest.unknown(&origin);
        }
    };
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
                        cluster
                            .dropped(ClusterPort::Sync, ClusterDrop::Malformed)
                            .inc();
                        interest_lost();
                    }
                }
            }
            Next::Frame(frame) if !key.control && frame.kind == FRAME_PUBLISH => {
                let Some(message) = decode_frame_record(&frame.body, now) else {
                    cluster
                        .dropped(ClusterPort::Sync, ClusterDrop::Malformed)
                        .inc();
                    continue;
                };
                cluster.records_received.inc();
                let congested = deliver(receiver, limits, message);
                if hold && congested.is_some() {
                    return congested;
                }
            }
            Next::Frame(frame) => {
                debug!(kind = frame.kind, "link frame of an unknown kind skipped");
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::Malformed)
                    .inc();
                interest_lost();
            }
            Next::Oversized(len) => {
                debug!(len, "link frame over -mpl skipped");
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                    .inc();
                interest_lost();
            }
            Next::Unreadable => {
                warn!(peer = %origin, "a peer's link cannot be read; refused");
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::Malformed)
                    .inc();
                interest_lost();
            }
        }
    }
    None
}

/// Routes a record from a peer to the local subscribers, if it is within this node's limits;
/// returns a subscriber it congested.
fn deliver(receiver: &Receiver, limits: &Limits, message: Message) -> Option<Congested> {
    let broker = &receiver.broker;
    let cluster = &broker.metrics.cluster;
    if !limits.admit(&message) {
        debug!("forwarded record over -csl or -mpl dropped");
        cluster
            .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
            .inc();
        return None;
    }
    let routed = broker.router.publish(Arc::new(message));
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
fn check_addressing(
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
fn accept(
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
/// number as seen.
fn accept_publish(
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
mod tests {
    use super::*;
    use crate::cluster::membership::{MemberInfo, MemberState};

    fn message(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Message {
        Message::new(
            Bytes::copy_from_slice(topic.as_bytes()),
            Bytes::copy_from_slice(payload),
            qos,
            retain,
        )
    }

    fn datagram(key: &DatagramKey, origin: &Origin, seq: u64, records: &[Message]) -> Vec<u8> {
        datagram_to(key, origin, &identity("local", 1), seq, records)
    }

    fn datagram_to(
        key: &DatagramKey,
        origin: &Origin,
        destination: &NodeIdentity,
        seq: u64,
        records: &[Message],
    ) -> Vec<u8> {
        let mut out = body(origin, destination, seq, records, Instant::now());
        key.seal(&mut out);
        out
    }

    /// An unsealed batch in `origin`'s version, with expiries measured at `now`.
    fn body(
        origin: &Origin,
        destination: &NodeIdentity,
        seq: u64,
        records: &[Message],
        now: Instant,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(&mut out, origin.version, origin, destination, seq);
        out.put_u16(records.len() as u16);
        for record in records {
            encode_record(&mut out, record, origin.version, now);
        }
        out
    }

    fn origin_of(name: &str, boot_ms: u64, version: u8) -> Origin {
        Origin {
            node_id: name.into(),
            boot_ms,
            started: Instant::now(),
            version,
        }
    }

    fn identity(name: &str, boot_ms: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: name.to_string(),
            gossip: "127.0.0.1:7946".parse().unwrap(),
            sync_port: 7947,
            mqtt_port: 1883,
            version: NodeIdentity::advertised_version("0", NEWEST_VERSION),
            boot_ms,
            renewal: 0,
        }
    }

    fn members_with(peer: NodeIdentity, state: MemberState) -> Members {
        let members = Members::new(identity("local", 1), false);
        members.set_others_for_tests(vec![MemberInfo {
            identity: peer,
            state,
        }]);
        members
    }

    #[test]
    fn records_round_trip() {
        let key = DatagramKey::sync(b"k");
        let origin = origin_of("n1", 42, 1);
        let sent = [
            message("a/b", b"hello", QoS::AtMostOnce, false),
            message("c", b"", QoS::ExactlyOnce, true),
        ];
        let bytes = datagram(&key, &origin, 7, &sent);
        let batch = decode_batch(key.open(&bytes).unwrap(), 2, Instant::now()).unwrap();
        assert_eq!(batch.version, 1);
        assert_eq!(&batch.origin[..], b"n1");
        assert_eq!((batch.boot_ms, batch.seq), (42, 7));
        assert_eq!(&batch.destination[..], b"local");
        assert_eq!(batch.destination_boot_ms, 1);
        assert_eq!(batch.records.len(), 2);
        for (got, want) in batch.records.iter().zip(&sent) {
            assert_eq!(got.topic, want.topic);
            assert_eq!(got.payload, want.payload);
            assert_eq!(got.qos, want.qos);
            assert_eq!(got.retain, want.retain);
        }
        // The record size the limit applies to is exactly what a record takes on the wire.
        let mut one = Vec::new();
        encode_record(&mut one, &sent[0], 1, Instant::now());
        assert_eq!(one.len(), record_len(&sent[0], 1));
    }

    #[test]
    fn truncated_or_padded_or_invalid_batches_are_malformed() {
        let origin = origin_of("n1", 1, 1);
        let now = Instant::now();
        let body = body(
            &origin,
            &identity("local", 1),
            1,
            &[message("t", b"xyz", QoS::AtLeastOnce, false)],
            now,
        );
        assert!(decode_batch(&body, 2, now).is_some());
        for cut in 0..body.len() {
            assert!(decode_batch(&body[..cut], 2, now).is_none(), "cut at {cut}");
        }
        let mut padded = body.clone();
        padded.push(0);
        assert!(decode_batch(&padded, 2, now).is_none());
        for (topic, flags) in [
            ("$SYS/x", 0u8),
            ("a\u{0}b", 0),
            ("\u{0}", 0),
            ("a/+", 0),
            ("a/#", 0),
            ("", 0),
            ("t", 3),
            ("t", 8),
        ] {
            let mut bad = Vec::new();
            encode_header(&mut bad, 1, &origin, &identity("local", 1), 1);
            bad.put_u16(1);
            bad.put_u8(flags);
            bad.put_u16(topic.len() as u16);
            bad.put_slice(topic.as_bytes());
            bad.put_u32(0);
            assert!(
                decode_batch(&bad, 2, now).is_none(),
                "{topic:?} flags {flags}"
            );
        }
    }

    #[test]
    fn limits_are_those_of_a_client_publish() {
        let limits = Limits {
            sync_limit: Some(7 + 1 + 10),
            max_packet_size: 1 + 1 + 2 + 1 + 2 + 10,
        };
        // Record 18 bytes, PUBLISH (QoS 1) 17 bytes: both at their limit.
        assert!(limits.admit(&message("t", &[0; 10], QoS::AtLeastOnce, false)));
        assert!(!limits.admit(&message("t", &[0; 11], QoS::AtMostOnce, false)));
        let tight = Limits {
            max_packet_size: 16,
            ..limits
        };
        assert!(!tight.admit(&message("t", &[0; 10], QoS::AtLeastOnce, false)));
        assert!(tight.admit(&message("t", &[0; 10], QoS::AtMostOnce, false)));
        // Two bytes of remaining length from 128 on.
        let big = message("t", &[0; 200], QoS::AtMostOnce, false);
        assert_eq!(publish_packet_len(&big), 1 + 2 + 3 + 200);
    }

    #[test]
    fn only_fresh_datagrams_from_known_members_are_accepted() {
        // Received at the sender's boot on the wall clock: its first numbers are plausible.
        const AT: ReceivedAt = ReceivedAt {
            now_us: 0,
            wall_ms: 5,
        };
        let key = DatagramKey::sync(b"k");
        let origin = origin_of("n1", 5, 2);
        let records = [message("t", b"x", QoS::AtMostOnce, false)];
        let members = members_with(identity("n1", 5), MemberState::Up);
        let mut windows = HashMap::new();
        let first = datagram(&key, &origin, 1, &records);
        assert_eq!(
            accept(&first, &key, &members, &mut windows, AT, 2)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            accept(&first, &key, &members, &mut windows, AT, 2).unwrap_err(),
            ClusterDrop::Replay
        );
        let forged = datagram(&DatagramKey::sync(b"other"), &origin, 2, &records);
        assert_eq!(
            accept(&forged, &key, &members, &mut windows, AT, 2).unwrap_err(),
            ClusterDrop::BadTag
        );
        // A forged datagram does not burn its sequence number.
        assert!(accept(
            &datagram(&key, &origin, 2, &records),
            &key,
            &members,
            &mut windows,
            AT,
            2
        )
        .is_ok());
        let stranger = origin_of("n9", 5, 2);
        assert_eq!(
            accept(
                &datagram(&key, &stranger, 1, &records),
                &key,
                &members,
                &mut windows,
                AT,
                2
            )
            .unwrap_err(),
            ClusterDrop::UnknownOrigin
        );
        let old_boot = origin_of("n1", 4, 2);
        assert_eq!(
            accept(
                &datagram(&key, &old_boot, 9, &records),
                &key,
                &members,
                &mut windows,
                AT,
                2
            )
            .unwrap_err(),
            ClusterDrop::StaleEpoch
        );
        // Addressed to another node, or to an earlier boot of this one.
        for destination in [identity("other", 1), identity("local", 0)] {
            assert_eq!(
                accept(
                    &datagram_to(&key, &origin, &destination, 10, &records),
                    &key,
                    &members,
                    &mut windows,
                    AT,
                    2
                )
                .unwrap_err(),
                ClusterDrop::WrongDestination
            );
        }
        // A member held as down (say, while it renews its identity) is still heard.
        let down = members_with(identity("n1", 5), MemberState::Down);
        assert!(accept(
            &datagram(&key, &origin, 3, &records),
            &key,
            &down,
            &mut windows,
            AT,
            2
        )
        .is_ok());
    }

    /// The properties of an MQTT 5 message, in the wire form `Message::properties` holds.
    fn v5_properties() -> Bytes {
        let values = crate::codec::PropertyValues {
            payload_format_indicator: Some(true),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
            user_properties: vec![
                ("b".into(), "2".into()),
                ("a".into(), "1".into()),
                ("b".into(), "3".into()),
            ],
            ..Default::default()
        };
        let mut out = bytes::BytesMut::new();
        values.encode(&mut out);
        out.freeze()
    }

    fn v5_message(expires_in: Option<Duration>, now: Instant) -> Message {
        let mut message = message("a/b", b"hello", QoS::AtLeastOnce, true);
        message.properties = v5_properties();
        message.expires_at = expires_in.map(|left| now + left);
        message.origin = 7;
        message
    }

    #[test]
    fn version_2_carries_properties_and_expiry() {
        let sent_at = Instant::now();
        let sent = [
            v5_message(Some(Duration::from_millis(9_500)), sent_at),
            v5_message(None, sent_at),
            message("plain", b"x", QoS::AtMostOnce, false),
        ];
        let body = body(
            &origin_of("n1", 1, 2),
            &identity("local", 1),
            3,
            &sent,
            sent_at,
        );
        assert_eq!(body[0], 2, "version byte");
        let received_at = sent_at + Duration::from_secs(1);
        let batch = decode_batch(&body, 2, received_at).unwrap();
        assert_eq!(batch.version, 2);
        assert_eq!(batch.records.len(), 3);
        for (got, want) in batch.records.iter().zip(&sent) {
            assert_eq!(
                (&got.topic, &got.payload, got.qos, got.retain),
                (&want.topic, &want.payload, want.qos, want.retain)
            );
            assert_eq!(got.properties, want.properties, "properties byte for byte");
            assert_eq!(got.origin, 0, "a peer's message has no local session");
        }
        // 9.5 s left is sent as 10 (rounded up: never "expired" while alive), and counted from
        // when it arrives.
        assert_eq!(
            batch.records[0].expires_at,
            Some(received_at + Duration::from_secs(10))
        );
        assert_eq!(batch.records[1].expires_at, None);
        assert_eq!(batch.records[2].expires_at, None);
        assert!(batch.records[2].properties.is_empty());

        for message in &sent {
            let mut one = Vec::new();
            encode_record(&mut one, message, 2, sent_at);
            assert_eq!(one.len(), record_len(message, 2), "{message:?}");
        }
        assert_eq!(
            record_len(&sent[0], 2),
            7 + 3 + 5 + 4 + 2 + sent[0].properties.len()
        );
        // A record without properties or expiry is the same in both versions.
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        encode_record(&mut v1, &sent[2], 1, sent_at);
        encode_record(&mut v2, &sent[2], 2, sent_at);
        assert_eq!(v1, v2);
    }

    #[test]
    fn version_1_drops_properties_and_expiry_but_not_the_message() {
        let now = Instant::now();
        let sent = v5_message(Some(Duration::from_secs(30)), now);
        let body = body(
            &origin_of("n1", 1, 1),
            &identity("local", 1),
            1,
            &[sent],
            now,
        );
        assert_eq!(body[0], 1, "version byte");
        // What an earlier release (or a -csv 1 node) reads, and a node of this release too.
        for newest in [1, 2] {
            let batch = decode_batch(&body, newest, now).unwrap();
            let got = &batch.records[0];
            assert_eq!(
                (&got.topic[..], &got.payload[..]),
                (&b"a/b"[..], &b"hello"[..])
            );
            assert!((got.qos == QoS::AtLeastOnce) && got.retain);
            assert!(got.properties.is_empty());
            assert_eq!(got.expires_at, None);
        }
        let message = v5_message(Some(Duration::from_secs(30)), now);
        assert_eq!(record_len(&message, 1), 7 + 3 + 5);
    }

    #[test]
    fn a_node_pinned_to_version_1_refuses_version_2() {
        let now = Instant::now();
        let records = [message("t", b"x", QoS::AtMostOnce, false)];
        let v2 = body(
            &origin_of("n1", 1, 2),
            &identity("local", 1),
            1,
            &records,
            now,
        );
        assert!(decode_batch(&v2, 2, now).is_some());
        assert!(decode_batch(&v2, 1, now).is_none());
        let mut v3 = v2.clone();
        v3[0] = 3;
        assert!(
            decode_batch(&v3, 2, now).is_none(),
            "a version not known yet"
        );
        let mut v0 = v2;
        v0[0] = 0;
        assert!(decode_batch(&v0, 2, now).is_none());
    }

    #[test]
    fn each_peer_gets_the_newest_version_it_reads() {
        let mut peer = identity("p", 1);
        for (advertised, newest, want) in [
            ("0.1.0", 2, Some(1)),
            ("0.1.0", 1, Some(1)),
            ("0.2.0+sync.1.2", 2, Some(2)),
            ("0.2.0+sync.1.2", 1, Some(1)),
            ("9.0.0+sync.2.3", 2, Some(2)),
            ("9.0.0+sync.2.3", 1, None),
            ("9.0.0+sync.3", 2, None),
        ] {
            peer.version = advertised.to_string();
            assert_eq!(version_for(&peer, newest), want, "{advertised} to {newest}");
        }
        assert_eq!(
            version_for(&identity("p", 1), NEWEST_VERSION),
            Some(NEWEST_VERSION),
            "this release advertises what it writes"
        );
    }

    /// The sender, run for real: a peer that advertises only version 1 (an earlier release)
    /// gets version 1 datagrams, one of this release version 2, and a message expired before
    /// it is sent goes to neither.
    #[tokio::test]
    async fn the_sender_writes_each_peer_its_version() {
        let old = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let new = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for socket in [&old, &new] {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
        }
        let peer = |name: &str, socket: &std::net::UdpSocket, newest: u8| {
            let mut identity = identity(name, 1);
            identity.sync_port = socket.local_addr().unwrap().port();
            identity.version = NodeIdentity::advertised_version("0.1.0", newest);
            MemberInfo {
                identity,
                state: MemberState::Up,
            }
        };
        let members = Arc::new(Members::new(identity("local", 1), false));
        members.set_others_for_tests(vec![peer("old", &old, 1), peer("new", &new, 2)]);
        let key = DatagramKey::sync(b"k");
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let metrics = Arc::new(Metrics::new());
        let peers = Arc::new(Peers::new(
            members,
            1 << 20,
            2,
            Instant::now(),
            metrics.clone(),
        ));
        let forwarder = Forwarder::new(peers.clone(), None, 2, metrics.clone());
        let (stop, stopped) = watch::channel(false);
        let sender = tokio::spawn(send_loop(
            socket,
            peers,
            stopped,
            key.clone(),
            origin_of("local", 1, 2),
            Arc::new(Metrics::new()),
        ));
        let now = Instant::now();
        let mut expired = v5_message(None, now);
        expired.expires_at = Some(now);
        forwarder.forward(&Arc::new(expired));
        forwarder.forward(&Arc::new(v5_message(Some(Duration::from_secs(60)), now)));
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .unwrap()
            .unwrap();

        let received = |socket: &std::net::UdpSocket| {
            let mut buf = [0; 2048];
            let n = socket.recv(&mut buf).unwrap();
            let body = key.open(&buf[..n]).unwrap().to_vec();
            decode_batch(&body, NEWEST_VERSION, Instant::now()).unwrap()
        };
        let to_old = received(&old);
        assert_eq!((to_old.version, &to_old.destination[..]), (1, &b"old"[..]));
        assert_eq!(to_old.records.len(), 1, "the expired message is not sent");
        assert!(to_old.records[0].properties.is_empty());
        assert_eq!(to_old.records[0].expires_at, None);
        let to_new = received(&new);
        assert_eq!((to_new.version, &to_new.destination[..]), (2, &b"new"[..]));
        assert_eq!(to_new.records.len(), 1, "the expired message is not sent");
        assert_eq!(to_new.records[0].properties, v5_properties());
        let left = to_new.records[0].remaining_expiry(Instant::now()).unwrap();
        assert!((58..=60).contains(&left), "{left} s left");
        assert!(to_new.seq != to_old.seq, "one number per datagram");
    }

    /// A version 2 record with the given parts, after a header from n1 to local.
    fn raw_v2(
        flags: u8,
        expiry: Option<u32>,
        properties: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(
            &mut out,
            2,
            &origin_of("n1", 1, 2),
            &identity("local", 1),
            1,
        );
        out.put_u16(1);
        out.put_u8(flags);
        out.put_u16(3);
        out.put_slice(b"a/b");
        if let Some(secs) = expiry {
            out.put_u32(secs);
        }
        if let Some(properties) = properties {
            out.put_u16(properties.len() as u16);
            out.put_slice(properties);
        }
        out.put_u32(payload.len() as u32);
        out.put_slice(payload);
        out
    }

    #[test]
    fn malformed_version_2_records_are_refused() {
        let now = Instant::now();
        let good = v5_properties();
        let whole = raw_v2(0b1_1001, Some(5), Some(&good), b"hello");
        let batch = decode_batch(&whole, 2, now).expect("the well-formed one is accepted");
        assert_eq!(batch.records[0].properties, good);
        for cut in 0..whole.len() {
            assert!(
                decode_batch(&whole[..cut], 2, now).is_none(),
                "cut at {cut}"
            );
        }
        let bad_properties: &[(&str, &[u8])] = &[
            ("empty list with its flag set", b""),
            ("unknown identifier", b"\x7f\x00"),
            ("payload format indicator 2", b"\x01\x02"),
            ("given twice", b"\x03\x00\x01a\x03\x00\x01b"),
            ("string runs past the list", b"\x03\x00\x09abc"),
            ("string not UTF-8", b"\x03\x00\x02\xc3\x28"),
            ("string with U+0000", b"\x03\x00\x02a\x00"),
            ("user property without value", b"\x26\x00\x01k"),
            ("response topic with a wildcard", b"\x08\x00\x03a/#"),
            ("empty response topic", b"\x08\x00\x00"),
            ("topic alias", b"\x23\x00\x01"),
            ("subscription identifier", b"\x0b\x01"),
            ("message expiry inside the list", b"\x02\x00\x00\x00\x05"),
            ("session expiry", b"\x11\x00\x00\x00\x05"),
            ("reason string", b"\x1f\x00\x01r"),
            ("varint identifier too long", b"\x80\x80\x80\x80\x01"),
        ];
        for (what, properties) in bad_properties {
            let body = raw_v2(0b1_0001, None, Some(properties), b"hello");
            assert!(decode_batch(&body, 2, now).is_none(), "{what}");
        }
        // UTF-8 promised, not given.
        let utf8 = raw_v2(0b1_0001, None, Some(b"\x01\x01"), b"\xff\xfe");
        assert!(decode_batch(&utf8, 2, now).is_none(), "payload not UTF-8");
        assert!(decode_batch(&raw_v2(0b1_0001, None, Some(b"\x01\x01"), b"ok"), 2, now).is_some());
        // Flags no version knows, and version 2 flags in a version 1 datagram.
        assert!(decode_batch(&raw_v2(0b10_0000, None, None, b"x"), 2, now).is_none());
        let mut v1_with_expiry = raw_v2(0b1000, Some(5), None, b"x");
        v1_with_expiry[0] = 1;
        assert!(decode_batch(&v1_with_expiry, 2, now).is_none());

        // Through the receiver's checks, a bad list drops the datagram as malformed, and does
        // not burn its sequence number.
        const AT: ReceivedAt = ReceivedAt {
            now_us: 0,
            wall_ms: 1,
        };
        let key = DatagramKey::sync(b"k");
        let members = members_with(identity("n1", 1), MemberState::Up);
        let mut windows = HashMap::new();
        let mut forged = raw_v2(0b1_0001, None, Some(b"\x23\x00\x01"), b"x");
        key.seal(&mut forged);
        assert_eq!(
            accept(&forged, &key, &members, &mut windows, AT, 2).unwrap_err(),
            ClusterDrop::Malformed
        );
        let mut fine = raw_v2(0b1_0001, None, Some(b"\x03\x00\x01a"), b"x");
        key.seal(&mut fine);
        assert_eq!(
            accept(&fine, &key, &members, &mut windows, AT, 2)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn limits_count_what_a_version_2_record_and_an_mqtt_5_publish_carry() {
        let now = Instant::now();
        let message = v5_message(Some(Duration::from_secs(5)), now);
        let record = record_len(&message, 2);
        let props = message.properties.len() + 5;
        // Fixed header (2), topic (2 + 3), packet id (2), properties (1 + props), payload (5).
        let packet = 2 + 5 + 2 + 1 + props + 5;
        assert_eq!(publish_packet_len(&message), packet);
        let exact = Limits {
            sync_limit: Some(record),
            max_packet_size: packet,
        };
        assert!(exact.admit(&message));
        assert!(!Limits {
            sync_limit: Some(record - 1),
            ..exact
        }
        .admit(&message));
        assert!(!Limits {
            max_packet_size: packet - 1,
            ..exact
        }
        .admit(&message));
    }
}
