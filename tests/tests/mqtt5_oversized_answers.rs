//! Answers that grow with the client's input stay bounded: a DISCONNECT whose Reason String
//! quotes a 64 KiB filter is still sent (the text is cut), and a SUBACK discarded because it
//! exceeds the client's Maximum Packet Size leaves no write buffer behind on the idle
//! connection. (Both found by review; both tests failed before the fix.)

use std::time::Duration;

use coolpy7_tests::packets5::{reason, Connect, Property as P, SubscribePacket};
use coolpy7_tests::{unique_id, Broker, RawClient5, TIMEOUT};

/// A wildcard filter refused with `-wsa false` is quoted whole (Debug-escaped) into the
/// DISCONNECT's Reason String. A filter may be 65,535 bytes and a Reason String no longer
/// either: the DISCONNECT cannot be encoded ("could not encode DISCONNECT" at debug), and the
/// client is closed without the 0xA2 it is owed. 33 KB of `"` is enough, each escaped to two.
#[tokio::test]
async fn a_long_wildcard_filter_still_gets_disconnect_0xa2() {
    let broker = Broker::start(&["-wsa=false"]);
    let quotes = format!("{}/#", "\"".repeat(33_000));
    let longest = format!("{}/#", "w".repeat(65_533));
    for filter in [quotes, longest] {
        let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("long")).await;
        client
            .send(&SubscribePacket::new(1).filter(&filter, 0).encode())
            .await;
        let (disconnect, before) = client.expect_disconnect_after(TIMEOUT).await;
        assert_eq!(
            disconnect.code,
            reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            "filter of {} bytes: {disconnect:?}",
            filter.len()
        );
        assert!(before.is_empty(), "{before:?}");
    }
}

const CONNECTIONS: u32 = 20;
/// The allocator told to give back what the broker frees at once, so that VmRSS measures what
/// it keeps: jemalloc (the binary's allocator) purges freed pages without delay, in one arena;
/// glibc malloc (a build without the `jemalloc` feature) maps large buffers on their own and
/// trims its heap.
const MALLOC: &[(&str, &str)] = &[
    (
        "_RJEM_MALLOC_CONF",
        "dirty_decay_ms:0,muzzy_decay_ms:0,narenas:1",
    ),
    ("MALLOC_MMAP_THRESHOLD_", "65536"),
    ("MALLOC_TRIM_THRESHOLD_", "0"),
    ("MALLOC_ARENA_MAX", "1"),
];
/// Filters in one SUBSCRIBE of about 1 MB (the default -mpl): 5 bytes each, one reason code
/// each in the SUBACK. Invalid ("a#", SUBACK 0x8F), so the broker spends nothing on the router
/// and holds no subscription for them: only the acknowledgement is large.
const FILTERS: usize = 208_000;

/// VmRSS growth (kB) of a broker after `CONNECTIONS` MQTT 5 clients each sent the same large
/// SUBSCRIBE and then stayed idle; `tiny` clients allow 10-byte packets, so their SUBACK is
/// discarded, the others read theirs.
async fn idle_growth_kb(tiny: bool, subscribe: &[u8]) -> u64 {
    let broker = Broker::start_with_env(&[], MALLOC);
    // Both cases read the metrics, and the first read allocates for good.
    let _ = broker.metric("coolpy7_acks_too_large_total").await;
    let before = broker.rss_kb();
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let mut connect = Connect::new(&unique_id("big"));
        if tiny {
            connect = connect.prop(P::MaximumPacketSize(10));
        }
        let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
        client.send(subscribe).await;
        if tiny {
            // Polled once the broker is likely done, so that the metrics requests do not
            // allocate among the SUBSCRIBE's many small allocations and pin the heap.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let dropped = f64::from(i + 1);
            broker
                .wait_metric(
                    "coolpy7_acks_too_large_total",
                    "the SUBACK discarded",
                    Duration::from_secs(60),
                    |value| value >= dropped,
                )
                .await;
        } else {
            let suback = client.recv(Duration::from_secs(60)).await;
            assert!(
                matches!(suback, coolpy7_tests::packets5::Packet::SubAck(_)),
                "expected SUBACK"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = broker.metric("coolpy7_acks_too_large_total").await;
        }
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = broker.rss_kb();
    eprintln!("tiny={tiny}: VmRSS {before} kB -> {after} kB, {CONNECTIONS} idle connections");
    after.saturating_sub(before)
}

/// "No buffer is kept while a connection is idle" (connection/mod.rs), except after a discarded
/// SUBACK/UNSUBACK: `append_within` encodes it into the empty write buffer before measuring it,
/// truncates it, and the loop only resets the buffer after a write (`write_now`), which an empty
/// buffer never gets. Each such idle connection keeps a buffer the size of the discarded
/// acknowledgement (here ~208 KB; up to about -mpl/4) until something is next sent to it, which
/// for a client without keepalive may be never.
#[tokio::test]
async fn a_discarded_suback_leaves_no_write_buffer_behind() {
    let mut subscribe = SubscribePacket::new(1);
    for _ in 0..FILTERS {
        subscribe = subscribe.filter("a#", 0);
    }
    let subscribe = subscribe.encode();
    let read = idle_growth_kb(false, &subscribe).await;
    let discarded = idle_growth_kb(true, &subscribe).await;
    // The buffers kept would be CONNECTIONS x ~208 KB = ~4 MB; allow half of that for noise.
    let kept_kb = u64::from(CONNECTIONS) * (FILTERS as u64) / 1024;
    assert!(
        discarded <= read + kept_kb / 2,
        "idle connections whose SUBACK was discarded grew the broker by {discarded} kB, those \
         that read theirs by {read} kB (the discarded SUBACKs total {kept_kb} kB)"
    );
}
