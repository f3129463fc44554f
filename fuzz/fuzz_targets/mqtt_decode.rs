//! The MQTT decoder on a byte stream, as a connection feeds it: packet after packet from one
//! buffer, at a protocol level (none yet, 3.1, 3.1.1 or 5.0) and a packet size limit chosen by
//! the first input byte.
//!
//! Besides "never panics", every step checks the decoder's contract against an independent
//! reading of the fixed header: `Ok(None)` consumes nothing, `Ok(Some)` consumes exactly one
//! packet, an error consumes nothing or exactly one packet, the size limit is honoured, among the
//! MQTT 3 levels the level only matters where MQTT 3.1 differs, and every decoded packet
//! re-encodes to the bytes it came from (up to what the format leaves free; for MQTT 5, which
//! leaves property order, short forms and non-minimal integers free, to bytes no longer than
//! the input that re-encode to themselves) and decodes back to itself.

#![no_main]

use bytes::BytesMut;
use coolpy7::codec::{
    decode, DecodeError, Packet, Properties, Protocol, QoS, ReasonCode, MAX_REMAINING_LENGTH,
};
use libfuzzer_sys::fuzz_target;

/// Packets decoded per input at most (each consumes at least two bytes anyway).
const MAX_STEPS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [config, small_limit, stream @ ..] = data else {
        return;
    };
    let protocol = [
        None,
        Some(Protocol::V31),
        Some(Protocol::V311),
        Some(Protocol::V5),
    ][usize::from(config % 4)];
    let max_packet_size = match (config / 4) % 4 {
        0 => usize::MAX,
        1 => 1 + 4 + MAX_REMAINING_LENGTH,
        // Small enough that generated packets cross it both ways (0 and 1 refuse everything).
        2 => usize::from(*small_limit),
        _ => usize::from(*small_limit) * 16,
    };
    let mut buf = BytesMut::from(stream);
    for _ in 0..MAX_STEPS {
        if !step(&mut buf, protocol, max_packet_size) {
            break;
        }
    }
});

/// What the fixed header at the front of `bytes` says, read independently of the decoder.
#[derive(Debug, PartialEq)]
enum Header {
    Incomplete,
    MalformedLength,
    /// The packet's total size: first byte, length bytes and remaining length.
    Total(usize),
}

fn read_header(bytes: &[u8]) -> Header {
    let Some(length) = bytes.get(1..) else {
        return Header::Incomplete;
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = length.get(i) else {
            return Header::Incomplete;
        };
        remaining += usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Header::Total(1 + (i + 1) + remaining);
        }
    }
    Header::MalformedLength
}

