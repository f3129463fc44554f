//! MQTT wire format: packets in, bytes out.
//!
//! The codec owns the byte-level protocol and nothing else: [`decode`] turns the front of a read
//! buffer into a [`Packet`] (or asks for more bytes), and [`Packet::encode`] appends a packet to a
//! write buffer. It knows the protocol level of the connection ([`Protocol`]) because MQTT 5 adds
//! properties to most packets: each packet type is a struct so that fields (properties, reason
//! codes) can be added without touching the callers' match arms, and the level travels with every
//! call.
//!
//! Everything here treats its input as hostile: lengths are checked before they are trusted, a
//! packet larger than the connection's limit is refused from its fixed header alone (before its body
//! is buffered), strings are checked UTF-8 without U+0000, and every error is a [`DecodeError`],
//! never a panic. Payloads and topics are zero-copy slices of the read buffer ([`Bytes`]).

mod decode;
mod encode;
pub mod properties;
mod reader;
mod reason;

pub use decode::{decode, peek_fixed_header, FixedHeader};
pub use encode::{encode_publish, encode_publish_v5, publish_v5_size, PublishV5Extras};
pub use properties::{Properties, PropertyContext, PropertyValues};
pub use reason::ReasonCode;

#[cfg(test)]
mod tests;

use bytes::Bytes;

/// The protocol spoken on a connection, fixed by its CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            Protocol::V311 | Protocol::V5 => "MQTT",
        }
    }

    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The largest remaining length the protocol can express (four length bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// A CONNECT packet as sent by a client.
///
/// How the protocol *name and level* came out is reported separately: an unsupported level must
/// be answered with CONNACK 0x01 rather than a silent close, so the decoder returns
/// [`DecodeError::UnsupportedProtocol`] for it and the connection answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session (3.1.1) or Clean Start (5.0): a stored session is discarded at CONNECT.
    pub clean_session: bool,
    /// Seconds; 0 disables keepalive.
    pub keep_alive: u16,
    /// May be empty (the broker then assigns one when `clean_session` is set).
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// MQTT 5 only.
    pub properties: Properties,
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// A topic *name*: UTF-8 checked by the decoder; wildcard checks belong to the broker.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (Will Delay Interval and the message's own).
    pub properties: Properties,
}

/// CONNACK. `code` is a reason code; to an MQTT 3.1/3.1.1 client it is sent as the nearest
/// return code ([`ReasonCode::v3_connack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ReasonCode,
    pub properties: Properties,
}

/// A PUBLISH in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// The topic name as bytes; the decoder guarantees valid UTF-8 without U+0000. Kept as
    /// `Bytes` so routing never allocates a `String` per message (matching works on bytes).
    pub topic: Bytes,
    /// Present exactly when `qos` is not `AtMostOnce`.
    pub packet_id: Option<u16>,
    pub payload: Bytes,
    /// MQTT 5 Topic Alias (0x23): kept apart from `properties` because it belongs to this hop,
    /// beside the topic it stands for, not to the message; and because it is most often the
    /// only property a PUBLISH carries, which then allocates nothing.
    pub topic_alias: Option<u16>,
    /// MQTT 5 only, without the Topic Alias.
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP. MQTT 3.1.1 sends only the packet id (the reason is then
/// `Success` and there are no properties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn new(packet_id: u16) -> Ack {
        Ack::with_reason(packet_id, ReasonCode::Success)
    }

    pub fn with_reason(packet_id: u16, reason: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

/// What to do with retained messages when subscribing (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// Send the matching retained messages.
    OnSubscribe,
    /// Send them only if the subscription did not exist.
    OnNewSubscription,
    /// Never send them.
    Never,
}

/// The options byte of one SUBSCRIBE filter. MQTT 3.1.1 has only the QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    /// Do not deliver the session's own messages back to it.
    pub no_local: bool,
    /// Deliver with the retain flag the message was published with.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Only a QoS: every MQTT 3.1.1 subscription.
    pub fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Filters are UTF-8 checked by the decoder but not validated as filters: an invalid filter
    /// gets a failure code in the SUBACK, which is the broker's decision.
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: Properties,
}

/// SUBACK: one reason code per filter (to MQTT 3.1.1 clients every failure is 0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

/// UNSUBACK: MQTT 5 has one reason code per filter; MQTT 3.1.1 none (`reason_codes` is
/// ignored when encoding and empty when decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

/// DISCONNECT (either direction in MQTT 5; from the client only, without a body, in 3.1.1)
/// or AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }
}

/// AUTH (MQTT 5 only): a step of enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// Every MQTT control packet of 3.1, 3.1.1 and 5.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Why bytes could not be decoded. Every variant closes the connection (after CONNACK 0x01 for
/// `UnsupportedProtocol`); an MQTT 5 client is told [`DecodeError::reason_code`] first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    PacketTooLarge { size: usize, limit: usize },
    #[error("malformed remaining length")]
    MalformedLength,
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed-header flags {flags:#06b} for {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("malformed {packet}: {reason}")]
    Malformed {
        packet: &'static str,
        reason: &'static str,
    },
    #[error("invalid UTF-8 string in {0}")]
    InvalidUtf8(&'static str),
    /// Well-formed bytes that break a rule of the protocol (MQTT 5's "Protocol Error").
    #[error("protocol error in {packet}: {reason}")]
    Protocol {
        packet: &'static str,
        reason: &'static str,
    },
}

impl DecodeError {
    /// The reason code an MQTT 5 peer is given in the DISCONNECT (or CONNACK) that follows.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::Protocol { .. } => ReasonCode::ProtocolError,
            DecodeError::MalformedLength
            | DecodeError::ReservedPacketType(_)
            | DecodeError::InvalidFlags { .. }
            | DecodeError::Malformed { .. }
            | DecodeError::InvalidUtf8(_) => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded. Always a caller bug (a value the wire format cannot carry),
/// reported rather than panicking; nothing has been written to the buffer when it is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {len} bytes, more than a two-byte length prefix can express")]
    TooLong { field: &'static str, len: usize },
    #[error("{packet} remaining length {remaining_length} exceeds the protocol maximum")]
    PacketTooLarge {
        packet: &'static str,
        remaining_length: usize,
    },
    #[error("inconsistent {packet}: {reason}")]
    Inconsistent {
        packet: &'static str,
        reason: &'static str,
    },
}
