//! Forwarding PUBLISH messages between nodes over UDP (`-csp`).
//!
//! After a client's PUBLISH (or a will) is routed locally, [`Forwarder::forward`] puts it on a
//! bounded queue without waiting; a full queue drops and counts, so peers can never slow local
//! delivery. The sender task batches what is queued into datagrams and sends each to every
//! member that is up, from one socket (UDP does not block per peer, so a dead peer stalls
//! nobody). The receiver task authenticates, checks the origin and the replay window, and hands
//! the records to the local router; it never forwards them again (one hop, no loops).
//!
//! Wire format (all integers big-endian):
//! ```text
//! [version = 1][kind = 1][origin id length: u8][origin id][origin boot epoch: u64]
//! [destination id length: u8][destination id][destination boot epoch: u64][seq: u64]
//! [record count: u16] records... [HMAC-SHA256 tag: 32 bytes]
//! record: [flags: u8 (bits 0-1 QoS, bit 2 retain)][topic length: u16][topic]
//!         [payload length: u32][payload]
//! ```
//! A record's size, which `-csl` limits, is [`record_len`]: 7 bytes plus topic plus payload.
//! `seq` increases strictly per origin boot and never lags the origin's monotonic clock in
//! microseconds, which bounds how far ahead a plausible one can be (see [`super::replay`]).
//! The destination makes each datagram good for one boot of one node only: a datagram captured
//! on its way to one member cannot be replayed to another, nor to the same node after it
//! restarts with an empty replay window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::auth::DatagramKey;
use super::membership::{MemberState, Members, NodeIdentity};
use super::replay::{ReceivedAt, ReplayWindow, SequenceClock};
use crate::broker::Broker;
use crate::codec::QoS;
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};
use crate::router::Message;
use crate::topic;

pub const VERSION: u8 = 1;
const KIND_PUBLISH: u8 = 1;
/// Framing bytes of one record besides its topic and payload.
pub const RECORD_OVERHEAD: usize = 7;
/// Records are packed into one datagram up to this many bytes (below a 1500-byte MTU); a larger
/// record travels alone.
const BATCH_BYTES: usize = 1200;
/// Messages waiting to be forwarded; beyond it they are dropped and counted.
const QUEUE: usize = 16_384;
/// Messages taken from the queue per batch.
const TAKE: usize = 256;
/// Replay windows kept before those of members that are gone are dropped.
const PRUNE_WINDOWS_AT: usize = 64;

/// The size of `message` as a record, which `-csl` limits.
pub fn record_len(message: &Message) -> usize {
    RECORD_OVERHEAD + message.topic.len() + message.payload.len()
}

/// The publishing side's handle: cheap to call from any connection.
pub struct Forwarder {
    queue: mpsc::Sender<Arc<Message>>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> (Forwarder, mpsc::Receiver<Arc<Message>>) {
        let (queue, queued) = mpsc::channel(QUEUE);
        (
            Forwarder {
                queue,
                limit,
                metrics,
            },
            queued,
        )
    }

