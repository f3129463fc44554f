//! Hand-written MQTT 5.0 packet builders and a strict decoder for what a broker sends.
//!
//! Written from the OASIS MQTT 5.0 standard (2019) and sharing nothing with the broker's codec,
//! like [`crate::packets`] for 3.1.1 (whose framing helpers it reuses). Builders never validate:
//! a property may be duplicated, put on the wrong packet, or replaced by raw bytes
//! ([`Property::Raw`], [`Props::raw_section`]) to produce malformed packets on purpose.
//!
//! The decoder is strict about what a server may send (§2.2.2.2, §3.x): a property a server
//! must not put on that packet, a duplicate of a single-valued property, a reason code the
//! packet does not allow, or a malformed length is [`DecodeError::Invalid`], so a broker that
//! encodes wrongly fails the test at the first such packet. Decoded properties keep their order
//! and duplicates ([`Properties`]).

use std::fmt;

use crate::packets::{kind, packet, remaining_length, string, DecodeError};

/// AUTH (packet type 15, MQTT 5 only).
pub const AUTH: u8 = 15;

/// Property identifiers (§2.2.2.2, table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Reason codes (§2.4, table 2-6) the tests refer to by name.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const GRANTED_QOS_2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    pub const RE_AUTHENTICATE: u8 = 0x19;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}

/// Encodes a Variable Byte Integer (§1.5.5). Same encoding as a remaining length.
pub fn varint(n: u32) -> Vec<u8> {
    remaining_length(n as usize)
}

/// A property, as built by a test or decoded from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Vec<u8>),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Vec<u8>),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQos(u8),
    RetainAvailable(u8),
    UserProperty(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
    /// Written as is, identifier included (never produced by the decoder): for malformed
    /// properties, wrong types, unknown identifiers.
    Raw(Vec<u8>),
}

impl Property {
    /// The identifier byte (for [`Property::Raw`], its first byte, or 0 if empty).
    pub fn id(&self) -> u8 {
        use Property::*;
        match self {
            PayloadFormatIndicator(_) => id::PAYLOAD_FORMAT_INDICATOR,
            MessageExpiryInterval(_) => id::MESSAGE_EXPIRY_INTERVAL,
            ContentType(_) => id::CONTENT_TYPE,
            ResponseTopic(_) => id::RESPONSE_TOPIC,
            CorrelationData(_) => id::CORRELATION_DATA,
            SubscriptionIdentifier(_) => id::SUBSCRIPTION_IDENTIFIER,
            SessionExpiryInterval(_) => id::SESSION_EXPIRY_INTERVAL,
            AssignedClientIdentifier(_) => id::ASSIGNED_CLIENT_IDENTIFIER,
            ServerKeepAlive(_) => id::SERVER_KEEP_ALIVE,
            AuthenticationMethod(_) => id::AUTHENTICATION_METHOD,
            AuthenticationData(_) => id::AUTHENTICATION_DATA,
            RequestProblemInformation(_) => id::REQUEST_PROBLEM_INFORMATION,
            WillDelayInterval(_) => id::WILL_DELAY_INTERVAL,
            RequestResponseInformation(_) => id::REQUEST_RESPONSE_INFORMATION,
            ResponseInformation(_) => id::RESPONSE_INFORMATION,
            ServerReference(_) => id::SERVER_REFERENCE,
            ReasonString(_) => id::REASON_STRING,
            ReceiveMaximum(_) => id::RECEIVE_MAXIMUM,
            TopicAliasMaximum(_) => id::TOPIC_ALIAS_MAXIMUM,
            TopicAlias(_) => id::TOPIC_ALIAS,
            MaximumQos(_) => id::MAXIMUM_QOS,
            RetainAvailable(_) => id::RETAIN_AVAILABLE,
            UserProperty(_, _) => id::USER_PROPERTY,
            MaximumPacketSize(_) => id::MAXIMUM_PACKET_SIZE,
            WildcardSubscriptionAvailable(_) => id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            SubscriptionIdentifierAvailable(_) => id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            SharedSubscriptionAvailable(_) => id::SHARED_SUBSCRIPTION_AVAILABLE,
            Raw(bytes) => bytes.first().copied().unwrap_or(0),
        }
    }

    /// The property's bytes: identifier (one byte: every defined one is below 128, so its
    /// Variable Byte Integer is one byte) and value.
    pub fn encode(&self) -> Vec<u8> {
        use Property::*;
        let mut out = vec![self.id()];
        match self {
            PayloadFormatIndicator(v)
            | RequestProblemInformation(v)
            | RequestResponseInformation(v)
            | MaximumQos(v)
            | RetainAvailable(v)
            | WildcardSubscriptionAvailable(v)
            | SubscriptionIdentifierAvailable(v)
            | SharedSubscriptionAvailable(v) => out.push(*v),
            ServerKeepAlive(v) | ReceiveMaximum(v) | TopicAliasMaximum(v) | TopicAlias(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            MessageExpiryInterval(v)
            | SessionExpiryInterval(v)
            | WillDelayInterval(v)
            | MaximumPacketSize(v) => out.extend_from_slice(&v.to_be_bytes()),
            ContentType(s)
            | ResponseTopic(s)
            | AssignedClientIdentifier(s)
            | AuthenticationMethod(s)
            | ResponseInformation(s)
            | ServerReference(s)
            | ReasonString(s) => out.extend(string(s.as_bytes())),
            CorrelationData(b) | AuthenticationData(b) => out.extend(string(b)),
            SubscriptionIdentifier(v) => out.extend(varint(*v)),
            UserProperty(k, v) => {
                out.extend(string(k.as_bytes()));
                out.extend(string(v.as_bytes()));
            }
            Raw(bytes) => return bytes.clone(),
        }
        out
    }
}

/// The properties a builder writes: a list (kept in order, duplicates and all), or a raw
/// section (length included) that replaces it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub list: Vec<Property>,
    /// When set, written instead of the encoded list: e.g. a length that overruns the packet.
    pub raw_section: Option<Vec<u8>>,
}

