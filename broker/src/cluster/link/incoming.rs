//! The receiving half of a link: segments arrive in any order, any number of times; their
//! bytes join the stream once each, in order, and complete frames are taken from it.
//!
//! [`Inbox::on_segment`] keeps a segment that is new and within [`WINDOW`] of the last one in
//! order, and appends what has become contiguous to the stream; [`Inbox::next_frame`] takes
//! the frames that are complete; [`Inbox::ack`] says what has arrived. A frame longer than the
//! receiver takes is skipped as it arrives, without being held. A stream that cannot be read
//! (a frame without a kind) refuses the link: every later segment is answered with a reset.
//! While the link is held ([`Inbox::hold`]), no frame is taken, and the window it announces
//! shrinks with what the stream holds.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes, BytesMut};

use super::{Ack, Frame, FRAME_HEADER, RECEIVE_BYTES, SACK_BITS, SEGMENT_BYTES, WINDOW};

/// What became of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segmented {
    /// Kept (delivered in order now or once the gap before it fills).
    New,
    /// Already had: a retransmission, or a datagram replayed.
    Repeat,
    /// Too far ahead of the last segment in order; the sender will send it again.
    Beyond,
    /// The link is refused; the sender should start another.
    Refused,
}

/// What [`Inbox::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Frame),
    /// A frame of this many bytes, over the limit: skipped.
    Oversized(usize),
    /// The stream cannot be read: the link is refused from now on.
    Unreadable,
}

#[derive(Debug)]
pub struct Inbox {
    link: u64,
    /// Every segment up to this one has joined the stream.
    delivered: u64,
    /// Segments that came before the gap was filled, and their bytes.
    early: BTreeMap<u64, Bytes>,
    early_bytes: usize,
    /// No frame is taken: the local subscribers are congested.
    held: bool,
    stream: BytesMut,
    /// Bytes of an oversized frame still to skip.
    skipping: usize,
    /// The longest frame taken (kind and body).
    max_frame: usize,
    ack_due: bool,
    refused: bool,
}

impl Inbox {
    /// The receiving half of `link`, first heard of through segment `seq`, whose sender had
    /// everything up to `sender_acked` acknowledged: `None` unless that is nothing (this side
    /// lost track of a link the sender kept, and what was acknowledged will not come again: it
    /// must start another).
    pub fn join(link: u64, seq: u64, sender_acked: u64, max_frame: usize) -> Option<Inbox> {
        (sender_acked == 0 && seq <= WINDOW).then(|| Inbox {
            link,
            delivered: 0,
            early: BTreeMap::new(),
            early_bytes: 0,
            held: false,
            stream: BytesMut::new(),
            skipping: 0,
            max_frame,
            ack_due: false,
            refused: false,
        })
    }

    pub fn link(&self) -> u64 {
        self.link
    }

    /// Stops (or resumes) taking frames.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
        // The window changes: worth telling the sender.
        self.ack_due = true;
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Bytes held: the stream not yet taken as frames, and segments out of order.
    pub fn buffered(&self) -> usize {
        self.stream.len() + self.early_bytes
    }

    /// Segments after the last in order that there is room for.
    fn window(&self) -> u64 {
        if !self.held {
            return WINDOW;
        }
        let used = self.stream.len() + self.early_bytes;
        (RECEIVE_BYTES.saturating_sub(used) / SEGMENT_BYTES) as u64
    }

    /// Takes in segment `seq` of this link. The next segment in order joins the stream
    /// straight from the datagram; only one that comes early is copied to wait for the gap.
    pub fn on_segment(&mut self, seq: u64, data: &[u8]) -> Segmented {
        self.ack_due = true;
        if self.refused {
            return Segmented::Refused;
        }
        if seq <= self.delivered || self.early.contains_key(&seq) {
            return Segmented::Repeat;
        }
        // With no room, a probe is not taken either, only acknowledged (with the window):
        // taking it would let the sender fill a held link one segment at a time.
        if seq > self.delivered + self.window() || data.len() > SEGMENT_BYTES {
            return Segmented::Beyond;
        }
        if seq != self.delivered + 1 {
            self.early_bytes += data.len();
            self.early.insert(seq, Bytes::copy_from_slice(data));
            return Segmented::New;
        }
        self.join_stream(data);
        while let Some(data) = self.early.remove(&(self.delivered + 1)) {
            self.early_bytes -= data.len();
            self.join_stream(&data);
        }
        Segmented::New
    }

    /// Appends the next segment in order to the stream (less what an oversized frame skips).
    fn join_stream(&mut self, data: &[u8]) {
        self.delivered += 1;
        let skip = self.skipping.min(data.len());
        self.skipping -= skip;
        self.stream.extend_from_slice(&data[skip..]);
    }

