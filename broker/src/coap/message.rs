//! The CoAP half of the mapping, without I/O: a datagram in, either a [`Publish`] for the gateway
//! or an [`Answer`] at once; and the answers' encoding (RFC 7252). The message format itself is
//! `coap-lite`'s; what a message means here (see the [module](super) documentation) is ours.

use std::net::SocketAddr;

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use crate::auth::AuthFailure;
use crate::codec::QoS;
use crate::gateway::{GatewayPublish, GatewayRefusal};
use crate::metrics::{AuthFailureKind, CoapOutcome};

/// The only CoAP version; messages of another are silently ignored (RFC 7252 §3).
const VERSION: u8 = 1;

/// The Max-Age (seconds) of a 5.03 Service Unavailable: when the client may try again.
pub const RETRY_AFTER_SECS: u32 = 2;

/// Option numbers this listener acts on or knowingly ignores. Every other critical (odd) one is
/// refused with 4.02 Bad Option; elective (even) ones are ignored (RFC 7252 §5.4.1).
const URI_HOST: u16 = 3;
const URI_PORT: u16 = 7;
const URI_PATH: u16 = 11;
const URI_QUERY: u16 = 15;
const ACCEPT: u16 = 17;
const BLOCK2: u16 = 23;
const BLOCK1: u16 = 27;
const PROXY_URI: u16 = 35;
const PROXY_SCHEME: u16 = 39;

/// What to do with a datagram.
#[derive(Debug)]
pub enum Incoming {
    /// Nothing to send back: not a CoAP message, a non-confirmable one that cannot be read, an
    /// acknowledgement or a reset (this listener never sends confirmable messages).
    Ignore(CoapOutcome),
    /// A confirmable message that cannot be processed (a format error, an empty one, which is
    /// a ping, or a response nobody asked for): rejected with a Reset of its message id (§4.2).
    Reset {
        message_id: u16,
        outcome: CoapOutcome,
    },
    /// A request: to publish, or to be answered at once with an error.
    Request(Request),
}

/// A request: whom and how to answer, and what it asks.
#[derive(Debug)]
pub struct Request {
    pub reply_to: ReplyTo,
    pub action: Result<Publish, Answer>,
}

/// What an answer to a request echoes (§5.3.2, §4.2, §4.3), and the request's size, which an
/// answer never exceeds by its diagnostic payload (§11.3: no amplification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// Confirmable: the answer is piggybacked on the ACK, with the same message id. Otherwise
    /// the answer is a Non-confirmable response with a message id of its own.
    pub confirmable: bool,
    pub message_id: u16,
    /// At most 8 bytes (a longer token is a format error).
    pub token: Vec<u8>,
    pub size: usize,
}

/// A message to publish, as the request described it. Its `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    /// `c=`; `None` when absent or empty (the server makes one up).
    pub client_id: Option<String>,
    /// `u=`; `None` when absent or empty.
    pub username: Option<String>,
    /// `p=`, as its bytes.
    pub password: Option<Vec<u8>>,
    pub payload: Bytes,
}

impl std::fmt::Debug for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("payload", &self.payload.len())
            .finish()
    }
}

impl Publish {
    /// The gateway's request, from `peer`, under `client_id`.
    pub fn gateway<'a>(&'a self, client_id: &'a str, peer: SocketAddr) -> GatewayPublish<'a> {
        GatewayPublish {
            client_id,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            peer,
            via: "coap",
            topic: &self.topic,
            qos: self.qos,
            retain: self.retain,
            payload: self.payload.clone(),
        }
    }
}

/// The response codes this listener sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Changed,
    BadRequest,
    Unauthorized,
    BadOption,
    Forbidden,
    MethodNotAllowed,
    RequestEntityTooLarge,
    ServiceUnavailable,
    ProxyingNotSupported,
}

impl Code {
    fn response_type(self) -> ResponseType {
        match self {
            Code::Changed => ResponseType::Changed,
            Code::BadRequest => ResponseType::BadRequest,
            Code::Unauthorized => ResponseType::Unauthorized,
            Code::BadOption => ResponseType::BadOption,
            Code::Forbidden => ResponseType::Forbidden,
            Code::MethodNotAllowed => ResponseType::MethodNotAllowed,
            Code::RequestEntityTooLarge => ResponseType::RequestEntityTooLarge,
            Code::ServiceUnavailable => ResponseType::ServiceUnavailable,
            Code::ProxyingNotSupported => ResponseType::ProxyingNotSupported,
        }
    }

