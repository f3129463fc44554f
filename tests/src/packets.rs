//! Hand-written MQTT 3.1 / 3.1.1 packet builders and a decoder for what a broker sends.
//!
//! This module is written from the specification (OASIS MQTT 3.1.1, and IBM MQTT 3.1 for the
//! `MQIsdp` CONNECT) and deliberately shares nothing with the broker's own codec, so the tests are
//! an independent check of the wire format. Builders never validate their input: tests use them
//! to produce malformed packets on purpose.

use std::fmt;

/// Control packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// Encodes a remaining length as the 1..=4 byte variable-length integer of §2.2.3.
///
/// Values above 268,435,455 cannot be expressed; this encoder keeps emitting continuation bytes
/// anyway (five or more bytes), which is useful for malformed-packet tests.
pub fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: first byte, remaining length, body.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed (two bytes, big endian) byte string, §1.5.3.
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A last will carried by a CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// A CONNECT packet (§3.1). Build with [`Connect::v311`] or [`Connect::v31`] and the setters;
/// [`Connect::flags`] overrides the computed connect-flags byte for malformed packets.
#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: Vec<u8>,
    pub will: Option<Will>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// When set, written instead of the flags computed from the fields above.
    pub flags_override: Option<u8>,
}

impl Connect {
    /// MQTT 3.1.1: protocol name "MQTT", level 4, clean session, keep alive 0 (no timeout).
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            clean_session: true,
            keep_alive: 0,
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            username: None,
            password: None,
            flags_override: None,
        }
    }

    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    pub fn v31(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQIsdp".to_vec(),
            level: 3,
            ..Connect::v311(client_id)
        }
    }

    pub fn protocol(mut self, name: &str, level: u8) -> Connect {
        self.protocol_name = name.as_bytes().to_vec();
        self.level = level;
        self
    }

    pub fn clean_session(mut self, clean: bool) -> Connect {
        self.clean_session = clean;
        self
    }

    pub fn keep_alive(mut self, seconds: u16) -> Connect {
        self.keep_alive = seconds;
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
        self.will = Some(Will {
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos,
            retain,
        });
        self
    }

    pub fn username(mut self, username: &str) -> Connect {
        self.username = Some(username.as_bytes().to_vec());
        self
    }

    pub fn password(mut self, password: &[u8]) -> Connect {
        self.password = Some(password.to_vec());
        self
    }

    /// Writes `flags` as the connect-flags byte, whatever the fields say.
    pub fn flags(mut self, flags: u8) -> Connect {
        self.flags_override = Some(flags);
        self
    }

    /// The connect-flags byte computed from the fields (§3.1.2.3).
    pub fn computed_flags(&self) -> u8 {
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | ((will.qos & 0x03) << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        flags
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = string(&self.protocol_name);
        body.push(self.level);
        body.push(self.flags_override.unwrap_or_else(|| self.computed_flags()));
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        body.extend(string(&self.client_id));
        if let Some(will) = &self.will {
            body.extend(string(&will.topic));
            body.extend(string(&will.payload));
        }
        if let Some(username) = &self.username {
            body.extend(string(username));
        }
        if let Some(password) = &self.password {
            body.extend(string(password));
        }
        packet(kind::CONNECT << 4, &body)
    }
}

/// A PUBLISH packet (§3.3). The topic is raw bytes so that tests can send invalid UTF-8.
#[derive(Debug, Clone)]
pub struct PublishPacket {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    /// Written as is into bits 1-2 of the first byte (3 is malformed on purpose).
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Only written when `qos > 0`.
    pub pkid: u16,
}

impl PublishPacket {
    pub fn new(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> PublishPacket {
        PublishPacket {
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos,
            retain: false,
            dup: false,
            pkid,
        }
    }

    pub fn raw_topic(mut self, topic: &[u8]) -> PublishPacket {
        self.topic = topic.to_vec();
        self
    }

    pub fn retain(mut self, retain: bool) -> PublishPacket {
        self.retain = retain;
        self
    }

    pub fn dup(mut self, dup: bool) -> PublishPacket {
        self.dup = dup;
        self
    }

    pub fn first_byte(&self) -> u8 {
        let mut first = kind::PUBLISH << 4 | ((self.qos & 0x03) << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        first
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = string(&self.topic);
        if self.qos > 0 {
            body.extend_from_slice(&self.pkid.to_be_bytes());
        }
        body.extend_from_slice(&self.payload);
        packet(self.first_byte(), &body)
    }
}

/// PUBLISH with the usual defaults (not retained, not DUP).
pub fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    PublishPacket::new(topic, qos, pkid, payload).encode()
}

/// SUBSCRIBE (§3.8) with raw-byte filters; requested QoS written as given.
pub fn subscribe_raw(pkid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(string(filter));
        body.push(*qos);
    }
    packet(kind::SUBSCRIBE << 4 | 0x02, &body)
}

pub fn subscribe(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let raw: Vec<(&[u8], u8)> = filters.iter().map(|(f, q)| (f.as_bytes(), *q)).collect();
    subscribe_raw(pkid, &raw)
}

