//! A small MQTT 3.1.1 / 5.0 client codec for the load generator: just the packets a benchmarking
//! client sends and receives. Written independently of the broker's codec (and of
//! `crate::packets`, which favours flexibility over speed).
//!
//! Encoders append to a caller-owned buffer (no allocation once the buffer has grown); the
//! decoder borrows from the read buffer ([`Packet`] holds slices), so the hot path allocates
//! nothing. With [`Version::V5`] the decoder reads the properties and reason codes of the packets
//! a broker sends (PUBLISH, PUBACK, PUBREC, PUBCOMP, SUBACK, CONNACK, DISCONNECT); a PUBLISH's
//! Topic Alias is returned as is, and [`InboundAliases`] turns it into the topic (the table is
//! per connection). [`OutboundAliases`] is the publisher's side: which topics it has taught the
//! broker an alias for.

use bytes::BufMut;

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Property identifiers the bench writes or reads (MQTT 5.0 §2.2.2.2).
pub const PROP_SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const PROP_REASON_STRING: u8 = 0x1F;
pub const PROP_RECEIVE_MAXIMUM: u8 = 0x21;
pub const PROP_TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const PROP_TOPIC_ALIAS: u8 = 0x23;
pub const PROP_MAXIMUM_QOS: u8 = 0x24;
pub const PROP_MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// The protocol a connection speaks: it decides how CONNECT, SUBSCRIBE and PUBLISH are written
/// and how every packet from the broker is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

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

/// The User Name and Password a CONNECT carries; [`Credentials::NONE`] leaves both out (and the
/// CONNECT is then byte for byte what it was before credentials existed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

impl Credentials<'_> {
    pub const NONE: Credentials<'static> = Credentials {
        username: None,
        password: None,
    };

    /// The Connect Flags bits for what is present (User Name 0x80, Password 0x40).
    fn flags(&self) -> u8 {
        (if self.username.is_some() { 0x80 } else { 0 })
            | (if self.password.is_some() { 0x40 } else { 0 })
    }

    /// Payload bytes after the client id: each present field with its two-byte length.
    fn len(&self) -> usize {
        self.username.map_or(0, |u| 2 + u.len()) + self.password.map_or(0, |p| 2 + p.len())
    }

    fn put(&self, buf: &mut impl BufMut) {
        if let Some(username) = self.username {
            put_str(buf, username.as_bytes());
        }
        if let Some(password) = self.password {
            put_str(buf, password);
        }
    }
}

/// CONNECT, protocol level 4, no will; User Name and Password when `credentials` has them
/// (3.1.1 forbids a password without a user name: [`super::Args::check`] refuses it). Clean
/// session when `session_expiry` is 0; otherwise Clean Session 0, a session the broker keeps
/// after the connection (3.1.1 has no expiry: for as long as the broker keeps such sessions).
pub fn connect(
    buf: &mut impl BufMut,
    client_id: &str,
    keep_alive: u16,
    credentials: Credentials<'_>,
    session_expiry: u32,
) {
    let body = 2 + 4 + 1 + 1 + 2 + 2 + client_id.len() + credentials.len();
    buf.put_u8(CONNECT << 4);
    put_remaining_length(buf, body);
    put_str(buf, b"MQTT");
    buf.put_u8(4); // protocol level 3.1.1
    buf.put_u8(clean_flag(session_expiry) | credentials.flags());
    buf.put_u16(keep_alive);
    put_str(buf, client_id.as_bytes());
    credentials.put(buf);
}

/// CONNECT, protocol level 5, no will; User Name and Password when `credentials` has them.
/// `session_expiry` 0: Clean Start and no Session Expiry Interval (0: the session ends with the
/// connection, as a 3.1.1 clean session); otherwise Clean Start 0 and that Session Expiry
/// Interval in seconds. Properties: Receive Maximum (how many QoS 1/2 PUBLISHes the broker may
/// have unacknowledged towards us; at least 1) and, when not 0, Topic Alias Maximum (how many
/// topic aliases the broker may assign us).
pub fn connect_v5(
    buf: &mut impl BufMut,
    client_id: &str,
    keep_alive: u16,
    receive_maximum: u16,
    topic_alias_maximum: u16,
    credentials: Credentials<'_>,
    session_expiry: u32,
) {
    let props =
        3 + if topic_alias_maximum > 0 { 3 } else { 0 } + if session_expiry > 0 { 5 } else { 0 };
    let body = 2
        + 4
        + 1
        + 1
        + 2
        + remaining_length_len(props)
        + props
        + 2
        + client_id.len()
        + credentials.len();
    buf.put_u8(CONNECT << 4);
    put_remaining_length(buf, body);
    put_str(buf, b"MQTT");
    buf.put_u8(5); // protocol level 5.0
    buf.put_u8(clean_flag(session_expiry) | credentials.flags());
    buf.put_u16(keep_alive);
    put_remaining_length(buf, props);
    if session_expiry > 0 {
        buf.put_u8(PROP_SESSION_EXPIRY_INTERVAL);
        buf.put_u32(session_expiry);
    }
    buf.put_u8(PROP_RECEIVE_MAXIMUM);
    buf.put_u16(receive_maximum.max(1));
    if topic_alias_maximum > 0 {
        buf.put_u8(PROP_TOPIC_ALIAS_MAXIMUM);
        buf.put_u16(topic_alias_maximum);
    }
    put_str(buf, client_id.as_bytes());
    credentials.put(buf);
}

