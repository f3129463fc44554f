//! MQTT 5 properties (§2.2.2): the typed, optional fields that follow the variable header of
//! most packets and precede a will.
//!
//! [`Properties`] is what packets carry: a pointer that is null when a packet has none, which
//! every MQTT 3.1.1 packet and most MQTT 5 ones are, so the hot path neither allocates nor moves
//! the full set. It dereferences to [`PropertyValues`], one field per property.
//!
//! [`decode`] reads a property list and enforces the rules the standard gives a receiver: a
//! property on a packet that cannot carry it, or a value of the wrong type, is a malformed packet
//! (0x81); a property given twice where only one is allowed, or a value the standard forbids
//! (Receive Maximum 0, a flag other than 0 or 1, Subscription Identifier 0), is a protocol error
//! (0x82). What depends on the session (a topic alias beyond the negotiated maximum) is left to
//! the broker. [`PropertyValues::encode`] writes them back in identifier order, keeping the order
//! of user properties.

use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::{malformed, Reader};
use super::{DecodeError, EncodeError};

/// The packets (and the will) that carry properties; which ones a property may appear on is
/// the table in [`PropertyId::allowed_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The properties of one packet: empty (no allocation) or a boxed [`PropertyValues`].
///
/// Equality compares the values, so that a boxed set of nothing equals no properties: both are
/// encoded alike and decode to no properties.
#[derive(Debug, Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl Properties {
    /// The values, to set some: allocated on first use.
    pub fn set(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Default::default)
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|values| *values == EMPTY)
    }
}

impl Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Properties {
        Properties(Some(Box::new(values)))
    }
}

static EMPTY: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

/// Every MQTT 5 property, by the name the standard gives it. Flags (one-byte properties that
/// must be 0 or 1) are `bool`s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyValues {
    /// 0x01: the payload is UTF-8 (`true`) or unspecified bytes.
    pub payload_format_indicator: Option<bool>,
    /// 0x02, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03
    pub content_type: Option<String>,
    /// 0x08
    pub response_topic: Option<String>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x0B: one on SUBSCRIBE, any number on a PUBLISH to a client; never 0.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12
    pub assigned_client_identifier: Option<String>,
    /// 0x13, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15
    pub authentication_method: Option<String>,
    /// 0x16
    pub authentication_data: Option<Bytes>,
    /// 0x17
    pub request_problem_information: Option<bool>,
    /// 0x18, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19
    pub request_response_information: Option<bool>,
    /// 0x1A
    pub response_information: Option<String>,
    /// 0x1C
    pub server_reference: Option<String>,
    /// 0x1F
    pub reason_string: Option<String>,
    /// 0x21: never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22
    pub topic_alias_maximum: Option<u16>,
    // 0x23 Topic Alias is `Publish::topic_alias`: it belongs to one hop, not to the message.
    /// 0x24: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25
    pub retain_available: Option<bool>,
    /// 0x26, in the order sent; names may repeat.
    pub user_properties: Vec<(String, String)>,
    /// 0x27: never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A
    pub shared_subscription_available: Option<bool>,
}

/// The largest Subscription Identifier (a four-byte variable byte integer).
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

