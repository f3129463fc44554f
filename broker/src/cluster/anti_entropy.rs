//! Anti-entropy for retained messages: the nodes converge on the same retained store after one
//! of them started, restarted or came back from a partition, whatever was set or cleared
//! meanwhile.
//!
//! It owns the protocol, free of I/O like [`super::link`]: the digest and listing frames, and
//! the decisions (which buckets differ, what to list, what to push). The retained store keeps
//! the data: a [`Stamp`] per topic (wall-clock ms and node id of its last write, ordered by
//! [`Stamped::wins_over`]), tombstones of cleared topics, and the digest, [`DIGEST_BUCKETS`]
//! XORs of [`entry_hash`]es kept up to date on every change (see
//! [`crate::router::StampIndex`]). The peers ([`super::peers`]) move frames: they queue them on
//! the control links and the repairs on the data links, and the sync receiver hands what
//! arrives to them.
//!
//! How data flows between nodes A and B (either way, independently):
//! 1. A sends B its digest on A's control link to B: the full digest when that link starts
//!    (B is new, restarted, or back from being declared down), else every [`DIGEST_PERIOD`] a
//!    summary only (the XOR of the buckets: a body of 10 bytes, 15 with the frame's header;
//!    cheap when nothing changed).
//! 2. B compares it with its own. Same summary: nothing. A summary that differs: B sends A its
//!    full digest. A full digest: B lists, for the buckets that differ, the (topic, stamp,
//!    tombstone) of each of its entries, in topic order, in *parts* of at most
//!    [`LISTING_FRAME_BYTES`]; each part says which range of the bucket it covers, so that it
//!    can be acted on alone. A listing cut by its budget is taken up by the next one to the
//!    same peer where it stopped, in the middle of a bucket if need be (see
//!    [`listing_frames`]): every entry of every bucket is compared in turn, however large.
//! 3. A compares each part with its own entries in that range and pushes to B, on its data
//!    link, every entry of its that wins over B's or that B lacks: the retained message with
//!    its stamp, or a tombstone (an empty payload) in a frame of kind
//!    [`crate::cluster::sync::FRAME_RETAINED`]. B stores it if it still wins there.
//!
//! So what B holds that A lacks reaches A in the other direction, when B's digest reaches A.
//! Nothing here is unbounded: a digest is answered with at most what brings the control link
//! to its sender to [`CONTROL_BACKLOG`] bytes unacknowledged (the rest waits for the next
//! round, which goes on where this one stopped), a part is compared with at most
//! [`RANGE_MAX`] local entries and only within the credit the peer's listings have
//! ([`LISTING_CREDIT`] per full digest this node sent it), and repairs stop while the data
//! link holds a quarter of its capacity (`-csb`): a large store converges over several
//! rounds, without crowding out live messages or interest changes.
//!
//! Anti-entropy runs only between nodes that read sync version 4
//! ([`crate::cluster::sync::STAMP_VERSION`]): a node of an earlier release gets retained
//! messages on its link without stamps, as that release expects, and no digest.
//!
//! A repair is never larger than this node's own `-csl` allows (nor carries properties a
//! record cannot); a peer whose `-csl` or `-mpl` is smaller refuses it (counted as
//! `too_big`) and is sent it again each round: such a topic never converges there, as a
//! message that size published live never reaches it either. Give every node the same
//! limits.
//!
//! Frames on the control link (integers big-endian):
//! ```text
//! kind 2, digest:  [summary u64][bucket count u16: 0 or 1024][bucket hash u64 × count]
//! kind 3, listing: [bucket u16][flags u8: bit 0 = the part runs to the bucket's end]
//!                  [after length u16][after: the part covers topics after it (0: from the start)]
//!                  then to the frame's end, topics ascending, each after `after`:
//!                  [topic length u16][topic][stamp ms u64][stamp count u32]
//!                  [node length u8 (not 0)][node]
//!                  [tombstone u8: 0 or 1]
//! ```
//! A part without bit 0 covers the topics after `after` up to its last entry (so it has at
//! least one); with it, up to the bucket's end. Anything else is malformed (counted, never a
//! panic).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::sync::{take, take_u16, take_u32, take_u64, take_u8};
use crate::router::{bucket_of, Stamp, Stamped, DIGEST_BUCKETS};
use crate::topic;

