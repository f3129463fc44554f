//! Bytes to packets: [`decode`] parses one MQTT 3.1/3.1.1 control packet from the front of a read
//! buffer, validating everything the protocol requires of a receiver.
//!
//! Decoding happens in two stages. The fixed header (type byte and remaining length, at most five
//! bytes) is checked first, so that a bad type, bad flags or an oversize packet is refused before
//! its body is buffered. Only once the whole packet has arrived is it split off the buffer and its
//! body parsed through a bounds-checked [`Reader`]; payloads and topics are slices of that split.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    ConnAck, Connect, ConnectReturnCode, DecodeError, LastWill, Packet, Protocol, Publish, QoS,
    SubAck, Subscribe, SubscribeReturnCode, Unsubscribe,
};

/// Decodes the packet at the front of `buf`.
///
/// Returns `Ok(Some(packet))` and removes exactly that packet's bytes from `buf` when a complete
/// packet is buffered, or `Ok(None)` with `buf` untouched when more bytes are needed.
///
/// `max_packet_size` bounds the whole packet (fixed header included) and is enforced as soon as
/// the remaining length is known; pass `usize::MAX` for no limit beyond the protocol's own.
///
/// `protocol` is the connection's protocol once CONNECT has been received (`None` before). The
/// supported levels share one wire format, except that MQTT 3.1 clients may set DUP on a retried
/// PUBREL, SUBSCRIBE or UNSUBSCRIBE; MQTT 5 will add properties here.
///
/// # Errors
///
/// Any [`DecodeError`]; the connection must then be closed. Errors found in the fixed header
/// (type, flags, length, size limit) leave `buf` untouched; errors found in the body consume the
/// packet. In particular [`DecodeError::UnsupportedProtocol`] is only returned once the whole
/// CONNECT has arrived and consumes it, so the connection can answer CONNACK 0x01 from a clean
/// buffer.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((&first_byte, after_first)) = buf.split_first() else {
        return Ok(None);
    };
    let kind = PacketKind::from_first_byte(first_byte, protocol)?;
    let Some((remaining_length, length_bytes)) = read_remaining_length(after_first)? else {
        return Ok(None);
    };
    kind.check_remaining_length(remaining_length)?;

    // Cannot overflow: at most 5 + MAX_REMAINING_LENGTH.
    let total = 1 + length_bytes + remaining_length;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            limit: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }

    let mut packet = buf.split_to(total);
    packet.advance(1 + length_bytes);
    let mut body = Reader::new(packet.freeze(), kind.name());
    let decoded = match kind {
        PacketKind::Connect => Packet::Connect(decode_connect(&mut body)?),
        PacketKind::ConnAck => Packet::ConnAck(decode_connack(&mut body)?),
        PacketKind::Publish => Packet::Publish(decode_publish(first_byte, &mut body)?),
        PacketKind::PubAck => Packet::PubAck(body.u16()?),
        PacketKind::PubRec => Packet::PubRec(body.u16()?),
        PacketKind::PubRel => Packet::PubRel(body.u16()?),
        PacketKind::PubComp => Packet::PubComp(body.u16()?),
        PacketKind::Subscribe => Packet::Subscribe(decode_subscribe(&mut body)?),
        PacketKind::SubAck => Packet::SubAck(decode_suback(&mut body)?),
        PacketKind::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(&mut body)?),
        PacketKind::UnsubAck => Packet::UnsubAck(body.u16()?),
        PacketKind::PingReq => Packet::PingReq,
        PacketKind::PingResp => Packet::PingResp,
        PacketKind::Disconnect => Packet::Disconnect,
    };
    body.finish()?;
    Ok(Some(decoded))
}

/// What the fixed header at the front of a read buffer announces, known before the body has
/// arrived: enough to refuse a packet (by its type or its size) without buffering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    kind: PacketKind,
    /// The whole packet's size, fixed header included; `None` while the remaining length's
    /// bytes are still arriving.
    pub packet_size: Option<usize>,
}

impl FixedHeader {
    pub fn is_connect(&self) -> bool {
        self.kind == PacketKind::Connect
    }