/// Property identifiers (§2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQoS = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    fn from_u32(value: u32) -> Option<PropertyId> {
        use PropertyId::*;
        Some(match value {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// Whether this property may appear in `context` (the table of §2.2.2.2).
    fn allowed_on(self, context: PropertyContext) -> bool {
        use PropertyContext as C;
        use PropertyId::*;
        let contexts: &[PropertyContext] = match self {
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData => &[C::Publish, C::Will],
            SubscriptionIdentifier => &[C::Publish, C::Subscribe],
            SessionExpiryInterval => &[C::Connect, C::ConnAck, C::Disconnect],
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => &[C::ConnAck],
            AuthenticationMethod | AuthenticationData => &[C::Connect, C::ConnAck, C::Auth],
            RequestProblemInformation | RequestResponseInformation => &[C::Connect],
            WillDelayInterval => &[C::Will],
            ServerReference => &[C::ConnAck, C::Disconnect],
            ReasonString => &[
                C::ConnAck,
                C::Ack,
                C::SubAck,
                C::UnsubAck,
                C::Disconnect,
                C::Auth,
            ],
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => &[C::Connect, C::ConnAck],
            TopicAlias => &[C::Publish],
            UserProperty => return true,
        };
        contexts
            .iter()
            .any(|allowed| allowed.bit() == context.bit())
    }
}

/// Reads a property list (its variable-byte length, then the properties) from `body`.
///
/// # Errors
///
/// [`DecodeError::Malformed`] for a list that runs past the packet, an unknown identifier, a
/// property not allowed in `context` or a value of the wrong type; [`DecodeError::Protocol`]
/// for a repeated property or a forbidden value.
pub(super) fn decode(
    body: &mut Reader,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    decode_list(body, context, None)
}

/// Reads a PUBLISH's property list as [`decode`] does, its Topic Alias apart (see
/// [`super::Publish::topic_alias`]): a list with nothing else allocates nothing.
///
/// # Errors
///
/// As [`decode`].
pub(super) fn decode_publish(body: &mut Reader) -> Result<(Properties, Option<u16>), DecodeError> {
    // By far the most common list on the hot path: a Topic Alias alone (length 3, identifier
    // 0x23, two bytes), read without walking the general loop.
    if let Some(&[3, 0x23, high, low]) = body.peek(4) {
        body.skip(4);
        return Ok((Properties::default(), Some(u16::from_be_bytes([high, low]))));
    }
    let mut topic_alias = None;
    let properties = decode_list(body, PropertyContext::Publish, Some(&mut topic_alias))?;
    Ok((properties, topic_alias))
}

/// The list of `context`, with the Topic Alias written to `topic_alias` (only a PUBLISH,
/// decoded by [`decode_publish`], may carry one). The values are boxed at the first property
/// that needs them, in place.
fn decode_list(
    body: &mut Reader,
    context: PropertyContext,
    mut topic_alias: Option<&mut Option<u16>>,
) -> Result<Properties, DecodeError> {
    let len = body.varint()? as usize;
    if len == 0 {
        return Ok(Properties::default());
    }
    let mut list = body.sub_reader(len)?;
    let packet = list.packet();
    let mut properties = Properties::default();
    while !list.is_empty() {
        let id = PropertyId::from_u32(list.varint()?)
            .ok_or_else(|| malformed(packet, "unknown property identifier"))?;
        if !id.allowed_on(context) {
            return Err(malformed(packet, "property not allowed on this packet"));
        }
        if id == PropertyId::TopicAlias {
            let Some(slot) = topic_alias.as_deref_mut() else {
                return Err(malformed(packet, "property not allowed on this packet"));
            };
            once(slot, list.u16()?, packet)?;
            continue;
        }
        read_property(&mut list, id, properties.set())?;
    }
    Ok(properties)
}

fn protocol_error(packet: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::Protocol { packet, reason }
}

/// Sets `slot` once: a second occurrence of the property is a protocol error.
fn once<T>(slot: &mut Option<T>, value: T, packet: &'static str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(protocol_error(packet, "property given more than once"));
    }
    *slot = Some(value);
    Ok(())
}

/// A one-byte property that must be 0 or 1.
fn flag(list: &mut Reader) -> Result<bool, DecodeError> {
    match list.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(protocol_error(
            list.packet(),
            "flag property is neither 0 nor 1",
        )),
    }
}

