use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

/// A client's frame: masked with `mask`, FIN as given.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend((len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend((len as u64).to_be_bytes());
        }
    }
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(true, 0x2, payload, [0x12, 0x34, 0x56, 0x78])
}

/// The MQTT bytes and the control frames a run of frames carried.
type Carried = (Vec<u8>, Vec<(Opcode, Vec<u8>)>);

/// Decodes `bytes` fed in pieces of `step` with unlimited room: what they carry, or the first
/// error.
fn decode_all(bytes: &[u8], step: usize) -> Result<Carried, FrameError> {
    let mut decoder = Decoder::default();
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut controls = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        input.extend_from_slice(piece);
        loop {
            let decoded = decoder.decode(&mut input, &mut out, usize::MAX / 2)?;
            controls.extend(decoded.control);
            if !decoded.progress {
                break;
            }
        }
    }
    Ok((out.to_vec(), controls))
}

#[test]
fn binary_frames_are_unmasked_into_the_stream_whatever_the_pieces() {
    let mut bytes = binary(b"hello ");
    bytes.extend(client_frame(false, 0x2, b"frag", [1, 2, 3, 4]));
    bytes.extend(client_frame(true, 0x9, b"ping!", [9, 9, 9, 9]));
    bytes.extend(client_frame(false, 0x0, b"men", [5, 6, 7, 8]));
    bytes.extend(client_frame(true, 0x0, b"ted", [0, 0, 0, 1]));
    bytes.extend(binary(&[]));
    let big = vec![0xA5; 70_000];
    bytes.extend(binary(&big));
    let mut expected = b"hello fragmented".to_vec();
    expected.extend(&big);
    for step in [1, 2, 3, 7, 13, 100, 4096, bytes.len()] {
        let (stream, controls) = decode_all(&bytes, step).expect("valid frames");
        assert_eq!(stream, expected, "in pieces of {step}");
        assert_eq!(
            controls,
            [(Opcode::Ping, b"ping!".to_vec())],
            "in pieces of {step}"
        );
    }
}

#[test]
fn output_is_bounded_by_the_room_given() {
    let mut decoder = Decoder::default();
    let mut input = BytesMut::from(&binary(b"0123456789")[..]);
    let mut out = BytesMut::new();
    let first = decoder.decode(&mut input, &mut out, 4).expect("valid");
    assert_eq!(first.payload, 4);
    assert_eq!(&out[..], b"0123");
    let rest = decoder.decode(&mut input, &mut out, 100).expect("valid");
    assert_eq!(rest.payload, 6);
    assert_eq!(&out[..], b"0123456789");
    assert!(input.is_empty());
    // No room, nothing taken: the payload waits in the input.
    let mut input = BytesMut::from(&binary(b"abc")[..]);
    let none = decoder.decode(&mut input, &mut out, 0).expect("valid");
    assert_eq!(none.payload, 0);
    assert_eq!(input.len(), 3, "the header was consumed, the payload kept");
}

#[test]
fn one_control_frame_per_call() {
    let mut bytes = client_frame(true, 0x9, b"a", [1, 1, 1, 1]);
    bytes.extend(client_frame(true, 0x9, b"b", [1, 1, 1, 1]));
    let mut decoder = Decoder::default();
    let mut input = BytesMut::from(&bytes[..]);
    let mut out = BytesMut::new();
    let first = decoder.decode(&mut input, &mut out, 10).expect("valid");
    assert_eq!(first.control, Some((Opcode::Ping, b"a".to_vec())));
    let second = decoder.decode(&mut input, &mut out, 10).expect("valid");
    assert_eq!(second.control, Some((Opcode::Ping, b"b".to_vec())));
    let third = decoder.decode(&mut input, &mut out, 10).expect("valid");
    assert_eq!(third, Decoded::default());
}

