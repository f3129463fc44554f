//! The PROXY protocol header parser on anything a connection may start with, fed as it might
//! arrive (in two reads): it never panics, a header it completes lies within what arrived and
//! within the longest header allowed, and more bytes never change its verdict on a header it has
//! already completed or refused.

#![no_main]

use coolpy7::transport::proxy::{parse, Parsed, V1_MAX, V2_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let first = &data[..usize::from(cut).min(data.len())];
    let early = parse(first);
    let whole = parse(data);
    if let Ok(Parsed::Complete { len, .. }) = whole {
        assert!(len <= data.len());
        assert!(len <= V1_MAX.max(V2_MAX));
    }
    match early {
        Ok(Parsed::Incomplete) => {}
        decided => assert_eq!(decided, whole, "more bytes changed the verdict"),
    }
});