/// The Connect Flags bit of Clean Session (3.1.1) / Clean Start (5.0): set for a session that
/// ends with the connection.
fn clean_flag(session_expiry: u32) -> u8 {
    if session_expiry == 0 {
        0x02
    } else {
        0
    }
}

/// SUBSCRIBE with one or more (filter, requested QoS) pairs; v5 adds an empty property section
/// and leaves every other subscription option at 0 (No Local off, Retain As Published off,
/// Retain Handling 0).
pub fn subscribe<S: AsRef<str>>(
    buf: &mut impl BufMut,
    version: Version,
    packet_id: u16,
    filters: &[S],
    qos: u8,
) {
    let props = if version == Version::V5 { 1 } else { 0 };
    let body = 2
        + props
        + filters
            .iter()
            .map(|f| 2 + f.as_ref().len() + 1)
            .sum::<usize>();
    buf.put_u8((SUBSCRIBE << 4) | 0x02);
    put_remaining_length(buf, body);
    buf.put_u16(packet_id);
    if version == Version::V5 {
        buf.put_u8(0); // property length
    }
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

/// A v5 PUBLISH (no DUP, no RETAIN) whose only property is a Topic Alias when `topic_alias` is
/// not 0: `topic` and an alias teach the broker the alias, an empty `topic` and an alias use it.
/// `packet_id` is ignored at QoS 0.
pub fn publish_v5(
    buf: &mut impl BufMut,
    topic: &str,
    topic_alias: u16,
    qos: u8,
    packet_id: u16,
    payload: &[u8],
) {
    let props = if topic_alias > 0 { 3 } else { 0 };
    let body = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + 1 + props + payload.len();
    buf.put_u8((PUBLISH << 4) | (qos << 1));
    put_remaining_length(buf, body);
    put_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    buf.put_u8(props as u8);
    if topic_alias > 0 {
        buf.put_u8(PROP_TOPIC_ALIAS);
        buf.put_u16(topic_alias);
    }
    buf.put_slice(payload);
}

/// PUBACK; the same bytes in both versions (a v5 PUBACK may leave out reason code 0 and the
/// properties).
pub fn puback(buf: &mut impl BufMut, packet_id: u16) {
    buf.put_u8(PUBACK << 4);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

pub fn pingreq(buf: &mut impl BufMut) {
    buf.put_u8(PINGREQ << 4);
    buf.put_u8(0);
}

/// DISCONNECT; in v5 the empty body means reason code 0 (normal disconnection: no will).
pub fn disconnect(buf: &mut impl BufMut) {
    buf.put_u8(DISCONNECT << 4);
    buf.put_u8(0);
}

/// What a v5 broker says about itself in CONNACK (the defaults when a property is absent, and
/// for 3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAckProps<'a> {
    /// QoS 1/2 PUBLISHes we may have unacknowledged towards the broker.
    pub receive_maximum: u16,
    /// Topic aliases we may use (0: none).
    pub topic_alias_maximum: u16,
    pub maximum_qos: u8,
    /// Largest packet the broker accepts (0: no limit but the protocol's).
    pub maximum_packet_size: u32,
    pub reason_string: &'a [u8],
}

impl Default for ConnAckProps<'_> {
    fn default() -> Self {
        ConnAckProps {
            receive_maximum: 65_535,
            topic_alias_maximum: 0,
            maximum_qos: 2,
            maximum_packet_size: 0,
            reason_string: &[],
        }
    }
}

