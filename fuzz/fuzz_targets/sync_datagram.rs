//! The sync port's datagram parser (`decode_batch`, what `accept` runs once the tag checks
//! out), in two modes chosen by the first input byte:
//!
//! - bytes: the rest is a datagram body. Whatever the parser accepts must be the one encoding
//!   of what it returned (re-encoded from the documented wire format, and by the sender's own
//!   encoder when the node ids are text), and every record one a peer could have forwarded;
//!   one byte more or less is refused.
//! - batch: the rest describes a batch that the sender's encoder writes (version 1 or 2, with
//!   or without an expiry); the parser must give it back exactly when every record is one a
//!   peer forwards, and refuse it otherwise.
//!
//! Version 2 properties are opaque here: the reference encoding writes back what the parser
//! kept, and the parser's property checks are the codec's, fuzzed by `mqtt_decode`.

#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use coolpy7::codec::{decode, encode_publish, QoS};
use coolpy7::fuzzing::{decode_sync_batch, encode_sync_batch, SyncBatch};
use coolpy7::router::Message;
use coolpy7::topic::MAX_LEVELS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check_bytes(rest);
    } else {
        check_batch(rest);
    }
});

fn check_bytes(body: &[u8]) {
    let now = Instant::now();
    let Some(batch) = decode_sync_batch(body, now) else {
        return;
    };
    assert_eq!(
        reference_encoding(&batch, now),
        body,
        "not the encoding of {batch:?}"
    );
    if let (Ok(origin), Ok(destination)) = (
        std::str::from_utf8(&batch.origin),
        std::str::from_utf8(&batch.destination),
    ) {
        let encoded = encode_sync_batch(
            batch.version,
            now,
            origin,
            batch.boot_ms,
            destination,
            batch.destination_boot_ms,
            batch.seq,
            &batch.records,
        );
        assert_eq!(encoded, body, "the sender encodes {batch:?} differently");
    }
    for record in &batch.records {
        assert!(forwardable(&record.topic), "record {record:?} accepted");
    }
    let mut longer = body.to_vec();
    longer.push(0);
    assert!(
        decode_sync_batch(&longer, now).is_none(),
        "trailing byte accepted"
    );
    assert!(
        decode_sync_batch(&body[..body.len() - 1], now).is_none(),
        "short body accepted"
    );
}

fn check_batch(input: &[u8]) {
    let mut input = Input(input);
    let version = 1 + input.byte() % 2;
    let now = Instant::now();
    let origin = input.text(80);
    let destination = input.text(80);
    let (boot_ms, destination_boot_ms, seq) = (input.u64(), input.u64(), input.u64());
    let mut records = Vec::new();
    for _ in 0..input.byte() % 8 {
        let flags = input.byte();
        let qos = QoS::from_u8(flags % 3).expect("0, 1 or 2");
        let topic = Bytes::from(input.text(200));
        let payload = Bytes::copy_from_slice(input.bytes(300));
        let mut message = Message::new(topic, payload, qos, flags & 4 != 0);
        if flags & 8 != 0 {
            message.expires_at = Some(now + Duration::from_secs(input.u64() % 100_000));
        }
        records.push(message);
    }
    let body = encode_sync_batch(
        version,
        now,
        &origin,
        boot_ms,
        &destination,
        destination_boot_ms,
        seq,
        &records,
    );
    let decoded = decode_sync_batch(&body, now);
    if !records.iter().all(|record| forwardable(&record.topic)) {
        assert!(decoded.is_none(), "a record no peer forwards was accepted");
        return;
    }
    let batch = decoded.expect("a batch the sender writes must be accepted");
    assert_eq!(&batch.origin[..], origin.as_bytes());
    assert_eq!(&batch.destination[..], destination.as_bytes());
    assert_eq!(
        (batch.boot_ms, batch.destination_boot_ms, batch.seq),
        (boot_ms, destination_boot_ms, seq)
    );
    assert_eq!(batch.version, version);
    assert_eq!(batch.records.len(), records.len());
    for (got, sent) in batch.records.iter().zip(&records) {
        assert_eq!(
            (&got.topic, &got.payload, got.qos, got.retain),
            (&sent.topic, &sent.payload, sent.qos, sent.retain)
        );
        // Whole seconds, so the expiry comes back exactly; version 1 does not carry it.
        let expiry = if version >= 2 { sent.expires_at } else { None };
        assert_eq!(got.expires_at, expiry);
    }
}