fn read_property(
    list: &mut Reader,
    id: PropertyId,
    values: &mut PropertyValues,
) -> Result<(), DecodeError> {
    use PropertyId::*;
    let packet = list.packet();
    let v = values;
    match id {
        PayloadFormatIndicator => once(&mut v.payload_format_indicator, flag(list)?, packet),
        MessageExpiryInterval => once(&mut v.message_expiry_interval, list.u32()?, packet),
        ContentType => once(&mut v.content_type, list.string("content type")?, packet),
        ResponseTopic => once(
            &mut v.response_topic,
            list.string("response topic")?,
            packet,
        ),
        CorrelationData => once(&mut v.correlation_data, list.length_prefixed()?, packet),
        SubscriptionIdentifier => {
            let id = list.varint()?;
            if id == 0 {
                return Err(protocol_error(packet, "subscription identifier 0"));
            }
            v.subscription_identifiers.push(id);
            Ok(())
        }
        SessionExpiryInterval => once(&mut v.session_expiry_interval, list.u32()?, packet),
        AssignedClientIdentifier => once(
            &mut v.assigned_client_identifier,
            list.string("assigned client identifier")?,
            packet,
        ),
        ServerKeepAlive => once(&mut v.server_keep_alive, list.u16()?, packet),
        AuthenticationMethod => once(
            &mut v.authentication_method,
            list.string("authentication method")?,
            packet,
        ),
        AuthenticationData => once(&mut v.authentication_data, list.length_prefixed()?, packet),
        RequestProblemInformation => once(&mut v.request_problem_information, flag(list)?, packet),
        WillDelayInterval => once(&mut v.will_delay_interval, list.u32()?, packet),
        RequestResponseInformation => {
            once(&mut v.request_response_information, flag(list)?, packet)
        }
        ResponseInformation => once(
            &mut v.response_information,
            list.string("response information")?,
            packet,
        ),
        ServerReference => once(
            &mut v.server_reference,
            list.string("server reference")?,
            packet,
        ),
        ReasonString => once(&mut v.reason_string, list.string("reason string")?, packet),
        ReceiveMaximum => match list.u16()? {
            0 => Err(protocol_error(packet, "receive maximum 0")),
            value => once(&mut v.receive_maximum, value, packet),
        },
        TopicAliasMaximum => once(&mut v.topic_alias_maximum, list.u16()?, packet),
        // Read by `decode_list` into `Publish::topic_alias`; no other list may carry it.
        TopicAlias => Err(malformed(packet, "property not allowed on this packet")),
        MaximumQoS => match list.u8()? {
            value @ (0 | 1) => once(&mut v.maximum_qos, value, packet),
            _ => Err(protocol_error(packet, "maximum QoS is neither 0 nor 1")),
        },
        RetainAvailable => once(&mut v.retain_available, flag(list)?, packet),
        UserProperty => {
            let name = list.string("user property name")?;
            let value = list.string("user property value")?;
            v.user_properties.push((name, value));
            Ok(())
        }
        MaximumPacketSize => match list.u32()? {
            0 => Err(protocol_error(packet, "maximum packet size 0")),
            value => once(&mut v.maximum_packet_size, value, packet),
        },
        WildcardSubscriptionAvailable => {
            once(&mut v.wildcard_subscription_available, flag(list)?, packet)
        }
        SubscriptionIdentifierAvailable => once(
            &mut v.subscription_identifier_available,
            flag(list)?,
            packet,
        ),
        SharedSubscriptionAvailable => {
            once(&mut v.shared_subscription_available, flag(list)?, packet)
        }
    }
}