    /// The next complete frame in the stream, if there is one.
    pub fn next_frame(&mut self) -> Option<Next> {
        if self.held || self.refused || self.skipping > 0 || self.stream.len() < FRAME_HEADER - 1 {
            return None;
        }
        let len = u32::from_be_bytes([
            self.stream[0],
            self.stream[1],
            self.stream[2],
            self.stream[3],
        ]) as usize;
        if len == 0 {
            self.refused = true;
            self.stream = BytesMut::new();
            self.early.clear();
            self.early_bytes = 0;
            return Some(Next::Unreadable);
        }
        if len > self.max_frame {
            self.stream.advance(4);
            let skip = len.min(self.stream.len());
            self.stream.advance(skip);
            self.skipping = len - skip;
            return Some(Next::Oversized(len));
        }
        if self.stream.len() < 4 + len {
            return None;
        }
        self.stream.advance(4);
        let kind = self.stream.get_u8();
        let body = self.stream.split_to(len - 1).freeze();
        if self.stream.is_empty() {
            // Give the buffer back rather than keep the largest frame's worth.
            self.stream = BytesMut::new();
        }
        Some(Next::Frame(Frame { kind, body }))
    }

    /// Refuses the link from now on (what it holds is dropped): every later segment is
    /// answered with a reset, and the sender starts another link.
    pub fn refuse(&mut self) {
        self.refused = true;
        self.ack_due = true;
        self.stream = BytesMut::new();
        self.early.clear();
        self.early_bytes = 0;
        self.skipping = 0;
    }