    /// Queues a locally published message for the other members, unless it must stay here.
    pub fn forward(&self, message: &Arc<Message>) {
        let cluster = &self.metrics.cluster;
        if message.topic.first() == Some(&b'$') {
            debug!("$ topic not forwarded");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::DollarTopic)
                .inc();
            return;
        }
        let len = record_len(message);
        if len > self.limit {
            debug!(len, limit = self.limit, "message too big to forward (-csl)");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                .inc();
            return;
        }
        match self.queue.try_send(message.clone()) {
            Ok(()) => {
                cluster.records_forwarded.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!("forwarding queue full; message not forwarded");
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::QueueFull)
                    .inc();
            }
            // The sender task has stopped: the node is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Who this node is in the datagrams it sends.
#[derive(Debug, Clone)]
pub struct Origin {
    pub node_id: String,
    pub boot_ms: u64,
    /// The same boot on the monotonic clock, which sequence numbers follow.
    pub started: Instant,
}

/// Sends what the forwarder queued. When `stop` fires, the queue is closed, what it still holds
/// (wills of the connections closed at shutdown) is sent, and the task returns.
pub async fn send_loop(
    socket: Arc<UdpSocket>,
    mut queued: mpsc::Receiver<Arc<Message>>,
    mut stop: watch::Receiver<bool>,
    members: Arc<Members>,
    key: DatagramKey,
    origin: Origin,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(TAKE);
    let mut sequence = SequenceClock::new(origin.started);
    let mut records_buf = Vec::with_capacity(BATCH_BYTES + 256);
    let mut datagram = Vec::with_capacity(BATCH_BYTES + 512);
    let mut stopping = false;
    loop {
        let taken = tokio::select! {
            taken = queued.recv_many(&mut batch, TAKE) => taken,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                queued.close();
                continue;
            }
        };
        if taken == 0 {
            return;
        }
        let others = members.others();
        let peers: Vec<&NodeIdentity> = others
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| &m.identity)
            .collect();
        let mut records = batch.drain(..).peekable();
        if peers.is_empty() {
            continue;
        }
        while records.peek().is_some() {
            let seq = sequence.next_seq();
            records_buf.clear();
            let mut count: u16 = 0;
            while let Some(message) = records.peek() {
                let fits = records_buf.len() + record_len(message) <= BATCH_BYTES;
                if count > 0 && (!fits || count == u16::MAX) {
                    break;
                }
                encode_record(&mut records_buf, message);
                count += 1;
                records.next();
            }
            for peer in &peers {
                datagram.clear();
                encode_header(&mut datagram, &origin, peer, seq);
                datagram.put_u16(count);
                datagram.extend_from_slice(&records_buf);
                key.seal(&mut datagram);
                let to = peer.sync_addr();
                match socket.send_to(&datagram, to).await {
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
        }
    }
}

pub(crate) fn encode_header(
    out: &mut Vec<u8>,
    origin: &Origin,
    destination: &NodeIdentity,
    seq: u64,
) {
    out.put_u8(VERSION);
    out.put_u8(KIND_PUBLISH);
    put_node(out, &origin.node_id, origin.boot_ms);
    put_node(out, &destination.node_id, destination.boot_ms);
    out.put_u64(seq);
}

fn put_node(out: &mut Vec<u8>, node_id: &str, boot_ms: u64) {
    // Our node id is checked with the flags; a peer's longer one (not a node of ours) is cut,
    // and that peer refuses the datagram.
    let id = &node_id.as_bytes()[..node_id.len().min(usize::from(u8::MAX))];
    out.put_u8(id.len() as u8);
    out.put_slice(id);
    out.put_u64(boot_ms);
}

pub(crate) fn encode_record(out: &mut Vec<u8>, message: &Message) {
    let flags = message.qos as u8 | if message.retain { 0b100 } else { 0 };
    out.put_u8(flags);
    // Both bounded by -csl, far below u16::MAX and u32::MAX.
    out.put_u16(message.topic.len() as u16);
    out.put_slice(&message.topic);
    out.put_u32(message.payload.len() as u32);
    out.put_slice(&message.payload);
}

/// A sync datagram, authenticated and parsed.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) origin: Bytes,
    pub(crate) boot_ms: u64,
    pub(crate) destination: Bytes,
    pub(crate) destination_boot_ms: u64,
    pub(crate) seq: u64,
    pub(crate) records: Vec<Message>,
}