impl Props {
    pub fn new(list: Vec<Property>) -> Props {
        Props {
            list,
            raw_section: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.raw_section.is_none()
    }

    /// Property Length (Variable Byte Integer) and the properties (§2.2.2.1).
    pub fn encode(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw_section {
            return raw.clone();
        }
        let body: Vec<u8> = self.list.iter().flat_map(Property::encode).collect();
        let mut out = varint(body.len() as u32);
        out.extend(body);
        out
    }
}

/// A last will with properties (§3.1.3.2).
#[derive(Debug, Clone)]
pub struct Will {
    pub props: Props,
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// A v5 CONNECT (§3.1). `Connect::new(id)`: "MQTT" level 5, Clean Start, keep alive 0, no
/// properties.
#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub props: Props,
    pub client_id: Vec<u8>,
    pub will: Option<Will>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    pub flags_override: Option<u8>,
}

impl Connect {
    pub fn new(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            level: 5,
            clean_start: true,
            keep_alive: 0,
            props: Props::default(),
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            username: None,
            password: None,
            flags_override: None,
        }
    }

    pub fn protocol(mut self, name: &str, level: u8) -> Connect {
        self.protocol_name = name.as_bytes().to_vec();
        self.level = level;
        self
    }

    pub fn clean_start(mut self, clean: bool) -> Connect {
        self.clean_start = clean;
        self
    }

    pub fn keep_alive(mut self, seconds: u16) -> Connect {
        self.keep_alive = seconds;
        self
    }

    pub fn prop(mut self, property: Property) -> Connect {
        self.props.list.push(property);
        self
    }

    /// Clean Start 0 with a Session Expiry Interval: a session that outlives the connection.
    pub fn session_expiry(self, seconds: u32) -> Connect {
        self.prop(Property::SessionExpiryInterval(seconds))
    }

    pub fn props_raw(mut self, section: &[u8]) -> Connect {
        self.props.raw_section = Some(section.to_vec());
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
        self.will = Some(Will {
            props: Props::default(),
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos,
            retain,
        });
        self
    }

