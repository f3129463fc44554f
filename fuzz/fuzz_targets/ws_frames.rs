//! The WebSocket frame decoder on anything a client may send after the upgrade, fed in two
//! pieces with a bounded output room per call: it never panics, never hands up more than the
//! room it was given, holds back only what it cannot decode yet (a partial header or control
//! frame, at most 14 + 125 bytes, when it has room for payload), and where the input is cut or
//! how much room each call has never changes what it makes of the input.
//!
//! The input is a two-byte cut, one byte of room (1 to 256 bytes per call), then the bytes.

#![no_main]

use coolpy7::fuzzing::decode_ws_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [high, low, room, data @ ..] = data else {
        return;
    };
    let cut = usize::from(u16::from_be_bytes([*high, *low])).min(data.len());
    let room = usize::from(*room) + 1;
    let whole = decode_ws_frames(&[data], usize::MAX / 2);
    let split = decode_ws_frames(&[&data[..cut], &data[cut..]], usize::MAX / 2);
    let narrow = decode_ws_frames(&[&data[..cut], &data[cut..]], room);
    let made =
        |d: &coolpy7::fuzzing::WsDecoded| (d.stream.clone(), d.controls.clone(), d.error.clone());
    assert_eq!(made(&whole), made(&split), "the cut changed the decoding");
    assert_eq!(
        made(&split),
        made(&narrow),
        "the room per call changed the decoding"
    );
    for decoded in [&whole, &split, &narrow] {
        assert!(
            decoded.held_max <= 14 + 125,
            "held {} bytes",
            decoded.held_max
        );
    }
});
