//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off in every build
//! that ships): thin wrappers over the cluster's private parsers, the WebSocket frame decoder
//! and the CoAP listener's reading of a datagram, so that the targets exercise
//! the very code the receive loops run without those parsers becoming part of the crate's API.
//! The MQTT codec ([`crate::codec::decode`]) and the replay window
//! ([`crate::cluster::replay::ReplayWindow`]) are public already and are fuzzed directly.

use std::time::Instant;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Codec, Foca, PostcardCodec};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cluster::membership::{Envelope, NodeIdentity, KIND_FOCA, KIND_JOIN};
use crate::cluster::sync::{self, Origin};
use crate::router::Message;

/// A sync datagram's body as [`decode_sync_batch`] parsed it.
#[derive(Debug)]
pub struct SyncBatch {
    pub version: u8,
    pub origin: Bytes,
    pub boot_ms: u64,
    pub destination: Bytes,
    pub destination_boot_ms: u64,
    pub seq: u64,
    pub records: Vec<Message>,
}

/// The sync receiver's parser of an authenticated datagram body (tag already removed), in a
/// node that reads every version, received at `now` (from which expiries count).
pub fn decode_sync_batch(body: &[u8], now: Instant) -> Option<SyncBatch> {
    let batch = sync::decode_batch(body, sync::NEWEST_VERSION, now)?;
    Some(SyncBatch {
        version: batch.version,
        origin: batch.origin,
        boot_ms: batch.boot_ms,
        destination: batch.destination,
        destination_boot_ms: batch.destination_boot_ms,
        seq: batch.seq,
        records: batch.records,
    })
}

/// The sync sender's encoding of a datagram body (without the tag) in sync `version`, with
/// expiries measured at `now`, for round trips.
#[allow(clippy::too_many_arguments)]
pub fn encode_sync_batch(
    version: u8,
    now: Instant,
    origin: &str,
    boot_ms: u64,
    destination: &str,
    destination_boot_ms: u64,
    seq: u64,
    records: &[Message],
) -> Vec<u8> {
    let origin = Origin {
        node_id: origin.to_owned(),
        boot_ms,
        started: now,
        version,
    };
    let mut destination = identity(destination);
    destination.boot_ms = destination_boot_ms;
    let mut out = Vec::new();
    sync::encode_header(&mut out, version, &origin, &destination, seq);
    // The sender never puts more than u16::MAX records in one datagram.
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    for record in records {
        sync::encode_record(&mut out, record, version, now);
    }
    out
}

/// A gossip datagram's envelope as [`decode_gossip_envelope`] parsed it.
#[derive(Debug, PartialEq, Eq)]
pub struct GossipEnvelope<'a> {
    pub kind: u8,
    pub sender: &'a [u8],
    pub boot_ms: u64,
    pub seq: u64,
    pub body: &'a [u8],
}

/// The gossip receiver's parser of an authenticated datagram body (tag already removed).
pub fn decode_gossip_envelope(body: &[u8]) -> Option<GossipEnvelope<'_>> {
    let Envelope {
        kind,
        sender,
        boot_ms,
        seq,
        body,
    } = Envelope::decode(body)?;
    Some(GossipEnvelope {
        kind,
        sender,
        boot_ms,
        seq,
        body,
    })
}

/// The gossip sender's encoding of an envelope (without the tag).
pub fn encode_gossip_envelope(envelope: &GossipEnvelope<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Envelope {
        kind: envelope.kind,
        sender: envelope.sender,
        boot_ms: envelope.boot_ms,
        seq: envelope.seq,
        body: envelope.body,
    }
    .encode(&mut out);
    out
}

/// Hands an envelope's body to what the gossip receiver hands it to: a join request to the
/// member decoder, anything else to a fresh membership state machine (as `local`).
pub fn handle_gossip_body(kind: u8, body: &[u8]) {
    if kind == KIND_JOIN {
        let _ = Codec::<NodeIdentity>::decode_member(&mut PostcardCodec, body);
    } else if kind == KIND_FOCA {
        let mut foca = Foca::new(
            identity("local"),
            foca::Config::simple(),
            StdRng::seed_from_u64(0),
            PostcardCodec,
        );
        let _ = foca.handle_data(body, &mut AccumulatingRuntime::new());
    }
}

fn identity(node_id: &str) -> NodeIdentity {
    NodeIdentity {
        node_id: node_id.to_owned(),
        gossip: ([127, 0, 0, 1], 7946).into(),
        sync_port: 7947,
        mqtt_port: 1883,
        version: crate::VERSION.to_owned(),
        boot_ms: 1,
        renewal: 0,
    }
}