    /// Adds a will property; panics if no will was set first.
    pub fn will_prop(mut self, property: Property) -> Connect {
        self.will
            .as_mut()
            .expect("set the will before its properties")
            .props
            .list
            .push(property);
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

    pub fn flags(mut self, flags: u8) -> Connect {
        self.flags_override = Some(flags);
        self
    }

    /// The connect-flags byte computed from the fields (§3.1.2.3).
    pub fn computed_flags(&self) -> u8 {
        let mut flags = 0u8;
        if self.clean_start {
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
        body.extend(self.props.encode());
        body.extend(string(&self.client_id));
        if let Some(will) = &self.will {
            body.extend(will.props.encode());
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

/// A v5 PUBLISH (§3.3). The topic is raw bytes (empty with a Topic Alias, or invalid UTF-8).
#[derive(Debug, Clone)]
pub struct PublishPacket {
    pub topic: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

impl PublishPacket {
    pub fn new(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> PublishPacket {
        PublishPacket {
            topic: topic.as_bytes().to_vec(),
            qos,
            retain: false,
            dup: false,
            pkid,
            props: Props::default(),
            payload: payload.to_vec(),
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

    pub fn prop(mut self, property: Property) -> PublishPacket {
        self.props.list.push(property);
        self
    }

    pub fn props_raw(mut self, section: &[u8]) -> PublishPacket {
        self.props.raw_section = Some(section.to_vec());
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut first = kind::PUBLISH << 4 | ((self.qos & 0x03) << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        let mut body = string(&self.topic);
        if self.qos > 0 {
            body.extend_from_slice(&self.pkid.to_be_bytes());
        }
        body.extend(self.props.encode());
        body.extend_from_slice(&self.payload);
        packet(first, &body)
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (§3.4-§3.7). Encoded in the shortest form the standard
/// allows: packet id only when the reason is 0 and there are no properties, no property length
/// when there are no properties.
#[derive(Debug, Clone)]
pub struct AckPacket {
    pub kind: u8,
    pub pkid: u16,
    pub reason: u8,
    pub props: Props,
}

impl AckPacket {
    pub fn new(kind: u8, pkid: u16) -> AckPacket {
        AckPacket {
            kind,
            pkid,
            reason: 0,
            props: Props::default(),
        }
    }

    pub fn puback(pkid: u16) -> AckPacket {
        AckPacket::new(kind::PUBACK, pkid)
    }

    pub fn pubrec(pkid: u16) -> AckPacket {
        AckPacket::new(kind::PUBREC, pkid)
    }

    pub fn pubrel(pkid: u16) -> AckPacket {
        AckPacket::new(kind::PUBREL, pkid)
    }

    pub fn pubcomp(pkid: u16) -> AckPacket {
        AckPacket::new(kind::PUBCOMP, pkid)
    }

    pub fn reason(mut self, code: u8) -> AckPacket {
        self.reason = code;
        self
    }

    pub fn prop(mut self, property: Property) -> AckPacket {
        self.props.list.push(property);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let flags = if self.kind == kind::PUBREL { 0x02 } else { 0 };
        let mut body = self.pkid.to_be_bytes().to_vec();
        if self.reason != 0 || !self.props.is_empty() {
            body.push(self.reason);
        }
        if !self.props.is_empty() {
            body.extend(self.props.encode());
        }
        packet(self.kind << 4 | flags, &body)
    }
}

pub fn puback(pkid: u16) -> Vec<u8> {
    AckPacket::puback(pkid).encode()
}

pub fn pubrec(pkid: u16) -> Vec<u8> {
    AckPacket::pubrec(pkid).encode()
}

pub fn pubrel(pkid: u16) -> Vec<u8> {
    AckPacket::pubrel(pkid).encode()
}

pub fn pubcomp(pkid: u16) -> Vec<u8> {
    AckPacket::pubcomp(pkid).encode()
}

/// Subscription options byte (§3.8.3.1): QoS bits 0-1, No Local bit 2, Retain As Published
/// bit 3, Retain Handling bits 4-5. Values are not checked (QoS 3, RH 3 on purpose).
pub fn sub_options(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    (qos & 0x03)
        | if no_local { 0x04 } else { 0 }
        | if retain_as_published { 0x08 } else { 0 }
        | ((retain_handling & 0x03) << 4)
}

/// A v5 SUBSCRIBE (§3.8): filters with option bytes, and properties (Subscription Identifier,
/// User Property).
#[derive(Debug, Clone)]
pub struct SubscribePacket {
    pub pkid: u16,
    pub props: Props,
    pub filters: Vec<(Vec<u8>, u8)>,
}

impl SubscribePacket {
    pub fn new(pkid: u16) -> SubscribePacket {
        SubscribePacket {
            pkid,
            props: Props::default(),
            filters: Vec::new(),
        }
    }

    /// Adds `filter` with the options byte `options` (see [`sub_options`]; a plain QoS is a
    /// valid options byte).
    pub fn filter(mut self, filter: &str, options: u8) -> SubscribePacket {
        self.filters.push((filter.as_bytes().to_vec(), options));
        self
    }

    pub fn raw_filter(mut self, filter: &[u8], options: u8) -> SubscribePacket {
        self.filters.push((filter.to_vec(), options));
        self
    }

    pub fn prop(mut self, property: Property) -> SubscribePacket {
        self.props.list.push(property);
        self
    }

    pub fn id(self, subscription_id: u32) -> SubscribePacket {
        self.prop(Property::SubscriptionIdentifier(subscription_id))
    }

    pub fn props_raw(mut self, section: &[u8]) -> SubscribePacket {
        self.props.raw_section = Some(section.to_vec());
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.pkid.to_be_bytes().to_vec();
        body.extend(self.props.encode());
        for (filter, options) in &self.filters {
            body.extend(string(filter));
            body.push(*options);
        }
        packet(kind::SUBSCRIBE << 4 | 0x02, &body)
    }
}

/// A v5 UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone)]
pub struct UnsubscribePacket {
    pub pkid: u16,
    pub props: Props,
    pub filters: Vec<Vec<u8>>,
}

impl UnsubscribePacket {
    pub fn new(pkid: u16, filters: &[&str]) -> UnsubscribePacket {
        UnsubscribePacket {
            pkid,
            props: Props::default(),
            filters: filters.iter().map(|f| f.as_bytes().to_vec()).collect(),
        }
    }

    pub fn prop(mut self, property: Property) -> UnsubscribePacket {
        self.props.list.push(property);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.pkid.to_be_bytes().to_vec();
        body.extend(self.props.encode());
        for filter in &self.filters {
            body.extend(string(filter));
        }
        packet(kind::UNSUBSCRIBE << 4 | 0x02, &body)
    }
}

/// A v5 DISCONNECT (§3.14) or AUTH (§3.15): reason code and properties. Encoded with remaining
/// length 0 when the reason is 0 and there are no properties, without property length when
/// there are none.
#[derive(Debug, Clone)]
pub struct ReasonPacket {
    pub kind: u8,
    pub reason: u8,
    pub props: Props,
}

impl ReasonPacket {
    pub fn disconnect(reason: u8) -> ReasonPacket {
        ReasonPacket {
            kind: kind::DISCONNECT,
            reason,
            props: Props::default(),
        }
    }

    pub fn auth(reason: u8) -> ReasonPacket {
        ReasonPacket {
            kind: AUTH,
            reason,
            props: Props::default(),
        }
    }

    pub fn prop(mut self, property: Property) -> ReasonPacket {
        self.props.list.push(property);
        self
    }

    pub fn props_raw(mut self, section: &[u8]) -> ReasonPacket {
        self.props.raw_section = Some(section.to_vec());
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        if self.reason != 0 || !self.props.is_empty() {
            body.push(self.reason);
        }
        if !self.props.is_empty() {
            body.extend(self.props.encode());
        }
        packet(self.kind << 4, &body)
    }
}

/// DISCONNECT with `reason` and no properties.
pub fn disconnect(reason: u8) -> Vec<u8> {
    ReasonPacket::disconnect(reason).encode()
}

/// Properties decoded from the broker, in the order it sent them (duplicates kept).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<Property>);

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

macro_rules! getter {
    ($name:ident, $variant:ident, $ty:ty) => {
        /// The value of this (single-valued) property, if present.
        pub fn $name(&self) -> Option<$ty> {
            self.0.iter().find_map(|p| match p {
                Property::$variant(v) => Some(v.clone()),
                _ => None,
            })
        }
    };
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identifiers, in order.
    pub fn ids(&self) -> Vec<u8> {
        self.0.iter().map(Property::id).collect()
    }

    pub fn has(&self, property_id: u8) -> bool {
        self.0.iter().any(|p| p.id() == property_id)
    }

    getter!(payload_format_indicator, PayloadFormatIndicator, u8);
    getter!(message_expiry_interval, MessageExpiryInterval, u32);
    getter!(content_type, ContentType, String);
    getter!(response_topic, ResponseTopic, String);
    getter!(correlation_data, CorrelationData, Vec<u8>);
    getter!(session_expiry_interval, SessionExpiryInterval, u32);
    getter!(assigned_client_identifier, AssignedClientIdentifier, String);
    getter!(server_keep_alive, ServerKeepAlive, u16);
    getter!(authentication_method, AuthenticationMethod, String);
    getter!(response_information, ResponseInformation, String);
    getter!(server_reference, ServerReference, String);
    getter!(reason_string, ReasonString, String);
    getter!(receive_maximum, ReceiveMaximum, u16);
    getter!(topic_alias_maximum, TopicAliasMaximum, u16);
    getter!(topic_alias, TopicAlias, u16);
    getter!(maximum_qos, MaximumQos, u8);
    getter!(retain_available, RetainAvailable, u8);
    getter!(maximum_packet_size, MaximumPacketSize, u32);
    getter!(
        wildcard_subscription_available,
        WildcardSubscriptionAvailable,
        u8
    );
    getter!(
        subscription_identifier_available,
        SubscriptionIdentifierAvailable,
        u8
    );
    getter!(
        shared_subscription_available,
        SharedSubscriptionAvailable,
        u8
    );

    /// Every Subscription Identifier, in order.
    pub fn subscription_identifiers(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Property::SubscriptionIdentifier(v) => Some(*v),
                _ => None,
            })
            .collect()
    }

    /// Every User Property, in order.
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Property::UserProperty(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// The properties a PUBLISH carries from publisher to subscriber (§3.3.2.3), in order:
    /// without Topic Alias and Subscription Identifier, which are per connection.
    pub fn application(&self) -> Vec<Property> {
        self.0
            .iter()
            .filter(|p| {
                !matches!(
                    p,
                    Property::TopicAlias(_) | Property::SubscriptionIdentifier(_)
                )
            })
            .cloned()
            .collect()
    }
}

/// Asserts `got` carries exactly the application properties of `sent`: User Properties in the
/// same order, the others by value (their relative order is not significant, §3.3.2.3), Message
/// Expiry Interval at most what was sent and at most `expiry_slack` seconds less.
pub fn assert_forwarded(got: &Publish, sent: &[Property], expiry_slack: u32) {
    let user = |props: &[Property]| -> Vec<Property> {
        props
            .iter()
            .filter(|p| matches!(p, Property::UserProperty(..)))
            .cloned()
            .collect()
    };
    let got_app = got.props.application();
    assert_eq!(
        user(&got_app),
        user(sent),
        "User Properties must arrive in order: {got:?}"
    );
    let mut others_got: Vec<Property> = got_app
        .iter()
        .filter(|p| {
            !matches!(
                p,
                Property::UserProperty(..) | Property::MessageExpiryInterval(_)
            )
        })
        .cloned()
        .collect();
    let mut others_sent: Vec<Property> = sent
        .iter()
        .filter(|p| {
            !matches!(
                p,
                Property::UserProperty(..) | Property::MessageExpiryInterval(_)
            )
        })
        .cloned()
        .collect();
    others_got.sort_by_key(Property::id);
    others_sent.sort_by_key(Property::id);
    assert_eq!(others_got, others_sent, "application properties: {got:?}");
    let sent_expiry = sent.iter().find_map(|p| match p {
        Property::MessageExpiryInterval(v) => Some(*v),
        _ => None,
    });
    match (sent_expiry, got.props.message_expiry_interval()) {
        (None, None) => {}
        (Some(sent), Some(got_v)) => assert!(
            got_v <= sent && got_v + expiry_slack >= sent,
            "Message Expiry Interval sent {sent}, delivered {got_v}: {got:?}"
        ),
        (sent, got_v) => panic!("Message Expiry Interval sent {sent:?}, delivered {got_v:?}"),
    }
}

/// CONNACK (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub props: Properties,
}

/// A PUBLISH from the broker. `topic` is empty when the broker used a Topic Alias alone.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pkid: u16,
    pub props: Properties,
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
            .field("props", &self.props)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .finish()
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP from the broker; `code` is 0 when the broker left it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub code: u8,
    pub props: Properties,
}

/// SUBACK or UNSUBACK: one reason code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub props: Properties,
    pub codes: Vec<u8>,
}

/// DISCONNECT or AUTH from the broker; `code` is 0 when the broker left it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: u8,
    pub props: Properties,
}

/// A packet a v5 server may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    SubAck(SubAck),
    UnsubAck(SubAck),
    PingResp,
    Disconnect(Reason),
    Auth(Reason),
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::SubAck(_) => "SUBACK",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Which properties a server may put on each packet (§2.2.2.2, table 2-4).
fn allowed_properties(packet_type: u8) -> &'static [u8] {
    use id::*;
    match packet_type {
        kind::CONNACK => &[
            SESSION_EXPIRY_INTERVAL,
            ASSIGNED_CLIENT_IDENTIFIER,
            SERVER_KEEP_ALIVE,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            RESPONSE_INFORMATION,
            SERVER_REFERENCE,
            REASON_STRING,
            RECEIVE_MAXIMUM,
            TOPIC_ALIAS_MAXIMUM,
            MAXIMUM_QOS,
            RETAIN_AVAILABLE,
            USER_PROPERTY,
            MAXIMUM_PACKET_SIZE,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            SHARED_SUBSCRIPTION_AVAILABLE,
        ],
        kind::PUBLISH => &[
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            SUBSCRIPTION_IDENTIFIER,
            TOPIC_ALIAS,
            USER_PROPERTY,
        ],
        kind::PUBACK
        | kind::PUBREC
        | kind::PUBREL
        | kind::PUBCOMP
        | kind::SUBACK
        | kind::UNSUBACK => &[REASON_STRING, USER_PROPERTY],
        kind::DISCONNECT => &[
            SESSION_EXPIRY_INTERVAL,
            SERVER_REFERENCE,
            REASON_STRING,
            USER_PROPERTY,
        ],
        AUTH => &[
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            REASON_STRING,
            USER_PROPERTY,
        ],
        _ => &[],
    }
}

/// Reason codes a server may send on each packet (§3.2.2.2, §3.4.2.1, ..., §3.15.2.1).
fn allowed_reasons(packet_type: u8) -> &'static [u8] {
    match packet_type {
        kind::CONNACK => &[
            0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
            0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
        ],
        kind::PUBACK | kind::PUBREC => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        kind::PUBREL | kind::PUBCOMP => &[0x00, 0x92],
        kind::SUBACK => &[
            0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ],
        kind::UNSUBACK => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
        // 0x04 (with will) is for clients only; 0x8B, 0x8D, 0x8E... for servers only.
        kind::DISCONNECT => &[
            0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
            0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
        ],
        AUTH => &[0x00, 0x18, 0x19],
        _ => &[],
    }
}

/// A cursor over a packet body; every read reports truncation as an error.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    fn err(&self, msg: impl fmt::Display) -> DecodeError {
        DecodeError::Invalid(format!(
            "{}: {msg} at byte {} of {:02x?}",
            self.what, self.pos, self.buf
        ))
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(self.err(format!("{n} bytes needed, {} left", self.left())));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer in its shortest form (§1.5.5: at most four bytes).
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(self.err("Variable Byte Integer not in its shortest form"));
                }
                return Ok(value);
            }
        }
        Err(self.err("Variable Byte Integer longer than four bytes"))
    }