/// UNSUBSCRIBE (§3.10).
pub fn unsubscribe(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter.as_bytes()));
    }
    packet(kind::UNSUBSCRIBE << 4 | 0x02, &body)
}

fn ack(first_byte: u8, pkid: u16) -> Vec<u8> {
    packet(first_byte, &pkid.to_be_bytes())
}

pub fn puback(pkid: u16) -> Vec<u8> {
    ack(kind::PUBACK << 4, pkid)
}

pub fn pubrec(pkid: u16) -> Vec<u8> {
    ack(kind::PUBREC << 4, pkid)
}

/// PUBREL has the reserved flags 0b0010 (§3.6.1).
pub fn pubrel(pkid: u16) -> Vec<u8> {
    ack(kind::PUBREL << 4 | 0x02, pkid)
}

pub fn pubcomp(pkid: u16) -> Vec<u8> {
    ack(kind::PUBCOMP << 4, pkid)
}

pub fn pingreq() -> Vec<u8> {
    vec![kind::PINGREQ << 4, 0]
}

pub fn disconnect() -> Vec<u8> {
    vec![kind::DISCONNECT << 4, 0]
}

/// A deterministic pseudo-random byte generator (xorshift64*), for reproducible garbage.
pub struct Garbage(u64);

impl Garbage {
    pub fn new(seed: u64) -> Garbage {
        Garbage(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_byte(&mut self) -> u8 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_byte()).collect()
    }
}

/// A PUBLISH as received from the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("pkid", &self.pkid)
            .field("dup", &self.dup)
            .field("retain", &self.retain)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .finish()
    }
}

/// A packet sent by the broker, decoded strictly: reserved flags and lengths that 3.1.1 fixes
/// are checked, so a broker that encodes wrongly fails the test at the first such packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck { session_present: bool, code: u8 },
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck { pkid: u16, codes: Vec<u8> },
    UnsubAck(u16),
    PingResp,
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::ConnAck { .. } => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::SubAck { .. } => "SUBACK",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingResp => "PINGRESP",
        }
    }
}

/// Why the front of a buffer is not a packet yet, or never will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed.
    Incomplete,
    /// The broker sent something a 3.1.1 server must not send.
    Invalid(String),
}

