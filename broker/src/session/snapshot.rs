//! A session as bytes: what moves to another node when its client reconnects there (see
//! [`crate::cluster::handover`]) and what the data directory keeps.
//!
//! [`SessionSnapshot`] is an offline session taken out of its registry: the client id, the user
//! it belongs to, its expiry, its subscriptions with their options, the QoS 1/2 messages in
//! flight (resent with DUP by the connection that resumes it), the QoS 2 packet ids awaiting
//! PUBREL, the retained messages still owed, the queued messages and a delayed will.
//! [`SessionSnapshot::encode`] writes it and [`SessionSnapshot::decode`] reads it back,
//! checking everything a client's packets would have been checked for: bytes from a peer or a
//! file never reach a client unchecked, and a malformed snapshot is an error, never a panic.
//!
//! Format (integers big-endian), version 2 (version 1, which nodes of sync version 5 read and
//! write, ends after the will):
//! ```text
//! [version u8 = 2][client id: str16][owner: u8 0 | 1 str16][expiry secs u32 (u32::MAX never)]
//! [subscriptions u32] each [raw filter str16][qos u8][options u8: bit 0 no local,
//!     bit 1 retain as published][identifier u32]
//! [qos 2 ids awaiting PUBREL u16] each [packet id u16]
//! [retained owed u32] each [filter str16][qos u8][identifier u32][after: u8 0 | 1 str16]
//! [in flight u32] each [packet id u16][u8 0 PUBLISH sent (a delivery follows) | 1 PUBREL sent]
//! [queued u32] each [delivery]
//! [will: u8 0 | 1 [message][delay secs u32][expiry: u8 0 | 1 secs u32]]
//! [connected ms u64][offline: u8 0 | 1 ms u64]                      (version 2)
//! delivery: [qos u8][retain u8][identifiers u8] each [identifier u32] then [message]
//! message: [qos u8][retain u8][topic str16][properties: bytes32][payload: bytes32]
//!     [expiry: u8 0 | 1 ms left u64]
//! str16: [length u16][UTF-8]   bytes32: [length u32][bytes]
//! ```
//! A message's expiry is kept as what is left of it when the snapshot was taken; the reader
//! counts it down again from when it reads (a file's reader also subtracts the time the file
//! lay on disk, see the store).
//!
//! Version 2 adds when its client last connected (wall-clock ms: of two copies of a session,
//! the one its client used last wins, see [`super::transfer`]) and how long its client had
//! been gone, so that a session that moves keeps counting its expiry and its will's delay
//! rather than starting them over.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{DelayedWill, InFlight, RetainedOwed, SessionExpiry};
use crate::codec::properties::could_be_published;
use crate::codec::QoS;
use crate::router::{Delivery, Grant, Message, SubscriptionIds};
use crate::topic::{self, Subscription};

/// The version written to the data directory and to peers that read it (see
/// [`SessionSnapshot::encode_as`]).
pub const VERSION: u8 = 2;
/// The version of nodes of sync version 5.
pub const VERSION_1: u8 = 1;

/// One subscription of a snapshot: the filter as the client sent it (`$share/...` included)
/// and what it was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSubscription {
    pub filter: String,
    pub grant: Grant,
}

/// An offline session, out of its registry.
#[derive(Debug)]
pub struct SessionSnapshot {
    pub client_id: String,
    /// The user the session belongs to (access control on).
    pub owner: Option<String>,
    pub expiry: SessionExpiry,
    pub subscriptions: Vec<SnapshotSubscription>,
    pub incoming_qos2: Vec<u16>,
    pub retained: Vec<RetainedOwed>,
    /// In the order they were sent, which is the order they are resent in.
    pub in_flight: Vec<(u16, InFlight)>,
    pub queued: Vec<Delivery>,
    pub will: Option<DelayedWill>,
    /// When its client last connected, on the wall clock (ms since the epoch; 0: not known,
    /// from a version 1 snapshot).
    pub connected_ms: u64,
    /// How long its client had been gone when the snapshot was taken; `None`: connected then
    /// (a record of the data directory, whose header says since when), or not known (version 1).
    pub offline_for: Option<Duration>,
    /// The version it was read in ([`VERSION`] for one taken here): a version 1 snapshot does
    /// not say when its client connected.
    pub version: u8,
}

