//! The hand-over frames on a control link (sync version 5), as bytes. Integers big-endian;
//! `str16` is `[length u16][UTF-8]`:
//! ```text
//! kind 4, a claim:   [ms u64][count u32][flags u8: bit 0 the client continues its session,
//!                     bit 1 access control judged the client, bit 2 with a username,
//!                     bit 3 only to adopt an offline session (see claims::Request)]
//!                    [only with bit 2: username str16][client id str16]
//! kind 5, an answer: [ms u64][count u32][answer u8: 0 nothing, 1 refused, 2 another user's
//!                     session, 3 the session (its parts came before)][client id str16]
//! kind 6, a part of a session: [ms u64][count u32][client id str16][bytes to the frame's end]
//! kind 7, messages for a session that moved: [ms u64][count u32][client id str16]
//!                    [deliveries, see crate::session::snapshot::encode_deliveries]
//! kind 8, the session's subscriptions are in place: [ms u64][count u32][client id str16]
//! kind 9, this node drains: (no body)
//! kind 10, take in this offline session: [client id str16]
//! ```
//! Kinds 7 and 8 name the claim the session moved for: 7 goes from the node the session left
//! to the claimant, 8 from the claimant back.
//! A claim is the sender's own (its node is the link's origin); an answer and the parts are for
//! a claim of the receiver. A session's parts, in order, make its
//! [`crate::session::SessionSnapshot`] bytes; each is at most [`PART_BYTES`], so that a large
//! session never makes a large frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::claims::Request;

/// A claim (control link frame kind).
pub const FRAME_CLAIM: u8 = 4;
/// An answer to a claim.
pub const FRAME_ANSWER: u8 = 5;
/// A part of a session handed over.
pub const FRAME_SESSION_PART: u8 = 6;
/// Messages that reached a session on the node it left.
pub const FRAME_LATE_DELIVERIES: u8 = 7;
/// The node a session moved to has its subscriptions in place with every peer.
pub const FRAME_SETTLED: u8 = 8;
/// The sender drains: it takes in no session (see [`crate::drain`]).
pub const FRAME_DRAINING: u8 = 9;
/// The sender drains: the receiver is asked to claim this offline session (to adopt it).
pub const FRAME_TAKE: u8 = 10;

/// Session bytes per part frame.
pub const PART_BYTES: usize = 60 << 10;

const FLAG_WANTS_SESSION: u8 = 0b1;
const FLAG_CHECKED: u8 = 0b10;
const FLAG_USERNAME: u8 = 0b100;
const FLAG_ADOPT_ONLY: u8 = 0b1000;

/// What an answer says (the session itself came in parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Nothing = 0,
    Refused = 1,
    Foreign = 2,
    Session = 3,
}

/// A claim as read from a frame (its node is the link's origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimFrame {
    pub ms: u64,
    pub count: u32,
    pub request: Request,
    pub client_id: String,
}

/// An answer or a part as read from a frame (the claim is the receiver's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFrame<T> {
    pub ms: u64,
    pub count: u32,
    pub client_id: String,
    pub body: T,
}

pub fn encode_claim(ms: u64, count: u32, request: &Request, client_id: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(20 + client_id.len());
    out.put_u64(ms);
    out.put_u32(count);
    let mut flags = 0;
    if request.want_session {
        flags |= FLAG_WANTS_SESSION;
    }
    let username = match &request.owner {
        Some(user) => {
            flags |= FLAG_CHECKED;
            user.as_deref()
        }
        None => None,
    };
    if username.is_some() {
        flags |= FLAG_USERNAME;
    }
    if request.adopt_only {
        flags |= FLAG_ADOPT_ONLY;
    }
    out.put_u8(flags);
    if let Some(username) = username {
        put_str16(&mut out, username);
    }
    put_str16(&mut out, client_id);
    out
}

pub fn decode_claim(mut body: &[u8]) -> Option<ClaimFrame> {
    let ms = take_u64(&mut body)?;
    let count = take_u32(&mut body)?;
    let flags = take_u8(&mut body)?;
    if flags & !(FLAG_WANTS_SESSION | FLAG_CHECKED | FLAG_USERNAME | FLAG_ADOPT_ONLY) != 0 {
        return None;
    }
    let username = if flags & FLAG_USERNAME != 0 {
        if flags & FLAG_CHECKED == 0 {
            return None;
        }
        Some(take_str16(&mut body)?)
    } else {
        None
    };
    let client_id = take_str16(&mut body)?;
    if !body.is_empty() {
        return None;
    }
    Some(ClaimFrame {
        ms,
        count,
        request: Request {
            want_session: flags & FLAG_WANTS_SESSION != 0,
            owner: (flags & FLAG_CHECKED != 0).then_some(username),
            adopt_only: flags & FLAG_ADOPT_ONLY != 0,
        },
        client_id,
    })
}

pub fn encode_answer(ms: u64, count: u32, answer: AnswerKind, client_id: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(15 + client_id.len());
    out.put_u64(ms);
    out.put_u32(count);
    out.put_u8(answer as u8);
    put_str16(&mut out, client_id);
    out
}

pub fn decode_answer(mut body: &[u8]) -> Option<AnswerFrame<AnswerKind>> {
    let ms = take_u64(&mut body)?;
    let count = take_u32(&mut body)?;
    let kind = match take_u8(&mut body)? {
        0 => AnswerKind::Nothing,
        1 => AnswerKind::Refused,
        2 => AnswerKind::Foreign,
        3 => AnswerKind::Session,
        _ => return None,
    };
    let client_id = take_str16(&mut body)?;
    body.is_empty().then_some(AnswerFrame {
        ms,
        count,
        client_id,
        body: kind,
    })
}

