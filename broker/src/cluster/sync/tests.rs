use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use super::receive::*;
use super::*;
use crate::cluster::auth::DatagramKey;
use crate::cluster::membership::{MemberInfo, MemberState};
use crate::cluster::membership::{Members, NodeIdentity};
use crate::cluster::peers::Peers;
use crate::cluster::replay::ReceivedAt;
use crate::codec::QoS;
use crate::metrics::ClusterDrop;
use crate::metrics::Metrics;
use crate::router::Message;

fn message(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Message {
    Message::new(
        Bytes::copy_from_slice(topic.as_bytes()),
        Bytes::copy_from_slice(payload),
        qos,
        retain,
    )
}

fn datagram(key: &DatagramKey, origin: &Origin, seq: u64, records: &[Message]) -> Vec<u8> {
    datagram_to(key, origin, &identity("local", 1), seq, records)
}

fn datagram_to(
    key: &DatagramKey,
    origin: &Origin,
    destination: &NodeIdentity,
    seq: u64,
    records: &[Message],
) -> Vec<u8> {
    let mut out = body(origin, destination, seq, records, Instant::now());
    key.seal(&mut out);
    out
}

/// An unsealed batch in `origin`'s version, with expiries measured at `now`.
fn body(
    origin: &Origin,
    destination: &NodeIdentity,
    seq: u64,
    records: &[Message],
    now: Instant,
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(&mut out, origin.version, origin, destination, seq);
    out.put_u16(records.len() as u16);
    for record in records {
        encode_record(&mut out, record, origin.version, now);
    }
    out
}

fn origin_of(name: &str, boot_ms: u64, version: u8) -> Origin {
    Origin {
        node_id: name.into(),
        boot_ms,
        started: Instant::now(),
        version,
    }
}

fn identity(name: &str, boot_ms: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: name.to_string(),
        gossip: "127.0.0.1:7946".parse().unwrap(),
        sync_port: 7947,
        mqtt_port: 1883,
        version: NodeIdentity::advertised_version("0", NEWEST_VERSION),
        boot_ms,
        renewal: 0,
    }
}

fn members_with(peer: NodeIdentity, state: MemberState) -> Members {
    let members = Members::new(identity("local", 1), false);
    members.set_others_for_tests(vec![MemberInfo {
        identity: peer,
        state,
    }]);
    members
}

#[test]
fn records_round_trip() {
    let key = DatagramKey::sync(b"k");
    let origin = origin_of("n1", 42, 1);
    let sent = [
        message("a/b", b"hello", QoS::AtMostOnce, false),
        message("c", b"", QoS::ExactlyOnce, true),
    ];
    let bytes = datagram(&key, &origin, 7, &sent);
    let batch = decode_batch(key.open(&bytes).unwrap(), 2, Instant::now()).unwrap();
    assert_eq!(batch.version, 1);
    assert_eq!(&batch.origin[..], b"n1");
    assert_eq!((batch.boot_ms, batch.seq), (42, 7));
    assert_eq!(&batch.destination[..], b"local");
    assert_eq!(batch.destination_boot_ms, 1);
    assert_eq!(batch.records.len(), 2);
    for (got, want) in batch.records.iter().zip(&sent) {
        assert_eq!(got.topic, want.topic);
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.qos, want.qos);
        assert_eq!(got.retain, want.retain);
    }
    // The record size the limit applies to is exactly what a record takes on the wire.
    let mut one = Vec::new();
    encode_record(&mut one, &sent[0], 1, Instant::now());
    assert_eq!(one.len(), record_len(&sent[0], 1));
}

#[test]
fn stamped_records_round_trip_on_links_only_and_only_when_retained() {
    let now = Instant::now();
    let stamp = crate::router::Stamp {
        ms: 1_700_000_000_000,
        count: 7,
        node: Bytes::from_static(b"n2"),
    };
    let retained = message("r/t", b"on", QoS::AtMostOnce, true);
    let mut frame = Vec::new();
    encode_stamped_record(&mut frame, &retained, Some(&stamp), now);
    assert_eq!(frame.len(), stamped_record_len(&retained, Some(&stamp)));
    assert_eq!(frame[0] & FLAG_STAMP, FLAG_STAMP);
    let (got, got_stamp) = decode_frame_record(&frame, true, now).unwrap();
    assert_eq!(
        (got.topic, got.payload),
        (retained.topic.clone(), retained.payload.clone())
    );
    assert_eq!(got_stamp, Some(stamp.clone()));
    for cut in 0..frame.len() {
        assert!(
            decode_frame_record(&frame[..cut], true, now).is_none(),
            "cut at {cut}"
        );
    }
    // A message that is not retained carries no stamp: byte for byte the record without.
    let live = message("r/t", b"on", QoS::AtLeastOnce, false);
    let (mut stamped, mut plain) = (Vec::new(), Vec::new());
    encode_stamped_record(&mut stamped, &live, Some(&stamp), now);
    encode_record(&mut plain, &live, 2, now);
    assert_eq!(stamped, plain);
    assert_eq!(stamped_record_len(&live, Some(&stamp)), plain.len());
    // A stamp on a record that is not retained, or of an empty node id, is malformed.
    let mut forged = frame.clone();
    forged[0] &= !0b100;
    assert!(decode_frame_record(&forged, true, now).is_none());
    let empty_node = 1 + 2 + 3 + 8 + 4;
    let mut forged = frame.clone();
    forged[empty_node] = 0;
    forged.drain(empty_node + 1..empty_node + 3);
    assert!(decode_frame_record(&forged, true, now).is_none());
    // Best-effort batches carry no stamps.
    let origin = origin_of("n1", 1, 1);
    let mut batch = Vec::new();
    encode_header(&mut batch, 2, &origin, &identity("local", 1), 1);
    batch.put_u16(1);
    batch.extend_from_slice(&frame);
    assert!(decode_batch(&batch, 3, now).is_none());
}