/// What is wrong with a snapshot's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("session snapshot of unknown version {0}")]
    Version(u8),
    #[error("session snapshot cut short in {0}")]
    Truncated(&'static str),
    #[error("session snapshot has an invalid {0}")]
    Invalid(&'static str),
    #[error("session snapshot has {0} bytes after its end")]
    Trailing(usize),
}

impl SessionSnapshot {
    /// A session of `client_id` with nothing in it (no expiry, no subscription, no message,
    /// no will, its connection time not known), for tests to fill in.
    #[cfg(test)]
    pub fn empty(client_id: &str) -> SessionSnapshot {
        SessionSnapshot {
            client_id: client_id.to_string(),
            owner: None,
            expiry: SessionExpiry::ZERO,
            subscriptions: Vec::new(),
            incoming_qos2: Vec::new(),
            retained: Vec::new(),
            in_flight: Vec::new(),
            queued: Vec::new(),
            will: None,
            connected_ms: 0,
            offline_for: None,
            version: VERSION,
        }
    }

    /// Forgets the numbers its messages had in the journal of the copy it was taken from: the
    /// copy it is put into numbers and writes them anew (see [`crate::store`]).
    pub fn forget_journal(&mut self) {
        for (_, state) in &mut self.in_flight {
            match state {
                InFlight::Published(delivery) | InFlight::Unsent(delivery) => {
                    delivery.stored = None
                }
                InFlight::Released(stored) => *stored = None,
            }
        }
        for delivery in &mut self.queued {
            delivery.stored = None;
        }
    }

    /// The snapshot's bytes in the newest version. Messages' expiry is written as what is left
    /// at `now`.
    pub fn encode(&self, now: Instant) -> BytesMut {
        self.encode_as(now, VERSION)
    }

    /// The snapshot's bytes in `version` (1 or 2: a peer of sync version 5 reads only 1).
    pub fn encode_as(&self, now: Instant, version: u8) -> BytesMut {
        let version = version.clamp(VERSION_1, VERSION);
        let mut out = BytesMut::new();
        out.put_u8(version);
        put_str16(&mut out, &self.client_id);
        match &self.owner {
            Some(owner) => {
                out.put_u8(1);
                put_str16(&mut out, owner);
            }
            None => out.put_u8(0),
        }
        out.put_u32(self.expiry.0);
        put_count32(&mut out, self.subscriptions.len());
        for subscription in &self.subscriptions {
            put_str16(&mut out, &subscription.filter);
            let grant = &subscription.grant;
            out.put_u8(grant.qos as u8);
            out.put_u8(u8::from(grant.no_local) | (u8::from(grant.retain_as_published) << 1));
            out.put_u32(grant.identifier);
        }
        // At most 65,535 packet ids exist.
        out.put_u16(u16::try_from(self.incoming_qos2.len()).unwrap_or(u16::MAX));
        for id in self.incoming_qos2.iter().take(usize::from(u16::MAX)) {
            out.put_u16(*id);
        }
        put_count32(&mut out, self.retained.len());
        for owed in &self.retained {
            put_str16(&mut out, &owed.filter);
            out.put_u8(owed.qos as u8);
            out.put_u32(owed.identifier);
            match &owed.after {
                Some(after) => {
                    out.put_u8(1);
                    put_bytes16(&mut out, after);
                }
                None => out.put_u8(0),
            }
        }
        put_count32(&mut out, self.in_flight.len());
        for (id, state) in &self.in_flight {
            out.put_u16(*id);
            match state {
                InFlight::Published(delivery) | InFlight::Unsent(delivery) => {
                    out.put_u8(0);
                    put_delivery(&mut out, delivery, now);
                }
                InFlight::Released(_) => out.put_u8(1),
            }
        }
        put_count32(&mut out, self.queued.len());
        for delivery in &self.queued {
            put_delivery(&mut out, delivery, now);
        }
        match &self.will {
            Some(will) => {
                out.put_u8(1);
                put_message(&mut out, &will.message, now);
                out.put_u32(u32::try_from(will.delay.as_secs()).unwrap_or(u32::MAX));
                put_optional_secs(&mut out, will.expiry);
            }
            None => out.put_u8(0),
        }
        if version >= 2 {
            out.put_u64(self.connected_ms);
            match self.offline_for {
                Some(offline_for) => {
                    out.put_u8(1);
                    out.put_u64(u64::try_from(offline_for.as_millis()).unwrap_or(u64::MAX));
                }
                None => out.put_u8(0),
            }
        }
        out
    }

    /// Reads a snapshot written by [`SessionSnapshot::encode`]; messages' expiry counts from
    /// `now`, less `aged` (how long the bytes waited since they were written).
    pub fn decode(
        bytes: &[u8],
        now: Instant,
        aged: Duration,
    ) -> Result<SessionSnapshot, SnapshotError> {
        let mut buf = bytes;
        let version = take_u8(&mut buf, "version")?;
        if !(VERSION_1..=VERSION).contains(&version) {
            return Err(SnapshotError::Version(version));
        }
        let client_id = take_str16(&mut buf, "client id")?;
        if client_id.contains('\0') {
            return Err(SnapshotError::Invalid("client id"));
        }
        let owner = match take_u8(&mut buf, "owner")? {
            0 => None,
            1 => Some(take_str16(&mut buf, "owner")?),
            _ => return Err(SnapshotError::Invalid("owner")),
        };
        let expiry = SessionExpiry(take_u32(&mut buf, "expiry")?);
        let count = take_count(&mut buf, 8, "subscriptions")?;
        let mut subscriptions = Vec::with_capacity(count);
        let mut seen = BTreeMap::new();
        for _ in 0..count {
            let filter = take_str16(&mut buf, "subscription")?;
            if Subscription::parse(&filter).is_none() || filter.contains('\0') {
                return Err(SnapshotError::Invalid("subscription filter"));
            }
            let qos = take_qos(&mut buf, "subscription")?;
            let options = take_u8(&mut buf, "subscription")?;
            if options & !0b11 != 0 {
                return Err(SnapshotError::Invalid("subscription options"));
            }
            let identifier = take_u32(&mut buf, "subscription")?;
            if identifier > crate::codec::MAX_REMAINING_LENGTH as u32 {
                return Err(SnapshotError::Invalid("subscription identifier"));
            }
            if seen.insert(filter.clone(), ()).is_some() {
                return Err(SnapshotError::Invalid("subscription (a filter twice)"));
            }
            subscriptions.push(SnapshotSubscription {
                filter,
                grant: Grant {
                    qos,
                    no_local: options & 0b1 != 0,
                    retain_as_published: options & 0b10 != 0,
                    identifier,
                },
            });
        }
        let count = usize::from(take_u16(&mut buf, "QoS 2 ids")?);
        let mut incoming_qos2 = Vec::with_capacity(count.min(buf.len() / 2));
        for _ in 0..count {
            let id = take_u16(&mut buf, "QoS 2 ids")?;
            if id == 0 {
                return Err(SnapshotError::Invalid("packet id"));
            }
            incoming_qos2.push(id);
        }
        let count = take_count(&mut buf, 8, "retained owed")?;
        let mut retained = VecDeque::with_capacity(count);
        for _ in 0..count {
            let filter = take_str16(&mut buf, "retained owed")?;
            if !topic::is_valid_filter(&filter) || filter.contains('\0') {
                return Err(SnapshotError::Invalid("retained owed filter"));
            }
            let qos = take_qos(&mut buf, "retained owed")?;
            let identifier = take_u32(&mut buf, "retained owed")?;
            let after = match take_u8(&mut buf, "retained owed")? {
                0 => None,
                1 => Some(take_bytes16(&mut buf, "retained owed")?),
                _ => return Err(SnapshotError::Invalid("retained owed")),
            };
            retained.push_back(RetainedOwed {
                filter: filter.into(),
                qos,
                identifier,
                after,
            });
        }
        let count = take_count(&mut buf, 3, "in-flight messages")?;
        if count > usize::from(u16::MAX) {
            return Err(SnapshotError::Invalid("in-flight count"));
        }
        let mut in_flight = Vec::with_capacity(count);
        let mut ids = std::collections::HashSet::with_capacity(count);
        for _ in 0..count {
            let id = take_u16(&mut buf, "in-flight messages")?;
            if id == 0 || !ids.insert(id) {
                return Err(SnapshotError::Invalid("in-flight packet id"));
            }
            let state = match take_u8(&mut buf, "in-flight messages")? {
                0 => {
                    let delivery = take_delivery(&mut buf, now, aged)?;
                    if delivery.qos == QoS::AtMostOnce {
                        return Err(SnapshotError::Invalid("in-flight QoS 0 message"));
                    }
                    InFlight::Published(delivery)
                }
                1 => InFlight::Released(None),
                _ => return Err(SnapshotError::Invalid("in-flight state")),
            };
            in_flight.push((id, state));
        }
        let count = take_count(&mut buf, 16, "queued messages")?;
        let mut queued = Vec::with_capacity(count);
        for _ in 0..count {
            queued.push(take_delivery(&mut buf, now, aged)?);
        }
        let will = match take_u8(&mut buf, "will")? {
            0 => None,
            1 => {
                let message = take_message(&mut buf, now, aged, "will")?;
                let delay = Duration::from_secs(u64::from(take_u32(&mut buf, "will")?));
                let expiry = take_optional_secs(&mut buf, "will")?;
                Some(DelayedWill {
                    message: Box::new(message),
                    expiry,
                    delay,
                })
            }
            _ => return Err(SnapshotError::Invalid("will")),
        };
        let (connected_ms, offline_for) = if version >= 2 {
            let connected_ms = take_u64(&mut buf, "connected time")?;
            let offline_for = match take_u8(&mut buf, "offline time")? {
                0 => None,
                1 => Some(Duration::from_millis(take_u64(&mut buf, "offline time")?)),
                _ => return Err(SnapshotError::Invalid("offline time")),
            };
            (connected_ms, offline_for)
        } else {
            (0, None)
        };
        if !buf.is_empty() {
            return Err(SnapshotError::Trailing(buf.len()));
        }
        Ok(SessionSnapshot {
            client_id,
            owner,
            expiry,
            subscriptions,
            incoming_qos2,
            retained: retained.into(),
            in_flight,
            queued,
            will,
            connected_ms,
            offline_for,
            version,
        })
    }
}

/// Deliveries as bytes, `[count u32]` then each as in a snapshot: the messages that reach a
/// session on the node it is leaving (see [`crate::cluster::handover`]).
pub fn encode_deliveries(deliveries: &[Delivery], now: Instant) -> BytesMut {
    let mut out = BytesMut::new();
    put_count32(&mut out, deliveries.len());
    for delivery in deliveries {
        put_delivery(&mut out, delivery, now);
    }
    out
}

/// Reads what [`encode_deliveries`] wrote, checked as a snapshot's.
pub fn decode_deliveries(bytes: &[u8], now: Instant) -> Result<Vec<Delivery>, SnapshotError> {
    let mut buf = bytes;
    let count = take_count(&mut buf, 16, "deliveries")?;
    let mut deliveries = Vec::with_capacity(count);
    for _ in 0..count {
        deliveries.push(take_delivery(&mut buf, now, Duration::ZERO)?);
    }
    if !buf.is_empty() {
        return Err(SnapshotError::Trailing(buf.len()));
    }
    Ok(deliveries)
}

fn put_count32(out: &mut BytesMut, count: usize) {
    out.put_u32(u32::try_from(count).unwrap_or(u32::MAX));
}

/// Strings in a session came from MQTT packets, whose strings are at most 65,535 bytes.
fn put_str16(out: &mut BytesMut, text: &str) {
    put_bytes16(out, text.as_bytes());
}

fn put_bytes16(out: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}

fn put_bytes32(out: &mut BytesMut, bytes: &[u8]) {
    // A message is at most 256 MB (MQTT's largest packet).
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_optional_secs(out: &mut BytesMut, value: Option<Duration>) {
    match value {
        Some(value) => {
            out.put_u8(1);
            out.put_u32(u32::try_from(value.as_secs()).unwrap_or(u32::MAX));
        }
        None => out.put_u8(0),
    }
}

fn put_delivery(out: &mut BytesMut, delivery: &Delivery, now: Instant) {
    out.put_u8(delivery.qos as u8);
    out.put_u8(u8::from(delivery.retain));
    // MQTT 5 allows one identifier per matching subscription; a session has at most -msc.
    let ids = &delivery.subscription_ids[..delivery.subscription_ids.len().min(255)];
    out.put_u8(ids.len() as u8);
    for id in ids {
        out.put_u32(*id);
    }
    put_message(out, &delivery.message, now);
}

fn put_message(out: &mut BytesMut, message: &Message, now: Instant) {
    out.put_u8(message.qos as u8);
    out.put_u8(u8::from(message.retain));
    put_bytes16(out, &message.topic);
    put_bytes32(out, &message.properties);
    put_bytes32(out, &message.payload);
    match message.expires_at {
        Some(at) => {
            out.put_u8(1);
            // An expired message is written with nothing left, and expires on arrival.
            out.put_u64(u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0));
        }
        None => out.put_u8(0),
    }
}

fn take_u8(buf: &mut &[u8], what: &'static str) -> Result<u8, SnapshotError> {
    if buf.remaining() < 1 {
        return Err(SnapshotError::Truncated(what));
    }
    Ok(buf.get_u8())
}

fn take_u16(buf: &mut &[u8], what: &'static str) -> Result<u16, SnapshotError> {
    if buf.remaining() < 2 {
        return Err(SnapshotError::Truncated(what));
    }
    Ok(buf.get_u16())
}

fn take_u32(buf: &mut &[u8], what: &'static str) -> Result<u32, SnapshotError> {
    if buf.remaining() < 4 {
        return Err(SnapshotError::Truncated(what));
    }
    Ok(buf.get_u32())
}

fn take_u64(buf: &mut &[u8], what: &'static str) -> Result<u64, SnapshotError> {
    if buf.remaining() < 8 {
        return Err(SnapshotError::Truncated(what));
    }
    Ok(buf.get_u64())
}

/// A u32 count of items that take at least `min_item` bytes each: one that the rest of the
/// bytes cannot hold is refused before anything is allocated for it.
fn take_count(
    buf: &mut &[u8],
    min_item: usize,
    what: &'static str,
) -> Result<usize, SnapshotError> {
    let count =
        usize::try_from(take_u32(buf, what)?).map_err(|_| SnapshotError::Truncated(what))?;
    if count.saturating_mul(min_item) > buf.len() {
        return Err(SnapshotError::Truncated(what));
    }
    Ok(count)
}

fn take_slice<'a>(
    buf: &mut &'a [u8],
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], SnapshotError> {
    if buf.len() < len {
        return Err(SnapshotError::Truncated(what));
    }
    let (taken, rest) = buf.split_at(len);
    *buf = rest;
    Ok(taken)
}