/// The part frames of `session` (at least one, so that an empty session still arrives).
pub fn encode_parts(ms: u64, count: u32, client_id: &str, session: &[u8]) -> Vec<BytesMut> {
    let mut parts = Vec::new();
    let mut chunks = session.chunks(PART_BYTES).peekable();
    if chunks.peek().is_none() {
        parts.push(part(ms, count, client_id, &[]));
    }
    for chunk in chunks {
        parts.push(part(ms, count, client_id, chunk));
    }
    parts
}

/// A frame of kind 6, 7 or 8: a claim's id, a client id and `bytes`.
pub fn part(ms: u64, count: u32, client_id: &str, chunk: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(14 + client_id.len() + chunk.len());
    out.put_u64(ms);
    out.put_u32(count);
    put_str16(&mut out, client_id);
    out.put_slice(chunk);
    out
}

/// Reads a frame of kind 6, 7 or 8.
pub fn decode_part(body: &Bytes) -> Option<AnswerFrame<Bytes>> {
    let mut buf: &[u8] = body;
    let ms = take_u64(&mut buf)?;
    let count = take_u32(&mut buf)?;
    let client_id = take_str16(&mut buf)?;
    let rest = body.len() - buf.len();
    Some(AnswerFrame {
        ms,
        count,
        client_id,
        body: body.slice(rest..),
    })
}

pub fn encode_take(client_id: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(2 + client_id.len());
    put_str16(&mut out, client_id);
    out
}

pub fn decode_take(mut body: &[u8]) -> Option<String> {
    let client_id = take_str16(&mut body)?;
    body.is_empty().then_some(client_id)
}

/// Client ids and usernames come from CONNECT: at most 65,535 bytes.
fn put_str16(out: &mut BytesMut, text: &str) {
    let len = text.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&text.as_bytes()[..len]);
}

fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    (buf.remaining() >= 4).then(|| buf.get_u32())
}

fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    (buf.remaining() >= 8).then(|| buf.get_u64())
}

fn take_str16(buf: &mut &[u8]) -> Option<String> {
    let len = usize::from(buf.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))?);
    buf.advance(2);
    if buf.len() < len {
        return None;
    }
    let (text, rest) = buf.split_at(len);
    *buf = rest;
    let text = std::str::from_utf8(text).ok()?;
    (!text.contains('\0')).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written() {
        for (want_session, owner, adopt_only) in [
            (true, None, false),
            (false, Some(None), false),
            (true, Some(Some("alice".to_string())), false),
            (true, None, true),
        ] {
            let request = Request {
                want_session,
                owner,
                adopt_only,
            };
            let bytes = encode_claim(7, 9, &request, "client/ü");
            let claim = decode_claim(&bytes).expect("claim");
            assert_eq!(
                claim,
                ClaimFrame {
                    ms: 7,
                    count: 9,
                    request,
                    client_id: "client/ü".to_string()
                }
            );
        }
        for kind in [
            AnswerKind::Nothing,
            AnswerKind::Refused,
            AnswerKind::Foreign,
            AnswerKind::Session,
        ] {
            let answer = decode_answer(&encode_answer(1, 2, kind, "c")).expect("answer");
            assert_eq!((answer.ms, answer.count, answer.body), (1, 2, kind));
        }
        let session: Vec<u8> = (0..PART_BYTES * 2 + 5).map(|i| i as u8).collect();
        let parts = encode_parts(3, 4, "c", &session);
        assert_eq!(parts.len(), 3);
        let mut joined = Vec::new();
        for part in parts {
            let part = decode_part(&part.freeze()).expect("part");
            assert_eq!((part.ms, part.count, part.client_id.as_str()), (3, 4, "c"));
            joined.extend_from_slice(&part.body);
        }
        assert_eq!(joined, session);
        assert_eq!(encode_parts(3, 4, "c", &[]).len(), 1);
        assert_eq!(decode_take(&encode_take("c/1")).as_deref(), Some("c/1"));
        assert_eq!(decode_take(&encode_take("c/1")[..3]), None);
    }

    #[test]
    fn malformed_frames_are_refused() {
        let claim = encode_claim(
            1,
            2,
            &Request {
                want_session: true,
                owner: None,
                adopt_only: false,
            },
            "c",
        );
        for len in 0..claim.len() {
            assert!(decode_claim(&claim[..len]).is_none(), "{len}");
        }
        let mut unknown_flag = claim.to_vec();
        unknown_flag[12] |= 0b1_0000;
        assert!(decode_claim(&unknown_flag).is_none());
        let mut username_unchecked = claim.to_vec();
        username_unchecked[12] = FLAG_USERNAME;
        assert!(decode_claim(&username_unchecked).is_none());
        let mut trailing = claim.to_vec();
        trailing.push(0);
        assert!(decode_claim(&trailing).is_none());
        let mut bad_answer = encode_answer(1, 2, AnswerKind::Nothing, "c").to_vec();
        bad_answer[12] = 4;
        assert!(decode_answer(&bad_answer).is_none());
        let nul = encode_answer(1, 2, AnswerKind::Nothing, "a\0b");
        assert!(decode_answer(&nul).is_none());
        assert!(decode_part(&Bytes::from_static(&[0; 13])).is_none());
    }
}
