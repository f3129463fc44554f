//! The sync datagrams and records, as bytes (the format is in [`super`]): written by the
//! sender and the forwarder, read by the receiver and the fuzz targets.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};

use super::super::link::{Ack, SEGMENT_BYTES};
use super::super::membership::NodeIdentity;
use super::super::peers::LINK_VERSION;
use super::Origin;
use crate::codec::properties::could_be_published;
use crate::codec::QoS;
use crate::router::{Message, Stamp};
use crate::topic;

/// The newest version of best-effort batches: version 3 brought links, and every message to a
/// peer that has one goes on it.
pub const NEWEST_BATCH_VERSION: u8 = 2;

/// The sync versions this release knows: version 1 (topic, payload, QoS and retain), version 2
/// (also the MQTT 5 properties and expiry), version 3 (links: acknowledged, ordered streams
/// of records, see [`super::link`]), version 4 (retained anti-entropy: stamped records,
/// repairs, digests and listings on the links, see [`super::super::anti_entropy`]) and
/// version 5 (cluster-wide client ids: claims and sessions handed over on the control links,
/// see [`super::super::handover`]) and version 6 (sessions handed over in snapshot version 2).
pub const OLDEST_VERSION: u8 = 1;

pub const NEWEST_VERSION: u8 = 6;

/// The sync version that brought retained anti-entropy. Its datagrams are those of version 3
/// (link segments and acknowledgements say version 3); what changed is in the links' streams,
/// which only a peer that reads version 4 is sent: records with stamps (flag bit 5), repairs
/// (data link frames of kind 2), digests and listings (control link frames of kinds 2 and 3).
/// A node of version 3 refuses each of them, so a rolling upgrade needs the peer to say.
pub const STAMP_VERSION: u8 = 4;

/// The sync version that brought cluster-wide client ids: claims, answers and sessions'
/// parts on the control links (frames of kinds 4, 5 and 6), only to a peer that reads it. The
/// datagrams stay those of version 3.
pub const HANDOVER_VERSION: u8 = 5;

/// The sync version whose sessions handed over are in snapshot version 2 (see
/// [`crate::session::snapshot`]: when their client last connected, how long it has been
/// gone). Only the bytes of frame 6 changed; a node of version 5 refuses version 2 snapshots,
/// so it is sent version 1.
pub const SNAPSHOT_2_VERSION: u8 = 6;

pub(super) const KIND_PUBLISH: u8 = 1;

/// Version 3: a segment of a link, and an acknowledgement of a link's segments.
pub(super) const KIND_SEGMENT: u8 = 2;

pub(super) const KIND_ACK: u8 = 3;

/// Version 3: the same for a peer's control link (see [`super::interest`]).
pub(super) const KIND_CONTROL_SEGMENT: u8 = 4;

pub(super) const KIND_CONTROL_ACK: u8 = 5;

/// The kind of a link frame that holds one record (in the version 2 record format).
pub const FRAME_PUBLISH: u8 = 1;

/// The kind of a data link frame that holds one stamped retained record for the receiver's
/// retained store only (anti-entropy: a repair, not a publish; see
/// [`super::super::anti_entropy`]). An empty payload is a tombstone.
pub const FRAME_RETAINED: u8 = 2;

/// Framing bytes of one record besides its topic and payload (and, in version 2, its expiry
/// and properties).
pub const RECORD_OVERHEAD: usize = 7;

/// Version 2 record flags: the expiry, and the properties, follow the topic.
pub(super) const FLAG_EXPIRY: u8 = 0b1000;

pub(super) const FLAG_PROPERTIES: u8 = 0b1_0000;

/// Link frame records only, with the retain flag: the retained write's stamp follows the
/// properties.
pub(super) const FLAG_STAMP: u8 = 0b10_0000;

/// Link frame records (from a node that chooses who serves each shared group): the shared
/// groups the receiver must serve follow the stamp. Without it such a record is delivered to
/// no shared group.
pub(super) const FLAG_GROUPS: u8 = 0b100_0000;