#[test]
fn truncated_or_padded_or_invalid_batches_are_malformed() {
    let origin = origin_of("n1", 1, 1);
    let now = Instant::now();
    let body = body(
        &origin,
        &identity("local", 1),
        1,
        &[message("t", b"xyz", QoS::AtLeastOnce, false)],
        now,
    );
    assert!(decode_batch(&body, 2, now).is_some());
    for cut in 0..body.len() {
        assert!(decode_batch(&body[..cut], 2, now).is_none(), "cut at {cut}");
    }
    let mut padded = body.clone();
    padded.push(0);
    assert!(decode_batch(&padded, 2, now).is_none());
    for (topic, flags) in [
        ("$SYS/x", 0u8),
        ("a\u{0}b", 0),
        ("\u{0}", 0),
        ("a/+", 0),
        ("a/#", 0),
        ("", 0),
        ("t", 3),
        ("t", 8),
    ] {
        let mut bad = Vec::new();
        encode_header(&mut bad, 1, &origin, &identity("local", 1), 1);
        bad.put_u16(1);
        bad.put_u8(flags);
        bad.put_u16(topic.len() as u16);
        bad.put_slice(topic.as_bytes());
        bad.put_u32(0);
        assert!(
            decode_batch(&bad, 2, now).is_none(),
            "{topic:?} flags {flags}"
        );
    }
}

#[test]
fn limits_are_those_of_a_client_publish() {
    let limits = Limits {
        sync_limit: Some(7 + 1 + 10),
        max_packet_size: 1 + 1 + 2 + 1 + 2 + 10,
    };
    // Record 18 bytes, PUBLISH (QoS 1) 17 bytes: both at their limit.
    assert!(limits.admit(&message("t", &[0; 10], QoS::AtLeastOnce, false)));
    assert!(!limits.admit(&message("t", &[0; 11], QoS::AtMostOnce, false)));
    let tight = Limits {
        max_packet_size: 16,
        ..limits
    };
    assert!(!tight.admit(&message("t", &[0; 10], QoS::AtLeastOnce, false)));
    assert!(tight.admit(&message("t", &[0; 10], QoS::AtMostOnce, false)));
    // Two bytes of remaining length from 128 on.
    let big = message("t", &[0; 200], QoS::AtMostOnce, false);
    assert_eq!(publish_packet_len(&big), 1 + 2 + 3 + 200);
}

#[test]
fn only_fresh_datagrams_from_known_members_are_accepted() {
    // Received at the sender's boot on the wall clock: its first numbers are plausible.
    const AT: ReceivedAt = ReceivedAt {
        now_us: 0,
        wall_ms: 5,
    };
    let key = DatagramKey::sync(b"k");
    let origin = origin_of("n1", 5, 2);
    let records = [message("t", b"x", QoS::AtMostOnce, false)];
    let members = members_with(identity("n1", 5), MemberState::Up);
    let mut windows = HashMap::new();
    let first = datagram(&key, &origin, 1, &records);
    assert_eq!(
        accept(&first, &key, &members, &mut windows, AT, 2)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        accept(&first, &key, &members, &mut windows, AT, 2).unwrap_err(),
        ClusterDrop::Replay
    );
    let forged = datagram(&DatagramKey::sync(b"other"), &origin, 2, &records);
    assert_eq!(
        accept(&forged, &key, &members, &mut windows, AT, 2).unwrap_err(),
        ClusterDrop::BadTag
    );
    // A forged datagram does not burn its sequence number.
    assert!(accept(
        &datagram(&key, &origin, 2, &records),
        &key,
        &members,
        &mut windows,
        AT,
        2
    )
    .is_ok());
    let stranger = origin_of("n9", 5, 2);
    assert_eq!(
        accept(
            &datagram(&key, &stranger, 1, &records),
            &key,
            &members,
            &mut windows,
            AT,
            2
        )
        .unwrap_err(),
        ClusterDrop::UnknownOrigin
    );
    let old_boot = origin_of("n1", 4, 2);
    assert_eq!(
        accept(
            &datagram(&key, &old_boot, 9, &records),
            &key,
            &members,
            &mut windows,
            AT,
            2
        )
        .unwrap_err(),
        ClusterDrop::StaleEpoch
    );
    // Addressed to another node, or to an earlier boot of this one.
    for destination in [identity("other", 1), identity("local", 0)] {
        assert_eq!(
            accept(
                &datagram_to(&key, &origin, &destination, 10, &records),
                &key,
                &members,
                &mut windows,
                AT,
                2
            )
            .unwrap_err(),
            ClusterDrop::WrongDestination
        );
    }
    // A member held as down (say, while it renews its identity) is still heard.
    let down = members_with(identity("n1", 5), MemberState::Down);
    assert!(accept(
        &datagram(&key, &origin, 3, &records),
        &key,
        &down,
        &mut windows,
        AT,
        2
    )
    .is_ok());
}