/// Whether a peer forwards a message on this topic: one a client may publish to (the codec
/// takes it in a PUBLISH; not empty, no wildcards, at most MAX_LEVELS levels) that is not a
/// `$` topic. Records from peers get the same rules as client PUBLISHes (issue 10, item 12).
fn forwardable(topic: &[u8]) -> bool {
    let mut publish = BytesMut::new();
    if encode_publish(&mut publish, false, QoS::AtMostOnce, false, topic, 0, b"").is_err()
        || !matches!(decode(&mut publish, None, usize::MAX), Ok(Some(_)))
    {
        return false;
    }
    let Ok(topic) = std::str::from_utf8(topic) else {
        return false;
    };
    !topic.is_empty()
        && !topic.starts_with('$')
        && !topic.contains(['+', '#'])
        && topic.split('/').count() <= MAX_LEVELS
}

/// The wire format of the sync module's documentation, written out independently (with the
/// expiries left at `now`, when the batch was decoded).
fn reference_encoding(batch: &SyncBatch, now: Instant) -> Vec<u8> {
    let mut out = vec![batch.version, 1];
    for (id, boot_ms) in [
        (&batch.origin, batch.boot_ms),
        (&batch.destination, batch.destination_boot_ms),
    ] {
        out.push(u8::try_from(id.len()).expect("an id is at most 255 bytes"));
        out.extend_from_slice(id);
        out.extend_from_slice(&boot_ms.to_be_bytes());
    }
    out.extend_from_slice(&batch.seq.to_be_bytes());
    let count = u16::try_from(batch.records.len()).expect("at most 65535 records");
    out.extend_from_slice(&count.to_be_bytes());
    for record in &batch.records {
        let expiry = record
            .expires_at
            .map(|at| at.saturating_duration_since(now));
        let mut flags = record.qos.as_u8() | if record.retain { 0b100 } else { 0 };
        if expiry.is_some() {
            flags |= 0b1000;
        }
        if !record.properties.is_empty() {
            flags |= 0b1_0000;
        }
        assert!(
            batch.version >= 2 || flags < 0b1000,
            "version 1 carries neither expiry nor properties"
        );
        out.push(flags);
        let topic_len = u16::try_from(record.topic.len()).expect("a topic fits its length");
        out.extend_from_slice(&topic_len.to_be_bytes());
        out.extend_from_slice(&record.topic);
        if let Some(left) = expiry {
            assert_eq!(left.subsec_nanos(), 0, "whole seconds from the decode");
            let secs = u32::try_from(left.as_secs()).expect("sent as a u32");
            out.extend_from_slice(&secs.to_be_bytes());
        }
        if !record.properties.is_empty() {
            let len = u16::try_from(record.properties.len()).expect("properties fit");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&record.properties);
        }
        let payload_len = u32::try_from(record.payload.len()).expect("a payload fits");
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.extend_from_slice(&record.payload);
    }
    out
}

/// Fuzz input read as fields; missing bytes read as zeros, so every input is a batch.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        let mut value = [0; 8];
        let bytes = self.bytes(8);
        value[..bytes.len()].copy_from_slice(bytes);
        u64::from_be_bytes(value)
    }

    /// Up to `max` bytes, as many as the next byte says.
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = if max == 1 {
            1
        } else {
            usize::from(self.byte()) % (max + 1)
        };
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    /// Text with the input's bytes where they are UTF-8 (U+FFFD elsewhere).
    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
}