/// The shared groups (name, filter) a record asks its receiver to serve.
pub type GroupList = Vec<(Bytes, Bytes)>;

/// The most bytes a record's list of shared groups takes ([`groups_len`]: count, lengths,
/// names and filters). The publishing node names a peer no more groups than fit (see
/// [`super::super::shared`]), and the receiver allows a link frame as much beyond `-mpl`.
pub const MAX_GROUP_LIST_BYTES: usize = 4 << 10;

/// The bytes one group of a record's list takes, besides the count.
pub fn group_entry_len(name: &[u8], filter: &[u8]) -> usize {
    4 + name.len() + filter.len()
}

/// The bytes of a group list's count.
pub const GROUP_COUNT_LEN: usize = 2;

/// Acknowledgement flags: the receiver refuses the link.
pub(super) const ACK_RESET: u8 = 0b1;

/// Bytes of a version 2 record's expiry, and of its properties' length prefix.
pub(super) const EXPIRY_LEN: usize = 4;

pub(super) const PROPERTIES_PREFIX_LEN: usize = 2;

/// Records are packed into one best-effort datagram up to this many bytes (below a 1500-byte
/// MTU); a larger record travels alone, or on the link of a peer that has one.
pub const BATCH_BYTES: usize = 1200;

/// The largest record a best-effort datagram carries (to a peer without links, which
/// reassembles nothing): a UDP datagram's size with room for the header and tag.
pub const MAX_DATAGRAM_RECORD: usize = 60_000;

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

/// A record's stamp besides its node id: ms u64, count u32, node length u8.
pub const STAMP_FIXED_LEN: usize = 13;

/// The most a stamp adds to a record: a node id is at most 255 bytes on the wire.
pub const MAX_STAMP_LEN: usize = STAMP_FIXED_LEN + u8::MAX as usize;

/// The size of `message` as a link frame record with `stamp` (see [`encode_stamped_record`]).
pub fn stamped_record_len(message: &Message, stamp: Option<&Stamp>) -> usize {
    record_len(message, 2)
        + written_stamp(message, stamp).map_or(0, |stamp| STAMP_FIXED_LEN + stamp_node(stamp).len())
}

/// The bytes a record's list of `groups` takes (none without groups). Not part of
/// [`record_len`]: whether a message crosses (`-csl`) does not depend on who serves its groups.
pub fn groups_len(groups: &[(Bytes, Bytes)]) -> usize {
    if groups.is_empty() {
        return 0;
    }
    GROUP_COUNT_LEN
        + groups
            .iter()
            .map(|(name, filter)| group_entry_len(name, filter))
            .sum::<usize>()
}

/// The stamp a record carries: only retained messages have one (and a stamp of an empty node
/// id is never made).
fn written_stamp<'a>(message: &Message, stamp: Option<&'a Stamp>) -> Option<&'a Stamp> {
    stamp.filter(|stamp| message.retain && !stamp.node.is_empty())
}

/// A stamp's node id as written: at most 255 bytes (node ids are checked far shorter).
fn stamp_node(stamp: &Stamp) -> &[u8] {
    &stamp.node[..stamp.node.len().min(usize::from(u8::MAX))]
}

/// Appends `message` as a record of sync `version` ([`record_len`] bytes), with the expiry left
/// at `now`.
pub(crate) fn encode_record(out: &mut impl BufMut, message: &Message, version: u8, now: Instant) {
    encode_record_stamped(out, message, version, now, None, &[])
}

/// Appends `message` as a version 2 link frame record with the retained write's `stamp` (when
/// it has one): [`stamped_record_len`] bytes.
pub(crate) fn encode_stamped_record(
    out: &mut impl BufMut,
    message: &Message,
    stamp: Option<&Stamp>,
    now: Instant,
) {
    encode_record_stamped(out, message, 2, now, stamp, &[])
}