/// What the WebSocket frame decoder made of some input: the MQTT bytes, the control frames
/// (opcode bits and payload) and the error that stopped it, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct WsDecoded {
    pub stream: Vec<u8>,
    pub controls: Vec<(String, Vec<u8>)>,
    pub error: Option<String>,
    /// The most input the decoder held undecoded after a call that made no progress.
    pub held_max: usize,
}

/// Feeds `pieces` to a WebSocket frame decoder in turn, with at most `room` bytes of output per
/// call, decoding until it stops making progress after each piece, as a connection reads.
pub fn decode_ws_frames(pieces: &[&[u8]], room: usize) -> WsDecoded {
    use crate::transport::ws::frames::Decoder;
    let mut decoder = Decoder::default();
    let mut input = bytes::BytesMut::new();
    let mut out = bytes::BytesMut::new();
    let mut decoded = WsDecoded {
        stream: Vec::new(),
        controls: Vec::new(),
        error: None,
        held_max: 0,
    };
    for piece in pieces {
        input.extend_from_slice(piece);
        // Ends: every call that makes progress consumes input.
        loop {
            match decoder.decode(&mut input, &mut out, room.max(1)) {
                Ok(step) => {
                    assert!(step.payload <= room.max(1), "more output than room");
                    if let Some((opcode, payload)) = step.control {
                        decoded.controls.push((format!("{opcode:?}"), payload));
                    }
                    if !step.progress {
                        decoded.held_max = decoded.held_max.max(input.len());
                        break;
                    }
                }
                Err(error) => {
                    decoded.error = Some(error.to_string());
                    decoded.stream = out.to_vec();
                    return decoded;
                }
            }
        }
    }
    decoded.stream = out.to_vec();
    decoded
}

/// What the CoAP publish listener makes of a datagram ([`crate::coap`]).
#[derive(Debug)]
pub enum CoapVerdict {
    /// Nothing is sent back.
    Ignored,
    /// The Reset sent back.
    Reset(Vec<u8>),
    /// A request, and the datagram each answer it may get encodes to (`None`: not encodable):
    /// its refusal, or, for one to publish, every outcome of the gateway and the 5.03 of a
    /// full listener.
    Request {
        confirmable: bool,
        message_id: u16,
        token: Vec<u8>,
        /// The topic and payload of a request to publish.
        publish: Option<(String, Vec<u8>)>,
        answers: Vec<Option<Vec<u8>>>,
    },
}

/// The CoAP listener's classification of `datagram` and the encoding of its answers, Non-
/// confirmable ones with message id `fresh_id`.
pub fn coap_datagram(datagram: &[u8], fresh_id: u16) -> CoapVerdict {
    use crate::auth::AuthFailure;
    use crate::coap::message::{self, Answer, Incoming};
    use crate::gateway::GatewayRefusal;
    use crate::metrics::AuthFailureKind;

    match message::classify(datagram) {
        Incoming::Ignore(_) => CoapVerdict::Ignored,
        Incoming::Reset { message_id, .. } => {
            CoapVerdict::Reset(message::reset(message_id).unwrap_or_default())
        }
        Incoming::Request(request) => {
            let (publish, answers) = match request.action {
                Err(answer) => (None, vec![answer]),
                Ok(publish) => {
                    let refused = |kind| {
                        Err(GatewayRefusal::Unauthenticated(AuthFailure {
                            kind,
                            reason: String::new(),
                        }))
                    };
                    let outcomes = [
                        Ok(()),
                        Err(GatewayRefusal::InvalidTopic),
                        Err(GatewayRefusal::TooLarge),
                        Err(GatewayRefusal::Forbidden),
                        refused(AuthFailureKind::BadCredentials),
                        refused(AuthFailureKind::Unavailable),
                    ];
                    let mut answers: Vec<Answer> = outcomes.iter().map(Answer::of).collect();
                    answers.push(Answer::busy());
                    (Some((publish.topic, publish.payload.to_vec())), answers)
                }
            };
            CoapVerdict::Request {
                confirmable: request.reply_to.confirmable,
                message_id: request.reply_to.message_id,
                token: request.reply_to.token.clone(),
                publish,
                answers: answers
                    .iter()
                    .map(|answer| request.reply_to.encode(answer, fresh_id))
                    .collect(),
            }
        }
    }
}

/// The sync receiver's parser of a version 3 body (a link segment or acknowledgement), in a
/// node that reads every version: whether it was accepted.
pub fn decode_link_datagram(body: &[u8]) -> bool {
    sync::decode_link(body, sync::NEWEST_VERSION).is_some()
}