    /// The code as CoAP writes it, `c.dd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Changed => "2.04",
            Code::BadRequest => "4.00",
            Code::Unauthorized => "4.01",
            Code::BadOption => "4.02",
            Code::Forbidden => "4.03",
            Code::MethodNotAllowed => "4.05",
            Code::RequestEntityTooLarge => "4.13",
            Code::ServiceUnavailable => "5.03",
            Code::ProxyingNotSupported => "5.05",
        }
    }
}

/// A response: its code, the outcome it counts as, a diagnostic payload (§5.5.2) and, for
/// 5.03, a Max-Age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    pub outcome: CoapOutcome,
    pub diagnostic: &'static str,
    pub max_age: Option<u32>,
}

impl Answer {
    const fn new(code: Code, outcome: CoapOutcome, diagnostic: &'static str) -> Answer {
        Answer {
            code,
            outcome,
            diagnostic,
            max_age: None,
        }
    }

    pub const PUBLISHED: Answer = Answer::new(Code::Changed, CoapOutcome::Published, "");

    pub fn bad_request(diagnostic: &'static str) -> Answer {
        Answer::new(Code::BadRequest, CoapOutcome::BadRequest, diagnostic)
    }

    /// 5.03 because too many requests are in progress.
    pub fn busy() -> Answer {
        Answer {
            max_age: Some(RETRY_AFTER_SECS),
            ..Answer::new(
                Code::ServiceUnavailable,
                CoapOutcome::Busy,
                "busy, try again later",
            )
        }
    }

    /// The answer to what the gateway did.
    pub fn of(result: &Result<(), GatewayRefusal>) -> Answer {
        match result {
            Ok(()) => Answer::PUBLISHED,
            Err(GatewayRefusal::InvalidTopic) => {
                Answer::bad_request("the topic is not a valid topic name")
            }
            Err(GatewayRefusal::TooLarge) => Answer::new(
                Code::RequestEntityTooLarge,
                CoapOutcome::TooLarge,
                "the message is larger than -mpl allows",
            ),
            Err(GatewayRefusal::Unauthenticated(AuthFailure {
                kind: AuthFailureKind::Unavailable,
                ..
            })) => Answer {
                max_age: Some(RETRY_AFTER_SECS),
                ..Answer::new(
                    Code::ServiceUnavailable,
                    CoapOutcome::AuthUnavailable,
                    "authentication unavailable",
                )
            },
            Err(GatewayRefusal::Unauthenticated(_)) => Answer::new(
                Code::Unauthorized,
                CoapOutcome::Unauthorized,
                "authentication failed",
            ),
            Err(GatewayRefusal::Forbidden) => Answer::new(
                Code::Forbidden,
                CoapOutcome::Forbidden,
                "not authorized to publish to this topic",
            ),
        }
    }
}

/// Reads a datagram. Never panics, whatever the bytes.
pub fn classify(datagram: &[u8]) -> Incoming {
    let [first, code, id_high, id_low, ..] = *datagram else {
        return Incoming::Ignore(CoapOutcome::Malformed);
    };
    if first >> 6 != VERSION {
        return Incoming::Ignore(CoapOutcome::Malformed);
    }
    let message_id = u16::from_be_bytes([id_high, id_low]);
    let confirmable = match (first >> 4) & 0b11 {
        0 => true,
        1 => false,
        // Acknowledgements and resets answer confirmable messages, which this listener never
        // sends: nothing to match them with, and they are never answered (§4.2, §4.3).
        _ => return Incoming::Ignore(CoapOutcome::NotRequest),
    };
    let reject = |outcome| {
        if confirmable {
            Incoming::Reset {
                message_id,
                outcome,
            }
        } else {
            Incoming::Ignore(outcome)
        }
    };
    if code == 0 {
        // An empty message is the header alone (§4.1); a confirmable one is a ping, answered
        // with a reset (§4.3); a non-confirmable one must not be empty.
        return match (datagram.len(), first & 0x0f) {
            (4, 0) => reject(CoapOutcome::NotRequest),
            _ => reject(CoapOutcome::Malformed),
        };
    }
    match code >> 5 {
        0 => {}
        // A response, which nobody here asked for.
        2 | 4 | 5 => return reject(CoapOutcome::NotRequest),
        // Classes 1, 6 and 7 are reserved.
        _ => return reject(CoapOutcome::Malformed),
    }
    let Ok(packet) = Packet::from_bytes(datagram) else {
        return reject(CoapOutcome::Malformed);
    };
    let reply_to = ReplyTo {
        confirmable,
        message_id,
        token: packet.get_token().to_vec(),
        size: datagram.len(),
    };
    let action = match packet.header.code {
        MessageClass::Request(RequestType::Post) => publish_of(packet),
        // GET, PUT, DELETE, FETCH, PATCH, iPATCH and unassigned method codes (§5.8).
        _ => Err(Answer::new(
            Code::MethodNotAllowed,
            CoapOutcome::MethodNotAllowed,
            "only POST publishes",
        )),
    };
    Incoming::Request(Request { reply_to, action })
}