/// A decoded packet, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        /// 3.1.1 return code or v5 reason code (0: accepted).
        code: u8,
        props: ConnAckProps<'a>,
    },
    SubAck {
        packet_id: u16,
        /// Granted QoS, or a failure code (0x80, and in v5 anything from 0x80 up).
        codes: &'a [u8],
    },
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        packet_id: u16,
        /// As on the wire: empty when a v5 broker used a Topic Alias it set before (see
        /// [`InboundAliases::resolve`]).
        topic: &'a [u8],
        /// v5 Topic Alias (0: none).
        topic_alias: u16,
        /// v5 properties, encoded (empty for 3.1.1).
        properties: &'a [u8],
        payload: &'a [u8],
    },
    /// PUBACK, with its v5 reason code (0 in 3.1.1, and when a v5 broker left it out).
    PubAck {
        packet_id: u16,
        code: u8,
    },
    PubRec {
        packet_id: u16,
        code: u8,
    },
    PubComp {
        packet_id: u16,
        code: u8,
    },
    PingResp,
    /// A v5 broker closing the connection (3.1.1 brokers never send one; if one did, code 0).
    Disconnect {
        code: u8,
        reason_string: &'a [u8],
    },
    /// Anything else a broker may send (PUBREL, UNSUBACK, AUTH, ...): type nibble and body.
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

/// Reads a Variable Byte Integer (§1.5.5): `Ok(Some((value, bytes used)))`, or `Ok(None)` if
/// `buf` ends before its last byte.
#[inline]
fn varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError("variable byte integer longer than 4 bytes"));
        }
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Splits a v5 property section (length + properties) off the front of `buf`: the encoded
/// properties and what follows them.
#[inline]
fn split_properties(buf: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let (len, used) = varint(buf)?.ok_or(DecodeError("truncated property length"))?;
    let rest = &buf[used..];
    if rest.len() < len {
        return Err(DecodeError("property length beyond the packet"));
    }
    Ok(rest.split_at(len))
}

/// The value of one property whose identifier was just read: the value's bytes (for strings and
/// binary data without their length; a User Property whole) and how many bytes it takes.
fn property_value(id: u8, buf: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    let fixed = |n: usize| {
        if buf.len() < n {
            Err(DecodeError("truncated property"))
        } else {
            Ok((&buf[..n], n))
        }
    };
    let prefixed = |at: usize| -> Result<usize, DecodeError> {
        if buf.len() < at + 2 {
            return Err(DecodeError("truncated property"));
        }
        let end = at + 2 + u16_at(buf, at) as usize;
        if buf.len() < end {
            return Err(DecodeError("truncated property"));
        }
        Ok(end)
    };
    match id {
        // Byte.
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => fixed(1),
        // Two Byte Integer.
        0x13 | 0x21 | 0x22 | 0x23 => fixed(2),
        // Four Byte Integer.
        0x02 | 0x11 | 0x18 | 0x27 => fixed(4),
        // Variable Byte Integer (Subscription Identifier).
        0x0B => {
            let (_, used) = varint(buf)?.ok_or(DecodeError("truncated property"))?;
            Ok((&buf[..used], used))
        }
        // UTF-8 string or binary data.
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
            let end = prefixed(0)?;
            Ok((&buf[2..end], end))
        }
        // UTF-8 string pair (User Property).
        0x26 => {
            let end = prefixed(prefixed(0)?)?;
            Ok((&buf[..end], end))
        }
        _ => Err(DecodeError("unknown property identifier")),
    }
}

/// The properties of an encoded property section, as (identifier, value) pairs (see
/// [`property_value`] for what a value holds); stops at the first malformed one.
pub fn properties(props: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), DecodeError>> {
    let mut rest = props;
    std::iter::from_fn(move || {
        let (&id, after) = rest.split_first()?;
        Some(match property_value(id, after) {
            Ok((value, used)) => {
                rest = &after[used..];
                Ok((id, value))
            }
            Err(e) => {
                rest = &[];
                Err(e)
            }
        })
    })
}

/// A v5 PUBACK / PUBREC / PUBCOMP body: packet id and reason code (0 when left out).
fn ack(body: &[u8], version: Version, what: &'static str) -> Result<(u16, u8), DecodeError> {
    if body.len() < 2 || (version == Version::V311 && body.len() != 2) {
        return Err(DecodeError(what));
    }
    let code = body.get(2).copied().unwrap_or(0);
    if body.len() > 3 {
        let (props, rest) = split_properties(&body[3..])?;
        if !rest.is_empty() {
            return Err(DecodeError(what));
        }
        for p in properties(props) {
            p?;
        }
    }
    Ok((u16_at(body, 0), code))
}