    /// The packet type's name, for logs.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

/// Reads the fixed header at the front of `buf` without consuming anything: `Ok(None)` while
/// `buf` is empty. The type and flags are checked as soon as the first byte is there, and the
/// remaining length as soon as it is complete, with the same errors as [`decode`].
pub fn peek_fixed_header(
    buf: &[u8],
    protocol: Option<Protocol>,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first_byte, after_first)) = buf.split_first() else {
        return Ok(None);
    };
    let kind = PacketKind::from_first_byte(first_byte, protocol)?;
    let packet_size = match read_remaining_length(after_first)? {
        Some((remaining_length, length_bytes)) => {
            kind.check_remaining_length(remaining_length)?;
            // Cannot overflow: at most 5 + MAX_REMAINING_LENGTH.
            Some(1 + length_bytes + remaining_length)
        }
        None => None,
    };
    Ok(Some(FixedHeader { kind, packet_size }))
}

/// Reads the variable-length remaining length that follows the fixed header's first byte.
///
/// Returns `(value, number of length bytes)`, `None` if the encoding is still incomplete, or
/// [`DecodeError::MalformedLength`] if a fourth byte still has its continuation bit set.
/// Non-minimal encodings (such as `0x80 0x00` for 0) are accepted, as most brokers do.
fn read_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedLength)
    } else {
        Ok(None)
    }
}

/// The control packet type of a fixed header, known valid with its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PacketKind {
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    PingReq,
    PingResp,
    Disconnect,
}

impl PacketKind {
    /// Validates the type and flags of a fixed header's first byte.
    ///
    /// PUBLISH's QoS and DUP bits are checked here as well, so that a bad PUBLISH is refused
    /// before its (possibly large) body is buffered.
    fn from_first_byte(byte: u8, protocol: Option<Protocol>) -> Result<PacketKind, DecodeError> {
        let flags = byte & 0x0f;
        let (kind, required_flags) = match byte >> 4 {
            1 => (PacketKind::Connect, 0b0000),
            2 => (PacketKind::ConnAck, 0b0000),
            3 => {
                let qos = (flags >> 1) & 0b11;
                if qos == 3 {
                    return Err(malformed("PUBLISH", "QoS 3 is reserved"));
                }
                // [MQTT-3.3.1-2]: the DUP flag must be 0 for QoS 0 messages.
                if qos == 0 && flags & 0b1000 != 0 {
                    return Err(malformed("PUBLISH", "DUP flag set on a QoS 0 message"));
                }
                return Ok(PacketKind::Publish);
            }
            4 => (PacketKind::PubAck, 0b0000),
            5 => (PacketKind::PubRec, 0b0000),
            6 => (PacketKind::PubRel, 0b0010),
            7 => (PacketKind::PubComp, 0b0000),
            8 => (PacketKind::Subscribe, 0b0010),
            9 => (PacketKind::SubAck, 0b0000),
            10 => (PacketKind::Unsubscribe, 0b0010),
            11 => (PacketKind::UnsubAck, 0b0000),
            12 => (PacketKind::PingReq, 0b0000),
            13 => (PacketKind::PingResp, 0b0000),
            14 => (PacketKind::Disconnect, 0b0000),
            reserved => return Err(DecodeError::ReservedPacketType(reserved)),
        };
        // MQTT 3.1 set DUP on retried PUBREL, SUBSCRIBE and UNSUBSCRIBE (the bits 3.1.1 fixed).
        let dup_allowed = protocol == Some(Protocol::V31) && required_flags == 0b0010;
        let flags_seen = if dup_allowed { flags & !0b1000 } else { flags };
        if flags_seen != required_flags {
            return Err(DecodeError::InvalidFlags {
                packet: kind.name(),
                flags,
            });
        }
        Ok(kind)
    }

    /// Refuses a wrong remaining length of a fixed-size packet from its header alone, so that a
    /// peer cannot make us buffer a huge "PINGREQ".
    fn check_remaining_length(self, remaining_length: usize) -> Result<(), DecodeError> {
        let (expected, reason) = match self {
            PacketKind::ConnAck
            | PacketKind::PubAck
            | PacketKind::PubRec
            | PacketKind::PubRel
            | PacketKind::PubComp
            | PacketKind::UnsubAck => (2, "remaining length must be 2"),
            PacketKind::PingReq | PacketKind::PingResp | PacketKind::Disconnect => {
                (0, "remaining length must be 0")
            }
            _ => return Ok(()),
        };
        if remaining_length == expected {
            Ok(())
        } else {
            Err(malformed(self.name(), reason))
        }
    }

