//! Reliable links between nodes: an ordered, acknowledged stream of frames from this node to
//! each peer, carried in sync datagrams (version 3), for what must not be lost on the way
//! (QoS 1 and 2 messages, and messages too big for one datagram).
//!
//! Like `foca`, the protocol is kept free of I/O: [`Outbox`] is the sending half (frames in,
//! numbered segments out, retransmitted until acknowledged) and [`Inbox`] the receiving half
//! (segments in, in any order and any number of times; frames out, each once, in order; and the
//! acknowledgement to send back). The sync tasks move their segments and acknowledgements
//! through the socket (see [`super::sync`]).
//!
//! - A *frame* is `[length: u32][kind: u8][body]`, the length counting kind and body. The
//!   frames of a link are one byte stream, cut into *segments* of at most [`SEGMENT_BYTES`]:
//!   a frame larger than one datagram spans several segments, and small frames share one.
//! - Segments are numbered from 1 per *link*. A link is one sender boot talking to one receiver
//!   boot, named by a number that grows with each new link of the sender (its microseconds
//!   since boot when the link was made): when a peer was declared down, or a receiver lost
//!   track, the sender starts a new link and the receiver drops what an older one still sends.
//! - The receiver acknowledges with the highest number below which it has everything
//!   (cumulative) and a bitmap of the 64 segments after the first missing one (selective). The
//!   sender retransmits a segment when its timer runs out (an estimate of the round trip, as
//!   TCP's) or when three later segments were acknowledged before it (fast retransmit).
//! - At most [`WINDOW`] segments are unacknowledged; the receiver keeps at most that many out
//!   of order. What the sender buffers (not yet sent, or not yet acknowledged) is bounded in
//!   bytes by the caller's capacity: a full outbox refuses frames.
//! - A receiver whose local subscribers cannot keep up *holds* the link: it goes on taking
//!   segments, up to [`RECEIVE_BYTES`], without taking frames from them, and its
//!   acknowledgements say how many more segments it has room for. The sender sends no more
//!   than that (one segment at a time when there is no room, to learn when there is again), so
//!   its outbox fills and its publishers wait, as for a slow subscriber of their own node.

mod incoming;
mod outgoing;

pub use incoming::{Inbox, Next, Segmented};
pub use outgoing::{Outbox, Pushed};

/// The earlier of two optional timers (either may be unset).
pub fn earliest(
    a: Option<std::time::Instant>,
    b: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Stream bytes per segment: with the header and tag the datagram stays below a 1500-byte MTU.
pub const SEGMENT_BYTES: usize = 1200;
/// Unacknowledged segments per link (about 2.4 MB of stream).
pub const WINDOW: u64 = 2048;
/// Bytes of a frame's length prefix and kind.
pub const FRAME_HEADER: usize = 5;
/// Segments after the first missing one that an acknowledgement reports on.
pub const SACK_BITS: u64 = 64;
/// Stream bytes a receiver holds for a link while its frames wait (see [`Inbox::hold`]).
pub const RECEIVE_BYTES: usize = WINDOW as usize * SEGMENT_BYTES;

/// What a receiver tells the sender of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub link: u64,
    /// Every segment up to this one has arrived (0: none yet).
    pub cumulative: u64,
    /// Bit `i` set: segment `cumulative + 2 + i` has arrived too.
    pub selective: u64,
    /// Segments after `cumulative` the receiver has room for.
    pub window: u32,
    /// The receiver does not know this link and cannot join it midway: start a new one.
    pub reset: bool,
}

/// A complete frame taken from a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub body: bytes::Bytes,
}
