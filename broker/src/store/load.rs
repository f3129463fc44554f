//! Reading the data directory back at start-up: retained messages, and each session's record
//! joined with its deliveries (in journal order: those sent with a packet id are in flight,
//! the rest queued), the PUBRECs it sent and the QoS 2 ids it awaits PUBREL for. Records that
//! do not decode, and records of sessions that have no session record (it ended while they were
//! being removed), are removed and counted; of two incarnations of one client id only the one
//! written last is kept.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};

use super::journal::{PUBLISHED, RELEASED};
use super::keys::{age, journal_order, session_key, split_key, wall_ms};
use super::writer::Space;
use super::Store;
use crate::router::{Delivery, Message, Stamp};
use crate::session::{InFlight, SessionSnapshot};

/// A retained message read back, with its stamp when it was written in a cluster.
pub struct RetainedRecord {
    pub message: Arc<Message>,
    pub stamp: Option<Stamp>,
}

/// A session read back.
pub struct LoadedSession {
    pub snapshot: SessionSnapshot,
    pub incarnation: u64,
    /// The journal number its next delivery takes.
    pub next_seq: NonZeroU32,
    /// How long its client had been gone when its record was last written, if it had.
    pub offline_for: Option<Duration>,
}

/// What [`Store::load`] read.
pub struct Loaded {
    pub retained: Vec<RetainedRecord>,
    pub sessions: Vec<LoadedSession>,
    /// Records that did not decode, or belonged to no session (removed).
    pub skipped: usize,
}

/// A retained message's record: `[written ms u64][stamp: u8 0 | 1 [ms u64][count u32]
/// [node: length u16, bytes]]` then the message as a snapshot's delivery.
pub(super) fn encode_retained(message: &Message, stamp: Option<&Stamp>, now: Instant) -> Vec<u8> {
    let mut value = Vec::with_capacity(64 + message.topic.len() + message.payload.len());
    value.put_u64(wall_ms());
    match stamp {
        Some(stamp) => {
            value.put_u8(1);
            value.put_u64(stamp.ms);
            value.put_u32(stamp.count);
            let node = &stamp.node[..stamp.node.len().min(usize::from(u16::MAX))];
            value.put_u16(node.len() as u16);
            value.put_slice(node);
        }
        None => value.put_u8(0),
    }
    let mut copy = Message::new(
        message.topic.clone(),
        message.payload.clone(),
        message.qos,
        true,
    );
    copy.properties = message.properties.clone();
    copy.expires_at = message.expires_at;
    let delivery = Delivery::new(Arc::new(copy), message.qos, true);
    value.extend_from_slice(&crate::session::snapshot::encode_deliveries(
        std::slice::from_ref(&delivery),
        now,
    ));
    value
}

fn decode_retained(value: &[u8]) -> Option<RetainedRecord> {
    let mut buf = value;
    if buf.remaining() < 9 {
        return None;
    }
    let written = buf.get_u64();
    let stamp = match buf.get_u8() {
        0 => None,
        1 => {
            if buf.remaining() < 14 {
                return None;
            }
            let ms = buf.get_u64();
            let count = buf.get_u32();
            let len = usize::from(buf.get_u16());
            if buf.remaining() < len {
                return None;
            }
            let node = Bytes::copy_from_slice(&buf[..len]);
            buf.advance(len);
            Some(Stamp { ms, count, node })
        }
        _ => return None,
    };
    let now = Instant::now();
    let then = now.checked_sub(age(written)).unwrap_or(now);
    let delivery = crate::session::snapshot::decode_deliveries(buf, then)
        .ok()?
        .into_iter()
        .next()?;
    if delivery.message.is_expired(now) || delivery.message.payload.is_empty() {
        return None;
    }
    Some(RetainedRecord {
        message: delivery.message,
        stamp,
    })
}

