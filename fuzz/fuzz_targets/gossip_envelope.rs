//! The gossip port's envelope parser (`Envelope::decode`, what the gossip task runs once the
//! tag checks out), and what the envelope's body is handed to: a join request to the member
//! decoder, anything else to a membership state machine.
//!
//! The parser must accept exactly the bodies the documented layout describes (checked against
//! an independent reading), and what it accepts must be the one encoding of what it returned.

#![no_main]

use coolpy7::fuzzing::{decode_gossip_envelope, encode_gossip_envelope, handle_gossip_body};
use libfuzzer_sys::fuzz_target;

/// Bytes of the boot epoch and the sequence number after the sender's id.
const NUMBERS: usize = 8 + 8;

fuzz_target!(|data: &[u8]| {
    let envelope = decode_gossip_envelope(data);
    // [version = 1][kind][sender length: u8][sender][boot: u64][seq: u64][body...]
    let well_formed =
        matches!(data, [1, _, id_len, rest @ ..] if rest.len() >= usize::from(*id_len) + NUMBERS);
    assert_eq!(envelope.is_some(), well_formed, "{envelope:?}");
    let Some(envelope) = envelope else {
        return;
    };
    let id_len = usize::from(data[2]);
    assert_eq!(envelope.kind, data[1]);
    assert_eq!(envelope.sender, &data[3..3 + id_len]);
    let numbers = &data[3 + id_len..3 + id_len + NUMBERS];
    assert_eq!(envelope.boot_ms.to_be_bytes(), numbers[..8]);
    assert_eq!(envelope.seq.to_be_bytes(), numbers[8..]);
    assert_eq!(envelope.body, &data[3 + id_len + NUMBERS..]);
    assert_eq!(encode_gossip_envelope(&envelope), data);
    handle_gossip_body(envelope.kind, envelope.body);
});