/// The kind of a control link frame that carries a digest.
pub const FRAME_DIGEST: u8 = 2;
/// The kind of a control link frame that carries a part of a bucket listing.
pub const FRAME_LISTING: u8 = 3;
/// How often each node sends its digest's summary to each peer.
pub const DIGEST_PERIOD: Duration = Duration::from_secs(10);
/// The most a listing frame holds, unless its one entry is larger (a topic may be 65,535
/// bytes).
pub const LISTING_FRAME_BYTES: usize = 64 << 10;
/// Bytes a control link may hold unacknowledged and still take anti-entropy frames (a peer
/// that does not acknowledge is not sent more), and so the most listing bytes sent in answer
/// to one digest: what the link holds already counts, and the answer stops at the first frame
/// past it. The control link also carries the interest changes that a SUBSCRIBE waits for
/// (at most [`crate::cluster::peers::INTEREST_WAIT`]): one never queues behind more than this
/// and one listing frame (256 KiB, a few milliseconds on a LAN), where 1 MiB of listing could
/// hold it back.
pub const CONTROL_BACKLOG: usize = 192 << 10;
/// Local entries compared with one listing part.
pub const RANGE_MAX: usize = 50_000;
/// Entries (listed and local) a node compares for the listing parts a peer sends in answer
/// to one full digest of this node's (each full digest sent sets the peer's credit back to
/// it): parts beyond it, unsolicited or forged, cost a look at the credit and nothing more.
pub const LISTING_CREDIT: usize = 4 * RANGE_MAX;
/// Local entries read from the store at a time while a listing is built.
const FETCH: usize = 512;

const TO_END: u8 = 0b1;

/// The summary of a digest: the XOR of its buckets' hashes.
pub fn summary(hashes: &[u64]) -> u64 {
    hashes.iter().fold(0, |acc, hash| acc ^ hash)
}

/// The body of a digest frame of `hashes`: all of them (`full`) or the summary only.
pub fn encode_digest(hashes: &[u64], full: bool) -> BytesMut {
    let buckets: &[u64] = if full { hashes } else { &[] };
    let mut out = BytesMut::with_capacity(10 + 8 * buckets.len());
    out.put_u64(summary(hashes));
    out.put_u16(buckets.len() as u16);
    for hash in buckets {
        out.put_u64(*hash);
    }
    out
}

/// A peer's digest.
#[derive(Debug, PartialEq, Eq)]
pub struct Digest {
    pub summary: u64,
    /// The buckets' hashes, when the frame holds them.
    pub buckets: Option<Vec<u64>>,
}

/// Parses a digest frame body; `None` when malformed.
pub fn decode_digest(mut body: &[u8]) -> Option<Digest> {
    if body.remaining() < 10 {
        return None;
    }
    let summary = body.get_u64();
    let count = usize::from(body.get_u16());
    if (count != 0 && count != DIGEST_BUCKETS) || body.remaining() != 8 * count {
        return None;
    }
    let buckets = (count > 0).then(|| (0..count).map(|_| body.get_u64()).collect::<Vec<_>>());
    if buckets
        .as_ref()
        .is_some_and(|b| self::summary(b) != summary)
    {
        return None;
    }
    Some(Digest { summary, buckets })
}

/// What a node does with a peer's digest.
#[derive(Debug, PartialEq, Eq)]
pub enum DigestAnswer {
    /// The stores agree.
    Same,
    /// Only the summaries were compared, and they differ: send the full digest back.
    SendFull,
    /// List these buckets (those that differ, from `start` on, wrapping).
    List(Vec<usize>),
}

