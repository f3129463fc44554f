//! Packets to bytes: [`Packet::encode`] appends a packet to a write buffer, and
//! [`encode_publish`] / [`encode_publish_v5`] are the broker's hot path for PUBLISH, encoding
//! straight from a topic, a payload and (MQTT 5) the properties of one delivery without building
//! a [`Publish`](super::Publish).
//!
//! Every encoder computes the remaining length up front, validates it and every length-prefixed
//! field before writing anything, then reserves the exact size and writes in one pass. A value the
//! wire format cannot carry is an [`EncodeError`] and leaves the buffer untouched.

use bytes::{BufMut, BytesMut};

use super::properties::{put_varint, varint_len};
use super::{
    Ack, ConnAck, Connect, EncodeError, Packet, Properties, Protocol, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe, MAX_REMAINING_LENGTH,
};

impl Packet {
    /// Appends this packet to `buf`, as spoken at `protocol`.
    ///
    /// CONNECT carries its own level (`connect.protocol`) and ignores `protocol`. A CONNACK to an
    /// MQTT 3.1 client never has the session-present flag, which 3.1 does not define. Below
    /// MQTT 5, properties are not sent and reason codes become the nearest 3.1.1 return code
    /// (a DISCONNECT or an acknowledgement then carries none; AUTH does not exist and is refused).
    ///
    /// The encoder only refuses what cannot be represented; it does not re-check rules a
    /// receiver enforces (a packet id 0, a SUBSCRIBE without filters), so callers can still
    /// produce such packets on purpose, e.g. to test a peer.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] if a field is longer than its length prefix allows, the packet would
    /// exceed [`MAX_REMAINING_LENGTH`], or a PUBLISH's packet id does not match its QoS (present
    /// at QoS 0 or missing above). `buf` is unchanged then.
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = protocol == Protocol::V5;
        match self {
            Packet::Connect(connect) => encode_connect(connect, buf),
            Packet::ConnAck(connack) => encode_connack(connack, protocol, buf),
            Packet::Publish(publish) => {
                let packet_id = match (publish.qos, publish.packet_id) {
                    (QoS::AtMostOnce, None) => 0,
                    (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => id,
                    (QoS::AtMostOnce, Some(_)) => {
                        return Err(inconsistent("PUBLISH", "packet id on a QoS 0 message"))
                    }
                    (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => {
                        return Err(inconsistent("PUBLISH", "no packet id on a QoS > 0 message"))
                    }
                };
                if v5 {
                    encode_publish_properties(
                        buf,
                        publish.dup,
                        publish.qos,
                        publish.retain,
                        &publish.topic,
                        packet_id,
                        publish.topic_alias,
                        &publish.properties,
                        &publish.payload,
                    )
                } else {
                    encode_publish(
                        buf,
                        publish.dup,
                        publish.qos,
                        publish.retain,
                        &publish.topic,
                        packet_id,
                        &publish.payload,
                    )
                }
            }
            Packet::PubAck(ack) => encode_ack(buf, 0x40, ack, v5),
            Packet::PubRec(ack) => encode_ack(buf, 0x50, ack, v5),
            Packet::PubRel(ack) => encode_ack(buf, 0x62, ack, v5),
            Packet::PubComp(ack) => encode_ack(buf, 0x70, ack, v5),
            Packet::Subscribe(subscribe) => encode_subscribe(subscribe, v5, buf),
            Packet::SubAck(suback) => encode_suback(suback, v5, buf),
            Packet::Unsubscribe(unsubscribe) => encode_unsubscribe(unsubscribe, v5, buf),
            Packet::UnsubAck(unsuback) => encode_unsuback(unsuback, v5, buf),
            Packet::PingReq => encode_empty(buf, 0xc0),
            Packet::PingResp => encode_empty(buf, 0xd0),
            Packet::Disconnect(disconnect) if v5 => {
                encode_reason_and_properties(buf, 0xe0, disconnect.reason, &disconnect.properties)
            }
            Packet::Disconnect(_) => encode_empty(buf, 0xe0),
            Packet::Auth(auth) if v5 => {
                encode_reason_and_properties(buf, 0xf0, auth.reason, &auth.properties)
            }
            Packet::Auth(_) => Err(inconsistent("AUTH", "AUTH exists only in MQTT 5")),
        }
    }
}

/// Appends an MQTT 3.1/3.1.1 PUBLISH to `buf`. `packet_id` is written only when `qos` is above
/// 0 (and is otherwise ignored), as the two bytes just before the payload: it may be a
/// placeholder that the broker patches per subscriber.
///
/// # Errors
///
/// [`EncodeError`], writing nothing, if the topic is longer than 65535 bytes or the packet would
/// exceed [`MAX_REMAINING_LENGTH`].
pub fn encode_publish(
    buf: &mut BytesMut,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &[u8],
    packet_id: u16,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let has_packet_id = qos != QoS::AtMostOnce;
    // Cannot overflow: the topic is at most 65535 bytes and a slice at most isize::MAX.
    let remaining_length = prefixed_len("PUBLISH topic", topic.len())?
        + if has_packet_id { 2 } else { 0 }
        + payload.len();
    check_remaining_length("PUBLISH", remaining_length)?;

    let first_byte = 0x30 | u8::from(dup) << 3 | qos.as_u8() << 1 | u8::from(retain);
    put_fixed_header(buf, first_byte, remaining_length);
    put_prefixed(buf, topic);
    if has_packet_id {
        buf.put_u16(packet_id);
    }
    buf.put_slice(payload);
    Ok(())
}

/// What an MQTT 5 PUBLISH to one client carries besides the message: the properties that differ
/// per delivery, and those that travel with the message, already in wire form.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishV5Extras<'a> {
    /// Message Expiry Interval: the seconds the message has left.
    pub message_expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    /// One Subscription Identifier property each.
    pub subscription_ids: &'a [u32],
    /// The message's other properties as encoded properties (no length prefix): Payload Format
    /// Indicator, Content Type, Response Topic, Correlation Data, User Properties.
    pub message_properties: &'a [u8],
}

