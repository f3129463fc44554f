//! Packets to bytes: [`Packet::encode`] appends a packet to a write buffer, and
//! [`encode_publish`] is the broker's hot path for PUBLISH, encoding straight from a topic and a
//! payload without building a [`Publish`](super::Publish).
//!
//! Every encoder computes the remaining length up front, validates it and every length-prefixed
//! field before writing anything, then reserves the exact size and writes in one pass. A value the
//! wire format cannot carry is an [`EncodeError`] and leaves the buffer untouched.

use bytes::{BufMut, BytesMut};

use super::{
    ConnAck, Connect, EncodeError, Packet, Protocol, QoS, SubAck, Subscribe, Unsubscribe,
    MAX_REMAINING_LENGTH,
};

impl Packet {
    /// Appends this packet to `buf`, as spoken at `protocol`.
    ///
    /// CONNECT carries its own level (`connect.protocol`) and ignores `protocol`. A CONNACK to an
    /// MQTT 3.1 client never has the session-present flag, which 3.1 does not define.
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
        match self {
            Packet::Connect(connect) => encode_connect(connect, buf),
            Packet::ConnAck(connack) => {
                encode_connack(*connack, protocol, buf);
                Ok(())
            }
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
            Packet::PubAck(id) => encode_packet_id_only(buf, 0x40, *id),
            Packet::PubRec(id) => encode_packet_id_only(buf, 0x50, *id),
            Packet::PubRel(id) => encode_packet_id_only(buf, 0x62, *id),
            Packet::PubComp(id) => encode_packet_id_only(buf, 0x70, *id),
            Packet::Subscribe(subscribe) => encode_subscribe(subscribe, buf),
            Packet::SubAck(suback) => encode_suback(suback, buf),
            Packet::Unsubscribe(unsubscribe) => encode_unsubscribe(unsubscribe, buf),
            Packet::UnsubAck(id) => encode_packet_id_only(buf, 0xb0, *id),
            Packet::PingReq => encode_empty(buf, 0xc0),
            Packet::PingResp => encode_empty(buf, 0xd0),
            Packet::Disconnect => encode_empty(buf, 0xe0),
        }
    }
}

/// Appends a PUBLISH to `buf`. `packet_id` is written only when `qos` is above 0 (and is otherwise
/// ignored), as the two bytes just before the payload: it may be a placeholder that the broker
/// patches per subscriber.
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

fn encode_connect(connect: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let name = connect.protocol.name().as_bytes();
    // Protocol name, level, flags and keepalive.
    let mut remaining_length = 2 + name.len() + 1 + 1 + 2;
    remaining_length += prefixed_len("CONNECT client id", connect.client_id.len())?;
    let mut flags = u8::from(connect.clean_session) << 1;
    if let Some(will) = &connect.will {
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
    // Five fields of at most 65537 bytes cannot reach the maximum; checked for uniformity.
    check_remaining_length("CONNECT", remaining_length)?;

    put_fixed_header(buf, 0x10, remaining_length);
    put_prefixed(buf, name);
    buf.put_u8(connect.protocol.level());
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    put_prefixed(buf, connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
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

fn encode_connack(connack: ConnAck, protocol: Protocol, buf: &mut BytesMut) {
    let session_present = connack.session_present && protocol != Protocol::V31;
    put_fixed_header(buf, 0x20, 2);
    buf.put_u8(u8::from(session_present));
    buf.put_u8(connack.code as u8);
}

fn encode_subscribe(subscribe: &Subscribe, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let mut remaining_length: usize = 2;
    for (filter, _) in &subscribe.filters {
        let entry = prefixed_len("SUBSCRIBE topic filter", filter.len())? + 1;
        remaining_length = remaining_length.saturating_add(entry);
    }
    check_remaining_length("SUBSCRIBE", remaining_length)?;

    put_fixed_header(buf, 0x82, remaining_length);
    buf.put_u16(subscribe.packet_id);
    for (filter, qos) in &subscribe.filters {
        put_prefixed(buf, filter.as_bytes());
        buf.put_u8(qos.as_u8());
    }
    Ok(())
}

fn encode_suback(suback: &SubAck, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let remaining_length = suback.return_codes.len().saturating_add(2);
    check_remaining_length("SUBACK", remaining_length)?;

    put_fixed_header(buf, 0x90, remaining_length);
    buf.put_u16(suback.packet_id);
    for code in &suback.return_codes {
        buf.put_u8(code.as_u8());
    }
    Ok(())
}

fn encode_unsubscribe(unsubscribe: &Unsubscribe, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let mut remaining_length: usize = 2;
    for filter in &unsubscribe.filters {
        let entry = prefixed_len("UNSUBSCRIBE topic filter", filter.len())?;
        remaining_length = remaining_length.saturating_add(entry);
    }
    check_remaining_length("UNSUBSCRIBE", remaining_length)?;

    put_fixed_header(buf, 0xa2, remaining_length);
    buf.put_u16(unsubscribe.packet_id);
    for filter in &unsubscribe.filters {
        put_prefixed(buf, filter.as_bytes());
    }
    Ok(())
}

/// Acknowledgements are always encodable; the `Result` only keeps [`Packet::encode`]'s match
/// uniform.
fn encode_packet_id_only(
    buf: &mut BytesMut,
    first_byte: u8,
    packet_id: u16,
) -> Result<(), EncodeError> {
    put_fixed_header(buf, first_byte, 2);
    buf.put_u16(packet_id);
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