/// Decodes one packet from the front of `buf`: `Ok(Some((packet, bytes used)))`, or `Ok(None)`
/// if `buf` does not hold a whole packet yet.
#[inline]
pub fn decode(buf: &[u8], version: Version) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let first = buf[0];
    let Some((len, used)) = varint(&buf[1..])? else {
        return Ok(None);
    };
    let pos = 1 + used;
    let end = pos + len;
    if buf.len() < end {
        return Ok(None);
    }
    let body = &buf[pos..end];
    let kind = first >> 4;
    let v5 = version == Version::V5;
    let packet = match kind {
        PUBLISH => {
            let qos = (first >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError("PUBLISH with QoS 3"));
            }
            if body.len() < 2 {
                return Err(DecodeError("short PUBLISH"));
            }
            let tlen = u16_at(body, 0) as usize;
            let mut at = 2 + tlen;
            let id_len = if qos > 0 { 2 } else { 0 };
            if body.len() < at + id_len {
                return Err(DecodeError("short PUBLISH"));
            }
            let topic = &body[2..at];
            let packet_id = if qos > 0 {
                let id = u16_at(body, at);
                at += 2;
                id
            } else {
                0
            };
            let (properties, payload, topic_alias) = if v5 {
                let (props, payload) = split_properties(&body[at..])?;
                // The common cases first: no properties, or a Topic Alias alone.
                let alias = match props {
                    [] => None,
                    [PROP_TOPIC_ALIAS, hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
                    _ => {
                        let mut alias = None;
                        for p in properties(props) {
                            let (id, value) = p?;
                            if id == PROP_TOPIC_ALIAS {
                                alias = Some(u16_at(value, 0));
                            }
                        }
                        alias
                    }
                };
                if alias == Some(0) {
                    return Err(DecodeError("Topic Alias 0"));
                }
                let alias = alias.unwrap_or(0);
                if topic.is_empty() && alias == 0 {
                    return Err(DecodeError("PUBLISH with neither topic nor Topic Alias"));
                }
                (props, payload, alias)
            } else {
                (&body[at..at], &body[at..], 0)
            };
            Packet::Publish {
                qos,
                dup: first & 0x08 != 0,
                retain: first & 0x01 != 0,
                packet_id,
                topic,
                topic_alias,
                properties,
                payload,
            }
        }
        PUBACK => {
            let (packet_id, code) = ack(body, version, "PUBACK length")?;
            Packet::PubAck { packet_id, code }
        }
        PUBREC => {
            let (packet_id, code) = ack(body, version, "PUBREC length")?;
            Packet::PubRec { packet_id, code }
        }
        PUBCOMP => {
            let (packet_id, code) = ack(body, version, "PUBCOMP length")?;
            Packet::PubComp { packet_id, code }
        }
        CONNACK => {
            if body.len() < 2 || (!v5 && body.len() != 2) {
                return Err(DecodeError("CONNACK length"));
            }
            let mut props = ConnAckProps::default();
            if body.len() > 2 {
                let (encoded, rest) = split_properties(&body[2..])?;
                if !rest.is_empty() {
                    return Err(DecodeError("CONNACK length"));
                }
                for p in properties(encoded) {
                    let (id, value) = p?;
                    match id {
                        PROP_RECEIVE_MAXIMUM => props.receive_maximum = u16_at(value, 0),
                        PROP_TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = u16_at(value, 0),
                        PROP_MAXIMUM_QOS => props.maximum_qos = value[0],
                        PROP_MAXIMUM_PACKET_SIZE => {
                            props.maximum_packet_size =
                                u32::from_be_bytes([value[0], value[1], value[2], value[3]])
                        }
                        PROP_REASON_STRING => props.reason_string = value,
                        _ => {}
                    }
                }
                if props.receive_maximum == 0 {
                    return Err(DecodeError("CONNACK with Receive Maximum 0"));
                }
            }
            Packet::ConnAck {
                session_present: body[0] & 1 != 0,
                code: body[1],
                props,
            }
        }
        SUBACK => {
            if body.len() < 3 {
                return Err(DecodeError("SUBACK length"));
            }
            let codes = if v5 {
                let (props, codes) = split_properties(&body[2..])?;
                for p in properties(props) {
                    p?;
                }
                if codes.is_empty() {
                    return Err(DecodeError("SUBACK length"));
                }
                codes
            } else {
                &body[2..]
            };
            Packet::SubAck {
                packet_id: u16_at(body, 0),
                codes,
            }
        }
        PINGRESP => Packet::PingResp,
        DISCONNECT => {
            let code = body.first().copied().unwrap_or(0);
            let mut reason_string: &[u8] = &[];
            if body.len() > 1 {
                let (props, rest) = split_properties(&body[1..])?;
                if !rest.is_empty() {
                    return Err(DecodeError("DISCONNECT length"));
                }
                for p in properties(props) {
                    let (id, value) = p?;
                    if id == PROP_REASON_STRING {
                        reason_string = value;
                    }
                }
            }
            Packet::Disconnect {
                code,
                reason_string,
            }
        }
        _ => Packet::Other { kind, body },
    };
    Ok(Some((packet, end)))
}