/// Decodes one packet from `buf` and checks the outcome; `false` once the connection would
/// stop reading (more bytes needed, or an error that closes it).
fn step(buf: &mut BytesMut, protocol: Option<Protocol>, max_packet_size: usize) -> bool {
    let before = buf.clone();
    let header = read_header(&before);
    let result = decode(buf, protocol, max_packet_size);
    let consumed = before.len() - buf.len();
    assert_eq!(
        &before[consumed..],
        &buf[..],
        "decode must only split off the front"
    );

    // The same bytes without a limit and at the other levels: the limit only ever adds
    // PacketTooLarge, no level is refused what None accepts, None and 3.1.1 read alike, and
    // 3.1 accepts whatever 3.1.1 accepts, as the same packet.
    let unlimited = decode(&mut before.clone(), protocol, usize::MAX);
    match &result {
        Err(DecodeError::PacketTooLarge { size, limit }) => {
            assert_eq!(*limit, max_packet_size);
            assert!(*size > max_packet_size);
            assert_eq!(header, Header::Total(*size));
        }
        other => assert_eq!(
            other, &unlimited,
            "the size limit changed a packet it admits"
        ),
    }
    let as_v311 = decode(&mut before.clone(), Some(Protocol::V311), usize::MAX);
    let as_none = decode(&mut before.clone(), None, usize::MAX);
    assert_eq!(
        as_none, as_v311,
        "no protocol yet and 3.1.1 must read alike"
    );
    if let Ok(Some(packet)) = &as_v311 {
        let as_v31 = decode(&mut before.clone(), Some(Protocol::V31), usize::MAX);
        assert_eq!(
            as_v31.as_ref(),
            Ok(&Some(packet.clone())),
            "3.1 refused a 3.1.1 packet"
        );
    }

    match result {
        Ok(None) => {
            assert_eq!(consumed, 0, "Ok(None) consumed bytes");
            match header {
                Header::Incomplete => {}
                Header::Total(total) => assert!(before.len() < total, "a whole packet is here"),
                Header::MalformedLength => panic!("a malformed length needs no more bytes"),
            }
            false
        }
        Ok(Some(packet)) => {
            assert_eq!(
                header,
                Header::Total(consumed),
                "Ok(Some) consumed not one packet"
            );
            assert!(
                consumed <= max_packet_size,
                "a packet over the limit was decoded"
            );
            // One byte short, the same packet needs more bytes.
            let mut short = BytesMut::from(&before[..consumed - 1]);
            assert_eq!(decode(&mut short, protocol, max_packet_size), Ok(None));
            assert_eq!(short.len(), consumed - 1);
            check_packet(&packet, protocol);
            check_round_trip(&packet, &before[..consumed], protocol);
            true
        }
        Err(error) => {
            // Fixed-header errors leave the buffer alone; body errors consume the packet.
            if matches!(
                error,
                DecodeError::PacketTooLarge { .. }
                    | DecodeError::MalformedLength
                    | DecodeError::ReservedPacketType(_)
                    | DecodeError::InvalidFlags { .. }
            ) {
                assert_eq!(consumed, 0, "{error}: found in the header, yet consumed");
            }
            if consumed != 0 {
                assert_eq!(
                    header,
                    Header::Total(consumed),
                    "{error}: consumed not one packet"
                );
                assert!(consumed <= max_packet_size);
            }
            if matches!(error, DecodeError::UnsupportedProtocol { .. }) {
                assert_eq!(before[0] >> 4, 1, "only CONNECT names a protocol");
                assert_ne!(consumed, 0, "UnsupportedProtocol must consume the CONNECT");
            }
            if error == DecodeError::MalformedLength {
                assert_eq!(header, Header::MalformedLength);
            }
            false
        }
    }
}

/// What the decoder promises about any packet it returns.
fn check_packet(packet: &Packet, protocol: Option<Protocol>) {
    let v5 = protocol == Some(Protocol::V5);
    match packet {
        Packet::Publish(publish) => {
            assert_eq!(publish.qos == QoS::AtMostOnce, publish.packet_id.is_none());
            assert_ne!(publish.packet_id, Some(0));
            assert!(!(publish.dup && publish.qos == QoS::AtMostOnce));
            assert!(!publish.topic.contains(&0));
            assert!(std::str::from_utf8(&publish.topic).is_ok());
            check_properties(&publish.properties, v5);
        }
        Packet::Connect(connect) => {
            let connect_v5 = connect.protocol == Protocol::V5;
            // MQTT 5 allows a password without a user name.
            assert!(connect_v5 || connect.password.is_none() || connect.username.is_some());
            let strings = [Some(&connect.client_id), connect.username.as_ref()];
            let will_topic = connect.will.as_ref().map(|will| &will.topic);
            for string in strings.into_iter().chain([will_topic]).flatten() {
                assert!(!string.contains('\0'));
            }
            check_properties(&connect.properties, connect_v5);
            if let Some(will) = &connect.will {
                check_properties(&will.properties, connect_v5);
            }
        }
        Packet::Subscribe(subscribe) => {
            assert_ne!(subscribe.packet_id, 0);
            assert!(!subscribe.filters.is_empty());
            assert!(subscribe.filters.iter().all(|(f, _)| !f.contains('\0')));
            assert!(subscribe.properties.subscription_identifiers.len() <= 1);
            check_properties(&subscribe.properties, v5);
            if !v5 {
                assert!(subscribe
                    .filters
                    .iter()
                    .all(|(_, options)| { !options.no_local && !options.retain_as_published }));
            }
        }
        Packet::UnsubAck(unsuback) => {
            assert_eq!(unsuback.reason_codes.is_empty(), !v5);
            check_properties(&unsuback.properties, v5);
        }
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            assert!(v5 || ack.reason == ReasonCode::Success);
            check_properties(&ack.properties, v5);
        }
        Packet::Disconnect(disconnect) => {
            assert!(v5 || disconnect.reason == ReasonCode::Success);
            check_properties(&disconnect.properties, v5);
        }
        Packet::Auth(auth) => {
            assert!(v5, "AUTH exists only in MQTT 5");
            check_properties(&auth.properties, v5);
        }
        Packet::Unsubscribe(unsubscribe) => {
            assert_ne!(unsubscribe.packet_id, 0);
            assert!(!unsubscribe.filters.is_empty());
            assert!(unsubscribe.filters.iter().all(|f| !f.contains('\0')));
            check_properties(&unsubscribe.properties, v5);
        }
        Packet::SubAck(suback) => {
            assert!(!suback.reason_codes.is_empty());
            check_properties(&suback.properties, v5);
        }
        Packet::ConnAck(connack) => check_properties(&connack.properties, v5),
        Packet::PingReq | Packet::PingResp => {}
    }
}