/// A session's record: `[written ms u64][offline since ms u64, 0 while connected]` then the
/// session without its deliveries. Returns when it was written, how long its client has been
/// gone (if it had) and the session.
fn decode_session(value: &[u8]) -> Option<(u64, Option<Duration>, SessionSnapshot)> {
    let (written, rest) = value.split_first_chunk::<8>()?;
    let (offline_since, rest) = rest.split_first_chunk::<8>()?;
    let written = u64::from_be_bytes(*written);
    let offline_since = u64::from_be_bytes(*offline_since);
    let offline_for = (offline_since != 0).then(|| age(offline_since));
    let snapshot = SessionSnapshot::decode(rest, Instant::now(), age(written)).ok()?;
    Some((written, offline_for, snapshot))
}

/// A session's parts as they are read, keyed by (client id, incarnation).
#[derive(Default)]
struct Parts {
    record: Option<(u64, Option<Duration>, SessionSnapshot)>,
    deliveries: BTreeMap<u32, Delivery>,
    sent: HashMap<u32, (u16, u8)>,
    awaiting: Vec<u16>,
}

pub(super) fn load(store: &Store) -> fjall::Result<Loaded> {
    let mut skipped = 0;
    let mut garbage: Vec<(Space, fjall::UserKey)> = Vec::new();

    let mut retained = Vec::new();
    for guard in store.spaces.retained.iter() {
        let (key, value) = guard.into_inner()?;
        match decode_retained(&value) {
            Some(record) if *record.message.topic == *key => retained.push(record),
            _ => {
                skipped += 1;
                garbage.push((Space::Retained, key));
            }
        }
    }

    let mut parts: HashMap<(String, u64), Parts> = HashMap::new();
    for guard in store.spaces.sessions.iter() {
        let (key, value) = guard.into_inner()?;
        let decoded = split_key::<0>(&key).and_then(|(client_id, incarnation, _)| {
            let (written, offline_for, snapshot) = decode_session(&value)?;
            (snapshot.client_id == client_id).then_some((
                incarnation,
                written,
                offline_for,
                snapshot,
            ))
        });
        match decoded {
            Some((incarnation, written, offline_for, snapshot)) => {
                let id = (snapshot.client_id.clone(), incarnation);
                parts.entry(id).or_default().record = Some((written, offline_for, snapshot));
            }
            None => {
                skipped += 1;
                garbage.push((Space::Sessions, key));
            }
        }
    }
    for guard in store.spaces.deliveries.iter() {
        let (key, value) = guard.into_inner()?;
        let read = split_key::<4>(&key).and_then(|(client_id, incarnation, seq)| {
            let delivery = super::decode_delivery(&value)?;
            Some((
                (client_id.to_string(), incarnation),
                u32::from_be_bytes(seq),
                delivery,
            ))
        });
        match read {
            Some((id, seq, delivery)) if parts.get(&id).is_some_and(|p| p.record.is_some()) => {
                if let Some(p) = parts.get_mut(&id) {
                    p.deliveries.insert(seq, delivery);
                }
            }
            _ => {
                skipped += 1;
                garbage.push((Space::Deliveries, key));
            }
        }
    }
    for guard in store.spaces.sent.iter() {
        let (key, value) = guard.into_inner()?;
        let read = split_key::<4>(&key).and_then(|(client_id, incarnation, seq)| {
            let [high, low, state] = *value else {
                return None;
            };
            (state == PUBLISHED || state == RELEASED).then_some((
                (client_id.to_string(), incarnation),
                u32::from_be_bytes(seq),
                u16::from_be_bytes([high, low]),
                state,
            ))
        });
        match read {
            Some((id, seq, packet_id, state)) if packet_id != 0 => {
                if let Some(p) = parts.get_mut(&id).filter(|p| p.record.is_some()) {
                    p.sent.insert(seq, (packet_id, state));
                    continue;
                }
                skipped += 1;
                garbage.push((Space::Sent, key));
            }
            _ => {
                skipped += 1;
                garbage.push((Space::Sent, key));
            }
        }
    }
    for guard in store.spaces.awaiting.iter() {
        let (key, _) = guard.into_inner()?;
        let read = split_key::<2>(&key).map(|(client_id, incarnation, id)| {
            ((client_id.to_string(), incarnation), u16::from_be_bytes(id))
        });
        match read {
            Some((id, packet_id)) if packet_id != 0 => {
                if let Some(p) = parts.get_mut(&id).filter(|p| p.record.is_some()) {
                    p.awaiting.push(packet_id);
                    continue;
                }
                skipped += 1;
                garbage.push((Space::Awaiting, key));
            }
            _ => {
                skipped += 1;
                garbage.push((Space::Awaiting, key));
            }
        }
    }

    // Of two incarnations of a client id (the older one's removal cut short), the later.
    let mut latest: HashMap<String, (u64, u64)> = HashMap::new();
    for ((client_id, incarnation), p) in &parts {
        if let Some((written, _, _)) = &p.record {
            let entry = latest
                .entry(client_id.clone())
                .or_insert((*written, *incarnation));
            if (*written, *incarnation) > *entry {
                *entry = (*written, *incarnation);
            }
        }
    }
    let mut stale: Vec<(String, u64)> = Vec::new();
    let mut orphans: Vec<Vec<u8>> = Vec::new();
    let mut sessions = Vec::new();
    for ((client_id, incarnation), p) in parts {
        let Some((_, offline_for, mut snapshot)) = p.record else {
            continue;
        };
        if latest.get(&client_id).map(|(_, i)| *i) != Some(incarnation) {
            stale.push((client_id, incarnation));
            continue;
        }
        let mut seqs: Vec<u32> = p.deliveries.keys().chain(p.sent.keys()).copied().collect();
        seqs.sort_unstable();
        seqs.dedup();
        journal_order(&mut seqs);
        let mut deliveries = p.deliveries;
        snapshot.in_flight.clear();
        snapshot.queued.clear();
        for seq in &seqs {
            let Some(stored) = NonZeroU32::new(*seq) else {
                continue;
            };
            let delivery = deliveries.remove(seq).map(|mut d| {
                d.stored = Some(stored);
                d
            });
            match (p.sent.get(seq), delivery) {
                (Some(&(packet_id, RELEASED)), _) => snapshot
                    .in_flight
                    .push((packet_id, InFlight::Released(Some(stored)))),
                (Some(&(packet_id, _)), Some(delivery)) => snapshot
                    .in_flight
                    .push((packet_id, InFlight::Published(delivery))),
                (None, Some(delivery)) => snapshot.queued.push(delivery),
                // Sent, and its message gone: it was acknowledged while the sent record's
                // removal was cut short.
                (Some(_), None) => orphans.push(super::keys::delivery_key(
                    &snapshot.client_id,
                    incarnation,
                    stored,
                )),
                (None, None) => {}
            }
        }
        snapshot.incoming_qos2 = p.awaiting;
        let next = seqs.last().map_or(1, |last| last.wrapping_add(1).max(1));
        sessions.push(LoadedSession {
            snapshot,
            incarnation,
            next_seq: NonZeroU32::new(next).unwrap_or(NonZeroU32::MIN),
            offline_for,
        });
    }

    for (space, key) in garbage {
        store.remove(space, key.to_vec());
    }
    skipped += orphans.len();
    for key in orphans {
        store.remove(Space::Sent, key);
    }
    for (client_id, incarnation) in stale {
        let prefix = session_key(&client_id, incarnation);
        store.remove(Space::Sessions, prefix.clone());
        store.remove_prefix(Space::Deliveries, prefix.clone());
        store.remove_prefix(Space::Sent, prefix.clone());
        store.remove_prefix(Space::Awaiting, prefix);
    }
    Ok(Loaded {
        retained,
        sessions,
        skipped,
    })
}