/// Compares `theirs` with this node's buckets `ours`.
pub fn answer(ours: &[u64], theirs: &Digest, start: usize) -> DigestAnswer {
    if summary(ours) == theirs.summary {
        return DigestAnswer::Same;
    }
    let Some(buckets) = &theirs.buckets else {
        return DigestAnswer::SendFull;
    };
    let n = ours.len().min(buckets.len());
    if n == 0 {
        return DigestAnswer::Same;
    }
    DigestAnswer::List(
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| ours[i] != buckets[i])
            .collect(),
    )
}

/// One part of a bucket's listing: the entries of the bucket after `after` up to the last one
/// listed (or to the bucket's end with `to_end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub bucket: usize,
    pub after: Option<Bytes>,
    pub to_end: bool,
    pub entries: Vec<(Bytes, Stamped)>,
}

impl Part {
    /// The last topic the part covers (`None`: to the bucket's end).
    pub fn upto(&self) -> Option<&[u8]> {
        if self.to_end {
            None
        } else {
            self.entries.last().map(|(topic, _)| &topic[..])
        }
    }
}

fn entry_len(topic: &[u8], stamp: &Stamp) -> usize {
    2 + topic.len() + 8 + 4 + 1 + stamp.node.len().min(usize::from(u8::MAX)) + 1
}

/// A listing frame being filled.
struct PartFrame {
    frame: BytesMut,
    entries: usize,
}

impl PartFrame {
    fn start(bucket: usize, after: Option<&[u8]>) -> PartFrame {
        let after = after.unwrap_or_default();
        let mut frame = BytesMut::with_capacity(5 + after.len() + 256);
        frame.put_u16(bucket as u16);
        frame.put_u8(0);
        frame.put_u16(after.len() as u16);
        frame.put_slice(after);
        PartFrame { frame, entries: 0 }
    }

    fn has_room(&self, len: usize) -> bool {
        self.entries == 0 || self.frame.len() + len <= LISTING_FRAME_BYTES
    }

    fn add(&mut self, topic: &[u8], stamped: &Stamped) {
        let node = &stamped.stamp.node[..stamped.stamp.node.len().min(usize::from(u8::MAX))];
        self.frame.put_u16(topic.len() as u16);
        self.frame.put_slice(topic);
        self.frame.put_u64(stamped.stamp.ms);
        self.frame.put_u32(stamped.stamp.count);
        self.frame.put_u8(node.len() as u8);
        self.frame.put_slice(node);
        self.frame.put_u8(u8::from(stamped.cleared));
        self.entries += 1;
    }

    fn finish(mut self, to_end: bool) -> BytesMut {
        if to_end {
            self.frame[2] = TO_END;
        }
        self.frame
    }
}

/// What [`listing_frames`] made.
#[derive(Debug, Default)]
pub struct Listing {
    pub frames: Vec<BytesMut>,
    /// Where the next listing to the same peer starts when the budget cut this one: a bucket,
    /// and the last topic of it listed (`None`: from the bucket's start). `None` when every
    /// bucket asked for was listed.
    pub next: Option<(usize, Option<Bytes>)>,
}

/// The listing frames of `buckets`, in order, each bucket's entries read with `fetch(bucket,
/// after, max)` (at most `max` entries after the topic `after`, in topic order), until
/// `budget` bytes of frames are made: a bucket cut short ends with a part that does not run
/// to its end, and the listing says where the next one should start ([`Listing::next`]).
/// `resume` is where the previous one said: that bucket, if asked for, is listed from after
/// that topic (its earlier topics were listed then), so that a bucket larger than the budget
/// is listed whole over several rounds rather than always up to the same cut.
pub fn listing_frames(
    buckets: &[usize],
    budget: usize,
    resume: Option<(usize, Option<&[u8]>)>,
    mut fetch: impl FnMut(usize, Option<&[u8]>, usize) -> Vec<(Bytes, Stamped)>,
) -> Listing {
    let mut frames = Vec::new();
    let mut made = 0;
    for &bucket in buckets {
        if made >= budget {
            return Listing {
                frames,
                next: Some((bucket, None)),
            };
        }
        let mut after: Option<Bytes> = match resume {
            Some((resumed, Some(topic))) if resumed == bucket => {
                Some(Bytes::copy_from_slice(topic))
            }
            _ => None,
        };
        let mut part = PartFrame::start(bucket, after.as_deref());
        loop {
            let entries = fetch(bucket, after.as_deref(), FETCH);
            let last = entries.len() < FETCH;
            for (topic, stamped) in &entries {
                let len = entry_len(topic, &stamped.stamp);
                if !part.has_room(len) {
                    let full =
                        std::mem::replace(&mut part, PartFrame::start(bucket, after.as_deref()));
                    let frame = full.finish(false);
                    made += frame.len();
                    frames.push(frame);
                    if made >= budget {
                        return Listing {
                            frames,
                            next: Some((bucket, after)),
                        };
                    }
                }
                part.add(topic, stamped);
                after = Some(topic.clone());
            }
            if last {
                break;
            }
        }
        let frame = part.finish(true);
        made += frame.len();
        frames.push(frame);
    }
    Listing { frames, next: None }
}