fn take_bytes16(buf: &mut &[u8], what: &'static str) -> Result<Bytes, SnapshotError> {
    let len = usize::from(take_u16(buf, what)?);
    Ok(Bytes::copy_from_slice(take_slice(buf, len, what)?))
}

fn take_bytes32(buf: &mut &[u8], what: &'static str) -> Result<Bytes, SnapshotError> {
    let len = usize::try_from(take_u32(buf, what)?).map_err(|_| SnapshotError::Truncated(what))?;
    Ok(Bytes::copy_from_slice(take_slice(buf, len, what)?))
}

fn take_str16(buf: &mut &[u8], what: &'static str) -> Result<String, SnapshotError> {
    let len = usize::from(take_u16(buf, what)?);
    let bytes = take_slice(buf, len, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| SnapshotError::Invalid(what))
}

fn take_qos(buf: &mut &[u8], what: &'static str) -> Result<QoS, SnapshotError> {
    QoS::from_u8(take_u8(buf, what)?).ok_or(SnapshotError::Invalid(what))
}

fn take_flag(buf: &mut &[u8], what: &'static str) -> Result<bool, SnapshotError> {
    match take_u8(buf, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(SnapshotError::Invalid(what)),
    }
}

fn take_optional_secs(
    buf: &mut &[u8],
    what: &'static str,
) -> Result<Option<Duration>, SnapshotError> {
    Ok(if take_flag(buf, what)? {
        Some(Duration::from_secs(u64::from(take_u32(buf, what)?)))
    } else {
        None
    })
}