/// Properties exist only in MQTT 5, and never hold a value the standard forbids.
fn check_properties(properties: &Properties, v5: bool) {
    if !v5 {
        assert!(properties.is_empty(), "properties below MQTT 5");
        return;
    }
    assert!(!properties.subscription_identifiers.contains(&0));
    assert_ne!(properties.receive_maximum, Some(0));
    assert_ne!(properties.maximum_packet_size, Some(0));
    assert!(properties.maximum_qos.is_none_or(|qos| qos <= 1));
}

/// The encoder writes back the bytes the packet came from, except where the format leaves a
/// choice the packet does not record (a longer-than-needed remaining length, the DUP bit MQTT
/// 3.1 allows on PUBREL, SUBSCRIBE and UNSUBSCRIBE), and those bytes decode to the same packet.
fn check_round_trip(packet: &Packet, wire: &[u8], protocol: Option<Protocol>) {
    let mut encoded = BytesMut::new();
    // Among the MQTT 3 levels only CONNACK depends on the level (3.1 has no session-present
    // flag) and 3.1.1 keeps all; a CONNECT carries its own level.
    let v5 = protocol == Some(Protocol::V5);
    let encode_as = if v5 { Protocol::V5 } else { Protocol::V311 };
    packet
        .encode(encode_as, &mut encoded)
        .expect("a decoded packet must be encodable");
    let encoded = encoded.freeze();

    let (first, body) = split_header(wire);
    let (encoded_first, encoded_body) = split_header(&encoded);
    let has_properties = v5 || matches!(packet, Packet::Connect(c) if c.protocol == Protocol::V5);
    if has_properties {
        // The encoder writes properties in identifier order and every integer and optional
        // field in its shortest form: never longer than what was read, and its own output
        // re-encodes to itself.
        assert!(
            encoded.len() <= wire.len(),
            "{}: re-encoded into more bytes",
            packet.name()
        );
        let mut again = BytesMut::from(&encoded[..]);
        let decoded = decode(&mut again, protocol, usize::MAX)
            .expect("a re-encoded packet decodes")
            .expect("whole");
        let mut twice = BytesMut::new();
        decoded
            .encode(encode_as, &mut twice)
            .expect("a decoded packet must be encodable");
        assert_eq!(twice, encoded, "{}: encoding is not stable", packet.name());
    } else {
        assert_eq!(
            encoded_body,
            body,
            "{}: re-encoded body differs",
            packet.name()
        );
    }
    let dup_allowed =
        protocol == Some(Protocol::V31) && matches!(first >> 4, 6 | 8 | 10) && first & 0b1000 != 0;
    let first = if dup_allowed { first & !0b1000 } else { first };
    assert_eq!(
        encoded_first,
        first,
        "{}: re-encoded first byte",
        packet.name()
    );

    let mut again = BytesMut::from(&encoded[..]);
    assert_eq!(
        decode(&mut again, protocol, usize::MAX).as_ref(),
        Ok(&Some(packet.clone())),
        "re-encoded packet decodes differently"
    );
    assert!(again.is_empty());
}

/// The first byte and the body of one whole packet.
fn split_header(packet: &[u8]) -> (u8, &[u8]) {
    let length_bytes = packet[1..].iter().take_while(|&&b| b & 0x80 != 0).count() + 1;
    (packet[0], &packet[1 + length_bytes..])
}