/// Parses a listing frame body; `None` when malformed (see the module's wire format).
pub fn decode_part(mut body: &[u8]) -> Option<Part> {
    if body.remaining() < 5 {
        return None;
    }
    let bucket = usize::from(body.get_u16());
    let flags = body.get_u8();
    if bucket >= DIGEST_BUCKETS || flags & !TO_END != 0 {
        return None;
    }
    let after_len = usize::from(body.get_u16());
    let after = take(&mut body, after_len)?;
    if !after.is_empty() && !is_listed_topic(&after) {
        return None;
    }
    let mut entries: Vec<(Bytes, Stamped)> = Vec::new();
    while body.has_remaining() {
        let topic_len = usize::from(take_u16(&mut body)?);
        let topic = take(&mut body, topic_len)?;
        let ms = take_u64(&mut body)?;
        let count = take_u32(&mut body)?;
        let node_len = usize::from(take_u8(&mut body)?);
        let node = take(&mut body, node_len)?;
        let cleared = take_u8(&mut body)?;
        let previous = entries.last().map_or(&after, |(topic, _)| topic);
        if node.is_empty()
            || cleared > 1
            || topic <= *previous
            || !is_listed_topic(&topic)
            || bucket_of(&topic) != bucket
        {
            return None;
        }
        entries.push((
            topic,
            Stamped {
                stamp: Stamp { ms, count, node },
                cleared: cleared == 1,
            },
        ));
    }
    let to_end = flags & TO_END != 0;
    if !to_end && entries.is_empty() {
        return None;
    }
    Some(Part {
        bucket,
        after: (!after.is_empty()).then_some(after),
        to_end,
        entries,
    })
}

/// A topic a peer may list: one its clients could publish and it forwards (UTF-8, no
/// wildcards, no U+0000, not `$`).
fn is_listed_topic(topic: &[u8]) -> bool {
    topic.first() != Some(&b'$')
        && topic::is_valid_topic_name(topic)
        && !topic.contains(&0)
        && std::str::from_utf8(topic).is_ok()
}