    fn name(self) -> &'static str {
        match self {
            PacketKind::Connect => "CONNECT",
            PacketKind::ConnAck => "CONNACK",
            PacketKind::Publish => "PUBLISH",
            PacketKind::PubAck => "PUBACK",
            PacketKind::PubRec => "PUBREC",
            PacketKind::PubRel => "PUBREL",
            PacketKind::PubComp => "PUBCOMP",
            PacketKind::Subscribe => "SUBSCRIBE",
            PacketKind::SubAck => "SUBACK",
            PacketKind::Unsubscribe => "UNSUBSCRIBE",
            PacketKind::UnsubAck => "UNSUBACK",
            PacketKind::PingReq => "PINGREQ",
            PacketKind::PingResp => "PINGRESP",
            PacketKind::Disconnect => "DISCONNECT",
        }
    }
}

fn malformed(packet: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::Malformed { packet, reason }
}

fn decode_connect(body: &mut Reader) -> Result<Connect, DecodeError> {
    let name = body.length_prefixed()?;
    let name = std::str::from_utf8(&name)
        .map_err(|_| malformed("CONNECT", "protocol name is not UTF-8"))?;
    let level = body.u8()?;
    // Decided before anything else is parsed: a newer level (MQTT 5) lays out the rest of the
    // packet differently, and the client is owed CONNACK 0x01 rather than a "malformed" close.
    let protocol = match (name, level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQIsdp", 3) => Protocol::V31,
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name: name.to_owned(),
                level,
            })
        }
    };

    let flags = body.u8()?;
    if flags & 0b0000_0001 != 0 {
        return Err(malformed("CONNECT", "reserved connect flag set"));
    }
    let clean_session = flags & 0b0000_0010 != 0;
    let has_will = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let has_password = flags & 0b0100_0000 != 0;
    let has_username = flags & 0b1000_0000 != 0;
    if !has_will && (will_qos != 0 || will_retain) {
        return Err(malformed(
            "CONNECT",
            "will QoS or will retain set without a will",
        ));
    }
    let will_qos =
        QoS::from_u8(will_qos).ok_or_else(|| malformed("CONNECT", "will QoS 3 is reserved"))?;
    // [MQTT-3.1.2-22]; also enforced for 3.1, whose clients have no reason to send it.
    if has_password && !has_username {
        return Err(malformed("CONNECT", "password without a user name"));
    }

    let keep_alive = body.u16()?;
    let client_id = body.string("CONNECT client id")?;
    let will = if has_will {
        let topic = body.string("CONNECT will topic")?;
        let payload = body.length_prefixed()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(body.string("CONNECT user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(body.length_prefixed()?)
    } else {
        None
    };

    Ok(Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_connack(body: &mut Reader) -> Result<ConnAck, DecodeError> {
    let flags = body.u8()?;
    if flags & 0b1111_1110 != 0 {
        return Err(malformed("CONNACK", "reserved acknowledge flags set"));
    }
    let code = match body.u8()? {
        0x00 => ConnectReturnCode::Accepted,
        0x01 => ConnectReturnCode::UnacceptableProtocolVersion,
        0x02 => ConnectReturnCode::IdentifierRejected,
        0x03 => ConnectReturnCode::ServerUnavailable,
        0x04 => ConnectReturnCode::BadUserNameOrPassword,
        0x05 => ConnectReturnCode::NotAuthorized,
        _ => return Err(malformed("CONNACK", "unknown return code")),
    };
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        code,
    })
}

/// `first_byte` has already been validated by [`PacketKind::from_first_byte`].
fn decode_publish(first_byte: u8, body: &mut Reader) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first_byte >> 1) & 0b11)
        .ok_or_else(|| malformed("PUBLISH", "QoS 3 is reserved"))?;
    // Wildcards and empty topics are valid UTF-8 strings; refusing them is the broker's call.
    let topic = body.utf8("PUBLISH topic")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(body.nonzero_packet_id()?),
    };
    Ok(Publish {
        dup: first_byte & 0b1000 != 0,
        qos,
        retain: first_byte & 0b0001 != 0,
        topic,
        packet_id,
        payload: body.rest(),
    })
}

