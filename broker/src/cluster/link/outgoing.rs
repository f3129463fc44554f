//! The sending half of a link: frames are appended to a byte stream, cut into numbered segments
//! when sent, and kept until the peer acknowledges them.
//!
//! [`Outbox::push`] appends a frame (a full outbox refuses it; past half full it says so, so
//! that publishers can wait as they do for a congested subscriber). [`Outbox::poll_transmit`]
//! gives the next segment to send: one to retransmit first, else a new one while fewer than
//! [`WINDOW`] are unacknowledged. [`Outbox::on_ack`] frees what the peer has, and
//! [`Outbox::on_timeout`] marks for retransmission what it has not acknowledged within the
//! retransmission timeout, which doubles on every expiry until something is acknowledged.
//!
//! How many new segments may be unacknowledged follows TCP Reno's congestion window: it grows by
//! one segment per acknowledged segment up to a threshold (slow start), then by one per window
//! acknowledged; a loss found by three later acknowledgements halves it, a timeout brings it
//! back to [`MIN_CWND`]. So a sender faster than its peer (or than the network, or than the
//! peer's socket buffer) settles near what gets through, rather than losing most of a full
//! [`WINDOW`] again and again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::{earliest, Ack, FRAME_HEADER, SACK_BITS, SEGMENT_BYTES, WINDOW};

/// Retransmission timeout before any round trip was measured.
const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Bounds of the retransmission timeout. The lower one leaves room for a receiver that acknowledges
/// once per burst of datagrams while busy delivering them; the upper one lets a peer that was
/// frozen for a moment hear from us soon after it wakes.
const MIN_RTO: Duration = Duration::from_millis(40);
const MAX_RTO: Duration = Duration::from_secs(1);
/// Later segments acknowledged before a missing one that make it count as lost.
const FAST_RETRANSMIT_AFTER: u32 = 3;
/// Congestion window, in segments: at the start of a link, and its floor.
const INITIAL_CWND: u64 = 32;
const MIN_CWND: u64 = 4;

/// What [`Outbox::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the outbox is at least half full.
    Congested,
    /// Not queued: the outbox is full.
    Full,
}

/// What an acknowledgement changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Buffered bytes given back.
    pub freed: usize,
    /// Frames now wholly acknowledged.
    pub frames: usize,
    /// The peer refused the link: the caller starts a new one.
    pub reset: bool,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Emptied once the peer has acknowledged it selectively (its bytes are freed then).
    data: Bytes,
    /// Where the segment ends in the stream.
    end: u64,
    sent_at: Instant,
    retransmitted: bool,
    sacked: bool,
    /// Queued in `resend`.
    resend: bool,
}

#[derive(Debug)]
pub struct Outbox {
    link: u64,
    capacity: usize,
    /// The number the next new segment gets; segments start at 1.
    next_seq: u64,
    /// Every segment up to this one is acknowledged.
    acked: u64,
    /// Stream bytes not yet in a segment.
    unsent: BytesMut,
    /// Segments `acked + 1 .. next_seq`, in order.
    in_flight: VecDeque<Segment>,
    /// Segments to send again, lowest first (entries acknowledged meanwhile are skipped).
    resend: VecDeque<u64>,
    /// Where each frame not wholly acknowledged ends in the stream.
    frame_ends: VecDeque<u64>,
    /// Stream bytes cut into segments so far, and pushed so far.
    segmented_to: u64,
    pushed_to: u64,
    /// Bytes held: unsent, and sent but not acknowledged.
    buffered: usize,
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
    timer: Option<Instant>,
    /// Segments sent again since the last [`Outbox::take_retransmitted`].
    retransmitted: u64,
    /// Congestion window and slow-start threshold, in segments, and the window's growth
    /// (segments acknowledged towards its next segment) past the threshold.
    cwnd: u64,
    ssthresh: u64,
    cwnd_growth: u64,
    /// Losses of segments up to this one belong to the loss already reacted to.
    recovery_until: u64,
    /// Segments in flight that the peer holds out of order.
    sacked: u64,
    /// Segments after the last acknowledged one the peer has room for.
    peer_window: u64,
    /// The last segment sent shorter than a full one (0: none yet): see
    /// [`Outbox::new_segment_ready`].
    last_partial: u64,
    /// When the last new segment was sent: see [`Outbox::hold_until`].
    last_sent: Option<Instant>,
}