    fn binary(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u16()? as usize;
        Ok(self.bytes(len)?.to_vec())
    }

    /// A UTF-8 Encoded String (§1.5.4): valid UTF-8, no U+0000.
    fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        match String::from_utf8(raw) {
            Ok(s) if !s.contains('\0') => Ok(s),
            Ok(_) => Err(self.err("string contains U+0000")),
            Err(_) => Err(self.err("string is not UTF-8")),
        }
    }

    fn byte_flag(&mut self, name: &str) -> Result<u8, DecodeError> {
        let v = self.u8()?;
        if v > 1 {
            return Err(self.err(format!("{name} must be 0 or 1, is {v}")));
        }
        Ok(v)
    }

    /// A property section, checked against what a server may put on `packet_type`.
    fn properties(&mut self, packet_type: u8) -> Result<Properties, DecodeError> {
        let len = self.varint()? as usize;
        if self.left() < len {
            return Err(self.err(format!("property length {len} overruns the packet")));
        }
        let end = self.pos + len;
        let mut list: Vec<Property> = Vec::new();
        while self.pos < end {
            let pid = self.varint()?;
            let Ok(pid) = u8::try_from(pid) else {
                return Err(self.err(format!("unknown property identifier {pid:#x}")));
            };
            use Property::*;
            let property = match pid {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    PayloadFormatIndicator(self.byte_flag("Payload Format Indicator")?)
                }
                id::MESSAGE_EXPIRY_INTERVAL => MessageExpiryInterval(self.u32()?),
                id::CONTENT_TYPE => ContentType(self.string()?),
                id::RESPONSE_TOPIC => ResponseTopic(self.string()?),
                id::CORRELATION_DATA => CorrelationData(self.binary()?),
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = self.varint()?;
                    if v == 0 {
                        return Err(self.err("Subscription Identifier 0"));
                    }
                    SubscriptionIdentifier(v)
                }
                id::SESSION_EXPIRY_INTERVAL => SessionExpiryInterval(self.u32()?),
                id::ASSIGNED_CLIENT_IDENTIFIER => AssignedClientIdentifier(self.string()?),
                id::SERVER_KEEP_ALIVE => ServerKeepAlive(self.u16()?),
                id::AUTHENTICATION_METHOD => AuthenticationMethod(self.string()?),
                id::AUTHENTICATION_DATA => AuthenticationData(self.binary()?),
                id::REQUEST_PROBLEM_INFORMATION => RequestProblemInformation(self.u8()?),
                id::WILL_DELAY_INTERVAL => WillDelayInterval(self.u32()?),
                id::REQUEST_RESPONSE_INFORMATION => RequestResponseInformation(self.u8()?),
                id::RESPONSE_INFORMATION => ResponseInformation(self.string()?),
                id::SERVER_REFERENCE => ServerReference(self.string()?),
                id::REASON_STRING => ReasonString(self.string()?),
                id::RECEIVE_MAXIMUM => {
                    let v = self.u16()?;
                    if v == 0 {
                        return Err(self.err("Receive Maximum 0"));
                    }
                    ReceiveMaximum(v)
                }
                id::TOPIC_ALIAS_MAXIMUM => TopicAliasMaximum(self.u16()?),
                id::TOPIC_ALIAS => {
                    let v = self.u16()?;
                    if v == 0 {
                        return Err(self.err("Topic Alias 0"));
                    }
                    TopicAlias(v)
                }
                id::MAXIMUM_QOS => MaximumQos(self.byte_flag("Maximum QoS")?),
                id::RETAIN_AVAILABLE => RetainAvailable(self.byte_flag("Retain Available")?),
                id::USER_PROPERTY => UserProperty(self.string()?, self.string()?),
                id::MAXIMUM_PACKET_SIZE => {
                    let v = self.u32()?;
                    if v == 0 {
                        return Err(self.err("Maximum Packet Size 0"));
                    }
                    MaximumPacketSize(v)
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => WildcardSubscriptionAvailable(
                    self.byte_flag("Wildcard Subscription Available")?,
                ),
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => SubscriptionIdentifierAvailable(
                    self.byte_flag("Subscription Identifier Available")?,
                ),
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    SharedSubscriptionAvailable(self.byte_flag("Shared Subscription Available")?)
                }
                other => return Err(self.err(format!("unknown property identifier {other:#x}"))),
            };
            if self.pos > end {
                return Err(self.err("a property runs past the property length"));
            }
            if !allowed_properties(packet_type).contains(&pid) {
                return Err(self.err(format!(
                    "property {pid:#04x} is not allowed on this packet from a server"
                )));
            }
            let repeatable = matches!(pid, id::USER_PROPERTY | id::SUBSCRIPTION_IDENTIFIER);
            if !repeatable && list.iter().any(|p| p.id() == pid) {
                return Err(self.err(format!("property {pid:#04x} appears twice")));
            }
            list.push(property);
        }
        Ok(Properties(list))
    }

    fn reason(&mut self, packet_type: u8) -> Result<u8, DecodeError> {
        let code = self.u8()?;
        if !allowed_reasons(packet_type).contains(&code) {
            return Err(self.err(format!(
                "reason code {code:#04x} is not allowed on this packet"
            )));
        }
        Ok(code)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.left() != 0 {
            return Err(self.err(format!("{} bytes left over", self.left())));
        }
        Ok(())
    }
}