fn take_delivery(buf: &mut &[u8], now: Instant, aged: Duration) -> Result<Delivery, SnapshotError> {
    let qos = take_qos(buf, "delivery")?;
    let retain = take_flag(buf, "delivery")?;
    let count = usize::from(take_u8(buf, "delivery")?);
    let mut subscription_ids = SubscriptionIds::new();
    for _ in 0..count {
        let id = take_u32(buf, "delivery")?;
        if id == 0 || id > crate::codec::MAX_REMAINING_LENGTH as u32 {
            return Err(SnapshotError::Invalid("subscription identifier"));
        }
        subscription_ids.push(id);
    }
    let message = take_message(buf, now, aged, "delivery")?;
    if qos > message.qos {
        return Err(SnapshotError::Invalid("delivery QoS above the message's"));
    }
    Ok(Delivery {
        message: Arc::new(message),
        qos,
        retain,
        subscription_ids,
        stored: None,
    })
}

fn take_message(
    buf: &mut &[u8],
    now: Instant,
    aged: Duration,
    what: &'static str,
) -> Result<Message, SnapshotError> {
    let qos = take_qos(buf, what)?;
    let retain = take_flag(buf, what)?;
    let topic = take_bytes16(buf, what)?;
    let properties = take_bytes32(buf, what)?;
    let payload = take_bytes32(buf, what)?;
    let expires_at = if take_flag(buf, what)? {
        let left = Duration::from_millis(take_u64(buf, what)?).saturating_sub(aged);
        // Beyond what an Instant can hold (centuries): as good as never.
        now.checked_add(left)
    } else {
        None
    };
    // What a client could have published: a valid topic name in UTF-8 without U+0000, and
    // properties a PUBLISH could carry.
    if !topic::is_valid_topic_name(&topic)
        || topic.contains(&0)
        || std::str::from_utf8(&topic).is_err()
    {
        return Err(SnapshotError::Invalid("message topic"));
    }
    if !properties.is_empty() && !could_be_published(&properties, &payload) {
        return Err(SnapshotError::Invalid("message properties"));
    }
    let mut message = Message::new(topic, payload, qos, retain);
    message.properties = properties;
    message.expires_at = expires_at;
    Ok(message)
}

#[cfg(test)]
mod tests;