fn bad_option() -> Answer {
    Answer::new(
        Code::BadOption,
        CoapOutcome::BadOption,
        "unsupported critical option",
    )
}

/// The value of Block1, an unsigned integer of at most 3 bytes (RFC 7959 §2.2); a longer one
/// is an unrecognised option (RFC 7252 §5.4.3).
fn uint(value: &[u8]) -> Option<u32> {
    if value.len() > 3 {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte)),
    )
}

/// The options, path, query and payload of a POST.
fn publish_of(packet: Packet) -> Result<Publish, Answer> {
    for (&number, values) in packet.options() {
        match number {
            URI_PATH | URI_QUERY => {}
            // Not repeatable: a second occurrence is an unrecognised option (§5.4.5).
            URI_HOST | URI_PORT | ACCEPT | BLOCK2 if values.len() > 1 => return Err(bad_option()),
            // The host and port name this server (whichever name the client used), the answers
            // have no content to negotiate, and a response block size has nothing to apply to.
            URI_HOST | URI_PORT | ACCEPT | BLOCK2 => {}
            BLOCK1 => {
                let block = match (values.len(), values.front()) {
                    (1, Some(value)) => uint(value).ok_or_else(bad_option)?,
                    _ => return Err(bad_option()),
                };
                // Block number 0 with no more to follow is the whole body in one datagram;
                // anything else is a block-wise transfer (RFC 7959), which is not supported.
                if block >> 3 != 0 {
                    return Err(Answer::new(
                        Code::RequestEntityTooLarge,
                        CoapOutcome::TooLarge,
                        "no block-wise transfer: send the payload in one datagram",
                    ));
                }
            }
            PROXY_URI | PROXY_SCHEME => {
                return Err(Answer::new(
                    Code::ProxyingNotSupported,
                    CoapOutcome::ProxyingNotSupported,
                    "not a proxy",
                ))
            }
            critical if critical % 2 == 1 => return Err(bad_option()),
            _elective => {}
        }
    }
    let topic = topic_of(&packet)?;
    let mut query = Query::default();
    if let Some(items) = packet.get_option(CoapOption::UriQuery) {
        for item in items {
            query.add(item)?;
        }
    }
    Ok(Publish {
        topic,
        qos: query.qos.unwrap_or(QoS::AtMostOnce),
        retain: query.retain.unwrap_or(false),
        client_id: query.client_id.filter(|id| !id.is_empty()),
        username: query.username.filter(|user| !user.is_empty()),
        password: query.password,
        payload: Bytes::from(packet.payload),
    })
}

/// The Uri-Path options joined with `/`: `coap://host/a/b` is topic `a/b`, and `coap://host//a`
/// (an empty first segment) is `/a`.
fn topic_of(packet: &Packet) -> Result<String, Answer> {
    let segments = match packet.get_option(CoapOption::UriPath) {
        Some(segments) if !segments.is_empty() => segments,
        _ => return Err(Answer::bad_request("no topic: POST to coap://host/<topic>")),
    };
    let mut topic = String::new();
    for (i, segment) in segments.iter().enumerate() {
        let Ok(segment) = std::str::from_utf8(segment) else {
            return Err(Answer::bad_request("the topic is not UTF-8"));
        };
        // A `/` inside a segment (`%2F` in the URI) would silently add a topic level.
        if segment.contains(['/', '\0']) {
            return Err(Answer::bad_request(
                "a path segment holds a '/' (%2F) or a NUL",
            ));
        }
        if i > 0 {
            topic.push('/');
        }
        topic.push_str(segment);
    }
    // One empty segment (`coap://host/` written out as an empty Uri-Path) names no topic either.
    if topic.is_empty() {
        return Err(Answer::bad_request("no topic: POST to coap://host/<topic>"));
    }
    Ok(topic)
}

