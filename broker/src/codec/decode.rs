//! Bytes to packets: [`decode`] parses one MQTT 3.1, 3.1.1 or 5.0 control packet from the front
//! of a read buffer, validating everything the protocol requires of a receiver.
//!
//! Decoding happens in two stages. The fixed header (type byte and remaining length, at most five
//! bytes) is checked first, so that a bad type, bad flags or an oversize packet is refused before
//! its body is buffered. Only once the whole packet has arrived is it split off the buffer and its
//! body parsed through a bounds-checked [`Reader`]; payloads and topics are slices of that split.
//! MQTT 5 packets differ by their properties ([`super::properties`]) and reason codes; the
//! layout of each packet is decided here, once, from the connection's protocol.

use bytes::{Buf, BytesMut};

use super::properties::{self, PropertyContext};
use super::reader::{malformed, Reader};
use super::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Protocol,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};

/// Decodes the packet at the front of `buf`.
///
/// Returns `Ok(Some(packet))` and removes exactly that packet's bytes from `buf` when a complete
/// packet is buffered, or `Ok(None)` with `buf` untouched when more bytes are needed.
///
/// `max_packet_size` bounds the whole packet (fixed header included) and is enforced as soon as
/// the remaining length is known; pass `usize::MAX` for no limit beyond the protocol's own.
///
/// `protocol` is the connection's protocol once CONNECT has been received (`None` before; the
/// CONNECT then says its own). MQTT 3.1 and 3.1.1 share one wire format, except that MQTT 3.1
/// clients may set DUP on a retried PUBREL, SUBSCRIBE or UNSUBSCRIBE; MQTT 5 adds properties and
/// reason codes, and the AUTH packet.
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
    kind.check_remaining_length(remaining_length, protocol)?;

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

    if let Some(packet) = decode_short(kind, remaining_length, &buf[1 + length_bytes..total]) {
        buf.advance(total);
        return Ok(Some(packet));
    }
    let mut packet = buf.split_to(total);
    packet.advance(1 + length_bytes);
    let mut body = Reader::new(packet.freeze(), kind.name());
    let v5 = protocol == Some(Protocol::V5);
    let decoded = match kind {
        PacketKind::Connect => Packet::Connect(Box::new(decode_connect(&mut body)?)),
        PacketKind::ConnAck => Packet::ConnAck(decode_connack(&mut body, v5)?),
        PacketKind::Publish => Packet::Publish(decode_publish(first_byte, &mut body, v5)?),
        PacketKind::PubAck => Packet::PubAck(decode_ack(&mut body, v5)?),
        PacketKind::PubRec => Packet::PubRec(decode_ack(&mut body, v5)?),
        PacketKind::PubRel => Packet::PubRel(decode_ack(&mut body, v5)?),
        PacketKind::PubComp => Packet::PubComp(decode_ack(&mut body, v5)?),
        PacketKind::Subscribe => Packet::Subscribe(decode_subscribe(&mut body, v5)?),
        PacketKind::SubAck => Packet::SubAck(decode_suback(&mut body, v5)?),
        PacketKind::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(&mut body, v5)?),
        PacketKind::UnsubAck => Packet::UnsubAck(decode_unsuback(&mut body, v5)?),
        PacketKind::PingReq => Packet::PingReq,
        PacketKind::PingResp => Packet::PingResp,
        PacketKind::Disconnect => Packet::Disconnect(decode_disconnect(&mut body, v5)?),
        PacketKind::Auth => Packet::Auth(decode_auth(&mut body)?),
    };
    body.finish()?;
    Ok(Some(decoded))
}

