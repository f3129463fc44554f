//! The PROXY protocol header parser on anything a connection may start with, fed as it might
//! arrive (in two reads): it never panics, a header it completes lies within what arrived and
//! within the longest header of its version, it never waits for more than the longest header,
//! and more bytes never change its verdict on a header it has already completed or refused.
//!
//! The input is a two-byte cut (where the first read ends) followed by the bytes.

#![no_main]

use coolpy7::transport::proxy::{parse, Parsed, V1_MAX, V2_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [high, low, data @ ..] = data else {
        return;
    };
    let cut = usize::from(u16::from_be_bytes([*high, *low]));
    let first = &data[..cut.min(data.len())];
    let early = parse(first);
    let whole = parse(data);
    match whole {
        Ok(Parsed::Complete { len, .. }) => {
            assert!(len <= data.len());
            let longest = if data[0] == b'P' { V1_MAX } else { V2_MAX };
            assert!(len <= longest, "{len} bytes");
        }
        Ok(Parsed::Incomplete) => assert!(data.len() < V1_MAX.max(V2_MAX)),
        Err(_) => {}
    }
    match early {
        Ok(Parsed::Incomplete) => {}
        decided => assert_eq!(decided, whole, "more bytes changed the verdict"),
    }
});