/// Decodes one v5 packet from the front of `buf`; on success returns it with the number of
/// bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Packet, usize), DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Incomplete);
    }
    let first = buf[0];
    let mut len: usize = 0;
    let mut pos = 1;
    loop {
        let Some(&byte) = buf.get(pos) else {
            return Err(DecodeError::Incomplete);
        };
        len += ((byte & 0x7F) as usize) << (7 * (pos - 1));
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Err(DecodeError::Invalid(format!(
                "remaining length longer than 4 bytes: {:02x?}",
                &buf[..=pos.min(buf.len() - 1)]
            )));
        }
    }
    if buf.len() < pos + len {
        return Err(DecodeError::Incomplete);
    }
    let body = &buf[pos..pos + len];
    let used = pos + len;
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    let expect_flags = |want: u8| {
        if flags != want {
            Err(DecodeError::Invalid(format!(
                "packet type {packet_type}: reserved flags {flags:#x}, expected {want:#x}; \
                 body {body:02x?}"
            )))
        } else {
            Ok(())
        }
    };
    let packet = match packet_type {
        kind::CONNACK => {
            expect_flags(0)?;
            let mut r = Reader::new(body, "CONNACK");
            let ack_flags = r.u8()?;
            if ack_flags & 0xFE != 0 {
                return Err(r.err("reserved connect acknowledge flags set"));
            }
            let code = r.reason(kind::CONNACK)?;
            let session_present = ack_flags & 1 == 1;
            if session_present && code != 0 {
                return Err(r.err("session present 1 with a non-zero reason code (§3.2.2.1.1)"));
            }
            let props = r.properties(kind::CONNACK)?;
            r.end()?;
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                props,
            })
        }
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            let mut r = Reader::new(body, "PUBLISH");
            if qos == 3 {
                return Err(r.err("QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(r.err("QoS 0 with DUP set (§3.3.1.1)"));
            }
            let topic = r.string()?;
            if topic.contains(['+', '#']) {
                return Err(r.err("wildcard in a PUBLISH topic name"));
            }
            let pkid = if qos > 0 {
                let pkid = r.u16()?;
                if pkid == 0 {
                    return Err(r.err("packet id 0 (§2.2.1)"));
                }
                pkid
            } else {
                0
            };
            let props = r.properties(kind::PUBLISH)?;
            if topic.is_empty() && props.topic_alias().is_none() {
                return Err(r.err("empty topic name without a Topic Alias (§3.3.2.1)"));
            }
            let payload = r.bytes(r.left())?.to_vec();
            Packet::Publish(Publish {
                dup: flags & 0x08 != 0,
                qos,
                retain: flags & 0x01 != 0,
                topic,
                pkid,
                props,
                payload,
            })
        }
        kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            expect_flags(if packet_type == kind::PUBREL { 2 } else { 0 })?;
            let mut r = Reader::new(body, "acknowledgement");
            let pkid = r.u16()?;
            let code = if r.left() > 0 {
                r.reason(packet_type)?
            } else {
                0
            };
            let props = if r.left() > 0 {
                r.properties(packet_type)?
            } else {
                Properties::default()
            };
            r.end()?;
            let ack = Ack { pkid, code, props };
            match packet_type {
                kind::PUBACK => Packet::PubAck(ack),
                kind::PUBREC => Packet::PubRec(ack),
                kind::PUBREL => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        kind::SUBACK | kind::UNSUBACK => {
            expect_flags(0)?;
            let mut r = Reader::new(
                body,
                if packet_type == kind::SUBACK {
                    "SUBACK"
                } else {
                    "UNSUBACK"
                },
            );
            let pkid = r.u16()?;
            let props = r.properties(packet_type)?;
            let mut codes = Vec::new();
            while r.left() > 0 {
                codes.push(r.reason(packet_type)?);
            }
            if codes.is_empty() {
                return Err(r.err("no reason codes"));
            }
            let ack = SubAck { pkid, props, codes };
            if packet_type == kind::SUBACK {
                Packet::SubAck(ack)
            } else {
                Packet::UnsubAck(ack)
            }
        }
        kind::PINGRESP => {
            expect_flags(0)?;
            if !body.is_empty() {
                return Err(DecodeError::Invalid(format!(
                    "PINGRESP with a body {body:02x?}"
                )));
            }
            Packet::PingResp
        }
        kind::DISCONNECT | AUTH => {
            expect_flags(0)?;
            let mut r = Reader::new(
                body,
                if packet_type == AUTH {
                    "AUTH"
                } else {
                    "DISCONNECT"
                },
            );
            let code = if r.left() > 0 {
                r.reason(packet_type)?
            } else {
                0
            };
            let props = if r.left() > 0 {
                r.properties(packet_type)?
            } else {
                Properties::default()
            };
            r.end()?;
            let reason = Reason { code, props };
            if packet_type == AUTH {
                Packet::Auth(reason)
            } else {
                Packet::Disconnect(reason)
            }
        }
        _ => {
            return Err(DecodeError::Invalid(format!(
                "a server must not send packet type {packet_type} (first byte {first:#04x}, \
                 body {body:02x?})"
            )))
        }
    };
    Ok((packet, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_with_properties_and_will_bytes() {
        let bytes = Connect::new("c")
            .keep_alive(10)
            .session_expiry(0x0102_0304)
            .prop(Property::UserProperty("k".into(), "v".into()))
            .will("w", b"x", 1, true)
            .will_prop(Property::WillDelayInterval(5))
            .encode();
        let expected: Vec<u8> = [
            &[0x10, 38][..],
            &[
                0,
                4,
                b'M',
                b'Q',
                b'T',
                b'T',
                5,
                0x02 | 0x04 | 0x08 | 0x20,
                0,
                10,
            ],
            // properties: length 12, 0x11 + u32, 0x26 + "k" + "v"
            &[12, 0x11, 1, 2, 3, 4, 0x26, 0, 1, b'k', 0, 1, b'v'],
            &[0, 1, b'c'],
            // will properties: length 5, 0x18 + u32
            &[5, 0x18, 0, 0, 0, 5],
            &[0, 1, b'w', 0, 1, b'x'],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn publish_round_trips_with_properties_in_order() {
        let props = vec![
            Property::UserProperty("b".into(), "2".into()),
            Property::PayloadFormatIndicator(1),
            Property::UserProperty("a".into(), "1".into()),
            Property::SubscriptionIdentifier(300),
            Property::SubscriptionIdentifier(1),
            Property::TopicAlias(3),
            Property::MessageExpiryInterval(60),
            Property::CorrelationData(vec![0, 1, 2]),
        ];
        let mut builder = PublishPacket::new("a/b", 1, 7, b"hi").retain(true);
        for p in &props {
            builder = builder.prop(p.clone());
        }
        let bytes = builder.encode();
        let (packet, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        let Packet::Publish(publish) = packet else {
            panic!("{packet:?}")
        };
        assert_eq!(publish.props.0, props);
        assert_eq!(publish.props.subscription_identifiers(), vec![300, 1]);
        assert_eq!(
            publish.props.user_properties(),
            vec![("b".into(), "2".into()), ("a".into(), "1".into())]
        );
        assert_eq!(
            (publish.pkid, publish.retain, &publish.payload[..]),
            (7, true, &b"hi"[..])
        );
    }

    #[test]
    fn acks_in_every_length() {
        // §3.4.2.1: remaining length 2 means reason 0 and no properties.
        assert_eq!(
            decode(&[0x40, 2, 0, 5]).unwrap().0,
            Packet::PubAck(Ack {
                pkid: 5,
                code: 0,
                props: Properties::default()
            })
        );
        assert_eq!(
            decode(&[0x40, 3, 0, 5, 0x10]).unwrap().0,
            Packet::PubAck(Ack {
                pkid: 5,
                code: 0x10,
                props: Properties::default()
            })
        );
        let bytes = AckPacket::pubrel(9)
            .reason(0x92)
            .prop(Property::ReasonString("gone".into()))
            .encode();
        assert_eq!(bytes[0], 0x62);
        assert_eq!(
            decode(&bytes).unwrap().0,
            Packet::PubRel(Ack {
                pkid: 9,
                code: 0x92,
                props: Properties(vec![Property::ReasonString("gone".into())])
            })
        );
        assert_eq!(puback(1), vec![0x40, 2, 0, 1]);
        // 0x99 is not a PUBCOMP reason.
        assert!(decode(&[0x70, 3, 0, 5, 0x99]).is_err());
    }

    #[test]
    fn decoder_rejects_what_a_server_must_not_send() {
        // CONNACK: duplicate Receive Maximum.
        let dup = [0x20, 9, 0, 0, 6, 0x21, 0, 5, 0x21, 0, 6];
        assert!(matches!(decode(&dup), Err(DecodeError::Invalid(_))));
        // CONNACK carrying Request Problem Information (a CONNECT property).
        assert!(decode(&[0x20, 5, 0, 0, 2, 0x17, 1]).is_err());
        // CONNACK without properties (3.1.1 framing) is not a v5 CONNACK.
        assert!(decode(&[0x20, 2, 0, 0]).is_err());
        // Property length overruns.
        assert!(decode(&[0x20, 4, 0, 0, 5, 0x25]).is_err());
        // Session present with a failure code.
        assert!(decode(&[0x20, 3, 1, 0x80, 0]).is_err());
        // Topic alias 0 on PUBLISH.
        assert!(decode(&[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0]).is_err());
        assert_eq!(decode(&[0x20, 3, 0, 0]), Err(DecodeError::Incomplete));
    }

    #[test]
    fn disconnect_and_auth() {
        assert_eq!(disconnect(0), vec![0xE0, 0]);
        assert_eq!(disconnect(4), vec![0xE0, 1, 4]);
        assert_eq!(
            decode(&[0xE0, 0]).unwrap().0,
            Packet::Disconnect(Reason {
                code: 0,
                props: Properties::default()
            })
        );
        let bytes = ReasonPacket::disconnect(0x8B)
            .prop(Property::ReasonString("bye".into()))
            .encode();
        let Packet::Disconnect(d) = decode(&bytes).unwrap().0 else {
            panic!()
        };
        assert_eq!(
            (d.code, d.props.reason_string()),
            (0x8B, Some("bye".into()))
        );
        // 0x04 is a client-only DISCONNECT reason.
        assert!(decode(&[0xE0, 1, 4]).is_err());
        let auth = ReasonPacket::auth(0x18)
            .prop(Property::AuthenticationMethod("m".into()))
            .encode();
        assert_eq!(auth, vec![0xF0, 6, 0x18, 4, 0x15, 0, 1, b'm']);
        assert!(matches!(decode(&auth).unwrap().0, Packet::Auth(_)));
    }

    #[test]
    fn subscribe_and_suback() {
        let bytes = SubscribePacket::new(10)
            .id(200)
            .filter("a/+", sub_options(1, true, true, 2))
            .encode();
        assert_eq!(
            bytes,
            vec![0x82, 12, 0, 10, 3, 0x0B, 0xC8, 0x01, 0, 3, b'a', b'/', b'+', 0x2D]
        );
        assert_eq!(
            decode(&[0x90, 5, 0, 10, 0, 0x01, 0x8F]).unwrap().0,
            Packet::SubAck(SubAck {
                pkid: 10,
                props: Properties::default(),
                codes: vec![1, 0x8F]
            })
        );
        assert_eq!(
            decode(&[0xB0, 4, 0, 11, 0, 0x11]).unwrap().0,
            Packet::UnsubAck(SubAck {
                pkid: 11,
                props: Properties::default(),
                codes: vec![0x11]
            })
        );
        assert_eq!(
            UnsubscribePacket::new(11, &["a"]).encode(),
            vec![0xA2, 6, 0, 11, 0, 0, 1, b'a']
        );
    }

    #[test]
    fn varint_shortest_form() {
        assert_eq!(varint(268_435_455), vec![0xFF, 0xFF, 0xFF, 0x7F]);
        let mut r = Reader::new(&[0x80, 0x00], "t");
        assert!(
            r.varint().is_err(),
            "0x80 0x00 is not the shortest form of 0"
        );
    }
}
