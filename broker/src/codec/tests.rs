//! Codec tests, one module per concern, sharing the helpers below: [`v3`] holds the MQTT 3.1 and
//! 3.1.1 behaviour (round trips, incremental input, one test per validation rule with
//! handcrafted bytes), [`v5`] the MQTT 5 packets (every property a packet may carry, reason codes,
//! short forms, bytes written by hand from the standard's layout), [`properties`] the property
//! rules of MQTT 5.0 §2.2.2 (which property goes on which packet, repeats, forbidden values), and
//! [`proptests`] the property tests feeding generated packets, arbitrary and corrupted bytes to
//! the decoder at every protocol level.

mod properties;
mod proptests;
mod v3;
mod v5;

use bytes::{Bytes, BytesMut};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

const NO_LIMIT: usize = usize::MAX;

fn encode(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    packet
        .encode(protocol, &mut buf)
        .expect("test packets are encodable");
    buf
}

/// Decodes `bytes` as the whole buffer, returning the result and what is left in the buffer.
fn decode_bytes(bytes: &[u8]) -> (Result<Option<Packet>, DecodeError>, BytesMut) {
    decode_bytes_as(bytes, None)
}

fn decode_bytes_as(
    bytes: &[u8],
    protocol: Option<Protocol>,
) -> (Result<Option<Packet>, DecodeError>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let result = decode(&mut buf, protocol, NO_LIMIT);
    (result, buf)
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode_bytes(bytes).0 {
        Err(err) => err,
        Ok(other) => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

fn assert_malformed(bytes: &[u8], expected_packet: &str) {
    match decode_err(bytes) {
        DecodeError::Malformed { packet, .. } => assert_eq!(packet, expected_packet),
        other => panic!("expected Malformed {expected_packet} for {bytes:02x?}, got {other:?}"),
    }
}

/// Frames `body` with a fixed header: `first_byte` and the minimal remaining length.
fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first_byte];
    let mut rest = body.len();
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if rest == 0 {
            break;
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

/// A two-byte length prefix followed by `bytes`.
fn prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT body for "MQTT" level 4 with the given flags and payload after the keepalive.
fn connect_body(flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    connect_body_with(b"MQTT", 4, flags, payload)
}

fn connect_body_with(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = prefixed(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    for field in payload {
        body.extend_from_slice(&prefixed(field));
    }
    body
}

fn connect(protocol: Protocol) -> Connect {
    Connect {
        protocol,
        clean_session: true,
        keep_alive: 30,
        client_id: "client-1".to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn connect_packet(connect: Connect) -> Packet {
    Packet::Connect(Box::new(connect))
}

fn publish(qos: QoS, topic: &str, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: (qos != QoS::AtMostOnce).then_some(7),
        payload: Bytes::copy_from_slice(payload),
        topic_alias: None,
        properties: Properties::default(),
    }
}

/// An UNSUBACK as MQTT 3.1.1 has it: a packet id only.
fn unsuback(packet_id: u16) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id,
        reason_codes: Vec::new(),
        properties: Properties::default(),
    })
}

/// A DISCONNECT without reason or properties (the only one MQTT 3.1.1 has).
fn disconnect() -> Packet {
    Packet::Disconnect(Disconnect::new(ReasonCode::Success))
}

/// Properties as a decoder returns them: none at all when `values` sets nothing.
fn props(values: PropertyValues) -> Properties {
    if values == PropertyValues::default() {
        Properties::default()
    } else {
        Properties::from(values)
    }
}

/// Decodes `bytes` as a whole MQTT 5 packet, which must consume the buffer.
fn decode_v5(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, Some(Protocol::V5), NO_LIMIT) {
        Ok(Some(packet)) => {
            assert!(buf.is_empty(), "{} left {} bytes", packet.name(), buf.len());
            Ok(packet)
        }
        Ok(None) => panic!("{bytes:02x?} is incomplete"),
        Err(err) => Err(err),
    }
}

/// The error decoding `bytes` at MQTT 5 gives, checking the reason code the client is told.
fn decode_v5_err(bytes: &[u8], reason: ReasonCode) -> DecodeError {
    match decode_v5(bytes) {
        Err(err) => {
            assert_eq!(err.reason_code(), reason, "{err} for {bytes:02x?}");
            err
        }
        Ok(packet) => panic!("expected an error for {bytes:02x?}, got {packet:?}"),
    }
}

/// Asserts that `bytes` at MQTT 5 are a malformed `packet` (reason code 0x81).
fn assert_v5_malformed(bytes: &[u8], expected_packet: &str) {
    match decode_v5_err(bytes, ReasonCode::MalformedPacket) {
        DecodeError::Malformed { packet, .. } => assert_eq!(packet, expected_packet),
        other => panic!("expected Malformed {expected_packet} for {bytes:02x?}, got {other:?}"),
    }
}

/// Asserts that `bytes` at MQTT 5 break a rule of the protocol in `packet` (reason code 0x82),
/// for the given reason.
fn assert_v5_protocol_error(bytes: &[u8], expected_packet: &str, expected_reason: &str) {
    match decode_v5_err(bytes, ReasonCode::ProtocolError) {
        DecodeError::Protocol { packet, reason } => {
            assert_eq!((packet, reason), (expected_packet, expected_reason))
        }
        other => panic!("expected a protocol error for {bytes:02x?}, got {other:?}"),
    }
}

/// A variable byte integer, written independently of the codec's own writer.
fn varint(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A property list as it goes on the wire: its variable-byte length, then `properties`.
fn property_list(properties: &[u8]) -> Vec<u8> {
    [varint(properties.len() as u32), properties.to_vec()].concat()
}

fn assert_round_trip(packet: &Packet, protocol: Protocol) {
    let bytes = encode(packet, protocol);
    let mut buf = bytes.clone();
    let decoded = decode(&mut buf, Some(protocol), NO_LIMIT);
    assert_eq!(decoded, Ok(Some(packet.clone())), "encoded as {bytes:02x?}");
    assert!(buf.is_empty(), "{} left {} bytes", packet.name(), buf.len());
}

/// Decodes packets from `bytes` until the decoder asks for more or fails, checking that each
/// call either consumes a non-empty prefix (a packet), leaves the buffer alone (more needed) or
/// stops with an error. Returns the packets and the final result.
fn drain(
    bytes: &[u8],
    protocol: Option<Protocol>,
    limit: usize,
) -> (Vec<Packet>, Result<(), DecodeError>) {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    loop {
        let before = buf.clone();
        match decode(&mut buf, protocol, limit) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before.len(), "{packet:?} consumed no bytes");
                assert_eq!(&before[before.len() - buf.len()..], &buf[..]);
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) modified the buffer");
                return (packets, Ok(()));
            }
            Err(err) => return (packets, Err(err)),
        }
    }
}
