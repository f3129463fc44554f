//! The CoAP publish listener on any datagram: it never panics; it resets only a Confirmable
//! version-1 message, with that message's id; and every answer a request may get encodes as a
//! response of version 1 with the request's token, piggybacked on an ACK with the request's
//! message id when it was Confirmable, else Non-confirmable with a fresh id, never longer than
//! the request but for a Max-Age option (no amplification).
//!
//! The input is the datagram.

#![no_main]

use coolpy7::fuzzing::{coap_datagram, CoapVerdict};
use libfuzzer_sys::fuzz_target;

const FRESH_ID: u16 = 0xbeef;

fuzz_target!(|data: &[u8]| {
    match coap_datagram(data, FRESH_ID) {
        CoapVerdict::Ignored => {}
        CoapVerdict::Reset(reset) => {
            assert!(data.len() >= 4);
            assert_eq!(
                data[0] >> 4,
                0b0100,
                "only a version-1 Confirmable message is reset"
            );
            assert_eq!(reset, [0x70, 0x00, data[2], data[3]]);
        }
        CoapVerdict::Request {
            confirmable,
            message_id,
            token,
            publish,
            answers,
        } => {
            assert!(token.len() <= 8);
            assert!(data.len() >= 4 + token.len());
            assert_eq!(data[0] >> 6, 1);
            assert_eq!((data[0] >> 4) & 0b11, if confirmable { 0 } else { 1 });
            assert_eq!(message_id.to_be_bytes(), data[2..4]);
            assert_eq!(token, data[4..4 + token.len()]);
            assert!(!answers.is_empty());
            for answer in answers {
                let Some(answer) = answer else {
                    panic!("an answer that does not encode");
                };
                assert!(answer.len() >= 4 + token.len());
                assert_eq!(answer[0] >> 6, 1, "version 1");
                let kind = (answer[0] >> 4) & 0b11;
                let id = u16::from_be_bytes([answer[2], answer[3]]);
                if confirmable {
                    assert_eq!((kind, id), (2, message_id), "a piggybacked ACK");
                } else {
                    assert_eq!((kind, id), (1, FRESH_ID), "a NON response");
                }
                assert_eq!(usize::from(answer[0] & 0x0f), token.len());
                assert_eq!(answer[4..4 + token.len()], token[..]);
                assert!(matches!(answer[1] >> 5, 2 | 4 | 5), "a response code");
                // A Max-Age option takes 3 bytes; a diagnostic only when it fits in the request.
                assert!(answer.len() <= data.len().max(4 + token.len() + 3));
            }
            if let Some((topic, payload)) = publish {
                assert!(!topic.is_empty());
                assert!(!topic.contains('\0'));
                assert!(topic.len() + payload.len() < data.len());
            }
        }
    }
});