/// Parses an authenticated body; `None` when it is not a well-formed version-1 publish batch.
pub(crate) fn decode_batch(body: &[u8]) -> Option<Batch> {
    let mut buf = body;
    if buf.remaining() < 2 || buf.get_u8() != VERSION || buf.get_u8() != KIND_PUBLISH {
        return None;
    }
    let id_len = usize::from(take_u8(&mut buf)?);
    let origin = take(&mut buf, id_len)?;
    let boot_ms = take_u64(&mut buf)?;
    let id_len = usize::from(take_u8(&mut buf)?);
    let destination = take(&mut buf, id_len)?;
    let destination_boot_ms = take_u64(&mut buf)?;
    let seq = take_u64(&mut buf)?;
    if buf.remaining() < 2 {
        return None;
    }
    let count = buf.get_u16();
    let mut records = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let flags = take_u8(&mut buf)?;
        if flags & !0b111 != 0 {
            return None;
        }
        let qos = QoS::from_u8(flags & 0b11)?;
        let retain = flags & 0b100 != 0;
        if buf.remaining() < 2 {
            return None;
        }
        let topic_len = usize::from(buf.get_u16());
        let topic = take(&mut buf, topic_len)?;
        if buf.remaining() < 4 {
            return None;
        }
        let payload_len = usize::try_from(buf.get_u32()).ok()?;
        let payload = take(&mut buf, payload_len)?;
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
        records.push(Message::new(topic, payload, qos, retain));
    }
    if buf.has_remaining() {
        return None;
    }
    Some(Batch {
        origin,
        boot_ms,
        destination,
        destination_boot_ms,
        seq,
        records,
    })
}

fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
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
    pub sync_limit: usize,
    pub max_packet_size: usize,
}

impl Limits {
    fn admit(&self, message: &Message) -> bool {
        record_len(message) <= self.sync_limit
            && publish_packet_len(message) <= self.max_packet_size
    }
}

/// The size of the PUBLISH packet a client would send for `message`: fixed header, topic with
/// its length prefix, packet identifier for QoS 1 and 2, payload.
fn publish_packet_len(message: &Message) -> usize {
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
    1 + length_bytes + remaining
}

/// Receives datagrams from peers and delivers their records locally, until the socket fails.
pub async fn receive_loop(
    socket: Arc<UdpSocket>,
    broker: Arc<Broker>,
    members: Arc<Members>,
    key: DatagramKey,
    sync_limit: usize,
    started: Instant,
) {
    let limits = Limits {
        sync_limit,
        max_packet_size: broker.config.max_packet_size,
    };
    let mut windows: HashMap<Bytes, ReplayWindow> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "sync receive failed");
                // Never spin on an error that repeats.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let cluster = &broker.metrics.cluster;
        cluster.datagram_in(ClusterPort::Sync);
        let at = ReceivedAt::now(started);
        let verdict = accept(&buf[..n], &key, &members, &mut windows, at);
        match verdict {
            Ok(records) => {
                cluster.records_received.inc_by(records.len() as u64);
                for message in records {
                    if !limits.admit(&message) {
                        debug!(%from, "forwarded record over -csl or -mpl dropped");
                        cluster
                            .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                            .inc();
                        continue;
                    }
                    let routed = broker.router.publish(Arc::new(message));
                    cluster.records_delivered.inc_by(routed.deliveries as u64);
                }
            }
            Err(reason) => {
                debug!(%from, reason = reason.label(), "sync datagram dropped");
                cluster.dropped(ClusterPort::Sync, reason).inc();
            }
        }
    }
}

