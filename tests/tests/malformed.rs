//! Malformed input: garbage, invalid fixed-header flags, over-long remaining lengths, truncated
//! packets and a huge announced length. Each test ends by checking that the broker still serves
//! new clients.

use std::time::{Duration, Instant};

use coolpy7_tests::packets::{self, Connect, Garbage, Packet, PublishPacket};
use coolpy7_tests::raw::RecvError;
use coolpy7_tests::{assert_healthy, unique_id, Broker, RawClient, QUIET, TIMEOUT};

fn accepted(packets: &[Packet]) -> bool {
    packets
        .iter()
        .any(|p| matches!(p, Packet::ConnAck { code: 0, .. }))
}

/// A connected 3.1.1 client.
async fn connected(broker: &Broker) -> RawClient {
    RawClient::connect_v311(broker.mqtt_addr(), &unique_id("mal")).await
}

#[tokio::test]
async fn garbage_before_connect_is_closed() {
    let mut broker = Broker::start(&["-nt", "1"]);
    for seed in 0..8u64 {
        let mut client = RawClient::connect(broker.mqtt_addr()).await;
        let garbage = Garbage::new(seed).bytes(64);
        let _ = client.try_send(&garbage).await;
        let before = client.expect_closed(Duration::from_secs(3)).await;
        assert!(
            !accepted(&before),
            "garbage {garbage:02x?} was accepted as a CONNECT: {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn garbage_after_connect_is_closed() {
    let mut broker = Broker::start(&[]);
    for seed in 0..8u64 {
        let mut client = connected(&broker).await;
        // Start with a reserved packet type (0 or 15) so that the garbage is invalid from its
        // first byte, whatever follows.
        let mut garbage = Garbage::new(100 + seed).bytes(64);
        let reserved_type: u8 = if seed % 2 == 0 { 0x00 } else { 0xF0 };
        garbage[0] = reserved_type | (garbage[0] & 0x0F);
        let _ = client.try_send(&garbage).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(
            before.is_empty(),
            "garbage {garbage:02x?} was answered: {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn invalid_fixed_header_flags_are_closed() {
    let mut broker = Broker::start(&[]);
    let subscribe = packets::subscribe(1, &[("a/b", 0)]);
    let unsubscribe = packets::unsubscribe(2, &["a/b"]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "SUBSCRIBE with flags 0",
            [&[0x80], &subscribe[1..]].concat(),
        ),
        (
            "UNSUBSCRIBE with flags 0",
            [&[0xA0], &unsubscribe[1..]].concat(),
        ),
        ("PUBREL with flags 0", vec![0x60, 0x02, 0x00, 0x01]),
        ("PUBACK with flags 2", vec![0x42, 0x02, 0x00, 0x01]),
        ("PINGREQ with flags 1", vec![0xC1, 0x00]),
        (
            "PUBLISH with QoS 3",
            [&[0x36], &packets::publish("a/b", 1, 1, b"x")[1..]].concat(),
        ),
        (
            "QoS 0 PUBLISH with DUP",
            [&[0x38], &packets::publish("a/b", 0, 0, b"x")[1..]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut client = connected(&broker).await;
        let _ = client.try_send(&bytes).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(
            before.is_empty(),
            "{what} ({bytes:02x?}) was answered: {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn five_byte_remaining_length_is_closed() {
    let mut broker = Broker::start(&[]);
    // Before CONNECT (with the default 2 s CONNECT timeout, a close within 1.5 s is a reaction
    // to the length itself).
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    let start = Instant::now();
    let _ = client.try_send(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(before.is_empty(), "answered: {before:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "closed only after {:?}",
        start.elapsed()
    );
    // After CONNECT.
    let mut client = connected(&broker).await;
    let _ = client.try_send(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(before.is_empty(), "answered: {before:?}");
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn truncated_packets_then_close_do_not_hurt_the_broker() {
    let mut broker = Broker::start(&[]);
    // A CONNECT cut in the middle.
    let connect = Connect::v311(&unique_id("cut")).encode();
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect[..connect.len() / 2]).await;
    drop(client);
    // A PUBLISH cut in the middle, after a good CONNECT.
    let publish = packets::publish("cut/t", 1, 1, &[7u8; 100]);
    let mut client = connected(&broker).await;
    client.send(&publish[..20]).await;
    drop(client);
    // Only a first byte.
    let mut client = connected(&broker).await;
    client.send(&[0x30]).await;
    drop(client);
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn string_length_past_the_end_is_closed() {
    let mut broker = Broker::start(&[]);
    // CONNECT whose client id claims 100 bytes but the packet ends after 2.
    let mut body = packets::string(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    body.extend_from_slice(&[0, 100, b'a', b'b']);
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&packets::packet(0x10, &body)).await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(!accepted(&before), "accepted: {before:?}");

    // PUBLISH whose topic length runs past the packet.
    let mut client = connected(&broker).await;
    client
        .send(&packets::packet(0x30, &[0, 50, b'a', b'/', b'b']))
        .await;
    let before = client.expect_closed(TIMEOUT).await;
    assert!(before.is_empty(), "answered: {before:?}");
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn bad_subscribe_payloads_are_closed() {
    let mut broker = Broker::start(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("requested QoS 3", packets::subscribe(1, &[("a/b", 3)])),
        (
            "reserved bits in the QoS byte",
            packets::subscribe(1, &[("a/b", 0x04 | 1)]),
        ),
        ("SUBSCRIBE without filters", packets::packet(0x82, &[0, 1])),
        (
            "UNSUBSCRIBE without filters",
            packets::packet(0xA2, &[0, 1]),
        ),
    ];
    for (what, bytes) in cases {
        let mut client = connected(&broker).await;
        let _ = client.try_send(&bytes).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(before.is_empty(), "{what}: the broker answered {before:?}");
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn huge_announced_length_is_not_allocated() {
    let mut broker = Broker::start(&[]);
    assert_healthy(&mut broker).await;
    let rss_before = broker.rss_kb();
    let vm_before = broker.proc_status_kb("VmSize");

    // Five connected clients and two unconnected ones announce 200 MB packets and send nothing
    // more: 1.4 GB if the broker allocated what is announced.
    const ANNOUNCED: usize = 200_000_000;
    let mut clients = Vec::new();
    for i in 0..7 {
        let mut client = if i < 5 {
            connected(&broker).await
        } else {
            RawClient::connect(broker.mqtt_addr()).await
        };
        let first = if i < 5 { 0x30 } else { 0x10 };
        let mut header = vec![first];
        header.extend(packets::remaining_length(ANNOUNCED));
        let _ = client.try_send(&header).await;
        clients.push(client);
    }
    // Give the broker time to (wrongly) allocate.
    tokio::time::sleep(Duration::from_millis(700)).await;
    broker.assert_running();
    let rss_after = broker.rss_kb();
    let vm_after = broker.proc_status_kb("VmSize");
    let rss_growth_mb = rss_after.saturating_sub(rss_before) / 1024;
    let vm_growth_mb = vm_after.saturating_sub(vm_before) / 1024;
    assert!(
        rss_growth_mb < 50,
        "VmRSS grew by {rss_growth_mb} MB ({rss_before} kB -> {rss_after} kB)"
    );
    // Untouched allocations do not show in VmRSS; VmSize catches a reserved 200 MB buffer.
    assert!(
        vm_growth_mb < 500,
        "VmSize grew by {vm_growth_mb} MB ({vm_before} kB -> {vm_after} kB): the announced \
         lengths seem to have been allocated"
    );
    assert_healthy(&mut broker).await;
    drop(clients);
    assert_healthy(&mut broker).await;
}

/// Levels of the deep topics and filters below: a 65,535-byte string holds at most 32,768.
const DEEP: usize = 32_000;

/// The answer to a request that the broker may either serve or refuse by closing.
async fn answer_or_close(client: &mut RawClient) -> Option<Packet> {
    match client.try_recv(TIMEOUT).await {
        Ok(packet) => Some(packet),
        Err(RecvError::Closed(_)) => None,
        Err(RecvError::Timeout) => panic!("neither an answer nor a close within {TIMEOUT:?}"),
        Err(RecvError::Invalid(msg)) => panic!("invalid packet from the broker: {msg}"),
    }
}

#[tokio::test]
async fn deeply_nested_filter_does_not_crash_the_broker() {
    let mut broker = Broker::start(&[]);
    let filter = "a/".repeat(DEEP) + "#";
    let topic = "a/".repeat(DEEP) + "b";
    assert!(filter.len() <= 65_535 && topic.len() <= 65_535);

    let mut sub = connected(&broker).await;
    let _ = sub.try_send(&packets::subscribe(1, &[(&filter, 1)])).await;
    let granted = match answer_or_close(&mut sub).await {
        None => false,
        Some(Packet::SubAck { pkid: 1, codes }) if codes == [1] => true,
        Some(Packet::SubAck { pkid: 1, codes }) if codes == [0x80] => false,
        Some(other) => panic!("unexpected answer to a deep SUBSCRIBE: {other:?}"),
    };
    broker.assert_running();

    let mut publisher = connected(&broker).await;
    let _ = publisher
        .try_send(&packets::publish(&topic, 1, 1, b"deep"))
        .await;
    let routed = match answer_or_close(&mut publisher).await {
        None => false,
        Some(Packet::PubAck(1)) => true,
        Some(other) => panic!("unexpected answer to a deep PUBLISH: {other:?}"),
    };
    broker.assert_running();
    if granted && routed {
        let got = sub.recv_publish(TIMEOUT).await;
        assert_eq!(got.topic, topic);
        assert_eq!(got.payload, b"deep");
        sub.send(&packets::unsubscribe(2, &[&filter])).await;
        sub.expect(Packet::UnsubAck(2)).await;
    }
    drop(sub);
    drop(publisher);
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn deeply_nested_retained_topic_does_not_crash_the_broker() {
    let mut broker = Broker::start(&[]);
    let topic = "r/".repeat(DEEP) + "x";
    let mut publisher = connected(&broker).await;
    let retained = PublishPacket::new(&topic, 1, 1, b"deep")
        .retain(true)
        .encode();
    let _ = publisher.try_send(&retained).await;
    let stored = match answer_or_close(&mut publisher).await {
        None => false,
        Some(Packet::PubAck(1)) => true,
        Some(other) => panic!("unexpected answer to a deep PUBLISH: {other:?}"),
    };
    broker.assert_running();

    // Looking it up through wildcards walks the whole depth.
    for (i, filter) in ["#", "r/#", "r/+/#"].into_iter().enumerate() {
        let mut sub = connected(&broker).await;
        let pkid = i as u16 + 1;
        assert_eq!(sub.subscribe(pkid, &[(filter, 0)]).await, vec![0]);
        if stored {
            let got = sub.recv_publish(TIMEOUT).await;
            assert_eq!((got.topic.as_str(), got.retain), (topic.as_str(), true));
        }
        sub.expect_no_packet(QUIET).await;
    }
    broker.assert_running();

    if stored {
        // Delete it again (empty retained payload), pruning the deep branch.
        let mut publisher = connected(&broker).await;
        let delete = PublishPacket::new(&topic, 1, 2, b"").retain(true).encode();
        publisher.send(&delete).await;
        publisher.expect(Packet::PubAck(2)).await;
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn longest_topic_name_is_routed() {
    let mut broker = Broker::start(&[]);
    let topic: String = "t".repeat(65_535);
    let mut sub = connected(&broker).await;
    assert_eq!(sub.subscribe(1, &[("#", 1)]).await, vec![1]);
    let mut publisher = connected(&broker).await;
    publisher.publish_qos1(&topic, 1, b"long").await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.topic.len(), 65_535);
    assert_eq!(got.payload, b"long");
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn server_only_packets_from_a_client_close() {
    let mut broker = Broker::start(&[]);
    let cases: [(&str, &[u8]); 4] = [
        ("CONNACK", &[0x20, 0x02, 0x00, 0x00]),
        ("SUBACK", &[0x90, 0x03, 0x00, 0x01, 0x00]),
        ("UNSUBACK", &[0xB0, 0x02, 0x00, 0x01]),
        ("PINGRESP", &[0xD0, 0x00]),
    ];
    for (what, bytes) in cases {
        let mut client = connected(&broker).await;
        let _ = client.try_send(bytes).await;
        let before = client.expect_closed(TIMEOUT).await;
        assert!(
            before.is_empty(),
            "{what} from a client was answered: {before:?}"
        );
    }
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn acknowledgements_for_unknown_packet_ids_are_harmless() {
    let mut broker = Broker::start(&[]);
    let mut client = connected(&broker).await;
    client.send(&packets::puback(999)).await;
    client.send(&packets::pubrec(998)).await;
    client.send(&packets::pubcomp(997)).await;
    // The connection stays usable (a PUBREL for 998 may or may not come first).
    client.ping().await;
    client.assert_open_for(QUIET).await;
    assert_healthy(&mut broker).await;
}