    /// Whether something arrived since the last [`Inbox::ack`].
    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// What to tell the sender.
    pub fn ack(&mut self) -> Ack {
        self.ack_due = false;
        let first_bit = self.delivered + 2;
        let selective = self
            .early
            .range(first_bit..first_bit + SACK_BITS)
            .fold(0u64, |bits, (&seq, _)| bits | 1 << (seq - first_bit));
        Ack {
            link: self.link,
            cumulative: self.delivered,
            selective,
            window: u32::try_from(self.window()).unwrap_or(u32::MAX),
            reset: self.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::outgoing::{Outbox, Pushed};
    use super::*;
    use bytes::BufMut;
    use std::time::{Duration, Instant};

    fn frames(inbox: &mut Inbox) -> Vec<Next> {
        std::iter::from_fn(|| inbox.next_frame()).collect()
    }

    fn frame(kind: u8, body: &[u8]) -> Next {
        Next::Frame(Frame {
            kind,
            body: Bytes::copy_from_slice(body),
        })
    }

    /// The stream bytes of frames, as an outbox makes them.
    fn stream_of(bodies: &[&[u8]]) -> Vec<u8> {
        let mut outbox = Outbox::new(1, usize::MAX);
        for body in bodies {
            outbox.push(2, body.len(), |out| out.put_slice(body));
        }
        let mut stream = Vec::new();
        while let Some((seq, data)) = outbox.poll_transmit(Instant::now()) {
            stream.extend_from_slice(&data);
            let ack = Ack {
                link: 1,
                cumulative: seq,
                selective: 0,
                window: WINDOW as u32,
                reset: false,
            };
            outbox.on_ack(&ack, Instant::now());
        }
        stream
    }

    #[test]
    fn segments_in_any_order_give_frames_once_in_order() {
        let stream = stream_of(&[b"one", &[7; 2500], b"three"]);
        let segments: Vec<Bytes> = stream.chunks(1000).map(Bytes::copy_from_slice).collect();
        assert_eq!(segments.len(), 3);
        let mut inbox = Inbox::join(9, 3, 0, 10_000).unwrap();
        assert_eq!(inbox.on_segment(3, &segments[2]), Segmented::New);
        assert_eq!(inbox.on_segment(3, &segments[2]), Segmented::Repeat);
        assert!(frames(&mut inbox).is_empty());
        assert_eq!(
            inbox.ack(),
            Ack {
                link: 9,
                cumulative: 0,
                selective: 0b10,
                window: WINDOW as u32,
                reset: false
            }
        );
        assert_eq!(inbox.on_segment(1, &segments[0]), Segmented::New);
        assert_eq!(frames(&mut inbox), [frame(2, b"one")]);
        assert_eq!(inbox.ack().cumulative, 1);
        assert_eq!(inbox.on_segment(2, &segments[1]), Segmented::New);
        assert_eq!(
            frames(&mut inbox),
            [frame(2, &[7; 2500]), frame(2, b"three")]
        );
        assert_eq!(inbox.on_segment(1, &segments[0]), Segmented::Repeat);
        assert!(inbox.ack_due(), "a repeat is acknowledged again");
        assert_eq!(inbox.ack().cumulative, 3);
        assert!(frames(&mut inbox).is_empty());
    }

    #[test]
    fn a_link_is_joined_only_from_its_start_and_bounded_ahead() {
        assert!(Inbox::join(1, WINDOW + 1, 0, 100).is_none());
        assert!(
            Inbox::join(1, 5, 3, 100).is_none(),
            "1-3 were acknowledged by a receiver that has forgotten them"
        );
        let mut inbox = Inbox::join(1, WINDOW, 0, 100).unwrap();
        assert_eq!(inbox.on_segment(WINDOW + 1, &[]), Segmented::Beyond);
        assert_eq!(inbox.on_segment(WINDOW, &[]), Segmented::New);
    }

    #[test]
    fn oversized_frames_are_skipped_as_they_arrive() {
        let stream = stream_of(&[b"small", &[1; 5000], b"after"]);
        let mut inbox = Inbox::join(1, 1, 0, 100).unwrap();
        let mut found = Vec::new();
        for (i, chunk) in stream.chunks(700).enumerate() {
            inbox.on_segment(i as u64 + 1, chunk);
            found.extend(frames(&mut inbox));
            assert!(inbox.stream.len() <= 700 + 100, "nothing big is held");
        }
        assert_eq!(
            found,
            [
                frame(2, b"small"),
                Next::Oversized(5001),
                frame(2, b"after")
            ]
        );
    }

    #[test]
    fn a_held_link_keeps_its_frames_and_narrows_its_window() {
        let body = [5u8; 1000];
        let bodies: Vec<&[u8]> = vec![&body[..]; 3000];
        let stream = stream_of(&bodies);
        let mut segments = stream.chunks(SEGMENT_BYTES).map(Bytes::copy_from_slice);
        let mut inbox = Inbox::join(1, 1, 0, 10_000).unwrap();
        inbox.hold(true);
        inbox.on_segment(1, &segments.next().unwrap());
        assert!(frames(&mut inbox).is_empty(), "held");
        let ack = inbox.ack();
        assert_eq!(ack.cumulative, 1, "received, though not taken");
        assert_eq!(u64::from(ack.window), WINDOW - 1);
        let mut seq = 2;
        while inbox.window() > 0 {
            let segment = segments.next().unwrap();
            assert_eq!(inbox.on_segment(seq, &segment), Segmented::New);
            seq += 1;
        }
        assert_eq!(inbox.ack().window, 0);
        // Full: a probe is only acknowledged.
        assert_eq!(inbox.on_segment(seq, &[]), Segmented::Beyond);
        assert!(inbox.ack_due());
        assert_eq!(inbox.ack().window, 0);
        inbox.hold(false);
        assert!(inbox.ack_due());
        assert_eq!(u64::from(inbox.ack().window), WINDOW);
        let taken = frames(&mut inbox);
        assert_eq!(taken.len(), (seq as usize - 1) * SEGMENT_BYTES / 1005);
        assert!(taken.iter().all(|f| *f == frame(2, &body)));
    }

    #[test]
    fn an_unreadable_stream_refuses_the_link() {
        let mut inbox = Inbox::join(4, 1, 0, 100).unwrap();
        inbox.on_segment(1, &[0, 0, 0, 0, 1]);
        assert_eq!(inbox.next_frame(), Some(Next::Unreadable));
        assert_eq!(inbox.on_segment(2, &[]), Segmented::Refused);
        assert!(inbox.ack().reset);
    }

    /// Outbox and inbox together over a channel that loses, repeats and reorders segments and
    /// acknowledgements: every frame arrives once, in order.
    #[test]
    fn a_lossy_channel_delivers_every_frame_once_in_order() {
        let start = Instant::now();
        let mut outbox = Outbox::new(3, 1 << 22);
        let mut inbox = Inbox::join(3, 1, 0, 1 << 16).unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut sent_bodies = Vec::new();
        let mut received = Vec::new();
        let mut wire: Vec<(u64, Bytes)> = Vec::new();
        let mut now = start;
        for round in 0..4000u64 {
            if round < 3000 {
                let len = [10, 100, 1500, 4000][random(4) as usize];
                let body: Vec<u8> = (0..len).map(|i| (i as u64 ^ round) as u8).collect();
                if outbox.push(1, body.len(), |out| out.put_slice(&body)) != Pushed::Full {
                    sent_bodies.push(body);
                }
            }
            outbox.on_timeout(now);
            while let Some(segment) = outbox.poll_transmit(now) {
                // 10 % lost, 5 % twice.
                match random(20) {
                    0 | 1 => {}
                    2 => wire.extend([segment.clone(), segment]),
                    _ => wire.push(segment),
                }
            }
            // Delivered in a shuffled order.
            while !wire.is_empty() {
                let (seq, data) = wire.swap_remove(random(wire.len() as u64) as usize);
                inbox.on_segment(seq, &data);
            }
            while let Some(next) = inbox.next_frame() {
                match next {
                    Next::Frame(frame) => received.push(frame.body.to_vec()),
                    other => panic!("nothing is over the limit or unreadable: {other:?}"),
                }
            }
            if inbox.ack_due() && random(10) != 0 {
                outbox.on_ack(&inbox.ack(), now);
            }
            now += Duration::from_millis(10);
        }
        assert!(sent_bodies.len() > 1000);
        assert_eq!(received.len(), sent_bodies.len());
        assert!(received == sent_bodies, "in order, each once");
        assert!(outbox.is_idle());
        assert_eq!(outbox.buffered(), 0);
    }
}
