//! A small MQTT 3.1.1 client codec for the load generator: just the packets a benchmarking client
//! sends and receives. Written independently of the broker's codec (and of `crate::packets`,
//! which favours flexibility over speed).
//!
//! Encoders append to a caller-owned buffer (no allocation once the buffer has grown); the
//! decoder borrows from the read buffer ([`Packet`] holds slices), so the hot path allocates
//! nothing.

use bytes::BufMut;

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Appends the variable-length remaining length (§2.2.3).
#[inline]
pub fn put_remaining_length(buf: &mut impl BufMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            return;
        }
    }
}

/// The number of bytes [`put_remaining_length`] writes for `n`.
pub fn remaining_length_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(buf: &mut impl BufMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT, protocol level 4, clean session, no will, no credentials.
pub fn connect(buf: &mut impl BufMut, client_id: &str, keep_alive: u16) {
    let body = 2 + 4 + 1 + 1 + 2 + 2 + client_id.len();
    buf.put_u8(CONNECT << 4);
    put_remaining_length(buf, body);
    put_str(buf, b"MQTT");
    buf.put_u8(4); // protocol level 3.1.1
    buf.put_u8(0x02); // clean session
    buf.put_u16(keep_alive);
    put_str(buf, client_id.as_bytes());
}

/// SUBSCRIBE with one or more (filter, requested QoS) pairs.
pub fn subscribe<S: AsRef<str>>(buf: &mut impl BufMut, packet_id: u16, filters: &[S], qos: u8) {
    let body = 2 + filters
        .iter()
        .map(|f| 2 + f.as_ref().len() + 1)
        .sum::<usize>();
    buf.put_u8((SUBSCRIBE << 4) | 0x02);
    put_remaining_length(buf, body);
    buf.put_u16(packet_id);
    for f in filters {
        put_str(buf, f.as_ref().as_bytes());
        buf.put_u8(qos);
    }
}

/// PUBLISH (no DUP, no RETAIN). `packet_id` is ignored at QoS 0.
pub fn publish(buf: &mut impl BufMut, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) {
    let body = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    buf.put_u8((PUBLISH << 4) | (qos << 1));
    put_remaining_length(buf, body);
    put_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    buf.put_slice(payload);
}

pub fn puback(buf: &mut impl BufMut, packet_id: u16) {
    buf.put_u8(PUBACK << 4);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

pub fn pingreq(buf: &mut impl BufMut) {
    buf.put_u8(PINGREQ << 4);
    buf.put_u8(0);
}

pub fn disconnect(buf: &mut impl BufMut) {
    buf.put_u8(DISCONNECT << 4);
    buf.put_u8(0);
}

/// A decoded packet, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        packet_id: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    PingResp,
    /// Anything else a broker may send (PUBREC, UNSUBACK, ...): type nibble and body.
    Other {
        kind: u8,
        body: &'a [u8],
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed packet from the broker: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one packet from the front of `buf`: `Ok(Some((packet, bytes used)))`, or `Ok(None)`
/// if `buf` does not hold a whole packet yet.
#[inline]
pub fn decode(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let first = buf[0];
    let mut len: usize = 0;
    let mut shift = 0;
    let mut pos = 1;
    loop {
        if pos >= buf.len() {
            return Ok(None);
        }
        if pos > 4 {
            return Err(DecodeError("remaining length longer than 4 bytes"));
        }
        let b = buf[pos];
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        pos += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let end = pos + len;
    if buf.len() < end {
        return Ok(None);
    }
    let body = &buf[pos..end];
    let kind = first >> 4;
    let packet = match kind {
        PUBLISH => {
            let qos = (first >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError("PUBLISH with QoS 3"));
            }
            if body.len() < 2 {
                return Err(DecodeError("short PUBLISH"));
            }
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2 + tlen;
            let id_len = if qos > 0 { 2 } else { 0 };
            if body.len() < at + id_len {
                return Err(DecodeError("short PUBLISH"));
            }
            let topic = &body[2..at];
            let packet_id = if qos > 0 {
                let id = u16::from_be_bytes([body[at], body[at + 1]]);
                at += 2;
                id
            } else {
                0
            };
            Packet::Publish {
                qos,
                dup: first & 0x08 != 0,
                retain: first & 0x01 != 0,
                packet_id,
                topic,
                payload: &body[at..],
            }
        }
        PUBACK => {
            if body.len() != 2 {
                return Err(DecodeError("PUBACK length"));
            }
            Packet::PubAck {
                packet_id: u16::from_be_bytes([body[0], body[1]]),
            }
        }
        CONNACK => {
            if body.len() != 2 {
                return Err(DecodeError("CONNACK length"));
            }
            Packet::ConnAck {
                session_present: body[0] & 1 != 0,
                code: body[1],
            }
        }
        SUBACK => {
            if body.len() < 3 {
                return Err(DecodeError("SUBACK length"));
            }
            Packet::SubAck {
                packet_id: u16::from_be_bytes([body[0], body[1]]),
                codes: &body[2..],
            }
        }
        PINGRESP => Packet::PingResp,
        _ => Packet::Other { kind, body },
    };
    Ok(Some((packet, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_packets() {
        let mut buf = Vec::new();
        connect(&mut buf, "id", 600);
        assert_eq!(
            buf,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0x02, 0x58, 0, 2, b'i', b'd']
        );
        buf.clear();
        subscribe(&mut buf, 1, &["a/+"], 1);
        assert_eq!(buf, [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'+', 1]);
        let wire = [0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0x40, 2, 1, 2, 0xd0, 0];
        let (p, n) = decode(&wire).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::ConnAck {
                session_present: false,
                code: 0
            }
        );
        let (p, m) = decode(&wire[n..]).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::SubAck {
                packet_id: 1,
                codes: &[1]
            }
        );
        let (p, k) = decode(&wire[n + m..]).unwrap().unwrap();
        assert_eq!(p, Packet::PubAck { packet_id: 258 });
        let (p, _) = decode(&wire[n + m + k..]).unwrap().unwrap();
        assert_eq!(p, Packet::PingResp);
    }

    #[test]
    fn publish_round_trip() {
        for qos in [0u8, 1] {
            for size in [0usize, 16, 200, 20_000, 3_000_000] {
                let payload = vec![7u8; size];
                let mut buf = Vec::new();
                publish(&mut buf, "a/b", qos, 42, &payload);
                let (p, used) = decode(&buf).unwrap().unwrap();
                assert_eq!(used, buf.len());
                assert_eq!(
                    p,
                    Packet::Publish {
                        qos,
                        dup: false,
                        retain: false,
                        packet_id: if qos > 0 { 42 } else { 0 },
                        topic: b"a/b",
                        payload: &payload,
                    }
                );
                let body = 2 + 3 + if qos > 0 { 2 } else { 0 } + size;
                assert_eq!(buf.len(), 1 + remaining_length_len(body) + body);
                // Every strict prefix is incomplete.
                for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
                    assert_eq!(decode(&buf[..cut]).unwrap(), None);
                }
            }
        }
    }
}