/// The properties of an MQTT 5 message, in the wire form `Message::properties` holds.
fn v5_properties() -> Bytes {
    let values = crate::codec::PropertyValues {
        payload_format_indicator: Some(true),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    };
    let mut out = bytes::BytesMut::new();
    values.encode(&mut out);
    out.freeze()
}

fn v5_message(expires_in: Option<Duration>, now: Instant) -> Message {
    let mut message = message("a/b", b"hello", QoS::AtLeastOnce, true);
    message.properties = v5_properties();
    message.expires_at = expires_in.map(|left| now + left);
    message.origin = 7;
    message
}

#[test]
fn version_2_carries_properties_and_expiry() {
    let sent_at = Instant::now();
    let sent = [
        v5_message(Some(Duration::from_millis(9_500)), sent_at),
        v5_message(None, sent_at),
        message("plain", b"x", QoS::AtMostOnce, false),
    ];
    let body = body(
        &origin_of("n1", 1, 2),
        &identity("local", 1),
        3,
        &sent,
        sent_at,
    );
    assert_eq!(body[0], 2, "version byte");
    let received_at = sent_at + Duration::from_secs(1);
    let batch = decode_batch(&body, 2, received_at).unwrap();
    assert_eq!(batch.version, 2);
    assert_eq!(batch.records.len(), 3);
    for (got, want) in batch.records.iter().zip(&sent) {
        assert_eq!(
            (&got.topic, &got.payload, got.qos, got.retain),
            (&want.topic, &want.payload, want.qos, want.retain)
        );
        assert_eq!(got.properties, want.properties, "properties byte for byte");
        assert_eq!(got.origin, 0, "a peer's message has no local session");
    }
    // 9.5 s left is sent as 10 (rounded up: never "expired" while alive), and counted from
    // when it arrives.
    assert_eq!(
        batch.records[0].expires_at,
        Some(received_at + Duration::from_secs(10))
    );
    assert_eq!(batch.records[1].expires_at, None);
    assert_eq!(batch.records[2].expires_at, None);
    assert!(batch.records[2].properties.is_empty());

    for message in &sent {
        let mut one = Vec::new();
        encode_record(&mut one, message, 2, sent_at);
        assert_eq!(one.len(), record_len(message, 2), "{message:?}");
    }
    assert_eq!(
        record_len(&sent[0], 2),
        7 + 3 + 5 + 4 + 2 + sent[0].properties.len()
    );
    // A record without properties or expiry is the same in both versions.
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    encode_record(&mut v1, &sent[2], 1, sent_at);
    encode_record(&mut v2, &sent[2], 2, sent_at);
    assert_eq!(v1, v2);
}

#[test]
fn version_1_drops_properties_and_expiry_but_not_the_message() {
    let now = Instant::now();
    let sent = v5_message(Some(Duration::from_secs(30)), now);
    let body = body(
        &origin_of("n1", 1, 1),
        &identity("local", 1),
        1,
        &[sent],
        now,
    );
    assert_eq!(body[0], 1, "version byte");
    // What an earlier release (or a -csv 1 node) reads, and a node of this release too.
    for newest in [1, 2] {
        let batch = decode_batch(&body, newest, now).unwrap();
        let got = &batch.records[0];
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            (&b"a/b"[..], &b"hello"[..])
        );
        assert!((got.qos == QoS::AtLeastOnce) && got.retain);
        assert!(got.properties.is_empty());
        assert_eq!(got.expires_at, None);
    }
    let message = v5_message(Some(Duration::from_secs(30)), now);
    assert_eq!(record_len(&message, 1), 7 + 3 + 5);
}

#[test]
fn a_node_pinned_to_version_1_refuses_version_2() {
    let now = Instant::now();
    let records = [message("t", b"x", QoS::AtMostOnce, false)];
    let v2 = body(
        &origin_of("n1", 1, 2),
        &identity("local", 1),
        1,
        &records,
        now,
    );
    assert!(decode_batch(&v2, 2, now).is_some());
    assert!(decode_batch(&v2, 1, now).is_none());
    let mut v3 = v2.clone();
    v3[0] = 3;
    assert!(
        decode_batch(&v3, 2, now).is_none(),
        "a version not known yet"
    );
    let mut v0 = v2;
    v0[0] = 0;
    assert!(decode_batch(&v0, 2, now).is_none());
}

#[test]
fn each_peer_gets_the_newest_version_it_reads() {
    let mut peer = identity("p", 1);
    for (advertised, newest, want) in [
        ("0.1.0", 2, Some(1)),
        ("0.1.0", 1, Some(1)),
        ("0.2.0+sync.1.2", 2, Some(2)),
        ("0.2.0+sync.1.2", 1, Some(1)),
        ("9.0.0+sync.2.3", 2, Some(2)),
        ("9.0.0+sync.2.3", 1, None),
        ("9.0.0+sync.3", 2, None),
    ] {
        peer.version = advertised.to_string();
        assert_eq!(version_for(&peer, newest), want, "{advertised} to {newest}");
    }
    assert_eq!(
        version_for(&identity("p", 1), NEWEST_VERSION),
        Some(NEWEST_VERSION),
        "this release advertises what it writes"
    );
}