fn decode_subscribe(body: &mut Reader) -> Result<Subscribe, DecodeError> {
    let packet_id = body.nonzero_packet_id()?;
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = body.string("SUBSCRIBE topic filter")?;
        let options = body.u8()?;
        if options & 0b1111_1100 != 0 {
            return Err(malformed(
                "SUBSCRIBE",
                "reserved subscription option bits set",
            ));
        }
        let qos = QoS::from_u8(options)
            .ok_or_else(|| malformed("SUBSCRIBE", "requested QoS 3 is reserved"))?;
        filters.push((filter, qos));
    }
    // [MQTT-3.8.3-3]
    if filters.is_empty() {
        return Err(malformed("SUBSCRIBE", "no topic filters"));
    }
    Ok(Subscribe { packet_id, filters })
}

fn decode_suback(body: &mut Reader) -> Result<SubAck, DecodeError> {
    let packet_id = body.u16()?;
    let mut return_codes = Vec::with_capacity(body.len());
    while !body.is_empty() {
        let code = match body.u8()? {
            0x00 => SubscribeReturnCode::Granted(QoS::AtMostOnce),
            0x01 => SubscribeReturnCode::Granted(QoS::AtLeastOnce),
            0x02 => SubscribeReturnCode::Granted(QoS::ExactlyOnce),
            0x80 => SubscribeReturnCode::Failure,
            _ => return Err(malformed("SUBACK", "unknown return code")),
        };
        return_codes.push(code);
    }
    // One code per filter of the SUBSCRIBE, which has at least one.
    if return_codes.is_empty() {
        return Err(malformed("SUBACK", "no return codes"));
    }
    Ok(SubAck {
        packet_id,
        return_codes,
    })
}

fn decode_unsubscribe(body: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let packet_id = body.nonzero_packet_id()?;
    let mut filters = Vec::new();
    while !body.is_empty() {
        filters.push(body.string("UNSUBSCRIBE topic filter")?);
    }
    // [MQTT-3.10.3-2]
    if filters.is_empty() {
        return Err(malformed("UNSUBSCRIBE", "no topic filters"));
    }
    Ok(Unsubscribe { packet_id, filters })
}

/// A bounds-checked cursor over a packet body. Every read checks the length first and reports a
/// shortfall as [`DecodeError::Malformed`] naming the packet.
struct Reader {
    rest: Bytes,
    packet: &'static str,
}

impl Reader {
    fn new(body: Bytes, packet: &'static str) -> Reader {
        Reader { rest: body, packet }
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn ends_early(&self) -> DecodeError {
        malformed(self.packet, "packet ends inside a field")
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.rest.first().ok_or_else(|| self.ends_early())?;
        self.rest.advance(1);
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let Some(&[high, low]) = self.rest.get(..2) else {
            return Err(self.ends_early());
        };
        let value = u16::from_be_bytes([high, low]);
        self.rest.advance(2);
        Ok(value)
    }

    /// A packet identifier where the protocol requires one: 0 is not a valid id [MQTT-2.3.1-1].
    fn nonzero_packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(malformed(self.packet, "packet identifier 0")),
            id => Ok(id),
        }
    }

    /// Binary data with a two-byte length prefix, as a zero-copy slice of the packet.
    fn length_prefixed(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > self.rest.len() {
            return Err(malformed(
                self.packet,
                "length prefix runs past the end of the packet",
            ));
        }
        Ok(self.rest.split_to(len))
    }

    /// A UTF-8 string kept as bytes (zero-copy), checked as [`Reader::string`] checks.
    fn utf8(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let raw = self.length_prefixed()?;
        check_utf8(&raw, field)?;
        Ok(raw)
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 [MQTT-1.5.3-1, MQTT-1.5.3-2].
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let raw = self.rest.get(..len).ok_or_else(|| {
            malformed(self.packet, "length prefix runs past the end of the packet")
        })?;
        let string = check_utf8(raw, field)?.to_owned();
        self.rest.advance(len);
        Ok(string)
    }

    /// Everything left, as a zero-copy slice of the packet.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.rest)
    }

    /// Every packet must be exactly as long as its fields.
    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.packet,
                "unexpected bytes after the last field",
            ))
        }
    }
}

fn check_utf8<'a>(raw: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    // In UTF-8 a zero byte only ever encodes U+0000, so a byte search is enough.
    if raw.contains(&0) {
        return Err(DecodeError::InvalidUtf8(field));
    }
    std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8(field))
}