/// The topic aliases a v5 broker has set on one connection (§3.3.2.3.4), up to the Topic Alias
/// Maximum we sent in CONNECT. Learning an alias reuses the slot's buffer, so once every slot has
/// grown to its topic nothing is allocated.
#[derive(Debug, Default)]
pub struct InboundAliases {
    /// Slot `alias - 1`: the topic (empty: not set yet).
    topics: Vec<Vec<u8>>,
}

impl InboundAliases {
    /// A table for aliases 1..=`maximum`.
    pub fn new(maximum: u16) -> Self {
        InboundAliases {
            topics: vec![Vec::new(); maximum as usize],
        }
    }

    /// The topic a PUBLISH is for: `topic` when it has no alias (`alias` 0); with an alias and a
    /// topic, the alias now stands for that topic; with an alias and an empty topic, the topic
    /// the alias was set to. A broker breaking these rules is an error.
    #[inline]
    pub fn resolve<'a>(&'a mut self, topic: &'a [u8], alias: u16) -> Result<&'a [u8], DecodeError> {
        if alias == 0 {
            return Ok(topic);
        }
        let Some(slot) = self.topics.get_mut(alias as usize - 1) else {
            return Err(DecodeError(
                "Topic Alias above the Topic Alias Maximum we sent",
            ));
        };
        if topic.is_empty() {
            if slot.is_empty() {
                return Err(DecodeError("Topic Alias used before the broker set it"));
            }
            Ok(slot)
        } else {
            slot.clear();
            slot.extend_from_slice(topic);
            Ok(topic)
        }
    }
}

/// The topic aliases a publisher has given the broker on one connection: up to the broker's
/// Topic Alias Maximum, one per topic, never reassigned (the bench's publishers have a handful of
/// topics each).
#[derive(Debug, Default)]
pub struct OutboundAliases {
    maximum: u16,
    /// Alias `i + 1` stands for `topics[i]`.
    topics: Vec<String>,
}

impl OutboundAliases {
    /// Aliases 1..=`maximum` (the broker's Topic Alias Maximum; 0: none).
    pub fn new(maximum: u16) -> Self {
        OutboundAliases {
            maximum,
            topics: Vec::new(),
        }
    }