/// The sender, run for real: a peer that advertises only version 1 (an earlier release)
/// gets version 1 datagrams, one of this release version 2, and a message expired before
/// it is sent goes to neither.
#[tokio::test]
async fn the_sender_writes_each_peer_its_version() {
    let old = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let new = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for socket in [&old, &new] {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    }
    let peer = |name: &str, socket: &std::net::UdpSocket, newest: u8| {
        let mut identity = identity(name, 1);
        identity.sync_port = socket.local_addr().unwrap().port();
        identity.version = NodeIdentity::advertised_version("0.1.0", newest);
        MemberInfo {
            identity,
            state: MemberState::Up,
        }
    };
    let members = Arc::new(Members::new(identity("local", 1), false));
    members.set_others_for_tests(vec![peer("old", &old, 1), peer("new", &new, 2)]);
    let key = DatagramKey::sync(b"k");
    let socket = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let (peers, forwarder) = forwarding_to(members, 2);
    let forward = |message: Message| {
        let message = Arc::new(message);
        let mut batch = ForwardBatch::default();
        if let Some(prepared) = forwarder.prepare(&message, &mut batch) {
            forwarder.forward(&message, None, prepared, &mut batch);
        }
        forwarder.flush(&mut batch);
    };
    let sender = Sender::spawn(
        socket,
        peers,
        key.clone(),
        origin_of("local", 1, 2),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let now = Instant::now();
    let mut expired = v5_message(None, now);
    expired.expires_at = Some(now);
    forward(expired);
    forward(v5_message(Some(Duration::from_secs(60)), now));
    assert!(sender.finish(Duration::from_secs(5)).await);

    let received = |socket: &std::net::UdpSocket| {
        let mut buf = [0; 2048];
        let n = socket.recv(&mut buf).unwrap();
        let body = key.open(&buf[..n]).unwrap().to_vec();
        decode_batch(&body, NEWEST_VERSION, Instant::now()).unwrap()
    };
    let to_old = received(&old);
    assert_eq!((to_old.version, &to_old.destination[..]), (1, &b"old"[..]));
    assert_eq!(to_old.records.len(), 1, "the expired message is not sent");
    assert!(to_old.records[0].properties.is_empty());
    assert_eq!(to_old.records[0].expires_at, None);
    let to_new = received(&new);
    assert_eq!((to_new.version, &to_new.destination[..]), (2, &b"new"[..]));
    assert_eq!(to_new.records.len(), 1, "the expired message is not sent");
    assert_eq!(to_new.records[0].properties, v5_properties());
    let left = to_new.records[0].remaining_expiry(Instant::now()).unwrap();
    assert!((58..=60).contains(&left), "{left} s left");
    assert!(to_new.seq != to_old.seq, "one number per datagram");
}

/// A publisher whose message makes a segment sendable sends it itself, with no sender thread
/// running; while someone else is sending, it leaves the segment to them and wakes the thread.
#[test]
fn a_publisher_sends_in_place_when_nobody_else_is_sending() {
    let receiving = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiving
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut peer = identity("n2", 1);
    peer.sync_port = receiving.local_addr().unwrap().port();
    peer.version = NodeIdentity::advertised_version("0.1.0", NEWEST_VERSION);
    let members = Arc::new(Members::new(identity("local", 1), false));
    members.set_others_for_tests(vec![MemberInfo {
        identity: peer,
        state: MemberState::Up,
    }]);
    let key = DatagramKey::sync(b"k");
    let socket = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    socket.set_nonblocking(true).unwrap();
    let (peers, forwarder) = forwarding_to(members, NEWEST_VERSION);
    let transmitter = Arc::new(Transmitter::new(
        socket,
        key.clone(),
        origin_of("local", 1, NEWEST_VERSION),
        Arc::new(Metrics::new()),
    ));
    peers.attach_transmitter(transmitter.clone());
    let forward = |topic: &str, payload: &[u8]| {
        let message = Arc::new(message(topic, payload, QoS::AtLeastOnce, false));
        let mut batch = ForwardBatch::default();
        let prepared = forwarder.prepare(&message, &mut batch).unwrap();
        assert!(forwarder
            .forward(&message, None, prepared, &mut batch)
            .congested
            .is_none());
        assert!(forwarder.flush(&mut batch).is_none());
    };
    // Control link segments may come first (no broker: no snapshot); then the data link's.
    forward("sent/in/place", b"payload");
    let mut topics_seen = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        let Ok(n) = receiving.recv(&mut buf) else {
            break;
        };
        let body = key.open(&buf[..n]).unwrap().to_vec();
        if let Some((
            _,
            LinkDatagram::Segment {
                control: false,
                data,
                ..
            },
        )) = decode_link(&body, NEWEST_VERSION)
        {
            topics_seen.push(data.to_vec());
            break;
        }
    }
    assert_eq!(topics_seen.len(), 1, "the data segment was sent in place");
    assert!(topics_seen[0]
        .windows(b"sent/in/place".len())
        .any(|w| w == b"sent/in/place"));

    // Someone else sending: nothing goes from here, and the sender is woken to go round again.
    let held = transmitter.lock_for_tests();
    // Takes the wake-ups given so far, as the thread's sleep would.
    peers.sleep_sender_until(Instant::now());
    assert!(!peers.sender_woken_for_tests());
    // Larger than a segment: full segments go whatever is in flight.
    forward("left/for/the/sender", &[7; 4000]);
    assert!(peers.sender_woken_for_tests());
    receiving
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        receiving.recv(&mut buf).is_err(),
        "nothing sent while another holds the sender"
    );
    drop(held);
}