/// [`encode_stamped_record`] naming the shared `groups` the receiver must serve (at most
/// `u16::MAX` of them, which [`MAX_GROUP_LIST_BYTES`] keeps far below):
/// [`stamped_record_len`] + [`groups_len`] bytes.
pub(crate) fn encode_link_record(
    out: &mut impl BufMut,
    message: &Message,
    stamp: Option<&Stamp>,
    now: Instant,
    groups: &[(Bytes, Bytes)],
) {
    encode_record_stamped(out, message, 2, now, stamp, groups)
}

fn encode_record_stamped(
    out: &mut impl BufMut,
    message: &Message,
    version: u8,
    now: Instant,
    stamp: Option<&Stamp>,
    groups: &[(Bytes, Bytes)],
) {
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
    let stamp = written_stamp(message, stamp);
    if stamp.is_some() {
        flags |= FLAG_STAMP;
    }
    if !groups.is_empty() {
        flags |= FLAG_GROUPS;
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
    if let Some(stamp) = stamp {
        let node = stamp_node(stamp);
        out.put_u64(stamp.ms);
        out.put_u32(stamp.count);
        out.put_u8(node.len() as u8);
        out.put_slice(node);
    }
    if !groups.is_empty() {
        let groups = &groups[..groups.len().min(usize::from(u16::MAX))];
        out.put_u16(groups.len() as u16);
        // Names and filters come from SUBSCRIBE filters: under 64 KiB.
        for (name, filter) in groups {
            out.put_u16(name.len() as u16);
            out.put_slice(name);
            out.put_u16(filter.len() as u16);
            out.put_slice(filter);
        }
    }
    out.put_u32(message.payload.len() as u32);
    out.put_slice(&message.payload);
}

/// A sync datagram, authenticated and parsed.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Read by the fuzz targets and tests: the receiver treats every version alike.
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
/// batch of a version from 1 to `newest` (the newest this node reads), at most
/// [`NEWEST_BATCH_VERSION`].
pub(crate) fn decode_batch(body: &[u8], newest: u8, now: Instant) -> Option<Batch> {
    let mut buf = body;
    let parties = decode_parties(&mut buf)?;
    let version = parties.version;
    if !(OLDEST_VERSION..=newest.min(NEWEST_BATCH_VERSION)).contains(&version)
        || parties.kind != KIND_PUBLISH
    {
        return None;
    }
    let seq = take_u64(&mut buf)?;
    let count = take_u16(&mut buf)?;
    let mut records = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        records.push(decode_record(&mut buf, version, false, false, now)?.0);
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

/// One record of sync `version` (with its stamp, if `stamps` allows one: link frames; with
/// the shared groups it names, if `groups` allows them), received at `now`; `None` when it is
/// malformed.
fn decode_record(
    buf: &mut &[u8],
    version: u8,
    stamps: bool,
    groups: bool,
    now: Instant,
) -> Option<(Message, Option<Stamp>, GroupList)> {
    let mut known_flags = if version >= 2 {
        0b111 | FLAG_EXPIRY | FLAG_PROPERTIES
    } else {
        0b111
    };
    if stamps {
        known_flags |= FLAG_STAMP;
    }
    if groups {
        known_flags |= FLAG_GROUPS;
    }
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
    let stamp = if flags & FLAG_STAMP != 0 {
        let ms = take_u64(buf)?;
        let count = take_u32(buf)?;
        let node_len = usize::from(take_u8(buf)?);
        // Only retained writes are stamped, always by a node with an id.
        if !retain || node_len == 0 {
            return None;
        }
        Some(Stamp {
            ms,
            count,
            node: take(buf, node_len)?,
        })
    } else {
        None
    };
    let groups = if flags & FLAG_GROUPS != 0 {
        decode_groups(buf)?
    } else {
        GroupList::new()
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
    if !properties.is_empty() && !could_be_published(&properties, &payload) {
        return None;
    }
    let mut message = Message::new(topic, payload, qos, retain);
    message.properties = properties;
    // Beyond what an Instant can hold (over a century): as good as never.
    message.expires_at = expiry.and_then(|secs| now.checked_add(Duration::from_secs(secs.into())));
    Some((message, stamp, groups))
}

/// A record's list of shared groups: `[count u16, not 0]` then `[name length u16][name][filter
/// length u16][filter]` each, a name as a SUBSCRIBE could give it and a valid filter (or
/// `None`: the record is malformed).
fn decode_groups(buf: &mut &[u8]) -> Option<GroupList> {
    let count = take_u16(buf)?;
    if count == 0 {
        return None;
    }
    // Each entry takes 6 bytes at least: the capacity never exceeds what the frame can hold.
    let mut groups = GroupList::with_capacity(usize::from(count).min(buf.len() / 6));
    for _ in 0..count {
        let name_len = usize::from(take_u16(buf)?);
        let name = take(buf, name_len)?;
        let filter_len = usize::from(take_u16(buf)?);
        let filter = take(buf, filter_len)?;
        let name_ok = topic::is_valid_group_name(&name);
        let filter_ok = std::str::from_utf8(&filter)
            .is_ok_and(|f| topic::is_valid_filter(f) && !f.contains('\0'));
        if !name_ok || !filter_ok {
            return None;
        }
        groups.push((name, filter));
    }
    Some(groups)
}

/// The record a link frame of kind [`FRAME_PUBLISH`] or [`FRAME_RETAINED`] holds, and its
/// stamp, received at `now`; a stamp (or a list of groups) is malformed unless this node reads
/// `stamps` (sync version [`STAMP_VERSION`]), as it was in version 3.
pub(crate) fn decode_frame_record(
    body: &[u8],
    stamps: bool,
    now: Instant,
) -> Option<(Message, Option<Stamp>)> {
    decode_publish_frame(body, stamps, now).map(|(message, stamp, _)| (message, stamp))
}

/// The record a link frame of kind [`FRAME_PUBLISH`] holds, its stamp and the shared groups it
/// names, received at `now` (see [`decode_frame_record`] for `stamps`).
pub(crate) fn decode_publish_frame(
    body: &[u8],
    stamps: bool,
    now: Instant,
) -> Option<(Message, Option<Stamp>, GroupList)> {
    let mut buf = body;
    let record = decode_record(&mut buf, 2, stamps, stamps, now)?;
    (!buf.has_remaining()).then_some(record)
}

/// A version 3 datagram, authenticated and parsed.
#[derive(Debug)]
pub(crate) enum LinkDatagram<'a> {
    Segment {
        control: bool,
        link: u64,
        seq: u64,
        /// Every segment up to this one had been acknowledged when it was sent.
        sender_acked: u64,
        /// Read in place: the receiver copies it once, into the link's stream.
        data: &'a [u8],
    },
    Ack {
        control: bool,
        ack: Ack,
    },
}

/// Parses an authenticated version 3 body; `None` when it is not a well-formed segment or
/// acknowledgement, or this node reads no version 3 (`newest`).
pub(crate) fn decode_link(body: &[u8], newest: u8) -> Option<(Parties, LinkDatagram<'_>)> {
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
                data: buf,
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
pub(in crate::cluster) fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
}

pub(in crate::cluster) fn take_u16(buf: &mut &[u8]) -> Option<u16> {
    (buf.remaining() >= 2).then(|| buf.get_u16())
}

pub(in crate::cluster) fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    (buf.remaining() >= 4).then(|| buf.get_u32())
}

pub(in crate::cluster) fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    (buf.remaining() >= 8).then(|| buf.get_u64())
}

/// The next `len` bytes, copied: records outlive the receive buffer.
pub(in crate::cluster) fn take(buf: &mut &[u8], len: usize) -> Option<Bytes> {
    if buf.remaining() < len {
        return None;
    }
    let bytes = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    Some(bytes)
}