impl Outbox {
    /// A new link named `link`, holding at most `capacity` bytes (one frame of any size is
    /// taken when the outbox is empty, so that no message is too big to forward).
    pub fn new(link: u64, capacity: usize) -> Outbox {
        Outbox {
            link,
            capacity,
            next_seq: 1,
            acked: 0,
            unsent: BytesMut::new(),
            in_flight: VecDeque::new(),
            resend: VecDeque::new(),
            frame_ends: VecDeque::new(),
            segmented_to: 0,
            pushed_to: 0,
            buffered: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            backoff: 0,
            timer: None,
            retransmitted: 0,
            cwnd: INITIAL_CWND,
            ssthresh: WINDOW,
            cwnd_growth: 0,
            recovery_until: 0,
            last_sent: None,
            sacked: 0,
            peer_window: WINDOW,
            last_partial: 0,
        }
    }

    pub fn link(&self) -> u64 {
        self.link
    }

    /// Bytes held (not yet sent, or not yet acknowledged).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Where the stream ends: the end of the last frame pushed.
    pub fn pushed_to(&self) -> u64 {
        self.pushed_to
    }

    /// Where the first frame not yet wholly acknowledged ends in the stream (`None`: every
    /// frame is): a frame that ended before it is acknowledged.
    pub fn first_pending_end(&self) -> Option<u64> {
        self.frame_ends.front().copied()
    }

    /// Frames not yet wholly acknowledged: what is lost if the link is given up.
    pub fn pending_frames(&self) -> usize {
        self.frame_ends.len()
    }

    /// Segments sent and not yet acknowledged.
    pub fn outstanding(&self) -> u64 {
        self.next_seq - self.acked - 1
    }

    /// Bytes pushed and not yet cut into segments.
    pub fn unsent(&self) -> usize {
        self.unsent.len()
    }

    /// The bytes pushed and not yet cut into segments.
    #[cfg(test)]
    pub fn unsent_bytes(&self) -> &[u8] {
        &self.unsent
    }

    /// Whether everything pushed has been acknowledged.
    pub fn is_idle(&self) -> bool {
        self.frame_ends.is_empty()
    }

    /// Whether a segment could be sent now (new or again).
    pub fn has_transmit(&self) -> bool {
        !self.resend.is_empty() || (self.new_segment_ready() && self.window_open())
    }

    /// Whether the unsent bytes make a segment to send now: a full one, or a partial one
    /// while no other partial one is unacknowledged. Nagle's rule (RFC 896) as Minshall
    /// refined it: a partial segment waits for more bytes or for the acknowledgement of the
    /// last partial one (at most a round trip, since the receiver acknowledges every burst at
    /// once). Under load the sender then sends full segments instead of being woken for every
    /// message; at a low rate, and for the tail of a message larger than a segment, nothing
    /// partial is in flight and the bytes go at once.
    fn new_segment_ready(&self) -> bool {
        self.unsent.len() >= SEGMENT_BYTES
            || (!self.unsent.is_empty() && self.acked >= self.last_partial)
    }

    /// The state of the link's flow, for logs.
    pub fn flow(&self) -> String {
        format!(
            "cwnd {} ssthresh {} peer window {} outstanding {} sacked {} resend {} unsent {} \
             rto {:?} srtt {:?}",
            self.cwnd,
            self.ssthresh,
            self.peer_window,
            self.next_seq - self.acked - 1,
            self.sacked,
            self.resend.len(),
            self.unsent.len(),
            self.rto(),
            self.srtt
        )
    }

