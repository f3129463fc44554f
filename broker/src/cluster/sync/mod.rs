//! Forwarding PUBLISH messages between nodes over UDP (`-csp`).
//!
//! After a client's PUBLISH (or a will) is routed locally, [`Forwarder::forward`] queues it for
//! each peer whose subscriptions match it (see [`super::interest`]), without waiting: on the
//! peer's link (see [`super::link`]), which holds up to `-csb` bytes until they are
//! acknowledged (a publisher waits for a congested link as for a slow subscriber), or, to a
//! peer of an earlier release, in best-effort datagrams (a full queue drops and counts). The
//! sender's thread sends what is queued from one socket (UDP does not block per peer, so a
//! dead peer stalls nobody) and retransmits what is not acknowledged. The receiver's thread
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
//!     link kind 1 holds one version 2 record, kind 2 a stamped retained record for the
//!     receiver's store only (a repair); on the control link kind 1 interest changes, kinds 2
//!     and 3 retained digests and listings (see [`super::anti_entropy`]); stamps, repairs,
//!     digests and listings only to a peer that reads version 4 (the datagrams stay those of
//!     version 3)
//! record, version 1: [flags: u8 (bits 0-1 QoS, bit 2 retain)][topic length: u16][topic]
//!                    [payload length: u32][payload]
//! record, version 2: [flags: u8 (bits 0-1 QoS, bit 2 retain, bit 3 expiry, bit 4 properties,
//!                    bit 5 stamp: link frames only, with retain only,
//!                    bit 6 groups: link frames only)]
//!                    [topic length: u16][topic]
//!                    [only with bit 3: seconds of Message Expiry left when sent: u32]
//!                    [only with bit 4: properties length: u16 (never 0)][properties]
//!                    [only with bit 5: stamp ms: u64][stamp count: u32]
//!                    [node length: u8 (never 0)][node]
//!                    [only with bit 6: group count: u16 (never 0), then per group:
//!                     [name length: u16][name][filter length: u16][filter]]
//!                    [payload length: u32][payload]
//! ```
//! Bit 6 lists the shared groups (name, filter) the receiver must serve: the publishing node
//! chose it for them (see [`super::shared`]). A link frame record without it is served by none
//! of the receiver's shared groups, one in a best-effort batch (which only a node of an earlier
//! release sends: a node of this release sends every message to a peer with links on its
//! link, and batches of version 1 or 2 only to peers without) by all of them. A list that is
//! not well formed (a count of 0, a name a SUBSCRIBE could not give, an invalid filter, cut
//! short) makes the record malformed: dropped and counted. The list does not count towards
//! `-csl`, so that whether a message crosses never depends on who serves its groups; it takes
//! at most [`MAX_GROUP_LIST_BYTES`] (4 KiB, count included: the publishing node names a peer
//! no more groups than fit), and a receiver takes a data link frame up to that much larger
//! than `-mpl` and the stamp allow (`GROUP_LIST_ALLOWANCE` in `receive`), the PUBLISH itself
//! still checked against `-mpl`.
//! The stamp is the retained write's (see [`crate::router::Stamp`]): a receiver stores a
//! retained record only when its stamp wins over what it holds for the topic.
//! Version 2 adds what an MQTT 5 message carries: its properties (Payload Format Indicator,
//! Content Type, Response Topic, Correlation Data, User Properties, in MQTT 5 wire form without
//! the length prefix, checked by the receiver as the codec checks a PUBLISH's, see
//! [`crate::codec::properties::decode_message_properties`]) and the Message Expiry left, rounded
//! up so that a message still alive is never sent as expired; the receiver counts it down again
//! from when it arrives (on a link, from when it was queued). A record without either is byte
//! for byte a version 1 record. Version 3 brings links and interest, and no best-effort batch of
//! its own (one of version 3 is refused).
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

//!
//! Files: `forward` (the publishing side), `send` (the sender), `receive` (the receiver),
//! `wire` (the bytes).

mod batch;
mod forward;
mod receive;
mod send;
#[cfg(test)]
mod tests;
mod wire;

use std::time::Instant;

pub use batch::coalesce_received;
#[cfg(test)]
use forward::FLUSH_RECORDS;
pub use forward::{ForwardBatch, Forwarder, Prepared};
pub use receive::{Limits, Receiver, ReceiverThread};
pub use send::{Sender, Transmitter, Wakeup};
pub use wire::*;

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