/// The Uri-Query options, each `name=value`, each name at most once.
#[derive(Default)]
struct Query {
    qos: Option<QoS>,
    retain: Option<bool>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<Vec<u8>>,
}

impl Query {
    fn add(&mut self, item: &[u8]) -> Result<(), Answer> {
        let (name, value) = match item.iter().position(|&byte| byte == b'=') {
            Some(at) => (&item[..at], &item[at + 1..]),
            None => (item, &[][..]),
        };
        let text = || {
            std::str::from_utf8(value)
                .map(str::to_string)
                .map_err(|_| Answer::bad_request("a query value is not UTF-8"))
        };
        let repeated = match name {
            b"qos" => {
                let qos = match value {
                    b"" | b"0" => QoS::AtMostOnce,
                    b"1" => QoS::AtLeastOnce,
                    b"2" => QoS::ExactlyOnce,
                    _ => return Err(Answer::bad_request("qos must be 0, 1 or 2")),
                };
                self.qos.replace(qos).is_some()
            }
            b"retain" => {
                let retain = match value {
                    b"" | b"false" | b"0" => false,
                    b"true" | b"1" => true,
                    _ => return Err(Answer::bad_request("retain must be true or false")),
                };
                self.retain.replace(retain).is_some()
            }
            b"c" => self.client_id.replace(text()?).is_some(),
            b"u" => self.username.replace(text()?).is_some(),
            b"p" => self.password.replace(value.to_vec()).is_some(),
            _ => {
                return Err(Answer::bad_request(
                    "unknown query parameter: qos, retain, c, u and p are known",
                ))
            }
        };
        if repeated {
            return Err(Answer::bad_request("a query parameter is repeated"));
        }
        Ok(())
    }
}

impl ReplyTo {
    /// The answer's datagram: an ACK with the request's message id, or a NON with `fresh_id`;
    /// the request's token either way. The diagnostic payload is left out when it would make
    /// the answer longer than the request. `None` only if the message cannot be encoded,
    /// which the sizes involved rule out.
    pub fn encode(&self, answer: &Answer, fresh_id: u16) -> Option<Vec<u8>> {
        let mut packet = Packet::new();
        packet.header.set_version(VERSION);
        if self.confirmable {
            packet.header.set_type(MessageType::Acknowledgement);
            packet.header.message_id = self.message_id;
        } else {
            packet.header.set_type(MessageType::NonConfirmable);
            packet.header.message_id = fresh_id;
        }
        packet.header.code = MessageClass::Response(answer.code.response_type());
        packet.set_token(self.token.clone());
        if let Some(seconds) = answer.max_age {
            packet.add_option(CoapOption::MaxAge, minimal_uint(seconds));
        }
        let bare = packet.to_bytes().ok()?;
        if answer.diagnostic.is_empty() {
            return Some(bare);
        }
        packet.payload = answer.diagnostic.as_bytes().to_vec();
        match packet.to_bytes() {
            Ok(full) if full.len() <= self.size => Some(full),
            _ => Some(bare),
        }
    }
}

/// An unsigned-integer option value in as few bytes as it takes (§3.2).
fn minimal_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&byte| byte == 0).count();
    bytes[skip..].to_vec()
}

/// A Reset of `message_id` (an empty message, §4.2).
pub fn reset(message_id: u16) -> Option<Vec<u8>> {
    let mut packet = Packet::new();
    packet.header.set_version(VERSION);
    packet.header.set_type(MessageType::Reset);
    packet.header.code = MessageClass::Empty;
    packet.header.message_id = message_id;
    packet.to_bytes().ok()
}

#[cfg(test)]
mod tests;