/// A link's receiving half fed `segments` (number, bytes) in the order given, held and let go
/// where `hold` says, with every frame taken as the receiver would: records decoded (stamped
/// retained ones stored), interest changes parsed and applied to a peer's interest, which is
/// then asked about the frame's topic, retained digests answered and listings compared with a
/// retained store (see [`retained_sync`]). Returns how many frames were taken; never holds
/// more than a window's worth of out-of-order segments (asserted).
pub fn feed_inbox(segments: &[(u64, Vec<u8>, bool)]) -> usize {
    use crate::cluster::interest;
    use crate::cluster::link::{Inbox, Next, SEGMENT_BYTES, WINDOW};
    let Some(mut inbox) = Inbox::join(1, 1, 0, 1 << 16) else {
        return 0;
    };
    let remote = interest::RemoteInterest::default();
    let router = crate::router::Router::new(std::sync::Arc::new(crate::metrics::Metrics::new()));
    router.enable_stamps(Bytes::from_static(b"local"));
    let mut frames = 0;
    for (seq, data, hold) in segments {
        inbox.hold(*hold);
        inbox.on_segment(*seq, data);
        while let Some(next) = inbox.next_frame() {
            frames += 1;
            if let Next::Frame(frame) = next {
                if let Some(changes) = interest::decode(&frame.body) {
                    remote.apply("peer", 1, &changes);
                    if let Some((filter, _)) = changes.filters.first() {
                        let _ = remote.matching(&Bytes::copy_from_slice(filter));
                    }
                }
                if let Some((message, stamp)) =
                    sync::decode_frame_record(&frame.body, true, Instant::now())
                {
                    let _ = remote.matching(&message.topic);
                    if let Some(stamp) = stamp {
                        router.store_retained(&message, stamp);
                    }
                }
                retained_sync(&router, &frame.body);
            }
        }
        let ack = inbox.ack();
        assert!(u64::from(ack.window) <= WINDOW);
        assert!(inbox.buffered() <= (WINDOW as usize + 1) * SEGMENT_BYTES + (1 << 16) + 5);
    }
    frames
}

/// What a node does with a control frame body that may be a retained digest or a listing part
/// (see [`crate::cluster::anti_entropy`]), against `router`'s retained store: a digest is
/// answered (the listing it calls for must parse again, asserted), a part is compared with the
/// store's entries in its range and the entries to push are read.
pub fn retained_sync(router: &crate::router::Router, body: &[u8]) {
    use crate::cluster::anti_entropy::{self, DigestAnswer, RANGE_MAX};
    if let Some(digest) = anti_entropy::decode_digest(body) {
        let ours = router.retained_digest().unwrap_or_default();
        if let DigestAnswer::List(buckets) = anti_entropy::answer(&ours, &digest, 0) {
            let frames =
                anti_entropy::listing_frames(&buckets, 1 << 16, None, |bucket, after, max| {
                    router.retained_stamps(bucket, after, None, max)
                })
                .frames;
            for frame in frames {
                assert!(
                    anti_entropy::decode_part(&frame).is_some(),
                    "a listing this node makes parses"
                );
            }
        }
    }
    if let Some(part) = anti_entropy::decode_part(body) {
        let ours =
            router.retained_stamps(part.bucket, part.after.as_deref(), part.upto(), RANGE_MAX);
        for topic in anti_entropy::to_push(&part.entries, &ours) {
            let _ = router.retained_entry(&topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The link_stream seed with retained frames (a listing part, a stamped record, a digest
    /// summary) goes through [`feed_inbox`] as the fuzz target cuts it, each frame taken.
    #[test]
    fn the_retained_sync_seed_is_taken_whole() {
        let seed = include_bytes!("../../fuzz/corpus/link_stream/seed-retained-sync");
        let (seq, hold, len) = (
            u64::from(u16::from_be_bytes([seed[0], seed[1]])),
            seed[2] & 1 == 1,
            usize::from(seed[3]),
        );
        assert_eq!(len, seed.len() - 4);
        assert_eq!(feed_inbox(&[(seq, seed[4..].to_vec(), hold)]), 3);
        // The listing part parses on its own too.
        let frame = &seed[4 + 5..];
        let body_len = u32::from_be_bytes([seed[4], seed[5], seed[6], seed[7]]) as usize - 1;
        assert!(crate::cluster::anti_entropy::decode_part(&frame[..body_len]).is_some());
    }
}