/// Decodes one packet from the front of `buf`; on success returns it with the number of bytes
/// it used.
pub fn decode(buf: &[u8]) -> Result<(Packet, usize), DecodeError> {
    let invalid = |msg: String| Err(DecodeError::Invalid(msg));
    if buf.is_empty() {
        return Err(DecodeError::Incomplete);
    }
    let first = buf[0];
    let mut len: usize = 0;
    let mut multiplier: usize = 1;
    let mut pos = 1;
    loop {
        let Some(&byte) = buf.get(pos) else {
            return Err(DecodeError::Incomplete);
        };
        pos += 1;
        len += (byte & 0x7F) as usize * multiplier;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return invalid(format!(
                "remaining length longer than 4 bytes: {:02x?}",
                &buf[..pos]
            ));
        }
        multiplier *= 128;
    }
    if buf.len() < pos + len {
        return Err(DecodeError::Incomplete);
    }
    let body = &buf[pos..pos + len];
    let used = pos + len;
    let pkt_type = first >> 4;
    let flags = first & 0x0F;
    let fixed = |expected_flags: u8, expected_len: usize| -> Result<(), DecodeError> {
        if flags != expected_flags || len != expected_len {
            return Err(DecodeError::Invalid(format!(
                "packet type {pkt_type}: first byte {first:#04x}, remaining length {len} \
                 (expected flags {expected_flags:#x}, length {expected_len}); body {body:02x?}"
            )));
        }
        Ok(())
    };
    let id = |body: &[u8]| u16::from_be_bytes([body[0], body[1]]);
    let packet = match pkt_type {
        kind::CONNACK => {
            fixed(0, 2)?;
            if body[0] & 0xFE != 0 {
                return invalid(format!("CONNACK reserved ack flags set: {:#04x}", body[0]));
            }
            let session_present = body[0] & 1 == 1;
            if session_present && body[1] != 0 {
                return invalid(format!(
                    "CONNACK with session present 1 and return code {:#04x} (§3.2.2.2)",
                    body[1]
                ));
            }
            Packet::ConnAck {
                session_present,
                code: body[1],
            }
        }
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return invalid(format!("PUBLISH with QoS 3, first byte {first:#04x}"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return invalid("QoS 0 PUBLISH with DUP set (§3.3.1.1)".into());
            }
            if body.len() < 2 {
                return invalid(format!("PUBLISH too short: {body:02x?}"));
            }
            let topic_len = id(body) as usize;
            let header_len = 2 + topic_len + if qos > 0 { 2 } else { 0 };
            if body.len() < header_len {
                return invalid(format!("PUBLISH shorter than its variable header: {body:02x?}"));
            }
            let topic = match std::str::from_utf8(&body[2..2 + topic_len]) {
                Ok(topic) => topic.to_string(),
                Err(_) => return invalid(format!("PUBLISH topic not UTF-8: {body:02x?}")),
            };
            let pkid = if qos > 0 {
                let pkid = id(&body[2 + topic_len..]);
                if pkid == 0 {
                    return invalid(format!("QoS {qos} PUBLISH with packet id 0 (§2.3.1)"));
                }
                pkid
            } else {
                0
            };
            Packet::Publish(Publish {
                dup: flags & 0x08 != 0,
                qos,
                retain: flags & 0x01 != 0,
                topic,
                pkid,
                payload: body[header_len..].to_vec(),
            })
        }
        kind::PUBACK => {
            fixed(0, 2)?;
            Packet::PubAck(id(body))
        }
        kind::PUBREC => {
            fixed(0, 2)?;
            Packet::PubRec(id(body))
        }
        kind::PUBREL => {
            fixed(2, 2)?;
            Packet::PubRel(id(body))
        }
        kind::PUBCOMP => {
            fixed(0, 2)?;
            Packet::PubComp(id(body))
        }
        kind::SUBACK => {
            if flags != 0 || len < 3 {
                return invalid(format!("bad SUBACK: first byte {first:#04x}, body {body:02x?}"));
            }
            let codes = body[2..].to_vec();
            if let Some(bad) = codes.iter().find(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return invalid(format!("SUBACK return code {bad:#04x} is not allowed"));
            }
            Packet::SubAck {
                pkid: id(body),
                codes,
            }
        }
        kind::UNSUBACK => {
            fixed(0, 2)?;
            Packet::UnsubAck(id(body))
        }
        kind::PINGRESP => {
            fixed(0, 0)?;
            Packet::PingResp
        }
        _ => {
            return invalid(format!(
                "a server must not send packet type {pkt_type} (first byte {first:#04x}, body {body:02x?})"
            ))
        }
    };
    Ok((packet, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_matches_spec_table() {
        // §2.2.3, table 2.4.
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (n, bytes) in cases {
            assert_eq!(remaining_length(*n), bytes.to_vec(), "length {n}");
        }
        assert_eq!(remaining_length(268_435_456).len(), 5);
    }

    #[test]
    fn connect_v311_bytes() {
        let bytes = Connect::v311("ab").keep_alive(60).encode();
        assert_eq!(
            bytes,
            vec![0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn connect_v31_with_everything() {
        let bytes = Connect::v31("c")
            .clean_session(false)
            .will("w", b"x", 2, true)
            .username("u")
            .password(b"p")
            .encode();
        // flags: user 0x80 | password 0x40 | will retain 0x20 | will qos 2 0x10 | will 0x04
        assert_eq!(bytes[2..10], [0, 6, b'M', b'Q', b'I', b's', b'd', b'p']);
        assert_eq!(bytes[10], 3);
        assert_eq!(bytes[11], 0x80 | 0x40 | 0x20 | 0x10 | 0x04);
        assert_eq!(bytes.len() as u8 - 2, bytes[1]);
    }

    #[test]
    fn publish_round_trips_through_decoder() {
        let bytes = PublishPacket::new("a/b", 1, 7, b"hi")
            .retain(true)
            .dup(true)
            .encode();
        assert_eq!(bytes[0], 0x3B);
        let (packet, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            packet,
            Packet::Publish(Publish {
                dup: true,
                qos: 1,
                retain: true,
                topic: "a/b".into(),
                pkid: 7,
                payload: b"hi".to_vec(),
            })
        );
    }

    #[test]
    fn decoder_needs_whole_packet_and_checks_flags() {
        assert_eq!(decode(&[0x20, 0x02, 0x00]), Err(DecodeError::Incomplete));
        assert_eq!(
            decode(&[0x20, 0x02, 0x01, 0x00, 0xD0]).unwrap(),
            (
                Packet::ConnAck {
                    session_present: true,
                    code: 0
                },
                4
            )
        );
        assert!(matches!(
            decode(&[0x60, 0x02, 0x00, 0x01]),
            Err(DecodeError::Invalid(_))
        ));
        assert_eq!(decode(&pubrel(9)).unwrap().0, Packet::PubRel(9));
        assert_eq!(
            decode(&[0x90, 0x04, 0x00, 0x05, 0x01, 0x80]).unwrap().0,
            Packet::SubAck {
                pkid: 5,
                codes: vec![1, 0x80]
            }
        );
    }

    #[test]
    fn subscribe_bytes() {
        assert_eq!(
            subscribe(10, &[("a/b", 1)]),
            vec![0x82, 8, 0, 10, 0, 3, b'a', b'/', b'b', 1]
        );
        assert_eq!(unsubscribe(11, &["a"]), vec![0xA2, 5, 0, 11, 0, 1, b'a']);
    }

    #[test]
    fn garbage_is_deterministic() {
        assert_eq!(Garbage::new(3).bytes(16), Garbage::new(3).bytes(16));
        assert_ne!(Garbage::new(3).bytes(16), Garbage::new(4).bytes(16));
    }
}