/// How many bytes the variable byte integer `value` takes (at most four for values the protocol
/// can express).
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer.
pub fn put_varint(buf: &mut impl BufMut, mut value: usize) {
    loop {
        // Truncation intended: the low seven bits.
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

impl PropertyValues {
    /// The size of the property list without its length prefix.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLong`] if a string or binary value exceeds its two-byte length prefix.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let mut len = 0usize;
        let mut add = |present: bool, size: usize| {
            if present {
                len = len.saturating_add(1 + size);
            }
        };
        add(self.payload_format_indicator.is_some(), 1);
        add(self.message_expiry_interval.is_some(), 4);
        add(self.content_type.is_some(), str_len(&self.content_type)?);
        add(
            self.response_topic.is_some(),
            str_len(&self.response_topic)?,
        );
        add(
            self.correlation_data.is_some(),
            bin_len("correlation data", self.correlation_data.as_deref())?,
        );
        for &id in &self.subscription_identifiers {
            add(true, varint_len(id as usize));
        }
        add(self.session_expiry_interval.is_some(), 4);
        add(
            self.assigned_client_identifier.is_some(),
            str_len(&self.assigned_client_identifier)?,
        );
        add(self.server_keep_alive.is_some(), 2);
        add(
            self.authentication_method.is_some(),
            str_len(&self.authentication_method)?,
        );
        add(
            self.authentication_data.is_some(),
            bin_len("authentication data", self.authentication_data.as_deref())?,
        );
        add(self.request_problem_information.is_some(), 1);
        add(self.will_delay_interval.is_some(), 4);
        add(self.request_response_information.is_some(), 1);
        add(
            self.response_information.is_some(),
            str_len(&self.response_information)?,
        );
        add(
            self.server_reference.is_some(),
            str_len(&self.server_reference)?,
        );
        add(self.reason_string.is_some(), str_len(&self.reason_string)?);
        add(self.receive_maximum.is_some(), 2);
        add(self.topic_alias_maximum.is_some(), 2);
        add(self.maximum_qos.is_some(), 1);
        add(self.retain_available.is_some(), 1);
        for (name, value) in &self.user_properties {
            let size = bin_len("user property name", Some(name.as_bytes()))?
                + bin_len("user property value", Some(value.as_bytes()))?;
            add(true, size);
        }
        add(self.maximum_packet_size.is_some(), 4);
        add(self.wildcard_subscription_available.is_some(), 1);
        add(self.subscription_identifier_available.is_some(), 1);
        add(self.shared_subscription_available.is_some(), 1);
        Ok(len)
    }

    /// Writes the properties (without the length prefix) in identifier order. The lengths must
    /// have been checked by [`PropertyValues::encoded_len`].
    pub fn encode(&self, buf: &mut BytesMut) {
        use PropertyId::*;
        let flag = |buf: &mut BytesMut, id: PropertyId, value: Option<bool>| {
            if let Some(value) = value {
                buf.put_u8(id as u8);
                buf.put_u8(u8::from(value));
            }
        };
        let u16_prop = |buf: &mut BytesMut, id: PropertyId, value: Option<u16>| {
            if let Some(value) = value {
                buf.put_u8(id as u8);
                buf.put_u16(value);
            }
        };
        let u32_prop = |buf: &mut BytesMut, id: PropertyId, value: Option<u32>| {
            if let Some(value) = value {
                buf.put_u8(id as u8);
                buf.put_u32(value);
            }
        };
        let bin = |buf: &mut BytesMut, id: PropertyId, value: Option<&[u8]>| {
            if let Some(value) = value {
                buf.put_u8(id as u8);
                put_prefixed(buf, value);
            }
        };
        flag(buf, PayloadFormatIndicator, self.payload_format_indicator);
        u32_prop(buf, MessageExpiryInterval, self.message_expiry_interval);
        bin(
            buf,
            ContentType,
            self.content_type.as_deref().map(str::as_bytes),
        );
        bin(
            buf,
            ResponseTopic,
            self.response_topic.as_deref().map(str::as_bytes),
        );
        bin(buf, CorrelationData, self.correlation_data.as_deref());
        for &id in &self.subscription_identifiers {
            buf.put_u8(SubscriptionIdentifier as u8);
            put_varint(buf, id as usize);
        }
        u32_prop(buf, SessionExpiryInterval, self.session_expiry_interval);
        bin(
            buf,
            AssignedClientIdentifier,
            self.assigned_client_identifier
                .as_deref()
                .map(str::as_bytes),
        );
        u16_prop(buf, ServerKeepAlive, self.server_keep_alive);
        bin(
            buf,
            AuthenticationMethod,
            self.authentication_method.as_deref().map(str::as_bytes),
        );
        bin(buf, AuthenticationData, self.authentication_data.as_deref());
        flag(
            buf,
            RequestProblemInformation,
            self.request_problem_information,
        );
        u32_prop(buf, WillDelayInterval, self.will_delay_interval);
        flag(
            buf,
            RequestResponseInformation,
            self.request_response_information,
        );
        bin(
            buf,
            ResponseInformation,
            self.response_information.as_deref().map(str::as_bytes),
        );
        bin(
            buf,
            ServerReference,
            self.server_reference.as_deref().map(str::as_bytes),
        );
        bin(
            buf,
            ReasonString,
            self.reason_string.as_deref().map(str::as_bytes),
        );
        u16_prop(buf, ReceiveMaximum, self.receive_maximum);
        u16_prop(buf, TopicAliasMaximum, self.topic_alias_maximum);
        if let Some(qos) = self.maximum_qos {
            buf.put_u8(MaximumQoS as u8);
            buf.put_u8(qos);
        }
        flag(buf, RetainAvailable, self.retain_available);
        for (name, value) in &self.user_properties {
            buf.put_u8(UserProperty as u8);
            put_prefixed(buf, name.as_bytes());
            put_prefixed(buf, value.as_bytes());
        }
        u32_prop(buf, MaximumPacketSize, self.maximum_packet_size);
        flag(
            buf,
            WildcardSubscriptionAvailable,
            self.wildcard_subscription_available,
        );
        flag(
            buf,
            SubscriptionIdentifierAvailable,
            self.subscription_identifier_available,
        );
        flag(
            buf,
            SharedSubscriptionAvailable,
            self.shared_subscription_available,
        );
    }

    /// Whether any property that [`PropertyValues::take_message_properties`] takes is set. A
    /// PUBLISH usually carries none (or only a Topic Alias): checked field by field, which is
    /// far cheaper on the hot path than comparing the whole set or building an empty one.
    pub fn has_message_properties(&self) -> bool {
        self.payload_format_indicator.is_some()
            || self.content_type.is_some()
            || self.response_topic.is_some()
            || self.correlation_data.is_some()
            || !self.user_properties.is_empty()
    }

    /// The properties that travel with an application message to its subscribers, in wire form
    /// without a length prefix: Payload Format Indicator, Content Type, Response Topic,
    /// Correlation Data and User Properties (moved out of `self`). Message Expiry travels apart
    /// because it counts down; Topic Alias and Subscription Identifiers belong to one hop.
    ///
    /// # Errors
    ///
    /// As [`PropertyValues::encoded_len`] (never for properties that were decoded).
    pub fn take_message_properties(&mut self) -> Result<Bytes, EncodeError> {
        if !self.has_message_properties() {
            return Ok(Bytes::new());
        }
        let message = PropertyValues {
            payload_format_indicator: self.payload_format_indicator.take(),
            content_type: self.content_type.take(),
            response_topic: self.response_topic.take(),
            correlation_data: self.correlation_data.take(),
            user_properties: std::mem::take(&mut self.user_properties),
            ..PropertyValues::default()
        };
        let len = message.encoded_len()?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::with_capacity(len);
        message.encode(&mut buf);
        Ok(buf.freeze())
    }

    /// Drops the reason string and user properties: what a client that set Request Problem
    /// Information to 0 must not be sent on most packets (§3.1.2.11.7).
    pub fn strip_problem_information(&mut self) {
        self.reason_string = None;
        self.user_properties.clear();
    }
}

fn str_len(value: &Option<String>) -> Result<usize, EncodeError> {
    bin_len("string property", value.as_deref().map(str::as_bytes))
}

fn bin_len(field: &'static str, value: Option<&[u8]>) -> Result<usize, EncodeError> {
    match value {
        None => Ok(0),
        Some(value) if value.len() > usize::from(u16::MAX) => Err(EncodeError::TooLong {
            field,
            len: value.len(),
        }),
        Some(value) => Ok(2 + value.len()),
    }
}

fn put_prefixed(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

impl Properties {
    /// The size of the property list *with* its length prefix, as it goes on the wire.
    ///
    /// # Errors
    ///
    /// As [`PropertyValues::encoded_len`].
    pub fn wire_len(&self) -> Result<usize, EncodeError> {
        let len = self.encoded_len()?;
        Ok(varint_len(len) + len)
    }

    /// Writes the length prefix and the properties; `wire_len` must have succeeded.
    pub fn put(&self, buf: &mut BytesMut) {
        match &self.0 {
            None => buf.put_u8(0),
            Some(values) => {
                // Checked by `wire_len` before anything was written.
                let len = values.encoded_len().unwrap_or(0);
                put_varint(buf, len);
                values.encode(buf);
            }
        }
    }
}

/// Reads `list` (properties without their length prefix) as the properties a message carries
/// from node to node: only Payload Format Indicator, Content Type, Response Topic, Correlation
/// Data and User Properties, by the rules [`decode`] applies to a PUBLISH. What belongs to one
/// hop (Topic Alias, Subscription Identifier) or travels on its own (Message Expiry Interval)
/// has no place in it.
///
/// # Errors
///
/// As [`decode`], and [`DecodeError::Malformed`] for any other property.
pub(crate) fn decode_message_properties(list: Bytes) -> Result<PropertyValues, DecodeError> {
    use PropertyId::*;
    let mut list = Reader::new(list, "PUBLISH");
    let mut values = PropertyValues::default();
    while !list.is_empty() {
        let id = PropertyId::from_u32(list.varint()?)
            .ok_or_else(|| malformed("PUBLISH", "unknown property identifier"))?;
        if !matches!(
            id,
            PayloadFormatIndicator | ContentType | ResponseTopic | CorrelationData | UserProperty
        ) {
            return Err(malformed(
                "PUBLISH",
                "property that does not travel with a message",
            ));
        }
        read_property(&mut list, id, &mut values)?;
    }
    Ok(values)
}

/// Whether `properties` (a message's, as [`decode_message_properties`] reads them) could have
/// come with a PUBLISH of `payload`: well formed, a valid Response Topic, and a payload in
/// UTF-8 when the Payload Format Indicator says so. What a node takes from a peer or from its
/// store is checked with this before it is delivered.
pub(crate) fn could_be_published(properties: &Bytes, payload: &[u8]) -> bool {
    let Ok(values) = decode_message_properties(properties.clone()) else {
        return false;
    };
    let response_topic_ok = values
        .response_topic
        .as_deref()
        .is_none_or(|name| crate::topic::is_valid_topic_name(name.as_bytes()));
    let payload_ok =
        values.payload_format_indicator != Some(true) || std::str::from_utf8(payload).is_ok();
    response_topic_ok && payload_ok
}