    /// The alias to send `topic` with, and whether the broker knows it yet (if not, this PUBLISH
    /// must carry the topic as well, and then the broker knows it). `None` when every alias is
    /// taken by another topic: send the topic without one.
    pub fn alias(&mut self, topic: &str) -> Option<(u16, bool)> {
        if let Some(i) = self.topics.iter().position(|t| t == topic) {
            return Some((i as u16 + 1, true));
        }
        if self.topics.len() >= usize::from(self.maximum) {
            return None;
        }
        self.topics.push(topic.to_string());
        Some((self.topics.len() as u16, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Version::{V311, V5};

    #[test]
    fn control_packets() {
        let mut buf = Vec::new();
        connect(&mut buf, "id", 600, Credentials::NONE, 0);
        assert_eq!(
            buf,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0x02, 0x58, 0, 2, b'i', b'd']
        );
        buf.clear();
        subscribe(&mut buf, V311, 1, &["a/+"], 1);
        assert_eq!(buf, [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'+', 1]);
        let wire = [0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0x40, 2, 1, 2, 0xd0, 0];
        let (p, n) = decode(&wire, V311).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::ConnAck {
                session_present: false,
                code: 0,
                props: ConnAckProps::default(),
            }
        );
        let (p, m) = decode(&wire[n..], V311).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::SubAck {
                packet_id: 1,
                codes: &[1]
            }
        );
        let (p, k) = decode(&wire[n + m..], V311).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::PubAck {
                packet_id: 258,
                code: 0
            }
        );
        let (p, _) = decode(&wire[n + m + k..], V311).unwrap().unwrap();
        assert_eq!(p, Packet::PingResp);
    }

    #[test]
    fn publish_round_trip() {
        for qos in [0u8, 1] {
            for size in [0usize, 16, 200, 20_000, 3_000_000] {
                let payload = vec![7u8; size];
                let mut buf = Vec::new();
                publish(&mut buf, "a/b", qos, 42, &payload);
                let (p, used) = decode(&buf, V311).unwrap().unwrap();
                assert_eq!(used, buf.len());
                assert_eq!(
                    p,
                    Packet::Publish {
                        qos,
                        dup: false,
                        retain: false,
                        packet_id: if qos > 0 { 42 } else { 0 },
                        topic: b"a/b",
                        topic_alias: 0,
                        properties: &[],
                        payload: &payload,
                    }
                );
                let body = 2 + 3 + if qos > 0 { 2 } else { 0 } + size;
                assert_eq!(buf.len(), 1 + remaining_length_len(body) + body);
                // Every strict prefix is incomplete.
                for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
                    assert_eq!(decode(&buf[..cut], V311).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn v5_connect_and_subscribe_bytes() {
        let mut buf = Vec::new();
        connect_v5(&mut buf, "id", 600, 64, 64, Credentials::NONE, 0);
        assert_eq!(
            buf,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0x02, 0x58, // header
                6, 0x21, 0, 64, 0x22, 0, 64, // properties
                0, 2, b'i', b'd',
            ]
        );
        buf.clear();
        // Topic Alias Maximum 0 is left out; Receive Maximum is at least 1.
        connect_v5(&mut buf, "", 0, 0, 0, Credentials::NONE, 0);
        assert_eq!(
            buf,
            [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 3, 0x21, 0, 1, 0, 0]
        );
        buf.clear();
        subscribe(&mut buf, V5, 7, &["a/+", "b"], 1);
        assert_eq!(
            buf,
            [0x82, 13, 0, 7, 0, 0, 3, b'a', b'/', b'+', 1, 0, 1, b'b', 1]
        );
    }

    #[test]
    fn persistent_session_connects() {
        let mut buf = Vec::new();
        connect(&mut buf, "id", 600, Credentials::NONE, 3600);
        assert_eq!(
            buf,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0x02, 0x58, 0, 2, b'i', b'd']
        );
        buf.clear();
        connect_v5(&mut buf, "id", 600, 64, 0, Credentials::NONE, 3600);
        assert_eq!(
            buf,
            [
                0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0x02, 0x58, // header
                8, 0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 64, // properties
                0, 2, b'i', b'd',
            ]
        );
    }

    #[test]
    fn connect_with_credentials() {
        let both = Credentials {
            username: Some("u"),
            password: Some(b"pw"),
        };
        let mut buf = Vec::new();
        connect(&mut buf, "id", 600, both, 0);
        assert_eq!(
            buf,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0x02, 0x58, // header
                0, 2, b'i', b'd', 0, 1, b'u', 0, 2, b'p', b'w',
            ]
        );
        buf.clear();
        let user_only = Credentials {
            username: Some(""),
            password: None,
        };
        connect(&mut buf, "id", 600, user_only, 0);
        assert_eq!(
            buf,
            [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0x02, 0x58, 0, 2, b'i', b'd', 0, 0]
        );
        buf.clear();
        // MQTT 5 allows a password without a user name.
        let password_only = Credentials {
            username: None,
            password: Some(b"t"),
        };
        connect_v5(&mut buf, "id", 600, 64, 0, password_only, 0);
        assert_eq!(
            buf,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0x02, 0x58, // header
                3, 0x21, 0, 64, // properties
                0, 2, b'i', b'd', 0, 1, b't',
            ]
        );
        buf.clear();
        // A 200-byte token makes the remaining length two bytes.
        let token = vec![b'x'; 200];
        let long = Credentials {
            username: Some("bench"),
            password: Some(&token),
        };
        connect(&mut buf, "id", 600, long, 0);
        let body = 12 + 2 + 2 + 5 + 2 + 200;
        assert_eq!(buf.len(), 1 + 2 + body);
        assert_eq!(&buf[1..3], [(body % 128) as u8 | 0x80, (body / 128) as u8]);
        assert_eq!(buf[3 + 7], 0xc2);
        assert!(buf.ends_with(&token));
    }

    #[test]
    fn v5_publish_round_trip_with_and_without_alias() {
        for qos in [0u8, 1] {
            for (topic, alias) in [("a/b", 0u16), ("a/b", 3), ("", 3)] {
                for size in [0usize, 16, 20_000] {
                    let payload = vec![9u8; size];
                    let mut buf = Vec::new();
                    publish_v5(&mut buf, topic, alias, qos, 513, &payload);
                    let props = if alias > 0 { 3 } else { 0 };
                    let body = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + 1 + props + size;
                    assert_eq!(buf.len(), 1 + remaining_length_len(body) + body);
                    let (p, used) = decode(&buf, V5).unwrap().unwrap();
                    assert_eq!(used, buf.len());
                    let expected_props: &[u8] = if alias > 0 { &[0x23, 0, 3] } else { &[] };
                    assert_eq!(
                        p,
                        Packet::Publish {
                            qos,
                            dup: false,
                            retain: false,
                            packet_id: if qos > 0 { 513 } else { 0 },
                            topic: topic.as_bytes(),
                            topic_alias: alias,
                            properties: expected_props,
                            payload: &payload,
                        }
                    );
                    for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
                        assert_eq!(decode(&buf[..cut], V5).unwrap(), None);
                    }
                }
            }
        }
    }

    #[test]
    fn v5_publish_from_a_broker_with_other_properties() {
        // QoS 1, topic "t", id 5, properties: PFI 1, Message Expiry 60, User Property (k, v),
        // Subscription Identifier 300 (2-byte varint), Topic Alias 2; payload "hi".
        let props = [
            0x01, 1, 0x02, 0, 0, 0, 60, 0x26, 0, 1, b'k', 0, 1, b'v', 0x0B, 0xAC, 0x02, 0x23, 0, 2,
        ];
        let mut wire = vec![0x32, 0];
        wire.extend_from_slice(&[0, 1, b't', 0, 5, props.len() as u8]);
        wire.extend_from_slice(&props);
        wire.extend_from_slice(b"hi");
        wire[1] = (wire.len() - 2) as u8;
        let (p, _) = decode(&wire, V5).unwrap().unwrap();
        let Packet::Publish {
            topic,
            topic_alias,
            properties: got,
            payload,
            packet_id,
            ..
        } = p
        else {
            panic!("not a PUBLISH: {p:?}");
        };
        assert_eq!((topic, topic_alias, packet_id), (&b"t"[..], 2, 5));
        assert_eq!(got, &props[..]);
        assert_eq!(payload, b"hi");
        let ids: Vec<u8> = properties(got).map(|p| p.unwrap().0).collect();
        assert_eq!(ids, [0x01, 0x02, 0x26, 0x0B, 0x23]);
        // Read as 3.1.1 the properties would be payload: the version matters.
        let (p, _) = decode(&wire, V311).unwrap().unwrap();
        assert!(matches!(p, Packet::Publish { payload, .. } if payload.len() == props.len() + 3));
    }

    #[test]
    fn v5_publish_protocol_errors() {
        let mut buf = Vec::new();
        publish_v5(&mut buf, "", 0, 0, 0, b"x");
        assert!(decode(&buf, V5).is_err(), "no topic and no alias");
        // Property length 3 with Topic Alias 0.
        let mut zero = vec![0x30, 0, 0, 1, b'a', 3, 0x23, 0, 0, b'x'];
        zero[1] = (zero.len() - 2) as u8;
        assert!(decode(&zero, V5).is_err(), "alias 0");
        let mut unknown = vec![0x30, 0, 0, 1, b'a', 2, 0x7E, 0, b'x'];
        unknown[1] = (unknown.len() - 2) as u8;
        assert!(decode(&unknown, V5).is_err(), "unknown property");
        let mut long = vec![0x30, 0, 0, 1, b'a', 9, 0x23, 0, 1];
        long[1] = (long.len() - 2) as u8;
        assert!(decode(&long, V5).is_err(), "property length past the end");
        let mut cut = vec![0x30, 0, 0, 1, b'a', 2, 0x23, 0];
        cut[1] = (cut.len() - 2) as u8;
        assert!(decode(&cut, V5).is_err(), "truncated property");
    }

    #[test]
    fn v5_acks_connack_suback_disconnect() {
        let wire = [
            // CONNACK: session present, code 0, Receive Maximum 20, Topic Alias Maximum 10,
            // Maximum QoS 1, Maximum Packet Size 1000, Retain Available 1.
            0x20, 18, 1, 0, 15, 0x21, 0, 20, 0x22, 0, 10, 0x24, 1, 0x27, 0, 0, 0x03, 0xE8, 0x25,
            1, // PUBACK id 1, no reason code
            0x40, 2, 0, 1, // PUBACK id 2, reason 0x10 (no matching subscribers)
            0x40, 3, 0, 2, 0x10, // PUBACK id 3, reason 0x97 with a Reason String "q"
            0x40, 8, 0, 3, 0x97, 4, 0x1F, 0, 1, b'q', // PUBREC id 4, PUBCOMP id 4
            0x50, 2, 0, 4, 0x70, 3, 0, 4, 0, // SUBACK id 9: properties none, codes 1, 0x8F
            0x90, 5, 0, 9, 0, 1, 0x8F, // DISCONNECT 0x94 "x"
            0xE0, 6, 0x94, 4, 0x1F, 0, 1, b'x',
        ];
        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let (p, n) = decode(&wire[at..], V5).unwrap().unwrap();
            got.push(p);
            at += n;
        }
        assert_eq!(
            got,
            [
                Packet::ConnAck {
                    session_present: true,
                    code: 0,
                    props: ConnAckProps {
                        receive_maximum: 20,
                        topic_alias_maximum: 10,
                        maximum_qos: 1,
                        maximum_packet_size: 1000,
                        reason_string: &[],
                    },
                },
                Packet::PubAck {
                    packet_id: 1,
                    code: 0
                },
                Packet::PubAck {
                    packet_id: 2,
                    code: 0x10
                },
                Packet::PubAck {
                    packet_id: 3,
                    code: 0x97
                },
                Packet::PubRec {
                    packet_id: 4,
                    code: 0
                },
                Packet::PubComp {
                    packet_id: 4,
                    code: 0
                },
                Packet::SubAck {
                    packet_id: 9,
                    codes: &[1, 0x8F]
                },
                Packet::Disconnect {
                    code: 0x94,
                    reason_string: b"x"
                },
            ]
        );
        // A refused v5 CONNECT: reason 0x87 with a Reason String.
        let refused = [0x20, 8, 0, 0x87, 5, 0x1F, 0, 2, b'n', b'o'];
        let (p, _) = decode(&refused, V5).unwrap().unwrap();
        assert!(matches!(
            p,
            Packet::ConnAck { code: 0x87, props, .. } if props.reason_string == b"no"
        ));
        // A v5 CONNACK is malformed for a 3.1.1 client, and Receive Maximum 0 for anyone.
        assert!(decode(&wire[..20], V311).is_err());
        assert!(decode(&[0x20, 6, 0, 0, 3, 0x21, 0, 0], V5).is_err());
    }

    #[test]
    fn inbound_aliases_resolve_and_reject() {
        let mut aliases = InboundAliases::new(2);
        assert_eq!(aliases.resolve(b"plain", 0).unwrap(), b"plain");
        assert!(aliases.resolve(b"", 1).is_err(), "used before it was set");
        assert_eq!(aliases.resolve(b"a/1", 1).unwrap(), b"a/1");
        assert_eq!(aliases.resolve(b"", 1).unwrap(), b"a/1");
        assert_eq!(aliases.resolve(b"b/2", 2).unwrap(), b"b/2");
        assert_eq!(aliases.resolve(b"", 1).unwrap(), b"a/1");
        // The broker may point an alias at another topic.
        assert_eq!(
            aliases.resolve(b"c/longer/topic", 1).unwrap(),
            b"c/longer/topic"
        );
        assert_eq!(aliases.resolve(b"", 1).unwrap(), b"c/longer/topic");
        assert_eq!(aliases.resolve(b"", 2).unwrap(), b"b/2");
        assert!(aliases.resolve(b"x", 3).is_err(), "above our maximum");
        assert!(InboundAliases::new(0).resolve(b"x", 1).is_err());

        // Decoding a broker's stream: set, use, re-point.
        let mut wire = Vec::new();
        publish_v5(&mut wire, "t/1", 1, 1, 10, b"one");
        publish_v5(&mut wire, "", 1, 1, 11, b"two");
        publish_v5(&mut wire, "t/2", 1, 0, 0, b"three");
        publish_v5(&mut wire, "", 1, 0, 0, b"four");
        let mut aliases = InboundAliases::new(64);
        let mut seen = Vec::new();
        let mut at = 0;
        while let Some((p, n)) = decode(&wire[at..], V5).unwrap() {
            at += n;
            let Packet::Publish {
                topic,
                topic_alias,
                payload,
                ..
            } = p
            else {
                panic!("{p:?}");
            };
            let topic = aliases.resolve(topic, topic_alias).unwrap();
            seen.push((topic.to_vec(), payload.to_vec()));
        }
        let want: Vec<(Vec<u8>, Vec<u8>)> = [
            ("t/1", "one"),
            ("t/1", "two"),
            ("t/2", "three"),
            ("t/2", "four"),
        ]
        .iter()
        .map(|(t, p)| (t.as_bytes().to_vec(), p.as_bytes().to_vec()))
        .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn outbound_aliases_teach_once_and_respect_the_maximum() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(aliases.alias("a"), Some((1, false)));
        assert_eq!(aliases.alias("a"), Some((1, true)));
        assert_eq!(aliases.alias("b"), Some((2, false)));
        assert_eq!(aliases.alias("c"), None);
        assert_eq!(aliases.alias("b"), Some((2, true)));
        assert_eq!(OutboundAliases::new(0).alias("a"), None);
    }
}