/// The topics this node pushes to the peer that listed `theirs`, given its own entries `ours`
/// in the same range (both in topic order): those the peer lacks, and those whose write wins
/// over the peer's.
pub fn to_push(theirs: &[(Bytes, Stamped)], ours: &[(Bytes, Stamped)]) -> Vec<Bytes> {
    let mut push = Vec::new();
    let mut theirs = theirs.iter().peekable();
    for (topic, stamped) in ours {
        while theirs.next_if(|(their, _)| their < topic).is_some() {}
        match theirs.peek() {
            Some((their, their_stamped)) if their == topic => {
                if stamped.wins_over(their_stamped) {
                    push.push(topic.clone());
                }
            }
            _ => push.push(topic.clone()),
        }
    }
    push
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{now_ms, StampIndex, MAX_TOMBSTONES, TOMBSTONE_LIFETIME_MS};

    fn stamped(ms: u64, node: &'static str, cleared: bool) -> Stamped {
        Stamped {
            stamp: Stamp {
                ms,
                count: 0,
                node: Bytes::from_static(node.as_bytes()),
            },
            cleared,
        }
    }

    /// Two nodes' stores, stamps only: what anti-entropy compares.
    struct Store {
        index: StampIndex,
    }

    impl Store {
        fn new(node: &'static str) -> Store {
            Store {
                index: StampIndex::new(Bytes::from_static(node.as_bytes())),
            }
        }

        fn digest(&self) -> Vec<u64> {
            self.index.hashes().to_vec()
        }

        fn snapshot(&self) -> Vec<(Bytes, Stamped)> {
            (0..DIGEST_BUCKETS)
                .flat_map(|b| self.index.range(b, None, None, usize::MAX))
                .collect()
        }
    }

    /// One direction of a round: `from` sends its full digest to `to`, `to` lists, `from`
    /// pushes what wins; returns how many entries were pushed.
    fn round(from: &mut Store, to: &mut Store, now: u64) -> usize {
        let digest = decode_digest(&encode_digest(&from.digest(), true)).unwrap();
        let DigestAnswer::List(buckets) = answer(&to.digest(), &digest, 7) else {
            return 0;
        };
        let frames = listing_frames(&buckets, usize::MAX, None, |bucket, after, max| {
            to.index.range(bucket, after, None, max)
        })
        .frames;
        push_winners(from, to, frames, now)
    }

    /// `from` takes `to`'s listing `frames` and pushes it what wins; returns how many.
    fn push_winners(
        from: &Store,
        to: &mut Store,
        frames: impl IntoIterator<Item = BytesMut>,
        now: u64,
    ) -> usize {
        let mut pushed = 0;
        for frame in frames {
            let part = decode_part(&frame).expect("a listing frame parses");
            let ours = from
                .index
                .range(part.bucket, part.after.as_deref(), part.upto(), RANGE_MAX);
            for topic in to_push(&part.entries, &ours) {
                let held = from.index.get(&topic).unwrap().clone();
                to.index.apply_for_tests(&topic, held, now);
                pushed += 1;
            }
        }
        pushed
    }

    #[test]
    fn frames_round_trip_and_malformed_ones_are_refused() {
        let hashes: Vec<u64> = (0..DIGEST_BUCKETS as u64).collect();
        let full = encode_digest(&hashes, true);
        assert_eq!(full.len(), 10 + 8 * DIGEST_BUCKETS);
        assert_eq!(
            decode_digest(&full),
            Some(Digest {
                summary: summary(&hashes),
                buckets: Some(hashes.clone())
            })
        );
        let short = encode_digest(&hashes, false);
        assert_eq!(short.len(), 10);
        assert_eq!(decode_digest(&short).unwrap().buckets, None);
        let mut wrong_summary = full.clone();
        wrong_summary[0] ^= 1;
        for bad in [
            &b""[..],
            &full[..full.len() - 1],
            &wrong_summary[..],
            b"\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0",
        ] {
            assert_eq!(decode_digest(bad), None, "{bad:?}");
        }

        let topic = Bytes::from_static(b"a/b");
        let bucket = bucket_of(&topic);
        let frames = listing_frames(&[bucket], usize::MAX, None, |_, after, _| {
            if after.is_none() {
                vec![(topic.clone(), stamped(5, "n1", true))]
            } else {
                Vec::new()
            }
        })
        .frames;
        assert_eq!(frames.len(), 1);
        let part = decode_part(&frames[0]).unwrap();
        assert_eq!(
            part,
            Part {
                bucket,
                after: None,
                to_end: true,
                entries: vec![(topic.clone(), stamped(5, "n1", true))],
            }
        );
        let frame = &frames[0];
        let mut other_bucket = frame.clone();
        other_bucket[1] ^= 1;
        let mut not_to_end_empty = BytesMut::new();
        not_to_end_empty.put_slice(&[0, 0, 0, 0, 0]);
        let mut bad_flags = frame.clone();
        bad_flags[2] = 2;
        let entry = |out: &mut BytesMut, topic: &[u8]| {
            out.put_u16(topic.len() as u16);
            out.put_slice(topic);
            out.put_u64(1);
            out.put_u32(0);
            out.put_u8(1);
            out.put_slice(b"n");
            out.put_u8(0);
        };
        let mut dollar = BytesMut::new();
        dollar.put_u16(bucket_of(b"$x") as u16);
        dollar.put_slice(&[1, 0, 0]);
        entry(&mut dollar, b"$x");
        for bad in [
            &b""[..],
            &frame[..frame.len() - 1],
            &other_bucket[..],
            &not_to_end_empty[..],
            &bad_flags[..],
            &dollar[..],
            b"\x04\x00\x01\x00\x00",
        ] {
            assert_eq!(decode_part(bad), None, "{bad:?}");
        }
        // Unordered entries are refused.
        let mut one = BytesMut::new();
        one.put_u16(bucket_of(b"x") as u16);
        one.put_slice(&[1, 0, 0]);
        entry(&mut one, b"x");
        assert!(decode_part(&one).is_some());
        let mut two = one.clone();
        entry(&mut two, b"x");
        assert_eq!(decode_part(&two), None);
    }

    #[test]
    fn a_large_bucket_is_listed_in_parts_each_self_contained() {
        let mut store = Store::new("n1");
        let now = now_ms();
        for i in 0..40_000 {
            store
                .index
                .stamp_local_for_tests(format!("devices/{i}/state").as_bytes(), now);
        }
        let buckets: Vec<usize> = (0..DIGEST_BUCKETS).collect();
        let frames = listing_frames(&buckets, usize::MAX, None, |bucket, after, max| {
            store.index.range(bucket, after, None, max)
        })
        .frames;
        assert!(frames.iter().all(|f| f.len() <= LISTING_FRAME_BYTES));
        let parts: Vec<Part> = frames.iter().map(|f| decode_part(f).unwrap()).collect();
        let listed: usize = parts.iter().map(|p| p.entries.len()).sum();
        assert_eq!(listed, 40_000);
        assert_eq!(parts.iter().filter(|p| p.to_end).count(), DIGEST_BUCKETS);
        // A budget stops the listing early, with whole frames.
        let cut = listing_frames(&buckets, 10_000, None, |bucket, after, max| {
            store.index.range(bucket, after, None, max)
        })
        .frames;
        assert!(cut.len() < frames.len());
        assert!(cut.iter().map(BytesMut::len).sum::<usize>() < 10_000 + LISTING_FRAME_BYTES);
        // A frame larger than the usual limit holds one entry.
        let long = "l".repeat(65_000);
        let big = listing_frames(
            &[bucket_of(long.as_bytes())],
            usize::MAX,
            None,
            |_, after, _| {
                if after.is_none() {
                    vec![
                        (Bytes::from(long.clone()), stamped(1, "n1", false)),
                        (Bytes::from(format!("{long}x")), stamped(1, "n1", false)),
                    ]
                } else {
                    Vec::new()
                }
            },
        )
        .frames;
        assert_eq!(big.len(), 2);
    }

    #[test]
    fn the_stores_converge_and_the_later_stamp_wins_everywhere() {
        let (mut a, mut b) = (Store::new("a"), Store::new("b"));
        let now = now_ms();
        // Both saw the same before the partition.
        for topic in ["t/1", "t/2", "t/3", "t/4"] {
            let stamp = stamped(now - 1000, "a", false);
            a.index
                .apply_for_tests(topic.as_bytes(), stamp.clone(), now);
            b.index.apply_for_tests(topic.as_bytes(), stamp, now);
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(
            answer(
                &a.digest(),
                &decode_digest(&encode_digest(&b.digest(), false)).unwrap(),
                0
            ),
            DigestAnswer::Same
        );
        // Meanwhile: a updates t/1 and clears t/2; b sets t/5 and writes t/3 later than a.
        a.index
            .apply_for_tests(b"t/1", stamped(now, "a", false), now);
        a.index
            .apply_for_tests(b"t/2", stamped(now, "a", true), now);
        a.index
            .apply_for_tests(b"t/3", stamped(now + 1, "a", false), now);
        b.index
            .apply_for_tests(b"t/3", stamped(now + 2, "b", false), now);
        b.index
            .apply_for_tests(b"t/5", stamped(now, "b", false), now);
        // Same ms, different nodes: the larger node id wins on both.
        a.index
            .apply_for_tests(b"t/4", stamped(now + 5, "a", false), now);
        b.index
            .apply_for_tests(b"t/4", stamped(now + 5, "b", false), now);
        assert_eq!(
            answer(
                &a.digest(),
                &decode_digest(&encode_digest(&b.digest(), false)).unwrap(),
                0
            ),
            DigestAnswer::SendFull
        );
        let pushed_ab = round(&mut a, &mut b, now);
        let pushed_ba = round(&mut b, &mut a, now);
        assert_eq!(
            (pushed_ab, pushed_ba),
            (2, 3),
            "a: t/1, t/2; b: t/3, t/4, t/5"
        );
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.snapshot(), b.snapshot());
        let held = |topic: &str| a.index.get(topic.as_bytes()).cloned().unwrap();
        assert_eq!(held("t/2"), stamped(now, "a", true));
        assert_eq!(held("t/3"), stamped(now + 2, "b", false));
        assert_eq!(held("t/4"), stamped(now + 5, "b", false));
        assert_eq!(round(&mut a, &mut b, now), 0, "nothing left to push");
        // An older write never replaces a later one, nor resurrects a tombstone.
        assert!(!a
            .index
            .apply_for_tests(b"t/2", stamped(now - 1, "z", false), now));
        // The same stamp: the tombstone wins.
        assert!(a
            .index
            .apply_for_tests(b"t/5", stamped(now, "b", true), now));
    }

    #[test]
    fn a_new_node_gets_everything_and_tombstones_are_bounded_in_time_and_count() {
        let (mut a, mut b) = (Store::new("a"), Store::new("b"));
        let now = now_ms();
        for i in 0..3_000 {
            a.index
                .stamp_local_for_tests(format!("x/{i}").as_bytes(), now);
        }
        // b is empty: every bucket differs, b lists them empty, a pushes everything.
        assert_eq!(round(&mut a, &mut b, now), 3_000);
        assert_eq!(a.digest(), b.digest());
        // Tombstones go after their lifetime, and beyond the count the oldest go first.
        a.index.apply_for_tests(
            b"gone",
            stamped(now - TOMBSTONE_LIFETIME_MS + 10, "a", true),
            now,
        );
        assert_eq!(a.index.tombstones(), 1);
        assert_eq!(a.index.sweep(now, 100), 0);
        assert_eq!(a.index.sweep(now + 10, 100), 1);
        assert_eq!(a.index.get(b"gone"), None);
        // A tombstone already past its lifetime clears an older message, but is not kept.
        let old = now - TOMBSTONE_LIFETIME_MS;
        a.index
            .apply_for_tests(b"old", stamped(old - 5, "a", false), now);
        assert!(a
            .index
            .apply_for_tests(b"old", stamped(old, "b", true), now + 1));
        assert_eq!(a.index.get(b"old"), None);
        assert_eq!(a.index.tombstones(), 0);
        let mut c = Store::new("c");
        for i in 0..MAX_TOMBSTONES + 10 {
            c.index.apply_for_tests(
                format!("c/{i}").as_bytes(),
                stamped(now + i as u64, "c", true),
                now,
            );
        }
        assert_eq!(c.index.tombstones(), MAX_TOMBSTONES);
        assert_eq!(c.index.get(b"c/0"), None, "the oldest went first");
        assert!(c
            .index
            .get(format!("c/{}", MAX_TOMBSTONES + 9).as_bytes())
            .is_some());
    }

    #[test]
    fn to_push_is_a_merge_of_both_sides() {
        let t = |s: &'static str| Bytes::from_static(s.as_bytes());
        let theirs = vec![
            (t("a"), stamped(2, "n", false)),
            (t("c"), stamped(2, "n", false)),
            (t("d"), stamped(2, "n", false)),
        ];
        let ours = vec![
            (t("b"), stamped(1, "n", false)),
            (t("c"), stamped(1, "n", false)),
            (t("d"), stamped(3, "n", false)),
            (t("e"), stamped(1, "n", true)),
        ];
        assert_eq!(to_push(&theirs, &ours), vec![t("b"), t("d"), t("e")]);
        assert!(to_push(&theirs, &[]).is_empty());
    }

    /// `count` topics of `len` bytes or so, all in one bucket, sorted (the hash of their
    /// common prefix is taken once).
    fn topics_in_one_bucket(count: usize, len: usize) -> Vec<String> {
        use sha2::{Digest as _, Sha256};
        let prefix = "p".repeat(len);
        let mut state = Sha256::new();
        state.update(prefix.as_bytes());
        let target = bucket_of(format!("{prefix}/0").as_bytes());
        let mut topics: Vec<String> = (0..)
            .map(|i| format!("/{i}"))
            .filter(|suffix| {
                let hash = state.clone().chain_update(suffix.as_bytes()).finalize();
                usize::from(u16::from_be_bytes([hash[0], hash[1]])) % DIGEST_BUCKETS == target
            })
            .take(count)
            .map(|suffix| format!("{prefix}{suffix}"))
            .collect();
        topics.sort();
        topics
    }

    /// A round as [`round`], with the listing cut at `budget` and taken up where the last one
    /// stopped (`next`, kept by the lister for this peer), as [`crate::cluster::peers`] does.
    fn budget_round(
        from: &mut Store,
        to: &mut Store,
        now: u64,
        budget: usize,
        next: &mut Option<(usize, Option<Bytes>)>,
    ) -> usize {
        let digest = decode_digest(&encode_digest(&from.digest(), true)).unwrap();
        let start = next.as_ref().map_or(0, |(bucket, _)| *bucket);
        let DigestAnswer::List(buckets) = answer(&to.digest(), &digest, start) else {
            return 0;
        };
        let resume = next.as_ref().map(|(b, after)| (*b, after.as_deref()));
        let listing = listing_frames(&buckets, budget, resume, |bucket, after, max| {
            to.index.range(bucket, after, None, max)
        });
        *next = listing.next;
        push_winners(from, to, listing.frames, now)
    }

    #[test]
    fn a_bucket_larger_than_the_budget_is_compared_whole_over_rounds() {
        // 60 topics of 8 KB in one bucket: 480 KB of listing, over 2 budgets.
        let topics = topics_in_one_bucket(60, 8_000);
        let now = now_ms();
        let stores = || {
            let (mut a, mut b) = (Store::new("a"), Store::new("b"));
            for topic in &topics {
                let s = stamped(now - 1000, "a", false);
                a.index.apply_for_tests(topic.as_bytes(), s.clone(), now);
                b.index.apply_for_tests(topic.as_bytes(), s, now);
            }
            // a updated the bucket's last topic, and one in the middle.
            for topic in [&topics[59], &topics[40]] {
                a.index
                    .apply_for_tests(topic.as_bytes(), stamped(now, "a", false), now);
            }
            (a, b)
        };
        // Each listing goes on where the last stopped: every entry is compared in turn.
        let (mut a, mut b) = stores();
        let mut next = None;
        let mut rounds = 0;
        while a.digest() != b.digest() {
            rounds += 1;
            assert!(rounds <= 20, "not converged after 20 rounds");
            budget_round(&mut a, &mut b, now, CONTROL_BACKLOG, &mut next);
        }
        assert!(rounds > 1, "cut by the budget: {rounds} round(s)");
        assert_eq!(a.snapshot(), b.snapshot());
        // Had every listing started over, the cut would never have been passed.
        let (mut a, mut b) = stores();
        for _ in 0..20 {
            budget_round(&mut a, &mut b, now, CONTROL_BACKLOG, &mut None);
        }
        assert_ne!(a.digest(), b.digest());
    }
}