/// The packets a QoS 1/2 flow is made of besides PUBLISH, in their short form (a packet id
/// alone, as MQTT 3.1.1 always sends them and MQTT 5 does for success): read in place, without
/// the shared buffer the general path splits off. They are one in two packets of a QoS 1 flow.
fn decode_short(kind: PacketKind, remaining_length: usize, body: &[u8]) -> Option<Packet> {
    if remaining_length != 2 {
        return None;
    }
    let &[high, low] = body else {
        return None;
    };
    let ack = Ack::new(u16::from_be_bytes([high, low]));
    match kind {
        PacketKind::PubAck => Some(Packet::PubAck(ack)),
        PacketKind::PubRec => Some(Packet::PubRec(ack)),
        PacketKind::PubRel => Some(Packet::PubRel(ack)),
        PacketKind::PubComp => Some(Packet::PubComp(ack)),
        _ => None,
    }
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
            kind.check_remaining_length(remaining_length, protocol)?;
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
    Auth,
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
            15 if protocol == Some(Protocol::V5) => (PacketKind::Auth, 0b0000),
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
    /// peer cannot make us buffer a huge "PINGREQ". MQTT 5 acknowledgements and DISCONNECT may
    /// carry a reason and properties, so only PINGREQ and PINGRESP have a fixed size there.
    fn check_remaining_length(
        self,
        remaining_length: usize,
        protocol: Option<Protocol>,
    ) -> Result<(), DecodeError> {
        let v5 = protocol == Some(Protocol::V5);
        let (expected, reason) = match self {
            PacketKind::PingReq | PacketKind::PingResp => (0, "remaining length must be 0"),
            _ if v5 => return Ok(()),
            PacketKind::ConnAck
            | PacketKind::PubAck
            | PacketKind::PubRec
            | PacketKind::PubRel
            | PacketKind::PubComp
            | PacketKind::UnsubAck => (2, "remaining length must be 2"),
            PacketKind::Disconnect => (0, "remaining length must be 0"),
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
            PacketKind::Auth => "AUTH",
        }
    }
}

/// Properties when the packet is MQTT 5, none otherwise.
fn properties_if(
    v5: bool,
    body: &mut Reader,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    if v5 {
        properties::decode(body, context)
    } else {
        Ok(Properties::default())
    }
}

/// A reason code byte that must be one the standard defines.
fn reason_code(body: &mut Reader) -> Result<ReasonCode, DecodeError> {
    let packet = body.packet();
    ReasonCode::from_u8(body.u8()?).ok_or_else(|| malformed(packet, "unknown reason code"))
}

fn decode_connect(body: &mut Reader) -> Result<Connect, DecodeError> {
    let name = body.length_prefixed()?;
    let name = std::str::from_utf8(&name)
        .map_err(|_| malformed("CONNECT", "protocol name is not UTF-8"))?;
    let level = body.u8()?;
    // Decided before anything else is parsed: another level lays out the rest of the packet
    // differently, and the client is owed CONNACK 0x01 (0x84) rather than a "malformed" close.
    let protocol = match (name, level) {
        ("MQTT", 5) => Protocol::V5,
        ("MQTT", 4) => Protocol::V311,
        ("MQIsdp", 3) => Protocol::V31,
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name: name.to_owned(),
                level,
            })
        }
    };
    let v5 = protocol == Protocol::V5;

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
    // [MQTT-3.1.2-22]; also enforced for 3.1, whose clients have no reason to send it. MQTT 5
    // allows a password without a user name.
    if has_password && !has_username && !v5 {
        return Err(malformed("CONNECT", "password without a user name"));
    }

    let keep_alive = body.u16()?;
    let properties = properties_if(v5, body, PropertyContext::Connect)?;
    let client_id = body.string("CONNECT client id")?;
    let will = if has_will {
        let properties = properties_if(v5, body, PropertyContext::Will)?;
        let topic = body.string("CONNECT will topic")?;
        let payload = body.length_prefixed()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
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
        properties,
    })
}

fn decode_connack(body: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = body.u8()?;
    if flags & 0b1111_1110 != 0 {
        return Err(malformed("CONNACK", "reserved acknowledge flags set"));
    }
    let code = if v5 {
        reason_code(body)?
    } else {
        ReasonCode::from_v3_connack(body.u8()?)
            .ok_or_else(|| malformed("CONNACK", "unknown return code"))?
    };
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        code,
        properties: properties_if(v5, body, PropertyContext::ConnAck)?,
    })
}