/// A version 2 record with the given parts, after a header from n1 to local.
fn raw_v2(flags: u8, expiry: Option<u32>, properties: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(
        &mut out,
        2,
        &origin_of("n1", 1, 2),
        &identity("local", 1),
        1,
    );
    out.put_u16(1);
    out.put_u8(flags);
    out.put_u16(3);
    out.put_slice(b"a/b");
    if let Some(secs) = expiry {
        out.put_u32(secs);
    }
    if let Some(properties) = properties {
        out.put_u16(properties.len() as u16);
        out.put_slice(properties);
    }
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out
}

#[test]
fn malformed_version_2_records_are_refused() {
    let now = Instant::now();
    let good = v5_properties();
    let whole = raw_v2(0b1_1001, Some(5), Some(&good), b"hello");
    let batch = decode_batch(&whole, 2, now).expect("the well-formed one is accepted");
    assert_eq!(batch.records[0].properties, good);
    for cut in 0..whole.len() {
        assert!(
            decode_batch(&whole[..cut], 2, now).is_none(),
            "cut at {cut}"
        );
    }
    let bad_properties: &[(&str, &[u8])] = &[
        ("empty list with its flag set", b""),
        ("unknown identifier", b"\x7f\x00"),
        ("payload format indicator 2", b"\x01\x02"),
        ("given twice", b"\x03\x00\x01a\x03\x00\x01b"),
        ("string runs past the list", b"\x03\x00\x09abc"),
        ("string not UTF-8", b"\x03\x00\x02\xc3\x28"),
        ("string with U+0000", b"\x03\x00\x02a\x00"),
        ("user property without value", b"\x26\x00\x01k"),
        ("response topic with a wildcard", b"\x08\x00\x03a/#"),
        ("empty response topic", b"\x08\x00\x00"),
        ("topic alias", b"\x23\x00\x01"),
        ("subscription identifier", b"\x0b\x01"),
        ("message expiry inside the list", b"\x02\x00\x00\x00\x05"),
        ("session expiry", b"\x11\x00\x00\x00\x05"),
        ("reason string", b"\x1f\x00\x01r"),
        ("varint identifier too long", b"\x80\x80\x80\x80\x01"),
    ];
    for (what, properties) in bad_properties {
        let body = raw_v2(0b1_0001, None, Some(properties), b"hello");
        assert!(decode_batch(&body, 2, now).is_none(), "{what}");
    }
    // UTF-8 promised, not given.
    let utf8 = raw_v2(0b1_0001, None, Some(b"\x01\x01"), b"\xff\xfe");
    assert!(decode_batch(&utf8, 2, now).is_none(), "payload not UTF-8");
    assert!(decode_batch(&raw_v2(0b1_0001, None, Some(b"\x01\x01"), b"ok"), 2, now).is_some());
    // Flags no version knows, and version 2 flags in a version 1 datagram.
    assert!(decode_batch(&raw_v2(0b10_0000, None, None, b"x"), 2, now).is_none());
    let mut v1_with_expiry = raw_v2(0b1000, Some(5), None, b"x");
    v1_with_expiry[0] = 1;
    assert!(decode_batch(&v1_with_expiry, 2, now).is_none());

    // Through the receiver's checks, a bad list drops the datagram as malformed, and does
    // not burn its sequence number.
    const AT: ReceivedAt = ReceivedAt {
        now_us: 0,
        wall_ms: 1,
    };
    let key = DatagramKey::sync(b"k");
    let members = members_with(identity("n1", 1), MemberState::Up);
    let mut windows = HashMap::new();
    let mut forged = raw_v2(0b1_0001, None, Some(b"\x23\x00\x01"), b"x");
    key.seal(&mut forged);
    assert_eq!(
        accept(&forged, &key, &members, &mut windows, AT, 2).unwrap_err(),
        ClusterDrop::Malformed
    );
    let mut fine = raw_v2(0b1_0001, None, Some(b"\x03\x00\x01a"), b"x");
    key.seal(&mut fine);
    assert_eq!(
        accept(&fine, &key, &members, &mut windows, AT, 2)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn limits_count_what_a_version_2_record_and_an_mqtt_5_publish_carry() {
    let now = Instant::now();
    let message = v5_message(Some(Duration::from_secs(5)), now);
    let record = record_len(&message, 2);
    let props = message.properties.len() + 5;
    // Fixed header (2), topic (2 + 3), packet id (2), properties (1 + props), payload (5).
    let packet = 2 + 5 + 2 + 1 + props + 5;
    assert_eq!(publish_packet_len(&message), packet);
    let exact = Limits {
        sync_limit: Some(record),
        max_packet_size: packet,
    };
    assert!(exact.admit(&message));
    assert!(!Limits {
        sync_limit: Some(record - 1),
        ..exact
    }
    .admit(&message));
    assert!(!Limits {
        max_packet_size: packet - 1,
        ..exact
    }
    .admit(&message));
}

#[test]
fn records_name_the_shared_groups_their_receiver_serves_and_bad_lists_are_malformed() {
    let now = Instant::now();
    let live = message("t/x", b"p", QoS::AtLeastOnce, false);
    let groups: GroupList = vec![
        (Bytes::from_static(b"g"), Bytes::from_static(b"t/+")),
        (Bytes::from_static(b"$queue"), Bytes::from_static(b"t/#")),
    ];
    // On a link.
    let mut frame = Vec::new();
    encode_link_record(&mut frame, &live, None, now, &groups);
    assert_eq!(
        frame.len(),
        stamped_record_len(&live, None) + groups_len(&groups)
    );
    assert_eq!(frame[0] & FLAG_GROUPS, FLAG_GROUPS);
    let (got, _, got_groups) = decode_publish_frame(&frame, true, now).unwrap();
    assert_eq!(got.payload, live.payload);
    assert_eq!(got_groups, groups);
    for cut in 0..frame.len() {
        assert!(
            decode_publish_frame(&frame[..cut], true, now).is_none(),
            "cut at {cut}"
        );
    }
    // Without groups: byte for byte the record before, naming none.
    let mut plain = Vec::new();
    encode_link_record(&mut plain, &live, None, now, &[]);
    assert_eq!(
        decode_publish_frame(&plain, true, now).unwrap().2,
        GroupList::new()
    );
    // Malformed lists: no entry, an invalid name, an invalid filter.
    let groups_at = 1 + 2 + 3;
    for (what, list) in [
        ("count 0", &b"\x00\x00"[..]),
        ("empty name", b"\x00\x01\x00\x00\x00\x01a"),
        ("name with /", b"\x00\x01\x00\x03a/b\x00\x01a"),
        ("not a filter", b"\x00\x01\x00\x01g\x00\x03a#b"),
        ("cut", b"\x00\x02\x00\x01g\x00\x01a"),
    ] {
        let mut bad = plain[..groups_at].to_vec();
        bad[0] |= FLAG_GROUPS;
        bad.extend_from_slice(list);
        bad.extend_from_slice(&plain[groups_at..]);
        assert!(decode_publish_frame(&bad, true, now).is_none(), "{what}");
    }
    // Never in best-effort batches (their newest version is 2, and version 3 ones are refused).
    let origin = origin_of("n1", 1, 3);
    for version in [2, 3] {
        let mut batch = Vec::new();
        encode_header(&mut batch, version, &origin, &identity("local", 1), 1);
        batch.put_u16(1);
        encode_link_record(&mut batch, &live, None, now, &groups);
        assert!(decode_batch(&batch, 3, now).is_none(), "version {version}");
    }
}

#[test]
fn a_record_names_hundreds_of_groups() {
    let now = Instant::now();
    let live = message("t/x", b"p", QoS::AtLeastOnce, false);
    let groups: GroupList = (0..300)
        .map(|i| (Bytes::from(format!("g{i}")), Bytes::from_static(b"t/+")))
        .collect();
    assert!(groups_len(&groups) <= MAX_GROUP_LIST_BYTES);
    let mut frame = Vec::new();
    encode_link_record(&mut frame, &live, None, now, &groups);
    assert_eq!(
        frame.len(),
        stamped_record_len(&live, None) + groups_len(&groups)
    );
    let (_, _, got) = decode_publish_frame(&frame, true, now).unwrap();
    assert_eq!(got.len(), 300, "none dropped beyond 255");
    assert_eq!(got, groups);
}

#[test]
fn a_publish_at_mpl_with_the_largest_group_list_fits_the_receivers_frame_bound() {
    // A client PUBLISH (MQTT 3.1.1, QoS 1) of exactly -mpl bytes on the publishing node.
    let mpl = 100_000usize;
    let topic = "factory/line7/telemetry";
    let rem_fixed = 2 + topic.len() + 2;
    let payload_len = mpl - 1 - 3 - rem_fixed; // varint of 3 bytes
    let m = message(topic, &vec![b'x'; payload_len], QoS::AtLeastOnce, false);
    assert_eq!(publish_packet_len(&m), mpl);
    let groups: GroupList = vec![
        (
            Bytes::from_static(b"workers"),
            Bytes::from_static(b"factory/+/telemetry"),
        ),
        (
            Bytes::from_static(b"archivers"),
            Bytes::from_static(b"factory/#"),
        ),
        (
            Bytes::from_static(b"alerts"),
            Bytes::from_static(b"factory/+/+"),
        ),
    ];
    let max_frame = max_data_frame(mpl);
    // Frame kind, record and list: what the sender queues as one link frame.
    let frame_len = 1 + stamped_record_len(&m, None) + groups_len(&groups);
    assert!(frame_len > mpl + 64, "beyond -mpl and the stamp's slack");
    assert!(frame_len <= max_frame, "{frame_len} > {max_frame}");
    // The largest list a sender writes (see shared::Chooser) fits too.
    let name = Bytes::from(vec![b'g'; 100]);
    let mut largest = GroupList::new();
    while groups_len(&largest) + group_entry_len(&name, b"factory/#") <= MAX_GROUP_LIST_BYTES {
        largest.push((name.clone(), Bytes::from_static(b"factory/#")));
    }
    let frame_len = 1 + stamped_record_len(&m, None) + groups_len(&largest);
    assert!(frame_len <= max_frame, "{frame_len} > {max_frame}");
}

#[test]
fn forward_queues_to_the_peers_the_groups_were_chosen_among() {
    let up = |name: &str| MemberInfo {
        identity: identity(name, 1),
        state: MemberState::Up,
    };
    let members = Arc::new(Members::new(identity("local", 1), false));
    members.set_others_for_tests(vec![up("a")]);
    let (peers, forwarder) = forwarding_to(members.clone(), NEWEST_VERSION);
    assert_eq!(peers.list()[0].interest_slot(), Some(0));
    let changes = crate::cluster::interest::Changes {
        snapshot: true,
        filters: Vec::new(),
        groups: vec![(b"g".to_vec(), b"t/+".to_vec(), true)],
    };
    peers.interest.apply("a", 1, &changes);
    let message = Arc::new(message("t/x", b"p", QoS::AtLeastOnce, false));
    let mut batch = ForwardBatch::default();
    let prepared = forwarder.prepare(&message, &mut batch).unwrap();
    // Meanwhile a leaves, and b comes up in the slot a had.
    members.set_others_for_tests(Vec::new());
    assert!(peers.list().is_empty());
    members.set_others_for_tests(vec![up("b")]);
    let b = peers.list()[0].clone();
    assert_eq!(b.interest_slot(), Some(0));
    forwarder.forward(&message, None, prepared, &mut batch);
    forwarder.flush(&mut batch);
    // b was not among the peers the group was chosen among: it is never named a's group.
    for (_, segment) in b.take_transmits(Instant::now(), 16).segments {
        let len = u32::from_be_bytes(segment[..4].try_into().unwrap()) as usize;
        assert_eq!(segment[4], FRAME_PUBLISH);
        let (_, _, groups) =
            decode_publish_frame(&segment[5..4 + len], true, Instant::now()).unwrap();
        assert!(groups.is_empty(), "b named {groups:?}");
    }
}

/// The topics of the publish frames `peer`'s data link holds (none sent yet), in the order
/// they were queued.
fn queued_topics(peer: &crate::cluster::peers::Peer) -> Vec<String> {
    let stream = peer.unsent_for_tests();
    let mut topics = Vec::new();
    let mut rest = &stream[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(rest[4], FRAME_PUBLISH);
        let (message, _, _) =
            decode_publish_frame(&rest[5..4 + len], true, Instant::now()).unwrap();
        topics.push(String::from_utf8(message.topic.to_vec()).unwrap());
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "a frame cut short");
    topics
}

fn one_peer(version: u8) -> (Arc<Peers>, Forwarder) {
    let members = Arc::new(Members::new(identity("local", 1), false));
    members.set_others_for_tests(vec![MemberInfo {
        identity: identity("a", 1),
        state: MemberState::Up,
    }]);
    forwarding_to(members, version)
}

#[test]
fn a_batch_reaches_the_peer_at_its_flush_in_publishing_order() {
    let (peers, forwarder) = one_peer(NEWEST_VERSION);
    let peer = peers.list()[0].clone();
    let mut batch = ForwardBatch::default();
    let topics: Vec<String> = (0..10).map(|i| format!("t/{i}")).collect();
    for topic in &topics {
        let message = Arc::new(message(topic, b"p", QoS::AtLeastOnce, false));
        let prepared = forwarder.prepare(&message, &mut batch).unwrap();
        assert!(forwarder
            .forward(&message, None, prepared, &mut batch)
            .congested
            .is_none());
    }
    assert!(
        queued_topics(&peer).is_empty(),
        "staged only, until the flush"
    );
    assert!(!batch.is_empty());
    assert!(forwarder.flush(&mut batch).is_none());
    assert!(batch.is_empty());
    assert_eq!(queued_topics(&peer), topics);
    // Flushed, the batch starts afresh: another flush queues nothing again.
    assert!(forwarder.flush(&mut batch).is_none());
    assert_eq!(queued_topics(&peer), topics);
    // A batch of FLUSH_RECORDS messages is queued without waiting for the flush.
    for i in 0..FLUSH_RECORDS {
        let message = Arc::new(message(&format!("u/{i}"), b"p", QoS::AtMostOnce, false));
        let prepared = forwarder.prepare(&message, &mut batch).unwrap();
        forwarder.forward(&message, None, prepared, &mut batch);
    }
    assert!(batch.is_empty());
    assert_eq!(queued_topics(&peer).len(), topics.len() + FLUSH_RECORDS);
}

#[test]
fn a_message_no_peer_wants_is_not_staged() {
    let (peers, forwarder) = one_peer(NEWEST_VERSION);
    // The peer says it subscribes to `wanted/#` only.
    let changes = crate::cluster::interest::Changes {
        snapshot: true,
        filters: vec![(b"wanted/#".to_vec(), true)],
        groups: Vec::new(),
    };
    peers.interest.apply("a", 1, &changes);
    let mut batch = ForwardBatch::default();
    for topic in ["other/x", "wanted/x"] {
        let message = Arc::new(message(topic, b"p", QoS::AtLeastOnce, false));
        let prepared = forwarder.prepare(&message, &mut batch).unwrap();
        let forwarded = forwarder.forward(&message, None, prepared, &mut batch);
        assert_eq!(forwarded.for_subscribers, topic == "wanted/x", "{topic}");
        assert_eq!(batch.is_empty(), topic == "other/x", "{topic}");
    }
    forwarder.flush(&mut batch);
    assert_eq!(queued_topics(&peers.list()[0]), ["wanted/x"]);
}

#[test]
fn a_full_batch_flushes_itself_and_tells_of_a_congested_peer_before_its_link_is_full() {
    // A link of 1 MiB (`forwarding_to`) is congested from 512 KiB on.
    let (peers, forwarder) = one_peer(NEWEST_VERSION);
    let peer = peers.list()[0].clone();
    let mut batch = ForwardBatch::default();
    let payload = vec![b'x'; 1000];
    let mut congested_at = None;
    for i in 0..2000 {
        let message = Arc::new(message(
            &format!("t/{i}"),
            &payload,
            QoS::AtLeastOnce,
            false,
        ));
        let prepared = forwarder.prepare(&message, &mut batch).unwrap();
        if let Some(congested) = forwarder
            .forward(&message, None, prepared, &mut batch)
            .congested
        {
            assert!(Arc::ptr_eq(&congested, &peer));
            congested_at = Some(i);
            break;
        }
    }
    let congested_at = congested_at.expect("the peer became congested");
    // Told at the flush that crossed half the link: the batch's messages were all queued.
    assert!((500..=560).contains(&congested_at), "{congested_at}");
    assert!(batch.is_empty());
    let topics = queued_topics(&peer);
    assert_eq!(topics.len(), congested_at + 1);
    assert_eq!(topics.last().unwrap(), &format!("t/{congested_at}"));
}

#[test]
fn a_batch_started_while_a_peer_is_congested_flushes_at_its_first_message() {
    let (peers, forwarder) = one_peer(NEWEST_VERSION);
    let peer = peers.list()[0].clone();
    let payload = vec![b'x'; 1000];
    let forward = |batch: &mut ForwardBatch, topic: &str| {
        let message = Arc::new(message(topic, &payload, QoS::AtLeastOnce, false));
        let prepared = forwarder.prepare(&message, batch).unwrap();
        forwarder.forward(&message, None, prepared, batch).congested
    };
    // One connection takes the link past half its capacity.
    let mut first = ForwardBatch::default();
    let mut i = 0;
    while forward(&mut first, &format!("t/{i}")).is_none() {
        i += 1;
        assert!(i < 2000, "never congested");
    }
    assert!(peer.is_congested());
    // Another connection's batch: told at its first message, which alone was queued.
    let queued = queued_topics(&peer).len();
    let mut second = ForwardBatch::default();
    assert!(forward(&mut second, "second").is_some_and(|p| Arc::ptr_eq(&p, &peer)));
    assert!(second.is_empty());
    assert_eq!(queued_topics(&peer).len(), queued + 1);
}

#[test]
fn a_forwarded_message_keeps_its_expiry_interval_whenever_its_batch_began() {
    let (peers, forwarder) = one_peer(NEWEST_VERSION);
    let mut batch = ForwardBatch::default();
    let first = Arc::new(message("t/first", b"p", QoS::AtLeastOnce, false));
    let prepared = forwarder.prepare(&first, &mut batch).unwrap();
    forwarder.forward(&first, None, prepared, &mut batch);
    std::thread::sleep(Duration::from_millis(20));
    let mut expiring = message("t/expiring", b"p", QoS::AtLeastOnce, false);
    expiring.expires_at = Some(Instant::now() + Duration::from_secs(10));
    let expiring = Arc::new(expiring);
    let prepared = forwarder.prepare(&expiring, &mut batch).unwrap();
    forwarder.forward(&expiring, None, prepared, &mut batch);
    forwarder.flush(&mut batch);
    let stream = peers.list()[0].unsent_for_tests();
    let first_len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
    let rest = &stream[4 + first_len..];
    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    let now = Instant::now();
    let (decoded, _, _) = decode_publish_frame(&rest[5..4 + len], true, now).unwrap();
    assert_eq!(decoded.topic, "t/expiring");
    let left = decoded.expires_at.expect("an expiry") - now;
    assert!(left <= Duration::from_secs(10), "{left:?}");
}

#[test]
fn the_batches_of_every_worker_fit_between_the_congestion_mark_and_a_full_link() {
    use crate::cluster::config::MIN_SYNC_BUFFER;
    use forward::flush_bytes;
    assert_eq!(flush_bytes(16 << 20, 2), 32 << 10, "the default -csb");
    for workers in [1, 2, 8, 64, 256] {
        for csb in [MIN_SYNC_BUFFER, 100_000, 1 << 20, 16 << 20, 1 << 30] {
            let bound = flush_bytes(csb, workers);
            // Every worker's batch fits in half the room past the mark, or the bound is one
            // small message.
            assert!(
                workers * bound <= csb / 4 || bound == 1 << 10,
                "-csb {csb}, {workers} workers"
            );
        }
    }
}

#[test]
fn the_frame_slack_covers_the_largest_stamp() {
    let now = Instant::now();
    let stamp = crate::router::Stamp {
        ms: u64::MAX,
        count: u32::MAX,
        node: Bytes::from(vec![b'n'; 255]),
    };
    let topic = "t".repeat(65_535);
    for (topic, payload, qos) in [
        ("t", 0, QoS::AtMostOnce),
        ("t/u", 100, QoS::ExactlyOnce),
        (&topic[..], 1 << 20, QoS::AtMostOnce),
    ] {
        let mut retained = message(topic, &vec![0; payload], qos, true);
        for expiry in [None, Some(now + Duration::from_secs(60))] {
            retained.expires_at = expiry;
            // The frame's length field counts its kind byte and its body.
            let frame = 1 + stamped_record_len(&retained, Some(&stamp));
            assert!(
                frame <= publish_packet_len(&retained) + FRAME_SLACK,
                "{frame} over {} + {FRAME_SLACK}",
                publish_packet_len(&retained)
            );
        }
    }
}

/// The peers `members` lists, and a forwarder to them, writing sync `version` at most (1 MiB
/// links, no `-csl`, shared groups preferring this node).
fn forwarding_to(members: Arc<Members>, version: u8) -> (Arc<Peers>, Forwarder) {
    let metrics = Arc::new(Metrics::new());
    let peers = Arc::new(Peers::new(
        members,
        1 << 20,
        version,
        None,
        Instant::now(),
        metrics.clone(),
    ));
    let forwarder = Forwarder::new(
        peers.clone(),
        None,
        version,
        crate::cluster::shared::SharedPolicy::Local,
        metrics,
    );
    (peers, forwarder)
}