impl PublishV5Extras<'_> {
    /// The size of the property list, without its length prefix.
    pub fn properties_len(&self) -> usize {
        let mut len = self.message_properties.len();
        if self.message_expiry.is_some() {
            len += 5;
        }
        if self.topic_alias.is_some() {
            len += 3;
        }
        for &id in self.subscription_ids {
            len += 1 + varint_len(id as usize);
        }
        len
    }
}

/// The size of the MQTT 5 PUBLISH [`encode_publish_v5`] would write, fixed header included.
pub fn publish_v5_size(
    qos: QoS,
    topic_len: usize,
    extras: &PublishV5Extras,
    payload_len: usize,
) -> usize {
    let properties = extras.properties_len();
    let remaining = 2
        + topic_len
        + if qos == QoS::AtMostOnce { 0 } else { 2 }
        + varint_len(properties)
        + properties
        + payload_len;
    1 + remaining_length_len(remaining) + remaining
}

/// Appends an MQTT 5 PUBLISH to `buf`, composing its properties from `extras` (the broker's hot
/// path: nothing is allocated). `topic` may be empty when `extras` carries a known alias.
///
/// The framing (size check, fixed header, topic, packet id) is written out here as in
/// [`encode_publish`] on purpose: one shared framing function measured 15–20 % slower QoS 1
/// fan-out (release, alternating runs of `compare.sh`), so the encoders keep their own.
///
/// # Errors
///
/// As [`encode_publish`].
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_v5(
    buf: &mut BytesMut,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &[u8],
    packet_id: u16,
    extras: &PublishV5Extras,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let has_packet_id = qos != QoS::AtMostOnce;
    let properties = extras.properties_len();
    let remaining_length = prefixed_len("PUBLISH topic", topic.len())?
        + if has_packet_id { 2 } else { 0 }
        + varint_len(properties)
        + properties
        + payload.len();
    check_remaining_length("PUBLISH", remaining_length)?;

    let first_byte = 0x30 | u8::from(dup) << 3 | qos.as_u8() << 1 | u8::from(retain);
    put_fixed_header(buf, first_byte, remaining_length);
    put_prefixed(buf, topic);
    if has_packet_id {
        buf.put_u16(packet_id);
    }
    put_varint(buf, properties);
    // Identifier order, as the codec's own property encoder writes them.
    if let Some(expiry) = extras.message_expiry {
        buf.put_u8(0x02);
        buf.put_u32(expiry);
    }
    for &id in extras.subscription_ids {
        buf.put_u8(0x0B);
        put_varint(buf, id as usize);
    }
    if let Some(alias) = extras.topic_alias {
        buf.put_u8(0x23);
        buf.put_u16(alias);
    }
    buf.put_slice(extras.message_properties);
    buf.put_slice(payload);
    Ok(())
}

/// An MQTT 5 PUBLISH with a full property list (tests and peers; the broker uses
/// [`encode_publish_v5`]).
#[allow(clippy::too_many_arguments)]
fn encode_publish_properties(
    buf: &mut BytesMut,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &[u8],
    packet_id: u16,
    topic_alias: Option<u16>,
    properties: &Properties,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let has_packet_id = qos != QoS::AtMostOnce;
    let alias_len = if topic_alias.is_some() { 3 } else { 0 };
    let properties_len = properties.encoded_len()? + alias_len;
    let remaining_length = prefixed_len("PUBLISH topic", topic.len())?
        + if has_packet_id { 2 } else { 0 }
        + varint_len(properties_len)
        + properties_len
        + payload.len();
    check_remaining_length("PUBLISH", remaining_length)?;

    let first_byte = 0x30 | u8::from(dup) << 3 | qos.as_u8() << 1 | u8::from(retain);
    put_fixed_header(buf, first_byte, remaining_length);
    put_prefixed(buf, topic);
    if has_packet_id {
        buf.put_u16(packet_id);
    }
    put_varint(buf, properties_len);
    properties.encode(buf);
    if let Some(alias) = topic_alias {
        buf.put_u8(0x23);
        buf.put_u16(alias);
    }
    buf.put_slice(payload);
    Ok(())
}