    /// Every segment up to this one is acknowledged: the receiver of a link may join it only
    /// while this is 0 (else it would never get what was acknowledged before it).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn window_open(&self) -> bool {
        let outstanding = self.next_seq - self.acked - 1;
        // A peer with no room still gets one segment at a time, whose acknowledgement says
        // when it has room again.
        let room = self.peer_window.max(1);
        outstanding < WINDOW.min(room) && outstanding - self.sacked < self.cwnd
    }

    /// A loss was seen (`timeout`: by the timer): the window shrinks, once per window's worth
    /// of segments.
    fn on_loss(&mut self, seq: u64, timeout: bool) {
        if seq <= self.recovery_until && !timeout {
            return;
        }
        self.ssthresh = (self.cwnd / 2).max(MIN_CWND);
        self.cwnd = if timeout { MIN_CWND } else { self.ssthresh };
        self.cwnd_growth = 0;
        self.recovery_until = self.next_seq - 1;
    }

    fn grow_window(&mut self, acked: u64) {
        if self.cwnd < self.ssthresh {
            self.cwnd += acked;
        } else {
            self.cwnd_growth += acked;
            while self.cwnd_growth >= self.cwnd {
                self.cwnd_growth -= self.cwnd;
                self.cwnd += 1;
            }
        }
        self.cwnd = self.cwnd.min(WINDOW);
    }

    /// Appends a frame of `kind` whose body, `body_len` bytes, `write` puts.
    pub fn push(&mut self, kind: u8, body_len: usize, write: impl FnOnce(&mut BytesMut)) -> Pushed {
        let len = FRAME_HEADER + body_len;
        let Ok(length_field) = u32::try_from(1 + body_len) else {
            return Pushed::Full;
        };
        if self.buffered > 0 && self.buffered + len > self.capacity {
            return Pushed::Full;
        }
        self.unsent.reserve(len);
        self.unsent.put_u32(length_field);
        self.unsent.put_u8(kind);
        let before = self.unsent.len();
        write(&mut self.unsent);
        debug_assert_eq!(self.unsent.len() - before, body_len, "frame body length");
        self.buffered += len;
        self.pushed_to += len as u64;
        self.frame_ends.push_back(self.pushed_to);
        if self.buffered >= self.capacity / 2 {
            Pushed::Congested
        } else {
            Pushed::Queued
        }
    }

    /// The next segment to send at `now`, as its number and stream bytes.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(u64, Bytes)> {
        // Retransmissions are not held to the congestion window: pacing them by it (RFC 5681)
        // made links to a receiver that holds them stall for whole timeouts (p2p QoS 1 across
        // two nodes fell from 650k to between 3k and 250k messages a second).
        while let Some(seq) = self.resend.pop_front() {
            let Some(index) = self.index_of(seq) else {
                continue;
            };
            let segment = &mut self.in_flight[index];
            segment.resend = false;
            if segment.sacked {
                continue;
            }
            segment.sent_at = now;
            segment.retransmitted = true;
            self.retransmitted += 1;
            let data = segment.data.clone();
            self.timer.get_or_insert(now + self.rto());
            return Some((seq, data));
        }
        if !self.new_segment_ready() || !self.window_open() {
            return None;
        }
        let n = self.unsent.len().min(SEGMENT_BYTES);
        let data = self.unsent.split_to(n).freeze();
        let seq = self.next_seq;
        if n < SEGMENT_BYTES {
            self.last_partial = seq;
        }
        self.next_seq += 1;
        self.segmented_to += n as u64;
        self.last_sent = Some(now);
        self.in_flight.push_back(Segment {
            seq,
            data: data.clone(),
            end: self.segmented_to,
            sent_at: now,
            retransmitted: false,
            sacked: false,
            resend: false,
        });
        self.timer.get_or_insert(now + self.rto());
        Some((seq, data))
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let index = usize::try_from(seq.checked_sub(self.acked + 1)?).ok()?;
        (index < self.in_flight.len()).then_some(index)
    }

    /// When the sender should look at this outbox again: for [`Outbox::on_timeout`], or to
    /// send what waits past [`Outbox::hold_until`].
    pub fn deadline(&self) -> Option<Instant> {
        earliest(self.timer, self.hold_until())
    }

    /// Until when segments ready to send may wait for the acknowledgement of those in flight
    /// (a publisher does not send them itself meanwhile; see `Peer::push`): two smoothed round
    /// trips, at least a millisecond, after the last new segment went. An acknowledgement
    /// that is lost, or late, then holds them back that long, not a retransmission timeout.
    pub fn hold_until(&self) -> Option<Instant> {
        if !self.has_transmit() {
            return None;
        }
        let hold = (self.srtt.unwrap_or(Duration::ZERO) * 2).max(Duration::from_millis(1));
        self.last_sent.map(|sent| sent + hold)
    }

    /// Marks for retransmission every unacknowledged segment sent a timeout or more before
    /// `now`, if the timer has run out; the timeout doubles.
    pub fn on_timeout(&mut self, now: Instant) {
        let Some(timer) = self.timer else {
            return;
        };
        if now < timer {
            return;
        }
        let rto = self.rto();
        let mut lost = None;
        for segment in self.in_flight.iter_mut() {
            if !segment.sacked && !segment.resend && segment.sent_at + rto <= now {
                segment.resend = true;
                self.resend.push_back(segment.seq);
                lost.get_or_insert(segment.seq);
            }
        }
        // Unanswered while the peer had no room is not congestion.
        if let (Some(seq), true) = (lost, self.peer_window > 0) {
            self.on_loss(seq, true);
        }
        self.backoff = (self.backoff + 1).min(8);
        self.timer = (!self.in_flight.is_empty()).then(|| now + self.rto());
    }

    /// Applies the peer's acknowledgement received at `now`.
    pub fn on_ack(&mut self, ack: &Ack, now: Instant) -> Acked {
        let mut acked = Acked::default();
        // Acknowledgements of another link, or of segments never sent, are not about this one.
        if ack.link != self.link || ack.cumulative >= self.next_seq {
            return acked;
        }
        if ack.reset {
            acked.reset = true;
            return acked;
        }
        // An acknowledgement older than one already applied (reordered, or replayed: they go
        // through no replay window) would map its selective bits onto later segments.
        if ack.cumulative < self.acked {
            return acked;
        }
        self.peer_window = u64::from(ack.window);
        if ack.cumulative > self.acked {
            let mut sample = None;
            let mut end = None;
            let mut newly = 0;
            while self
                .in_flight
                .front()
                .is_some_and(|s| s.seq <= ack.cumulative)
            {
                let Some(segment) = self.in_flight.pop_front() else {
                    break;
                };
                if segment.sacked {
                    self.sacked -= 1;
                } else {
                    newly += 1;
                }
                acked.freed += segment.data.len();
                if !segment.retransmitted && !segment.sacked {
                    sample = Some(now.saturating_duration_since(segment.sent_at));
                }
                end = Some(segment.end);
            }
            self.acked = ack.cumulative;
            if let Some(end) = end {
                while self.frame_ends.front().is_some_and(|&e| e <= end) {
                    self.frame_ends.pop_front();
                    acked.frames += 1;
                }
            }
            if let Some(sample) = sample {
                self.sample_rtt(sample);
            }
            self.grow_window(newly);
            self.backoff = 0;
            self.timer = (!self.in_flight.is_empty()).then(|| now + self.rto());
        }
        // Segments the peer holds out of order: their bytes are freed (it keeps them until
        // the gap is filled), and a gap with enough of them after it is taken as a loss.
        let mut highest_sacked = None;
        for bit in 0..SACK_BITS {
            if ack.selective & (1 << bit) == 0 {
                continue;
            }
            let seq = self.acked + 2 + bit;
            let Some(index) = self.index_of(seq) else {
                break;
            };
            let segment = &mut self.in_flight[index];
            if !segment.sacked {
                segment.sacked = true;
                self.sacked += 1;
                acked.freed += segment.data.len();
                segment.data = Bytes::new();
            }
            highest_sacked = Some(index);
        }
        if let Some(highest) = highest_sacked {
            let mut later_sacked = 0;
            let min_gap = self.srtt.unwrap_or(MIN_RTO).max(Duration::from_millis(1));
            let mut lost = None;
            for index in (0..highest).rev() {
                let segment = &mut self.in_flight[index];
                if segment.sacked {
                    later_sacked += 1;
                    continue;
                }
                let sacked_after = later_sacked + 1;
                if sacked_after >= FAST_RETRANSMIT_AFTER
                    && !segment.resend
                    && now.saturating_duration_since(segment.sent_at) >= min_gap
                {
                    segment.resend = true;
                    self.resend.push_back(segment.seq);
                    lost = Some(segment.seq);
                }
            }
            if let Some(seq) = lost {
                self.on_loss(seq, false);
            }
            // Lowest first.
            self.resend.make_contiguous().sort_unstable();
        }
        self.buffered -= acked.freed.min(self.buffered);
        acked
    }

    /// Segments sent again since the last call.
    pub fn take_retransmitted(&mut self) -> u64 {
        std::mem::take(&mut self.retransmitted)
    }

    fn sample_rtt(&mut self, sample: Duration) {
        // RFC 6298: alpha 1/8, beta 1/4.
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => INITIAL_RTO,
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_millis(1)),
        };
        (base.clamp(MIN_RTO, MAX_RTO) * (1 << self.backoff)).min(MAX_RTO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_bytes(outbox: &mut Outbox, body: &[u8]) -> Pushed {
        outbox.push(1, body.len(), |out| out.put_slice(body))
    }

    fn ack(link: u64, cumulative: u64, selective: u64) -> Ack {
        Ack {
            link,
            cumulative,
            selective,
            window: WINDOW as u32,
            reset: false,
        }
    }

    fn drain(outbox: &mut Outbox, now: Instant) -> Vec<(u64, Bytes)> {
        std::iter::from_fn(|| outbox.poll_transmit(now)).collect()
    }

    #[test]
    fn frames_become_a_stream_of_numbered_segments() {
        let now = Instant::now();
        let mut outbox = Outbox::new(7, 1 << 20);
        assert_eq!(push_bytes(&mut outbox, b"hello"), Pushed::Queued);
        let big = vec![0xab; 3000];
        push_bytes(&mut outbox, &big);
        assert_eq!(outbox.buffered(), 10 + 3005);
        let sent = drain(&mut outbox, now);
        let seqs: Vec<u64> = sent.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            [1, 2, 3],
            "the tail goes too: no partial segment was in flight"
        );
        let stream: Vec<u8> = sent.iter().flat_map(|(_, d)| d.to_vec()).collect();
        assert_eq!(&stream[..10], b"\0\0\0\x06\x01hello");
        assert_eq!(&stream[10..15], b"\0\0\x0b\xb9\x01");
        assert_eq!(stream.len(), 3015);
        assert!(sent.iter().all(|(_, d)| d.len() <= SEGMENT_BYTES));
        assert_eq!(outbox.pending_frames(), 2);
        // The first segment holds the small frame and the start of the big one.
        let acked = outbox.on_ack(&ack(7, 1, 0), now);
        assert_eq!((acked.freed, acked.frames), (SEGMENT_BYTES, 1));
        // A small frame waits while the partial segment 3 is unacknowledged (Nagle), then
        // goes.
        push_bytes(&mut outbox, b"more");
        assert!(!outbox.has_transmit(), "segment 3, partial, in flight");
        let acked = outbox.on_ack(&ack(7, 3, 0), now);
        assert_eq!(acked.frames, 1);
        assert_eq!(
            drain(&mut outbox, now)
                .iter()
                .map(|s| s.0)
                .collect::<Vec<_>>(),
            [4]
        );
        let acked = outbox.on_ack(&ack(7, 4, 0), now);
        assert_eq!(acked.frames, 1);
        assert_eq!(outbox.buffered(), 0);
        assert!(outbox.is_idle());
        assert_eq!(outbox.deadline(), None);
    }

    #[test]
    fn a_full_outbox_refuses_and_half_full_is_congested() {
        let mut outbox = Outbox::new(1, 100);
        assert_eq!(push_bytes(&mut outbox, &[0; 35]), Pushed::Queued);
        assert_eq!(push_bytes(&mut outbox, &[0; 20]), Pushed::Congested);
        assert_eq!(push_bytes(&mut outbox, &[0; 41]), Pushed::Full);
        assert_eq!(push_bytes(&mut outbox, &[0; 30]), Pushed::Congested);
        assert_eq!(outbox.buffered(), 100);
        assert_eq!(push_bytes(&mut outbox, &[]), Pushed::Full);
        // An empty outbox takes a frame of any size.
        let mut empty = Outbox::new(1, 100);
        assert_eq!(push_bytes(&mut empty, &[0; 1000]), Pushed::Congested);
    }

    #[test]
    fn lost_segments_are_sent_again_after_the_timeout_which_backs_off() {
        let start = Instant::now();
        let mut outbox = Outbox::new(1, 1 << 20);
        // Two full segments (a partial one would wait for the first's acknowledgement).
        push_bytes(&mut outbox, &[1; 2 * SEGMENT_BYTES - FRAME_HEADER]);
        assert_eq!(drain(&mut outbox, start).len(), 2);
        let deadline = outbox.deadline().expect("armed");
        assert_eq!(deadline, start + INITIAL_RTO);
        outbox.on_timeout(deadline - Duration::from_millis(1));
        assert!(!outbox.has_transmit(), "not before the deadline");
        outbox.on_timeout(deadline);
        let again = drain(&mut outbox, deadline);
        assert_eq!(again.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(outbox.take_retransmitted(), 2);
        // Doubled.
        assert_eq!(outbox.deadline(), Some(deadline + 2 * INITIAL_RTO));
        // A retransmitted segment gives no round-trip sample; progress resets the backoff.
        outbox.on_ack(&ack(1, 1, 0), deadline + Duration::from_millis(5));
        assert_eq!(outbox.srtt, None);
        assert_eq!(
            outbox.deadline(),
            Some(deadline + Duration::from_millis(5) + INITIAL_RTO)
        );
        // Capped, however long the peer is silent.
        let mut at = deadline;
        for _ in 0..20 {
            at = outbox.deadline().unwrap();
            outbox.on_timeout(at);
            drain(&mut outbox, at);
        }
        assert_eq!(outbox.deadline(), Some(at + MAX_RTO));
    }

    #[test]
    fn the_round_trip_sets_the_timeout() {
        let start = Instant::now();
        let mut outbox = Outbox::new(1, 1 << 20);
        for i in 0..20u32 {
            let at = start + Duration::from_millis(u64::from(i) * 100);
            push_bytes(&mut outbox, b"x");
            drain(&mut outbox, at);
            outbox.on_ack(&ack(1, u64::from(i) + 1, 0), at + Duration::from_millis(2));
        }
        let srtt = outbox.srtt.unwrap();
        assert!(srtt >= Duration::from_millis(1) && srtt <= Duration::from_millis(3));
        assert_eq!(outbox.rto(), MIN_RTO, "clamped below");
    }

    #[test]
    fn three_later_segments_acknowledged_retransmit_a_gap_at_once() {
        let start = Instant::now();
        let mut outbox = Outbox::new(1, 1 << 20);
        push_bytes(&mut outbox, &vec![0; SEGMENT_BYTES * 6 - FRAME_HEADER]);
        assert_eq!(drain(&mut outbox, start).len(), 6);
        let later = start + MIN_RTO;
        // Segment 2 is missing; 3 and 4 arrived: not yet.
        outbox.on_ack(&ack(1, 1, 0b11), later);
        assert!(!outbox.has_transmit());
        // 3, 4 and 5 arrived: 2 is lost.
        let acked = outbox.on_ack(&ack(1, 1, 0b111), later);
        assert_eq!(acked.freed, SEGMENT_BYTES, "segment 5's bytes are freed");
        assert_eq!(drain(&mut outbox, later), [(2, zeros())]);
        // Not again on the next acknowledgement.
        outbox.on_ack(&ack(1, 1, 0b1111), later);
        assert!(!outbox.has_transmit());
        // Sacked segments are never sent again, even when the timer runs out.
        let timeout = outbox.deadline().unwrap();
        outbox.on_timeout(timeout);
        let seqs: Vec<u64> = drain(&mut outbox, timeout).iter().map(|s| s.0).collect();
        assert_eq!(seqs, [2], "3-6 are held by the peer");
        outbox.on_ack(&ack(1, 6, 0), timeout);
        assert_eq!(outbox.buffered(), 0);
        assert_eq!(outbox.pending_frames(), 0);
    }

    fn zeros() -> Bytes {
        Bytes::from(vec![0; SEGMENT_BYTES])
    }

    #[test]
    fn an_acknowledgement_older_than_one_applied_changes_nothing() {
        let now = Instant::now();
        let mut outbox = Outbox::new(1, 1 << 20);
        push_bytes(&mut outbox, &vec![0; SEGMENT_BYTES * 20 - FRAME_HEADER]);
        drain(&mut outbox, now);
        outbox.on_ack(&ack(1, 10, 0), now);
        // Reordered or replayed: its bits were about segments 4-10, not 12-18.
        let old = ack(1, 2, 0b111_1111);
        assert_eq!(outbox.on_ack(&old, now), Acked::default());
        assert_eq!(outbox.sacked, 0);
        let timeout = outbox.deadline().unwrap();
        outbox.on_timeout(timeout);
        let again: Vec<u64> = drain(&mut outbox, timeout).iter().map(|s| s.0).collect();
        assert_eq!(again[0], 11, "what is missing is sent again");
    }

    #[test]
    fn retransmissions_lost_again_are_sent_again_at_each_timeout() {
        let now = Instant::now();
        let mut outbox = Outbox::new(1, 1 << 24);
        push_bytes(&mut outbox, &vec![0; SEGMENT_BYTES * 32 - FRAME_HEADER]);
        assert_eq!(drain(&mut outbox, now).len(), 32);
        let mut at = now;
        for _ in 0..5 {
            at = outbox.deadline().unwrap();
            outbox.on_timeout(at);
            assert_eq!(outbox.cwnd, MIN_CWND);
            assert_eq!(drain(&mut outbox, at).len(), 32);
        }
        outbox.on_ack(&ack(1, 32, 0), at);
        assert!(outbox.is_idle());
    }

    #[test]
    fn the_congestion_window_opens_as_segments_are_acknowledged() {
        let now = Instant::now();
        let mut outbox = Outbox::new(1, usize::MAX);
        let segments = WINDOW as usize * 8;
        push_bytes(
            &mut outbox,
            &vec![0; SEGMENT_BYTES * segments - FRAME_HEADER],
        );
        assert_eq!(drain(&mut outbox, now).len(), INITIAL_CWND as usize);
        assert!(!outbox.has_transmit());
        // Slow start: each acknowledged segment lets two more go.
        outbox.on_ack(&ack(1, 4, 0), now);
        assert_eq!(drain(&mut outbox, now).len(), 8);
        // Up to the window, however fast the acknowledgements.
        for _ in 0..10 {
            let sent = outbox.next_seq - 1;
            outbox.on_ack(&ack(1, sent, 0), now);
            drain(&mut outbox, now);
        }
        assert_eq!(outbox.cwnd, WINDOW);
        assert_eq!(outbox.next_seq - 1 - outbox.acked, WINDOW);
        // A loss halves the window; a timeout brings it to the floor.
        let cwnd = outbox.cwnd;
        outbox.on_ack(&ack(1, outbox.acked, 0b111), now + MIN_RTO);
        assert_eq!(outbox.cwnd, cwnd / 2);
        assert!(outbox.has_transmit(), "the lost segment goes again");
        // The retransmission timer, not the hold of what is ready (which comes first).
        let timer = outbox.timer.unwrap();
        assert!(outbox.deadline().unwrap() <= timer);
        outbox.on_timeout(timer);
        assert_eq!(outbox.cwnd, MIN_CWND);
    }

    #[test]
    fn a_peer_without_room_gets_one_segment_at_a_time() {
        let now = Instant::now();
        let mut outbox = Outbox::new(1, usize::MAX);
        push_bytes(&mut outbox, &vec![0; SEGMENT_BYTES * 100]);
        assert_eq!(drain(&mut outbox, now).len(), INITIAL_CWND as usize);
        let full = Ack {
            window: 0,
            ..ack(1, 10, 0)
        };
        outbox.on_ack(&full, now);
        assert!(!outbox.has_transmit(), "22 are still out");
        outbox.on_ack(&full_at(32), now);
        assert_eq!(drain(&mut outbox, now).len(), 1, "a probe");
        let deadline = outbox.deadline().unwrap();
        let cwnd = outbox.cwnd;
        outbox.on_timeout(deadline);
        assert_eq!(outbox.cwnd, cwnd, "no room is not congestion");
        let room = Ack {
            window: 5,
            ..ack(1, 33, 0)
        };
        outbox.on_ack(&room, deadline);
        assert_eq!(drain(&mut outbox, deadline).len(), 5);
    }

    fn full_at(cumulative: u64) -> Ack {
        Ack {
            window: 0,
            ..ack(1, cumulative, 0)
        }
    }

    #[test]
    fn acknowledgements_of_other_links_or_unsent_segments_change_nothing() {
        let now = Instant::now();
        let mut outbox = Outbox::new(5, 1 << 20);
        push_bytes(&mut outbox, b"abc");
        drain(&mut outbox, now);
        for bogus in [
            ack(4, 1, 0),
            ack(6, 1, 0),
            ack(5, 2, 0),
            ack(5, u64::MAX, 0),
        ] {
            assert_eq!(outbox.on_ack(&bogus, now), Acked::default(), "{bogus:?}");
        }
        let reset = Ack {
            reset: true,
            ..ack(5, 0, 0)
        };
        assert!(outbox.on_ack(&reset, now).reset);
        assert_eq!(outbox.pending_frames(), 1);
    }
}