/// The checks, in order: tag, format, destination, origin, boot, replay (received `at`; see
/// [`ReplayWindow::accept`]). Only a datagram that passes all of them marks
/// its sequence number as seen.
fn accept(
    datagram: &[u8],
    key: &DatagramKey,
    members: &Members,
    windows: &mut HashMap<Bytes, ReplayWindow>,
    at: ReceivedAt,
) -> Result<Vec<Message>, ClusterDrop> {
    let body = key.open(datagram).ok_or(ClusterDrop::BadTag)?;
    let batch = decode_batch(body).ok_or(ClusterDrop::Malformed)?;
    let local = members.local();
    if batch.destination != local.node_id.as_bytes() || batch.destination_boot_ms != local.boot_ms {
        return Err(ClusterDrop::WrongDestination);
    }
    let member = members
        .known(&batch.origin)
        .ok_or(ClusterDrop::UnknownOrigin)?;
    if member.boot_ms != batch.boot_ms {
        return Err(ClusterDrop::StaleEpoch);
    }
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
    use crate::cluster::membership::MemberInfo;

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
        let mut out = Vec::new();
        encode_header(&mut out, origin, destination, seq);
        out.put_u16(records.len() as u16);
        for record in records {
            encode_record(&mut out, record);
        }
        key.seal(&mut out);
        out
    }

    fn identity(name: &str, boot_ms: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: name.to_string(),
            gossip: "127.0.0.1:7946".parse().unwrap(),
            sync_port: 7947,
            mqtt_port: 1883,
            version: "0".into(),
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
        let origin = Origin {
            node_id: "n1".into(),
            boot_ms: 42,
            started: Instant::now(),
        };
        let sent = [
            message("a/b", b"hello", QoS::AtMostOnce, false),
            message("c", b"", QoS::ExactlyOnce, true),
        ];
        let bytes = datagram(&key, &origin, 7, &sent);
        let batch = decode_batch(key.open(&bytes).unwrap()).unwrap();
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
        encode_record(&mut one, &sent[0]);
        assert_eq!(one.len(), record_len(&sent[0]));
    }

    #[test]
    fn truncated_or_padded_or_invalid_batches_are_malformed() {
        let origin = Origin {
            node_id: "n1".into(),
            boot_ms: 1,
            started: Instant::now(),
        };
        let mut body = Vec::new();
        encode_header(&mut body, &origin, &identity("local", 1), 1);
        body.put_u16(1);
        encode_record(&mut body, &message("t", b"xyz", QoS::AtLeastOnce, false));
        assert!(decode_batch(&body).is_some());
        for cut in 0..body.len() {
            assert!(decode_batch(&body[..cut]).is_none(), "cut at {cut}");
        }
        let mut padded = body.clone();
        padded.push(0);
        assert!(decode_batch(&padded).is_none());
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
            encode_header(&mut bad, &origin, &identity("local", 1), 1);
            bad.put_u16(1);
            bad.put_u8(flags);
            bad.put_u16(topic.len() as u16);
            bad.put_slice(topic.as_bytes());
            bad.put_u32(0);
            assert!(decode_batch(&bad).is_none(), "{topic:?} flags {flags}");
        }
    }

    #[test]
    fn limits_are_those_of_a_client_publish() {
        let limits = Limits {
            sync_limit: 7 + 1 + 10,
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
        let origin = Origin {
            node_id: "n1".into(),
            boot_ms: 5,
            started: Instant::now(),
        };
        let records = [message("t", b"x", QoS::AtMostOnce, false)];
        let members = members_with(identity("n1", 5), MemberState::Up);
        let mut windows = HashMap::new();
        let first = datagram(&key, &origin, 1, &records);
        assert_eq!(
            accept(&first, &key, &members, &mut windows, AT)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            accept(&first, &key, &members, &mut windows, AT).unwrap_err(),
            ClusterDrop::Replay
        );
        let forged = datagram(&DatagramKey::sync(b"other"), &origin, 2, &records);
        assert_eq!(
            accept(&forged, &key, &members, &mut windows, AT).unwrap_err(),
            ClusterDrop::BadTag
        );
        // A forged datagram does not burn its sequence number.
        assert!(accept(
            &datagram(&key, &origin, 2, &records),
            &key,
            &members,
            &mut windows,
            AT
        )
        .is_ok());
        let stranger = Origin {
            node_id: "n9".into(),
            boot_ms: 5,
            started: Instant::now(),
        };
        assert_eq!(
            accept(
                &datagram(&key, &stranger, 1, &records),
                &key,
                &members,
                &mut windows,
                AT
            )
            .unwrap_err(),
            ClusterDrop::UnknownOrigin
        );
        let old_boot = Origin {
            node_id: "n1".into(),
            boot_ms: 4,
            started: Instant::now(),
        };
        assert_eq!(
            accept(
                &datagram(&key, &old_boot, 9, &records),
                &key,
                &members,
                &mut windows,
                AT
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
                    AT
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
            AT
        )
        .is_ok());
    }
}
