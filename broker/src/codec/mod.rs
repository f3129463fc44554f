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

pub use decode::{decode, peek_fixed_header, FixedHeader};
pub use encode::encode_publish;

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
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            Protocol::V311 => "MQTT",
        }
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
    pub clean_session: bool,
    /// Seconds; 0 disables keepalive.
    pub keep_alive: u16,
    /// May be empty (the broker then assigns one when `clean_session` is set).
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// A topic *name*: UTF-8 checked by the decoder; wildcard checks belong to the broker.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNACK return codes of MQTT 3.1/3.1.1 (MQTT 5 widens this into reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0x00,
    UnacceptableProtocolVersion = 0x01,
    IdentifierRejected = 0x02,
    ServerUnavailable = 0x03,
    BadUserNameOrPassword = 0x04,
    NotAuthorized = 0x05,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Filters are UTF-8 checked by the decoder but not validated as filters: an invalid filter
    /// gets return code 0x80 in the SUBACK, which is the broker's decision.
    pub filters: Vec<(String, QoS)>,
}

/// One return code of a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeReturnCode {
    Granted(QoS),
    Failure,
}

impl SubscribeReturnCode {
    pub fn as_u8(self) -> u8 {
        match self {
            SubscribeReturnCode::Granted(qos) => qos.as_u8(),
            SubscribeReturnCode::Failure => 0x80,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub return_codes: Vec<SubscribeReturnCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
}

/// Every MQTT 3.1/3.1.1 control packet. The acknowledgements carry only a packet id today;
/// MQTT 5 adds reason codes and properties, which is why they are not merged into one variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
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
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// Why bytes could not be decoded. Every variant closes the connection (after CONNACK 0x01 for
/// `UnsupportedProtocol`).
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