fn encode_connect(connect: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = connect.protocol == Protocol::V5;
    let name = connect.protocol.name().as_bytes();
    // Protocol name, level, flags and keepalive.
    let mut remaining_length = 2 + name.len() + 1 + 1 + 2;
    if v5 {
        remaining_length += connect.properties.wire_len()?;
    }
    remaining_length += prefixed_len("CONNECT client id", connect.client_id.len())?;
    let mut flags = u8::from(connect.clean_session) << 1;
    if let Some(will) = &connect.will {
        if v5 {
            remaining_length += will.properties.wire_len()?;
        }
        remaining_length += prefixed_len("CONNECT will topic", will.topic.len())?;
        remaining_length += prefixed_len("CONNECT will payload", will.payload.len())?;
        flags |= 0b0000_0100 | will.qos.as_u8() << 3 | u8::from(will.retain) << 5;
    }
    if let Some(password) = &connect.password {
        remaining_length += prefixed_len("CONNECT password", password.len())?;
        flags |= 0b0100_0000;
    }
    if let Some(username) = &connect.username {
        remaining_length += prefixed_len("CONNECT user name", username.len())?;
        flags |= 0b1000_0000;
    }
    check_remaining_length("CONNECT", remaining_length)?;

    put_fixed_header(buf, 0x10, remaining_length);
    put_prefixed(buf, name);
    buf.put_u8(connect.protocol.level());
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    if v5 {
        connect.properties.put(buf);
    }
    put_prefixed(buf, connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
        if v5 {
            will.properties.put(buf);
        }
        put_prefixed(buf, will.topic.as_bytes());
        put_prefixed(buf, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_prefixed(buf, username.as_bytes());
    }
    if let Some(password) = &connect.password {
        put_prefixed(buf, password);
    }
    Ok(())
}

fn encode_connack(
    connack: &ConnAck,
    protocol: Protocol,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let session_present = connack.session_present && protocol != Protocol::V31;
    if protocol != Protocol::V5 {
        put_fixed_header(buf, 0x20, 2);
        buf.put_u8(u8::from(session_present));
        buf.put_u8(connack.code.v3_connack());
        return Ok(());
    }
    let remaining_length = 2 + connack.properties.wire_len()?;
    check_remaining_length("CONNACK", remaining_length)?;
    put_fixed_header(buf, 0x20, remaining_length);
    buf.put_u8(u8::from(session_present));
    buf.put_u8(connack.code.as_u8());
    connack.properties.put(buf);
    Ok(())
}

fn encode_subscribe(
    subscribe: &Subscribe,
    v5: bool,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut remaining_length: usize = 2;
    if v5 {
        remaining_length += subscribe.properties.wire_len()?;
    }
    for (filter, _) in &subscribe.filters {
        let entry = prefixed_len("SUBSCRIBE topic filter", filter.len())? + 1;
        remaining_length = remaining_length.saturating_add(entry);
    }
    check_remaining_length("SUBSCRIBE", remaining_length)?;

    put_fixed_header(buf, 0x82, remaining_length);
    buf.put_u16(subscribe.packet_id);
    if v5 {
        subscribe.properties.put(buf);
    }
    for (filter, options) in &subscribe.filters {
        put_prefixed(buf, filter.as_bytes());
        let mut byte = options.qos.as_u8();
        if v5 {
            byte |= u8::from(options.no_local) << 2
                | u8::from(options.retain_as_published) << 3
                | (options.retain_handling as u8) << 4;
        }
        buf.put_u8(byte);
    }
    Ok(())
}

fn encode_suback(suback: &SubAck, v5: bool, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let properties = if v5 { suback.properties.wire_len()? } else { 0 };
    let remaining_length = suback.reason_codes.len().saturating_add(2 + properties);
    check_remaining_length("SUBACK", remaining_length)?;

    put_fixed_header(buf, 0x90, remaining_length);
    buf.put_u16(suback.packet_id);
    if v5 {
        suback.properties.put(buf);
    }
    for code in &suback.reason_codes {
        buf.put_u8(if v5 { code.as_u8() } else { code.v3_suback() });
    }
    Ok(())
}

fn encode_unsubscribe(
    unsubscribe: &Unsubscribe,
    v5: bool,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut remaining_length: usize = 2;
    if v5 {
        remaining_length += unsubscribe.properties.wire_len()?;
    }
    for filter in &unsubscribe.filters {
        let entry = prefixed_len("UNSUBSCRIBE topic filter", filter.len())?;
        remaining_length = remaining_length.saturating_add(entry);
    }
    check_remaining_length("UNSUBSCRIBE", remaining_length)?;

    put_fixed_header(buf, 0xa2, remaining_length);
    buf.put_u16(unsubscribe.packet_id);
    if v5 {
        unsubscribe.properties.put(buf);
    }
    for filter in &unsubscribe.filters {
        put_prefixed(buf, filter.as_bytes());
    }
    Ok(())
}

fn encode_unsuback(unsuback: &UnsubAck, v5: bool, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if !v5 {
        put_fixed_header(buf, 0xb0, 2);
        buf.put_u16(unsuback.packet_id);
        return Ok(());
    }
    let remaining_length = unsuback
        .reason_codes
        .len()
        .saturating_add(2 + unsuback.properties.wire_len()?);
    check_remaining_length("UNSUBACK", remaining_length)?;
    put_fixed_header(buf, 0xb0, remaining_length);
    buf.put_u16(unsuback.packet_id);
    unsuback.properties.put(buf);
    for code in &unsuback.reason_codes {
        buf.put_u8(code.as_u8());
    }
    Ok(())
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: in MQTT 5 the reason code and properties are left out when
/// they say nothing (§3.4.2.1), as most implementations do.
fn encode_ack(buf: &mut BytesMut, first_byte: u8, ack: &Ack, v5: bool) -> Result<(), EncodeError> {
    let plain = !v5 || (ack.reason == ReasonCode::Success && ack.properties.is_empty());
    if plain {
        put_fixed_header(buf, first_byte, 2);
        buf.put_u16(ack.packet_id);
        return Ok(());
    }
    let properties = if ack.properties.is_empty() {
        0
    } else {
        ack.properties.wire_len()?
    };
    let remaining_length = 3 + properties;
    check_remaining_length("acknowledgement", remaining_length)?;
    put_fixed_header(buf, first_byte, remaining_length);
    buf.put_u16(ack.packet_id);
    buf.put_u8(ack.reason.as_u8());
    if properties > 0 {
        ack.properties.put(buf);
    }
    Ok(())
}

/// MQTT 5 DISCONNECT or AUTH: empty for Success without properties, the reason code alone
/// without properties.
fn encode_reason_and_properties(
    buf: &mut BytesMut,
    first_byte: u8,
    reason: ReasonCode,
    properties: &Properties,
) -> Result<(), EncodeError> {
    if properties.is_empty() {
        if reason == ReasonCode::Success {
            return encode_empty(buf, first_byte);
        }
        put_fixed_header(buf, first_byte, 1);
        buf.put_u8(reason.as_u8());
        return Ok(());
    }
    let remaining_length = 1 + properties.wire_len()?;
    check_remaining_length("DISCONNECT", remaining_length)?;
    put_fixed_header(buf, first_byte, remaining_length);
    buf.put_u8(reason.as_u8());
    properties.put(buf);
    Ok(())
}

fn encode_empty(buf: &mut BytesMut, first_byte: u8) -> Result<(), EncodeError> {
    put_fixed_header(buf, first_byte, 0);
    Ok(())
}

fn inconsistent(packet: &'static str, reason: &'static str) -> EncodeError {
    EncodeError::Inconsistent { packet, reason }
}

/// The encoded size of a length-prefixed field, or an error if its length does not fit the
/// two-byte prefix.
fn prefixed_len(field: &'static str, len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::TooLong { field, len });
    }
    Ok(2 + len)
}

fn check_remaining_length(
    packet: &'static str,
    remaining_length: usize,
) -> Result<(), EncodeError> {
    if remaining_length > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge {
            packet,
            remaining_length,
        });
    }
    Ok(())
}

/// How many bytes the variable-length encoding of `remaining_length` takes.
pub(super) fn remaining_length_len(remaining_length: usize) -> usize {
    match remaining_length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Reserves room for the whole packet, then writes its fixed header. `remaining_length` must
/// have been checked against [`MAX_REMAINING_LENGTH`].
fn put_fixed_header(buf: &mut BytesMut, first_byte: u8, remaining_length: usize) {
    buf.reserve(1 + remaining_length_len(remaining_length) + remaining_length);
    buf.put_u8(first_byte);
    let mut rest = remaining_length;
    loop {
        // Truncation intended: the low seven bits.
        let mut byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if rest == 0 {
            break;
        }
    }
}

/// Writes a two-byte length and the bytes. The length must have been checked by
/// [`prefixed_len`] when the packet size was computed.
fn put_prefixed(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}
