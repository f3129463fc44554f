//! Links from the network's side: the parser of version 3 datagrams (segments and
//! acknowledgements) on the raw input, then a link's receiving half fed the input cut into
//! segments (`[number: u16][hold: u8][length: u8][bytes]` each), in any order, repeated,
//! beyond the window, held and let go, with every frame taken parsed as a record (a stamped
//! retained one stored), as interest, and as a retained digest (answered) or listing part
//! (compared with the store). Nothing may panic, and what the receiver holds stays within its
//! window.

#![no_main]

use coolpy7::fuzzing::{decode_link_datagram, feed_inbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_link_datagram(data);
    let mut segments = Vec::new();
    let mut rest = data;
    while rest.len() >= 4 {
        let seq = u64::from(u16::from_be_bytes([rest[0], rest[1]])).max(1);
        let hold = rest[2] & 1 == 1;
        let len = usize::from(rest[3]).min(rest.len() - 4);
        segments.push((seq, rest[4..4 + len].to_vec(), hold));
        rest = &rest[4 + len..];
    }
    feed_inbox(&segments);
});