#[test]
fn frames_the_protocol_forbids_are_refused() {
    let mask = [7, 7, 7, 7];
    let unmasked = {
        let mut frame = binary(b"x");
        frame[1] &= 0x7F;
        frame
    };
    let long_length = {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend((1u64 << 63).to_be_bytes());
        frame.extend(mask);
        frame
    };
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (client_frame(true, 0x1, b"text", mask), FrameError::Text),
        (unmasked, FrameError::Unmasked),
        (
            client_frame(true, 0x2 | 0x40, b"x", mask),
            FrameError::Reserved,
        ),
        (client_frame(true, 0x3, b"x", mask), FrameError::Opcode(3)),
        (client_frame(false, 0x9, b"x", mask), FrameError::Control),
        (
            client_frame(true, 0x9, &[0; 126], mask),
            FrameError::Control,
        ),
        (
            client_frame(true, 0x0, b"x", mask),
            FrameError::Continuation,
        ),
        (
            [
                client_frame(false, 0x2, b"x", mask),
                client_frame(true, 0x2, b"y", mask),
            ]
            .concat(),
            FrameError::Interleaved,
        ),
        (long_length, FrameError::Length),
        (client_frame(true, 0x8, &[3], mask), FrameError::Close),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            decode_all(&bytes, bytes.len()).err(),
            Some(expected.clone())
        );
        assert_eq!(decode_all(&bytes, 1).err(), Some(expected));
    }
    assert_eq!(FrameError::Text.close_code(), 1003);
    assert_eq!(FrameError::Unmasked.close_code(), 1002);
}

#[test]
fn server_frames_are_final_unmasked_and_sized_by_their_payload() {
    for (len, header) in [
        (0usize, 2usize),
        (125, 2),
        (126, 4),
        (65_535, 4),
        (65_536, 10),
    ] {
        let payload = vec![0x42; len];
        let mut out = BytesMut::new();
        encode(Opcode::Binary, &payload, &mut out);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1] & 0x80, 0, "not masked");
        assert_eq!(out.len(), header + len, "{len}-byte payload");
        assert_eq!(&out[header..], &payload[..]);
    }
    let mut out = BytesMut::new();
    encode(Opcode::Close, &1000u16.to_be_bytes(), &mut out);
    assert_eq!(&out[..], &[0x88, 2, 0x03, 0xE8]);
}

proptest! {
    /// Any sequence of binary frames, fed in any pieces with any room, yields exactly their
    /// payloads in order.
    #[test]
    fn any_frames_any_pieces_any_room(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
        mask in any::<[u8; 4]>(),
        step in 1usize..64,
        room in 1usize..64,
    ) {
        let bytes: Vec<u8> = payloads
            .iter()
            .flat_map(|p| client_frame(true, 0x2, p, mask))
            .collect();
        let mut decoder = Decoder::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in bytes.chunks(step) {
            input.extend_from_slice(piece);
            for _ in 0..10_000 {
                let decoded = decoder.decode(&mut input, &mut out, room).expect("valid");
                prop_assert!(decoded.payload <= room);
                if !decoded.progress {
                    break;
                }
            }
        }
        prop_assert_eq!(out.to_vec(), payloads.concat());
        prop_assert!(input.is_empty());
    }

    /// Arbitrary bytes never panic the decoder, and its input never holds more than a header
    /// and a control frame it waits for, or payload it had no room for.
    #[test]
    fn arbitrary_input_is_decoded_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut decoder = Decoder::default();
        let mut input = BytesMut::from(&bytes[..]);
        let mut out = BytesMut::new();
        for _ in 0..1_000 {
            match decoder.decode(&mut input, &mut out, 1 << 20) {
                Ok(decoded) if decoded.progress => {}
                Ok(_) => {
                    prop_assert!(input.len() <= 14 + 125);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

#[test]
fn a_close_is_answered_with_a_code_an_endpoint_may_send() {
    let with = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
    assert_eq!(close_answer(&[]), 1000);
    assert_eq!(close_answer(&with(1001, b"going away")), 1001);
    assert_eq!(close_answer(&with(4000, b"")), 4000);
    for reserved in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
        assert_eq!(close_answer(&with(reserved, b"")), 1002, "{reserved}");
    }
    assert_eq!(close_answer(&with(1000, &[0xff, 0xfe])), 1007);
    assert_eq!(close_answer(&[3]), 1002);
}