/// `first_byte` has already been validated by [`PacketKind::from_first_byte`].
fn decode_publish(first_byte: u8, body: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first_byte >> 1) & 0b11)
        .ok_or_else(|| malformed("PUBLISH", "QoS 3 is reserved"))?;
    // Wildcards and empty topics are valid UTF-8 strings; refusing them is the broker's call
    // (an MQTT 5 topic alias makes an empty one valid).
    let topic = body.utf8("PUBLISH topic")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(body.nonzero_packet_id()?),
    };
    let (properties, topic_alias) = if v5 {
        properties::decode_publish(body)?
    } else {
        (Properties::default(), None)
    };
    Ok(Publish {
        dup: first_byte & 0b1000 != 0,
        qos,
        retain: first_byte & 0b0001 != 0,
        topic,
        packet_id,
        payload: body.rest(),
        topic_alias,
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In MQTT 5 the reason code may be left out when it is 0 and
/// there are no properties, and the property list when it is empty (§3.4.2.1).
fn decode_ack(body: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = body.u16()?;
    let reason = if v5 && !body.is_empty() {
        reason_code(body)?
    } else {
        ReasonCode::Success
    };
    let properties = if v5 && !body.is_empty() {
        properties::decode(body, PropertyContext::Ack)?
    } else {
        Properties::default()
    };
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

fn decode_subscribe(body: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = body.nonzero_packet_id()?;
    let properties = properties_if(v5, body, PropertyContext::Subscribe)?;
    if properties.subscription_identifiers.len() > 1 {
        return Err(DecodeError::Protocol {
            packet: "SUBSCRIBE",
            reason: "more than one subscription identifier",
        });
    }
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = body.string("SUBSCRIBE topic filter")?;
        let options = body.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if options & reserved != 0 {
            return Err(malformed(
                "SUBSCRIBE",
                "reserved subscription option bits set",
            ));
        }
        let qos = QoS::from_u8(options & 0b11).ok_or_else(|| {
            // §3.8.3.1 of MQTT 5: a Protocol Error; 3.1.1 only calls it malformed.
            let reason = "requested QoS 3 is reserved";
            if v5 {
                DecodeError::Protocol {
                    packet: "SUBSCRIBE",
                    reason,
                }
            } else {
                malformed("SUBSCRIBE", reason)
            }
        })?;
        let retain_handling = match (options >> 4) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            // §3.8.3.1: a Protocol Error, where reserved bits make the packet malformed.
            _ => {
                return Err(DecodeError::Protocol {
                    packet: "SUBSCRIBE",
                    reason: "retain handling 3 is reserved",
                })
            }
        };
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: options & 0b0100 != 0,
                retain_as_published: options & 0b1000 != 0,
                retain_handling,
            },
        ));
    }
    // [MQTT-3.8.3-3]
    if filters.is_empty() {
        return Err(malformed("SUBSCRIBE", "no topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(body: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = body.u16()?;
    let properties = properties_if(v5, body, PropertyContext::SubAck)?;
    let mut reason_codes = Vec::with_capacity(body.len());
    while !body.is_empty() {
        let code = if v5 {
            reason_code(body)?
        } else {
            match body.u8()? {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => return Err(malformed("SUBACK", "unknown return code")),
            }
        };
        reason_codes.push(code);
    }
    // One code per filter of the SUBSCRIBE, which has at least one.
    if reason_codes.is_empty() {
        return Err(malformed("SUBACK", "no return codes"));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_unsubscribe(body: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = body.nonzero_packet_id()?;
    let properties = properties_if(v5, body, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !body.is_empty() {
        filters.push(body.string("UNSUBSCRIBE topic filter")?);
    }
    // [MQTT-3.10.3-2]
    if filters.is_empty() {
        return Err(malformed("UNSUBSCRIBE", "no topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(body: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = body.u16()?;
    let properties = properties_if(v5, body, PropertyContext::UnsubAck)?;
    let mut reason_codes = Vec::new();
    if v5 {
        while !body.is_empty() {
            reason_codes.push(reason_code(body)?);
        }
        if reason_codes.is_empty() {
            return Err(malformed("UNSUBACK", "no reason codes"));
        }
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

/// DISCONNECT: empty in 3.1.1; in MQTT 5 an absent reason code means 0 (§3.14.2.1).
fn decode_disconnect(body: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 || body.is_empty() {
        return Ok(Disconnect::new(ReasonCode::Success));
    }
    let reason = reason_code(body)?;
    let properties = if body.is_empty() {
        Properties::default()
    } else {
        properties::decode(body, PropertyContext::Disconnect)?
    };
    Ok(Disconnect { reason, properties })
}

/// AUTH: an empty body means Success without properties (§3.15.2.1).
fn decode_auth(body: &mut Reader) -> Result<Auth, DecodeError> {
    if body.is_empty() {
        return Ok(Auth {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        });
    }
    let reason = reason_code(body)?;
    let properties = if body.is_empty() {
        Properties::default()
    } else {
        properties::decode(body, PropertyContext::Auth)?
    };
    Ok(Auth { reason, properties })
}
