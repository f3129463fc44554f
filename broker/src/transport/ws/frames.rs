//! RFC 6455 framing, server side, without I/O: [`Decoder`] turns the client's masked frames into
//! the MQTT byte stream they carry and the control frames among them; [`encode`] writes the
//! server's unmasked frames.
//!
//! Payloads are unmasked into the caller's buffer as they arrive, so a frame is never held
//! whole; only a frame header (at most 14 bytes) or a control frame (at most 125 bytes of
//! payload) waits in the input until it is complete.

use bytes::{Buf, BytesMut};

/// A frame's kind (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why the client's frames cannot be read: each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("text WebSocket frame: MQTT is carried in binary frames")]
    Text,
    #[error("unmasked WebSocket frame from a client")]
    Unmasked,
    #[error("WebSocket frame with reserved bits set")]
    Reserved,
    #[error("unknown WebSocket opcode {0:#x}")]
    Opcode(u8),
    #[error("WebSocket control frame fragmented or longer than 125 bytes")]
    Control,
    #[error("WebSocket continuation frame without a message to continue")]
    Continuation,
    #[error("WebSocket data frame inside an unfinished fragmented message")]
    Interleaved,
    #[error("WebSocket frame length with its most significant bit set")]
    Length,
    #[error("WebSocket Close frame with a one-byte payload")]
    Close,
}

impl FrameError {
    /// The status code the server's Close frame gives (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            // 1003: a type of data it cannot accept.
            FrameError::Text => 1003,
            // 1002: a protocol error.
            _ => 1002,
        }
    }
}

/// What one [`Decoder::decode`] call found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// MQTT bytes appended to the output.
    pub payload: usize,
    /// A control frame (Close, Ping, Pong) with its unmasked payload; at most one per call.
    pub control: Option<(Opcode, Vec<u8>)>,
    /// Whether any input was consumed (a header, an empty frame, a control frame, payload).
    pub progress: bool,
}

/// The data frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct DataFrame {
    left: u64,
    mask: [u8; 4],
    /// Where in the mask the next payload byte falls.
    offset: usize,
}

/// A frame header, parsed.
struct Header {
    fin: bool,
    opcode: Opcode,
    len: u64,
    mask: [u8; 4],
    /// The header's own length: where the payload starts.
    size: usize,
}

/// The status code to answer a client's Close with (RFC 6455 §5.5.1, §7.4): its own code when
/// that is one an endpoint may send, 1000 when it gave none, 1002 for a code that may not be
/// sent or a one-byte payload, 1007 for a reason that is not UTF-8.
pub fn close_answer(payload: &[u8]) -> u16 {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() { 1000 } else { 1002 };
    };
    let code = u16::from_be_bytes(*code);
    let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
    if !sendable {
        1002
    } else if std::str::from_utf8(reason).is_err() {
        1007
    } else {
        code
    }
}

/// The decoding state between reads.
#[derive(Debug, Default)]
pub struct Decoder {
    frame: Option<DataFrame>,
    /// A fragmented message is open: its next data frame must be a continuation.
    in_message: bool,
}

/// `None` while `input` does not hold the whole header.
fn parse_header(input: &[u8]) -> Result<Option<Header>, FrameError> {
    let [first, second, ..] = *input else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let bits = first & 0x0F;
    let opcode = Opcode::from_bits(bits).ok_or(FrameError::Opcode(bits))?;
    if second & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, at) = match second & 0x7F {
        126 => match input.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match input
            .get(2..10)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        {
            Some(bytes) => {
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(FrameError::Length);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let Some(mask) = input
        .get(at..at + 4)
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
    else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: first & 0x80 != 0,
        opcode,
        len,
        mask,
        size: at + 4,
    }))
}

/// XORs `bytes` with `mask`, starting at `offset` in the mask.
fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) & 3];
    }
}

impl Decoder {
    /// Whether a data frame's payload is being read: what the input holds then is payload
    /// waiting for room, not a frame in pieces.
    pub fn in_payload(&self) -> bool {
        self.frame.is_some()
    }

    /// Consumes what it can of `input`: appends at most `room` payload bytes of binary frames
    /// (unmasked) to `out`, and stops after one control frame. What it leaves in `input` is a
    /// partial header or control frame, or payload there was no room for.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        room: usize,
    ) -> Result<Decoded, FrameError> {
        let mut decoded = Decoded::default();
        loop {
            if let Some(frame) = &mut self.frame {
                let room_left = room - decoded.payload;
                let take = usize::try_from(frame.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len())
                    .min(room_left);
                if take > 0 {
                    let start = out.len();
                    out.extend_from_slice(&input[..take]);
                    unmask(&mut out[start..], frame.mask, frame.offset);
                    input.advance(take);
                    frame.offset = (frame.offset + take) & 3;
                    frame.left -= take as u64;
                    decoded.payload += take;
                    decoded.progress = true;
                }
                if frame.left > 0 {
                    // More input, or more room, is needed.
                    return Ok(decoded);
                }
                self.frame = None;
            }
            if decoded.control.is_some() {
                return Ok(decoded);
            }
            let Some(header) = parse_header(input)? else {
                return Ok(decoded);
            };
            if header.opcode.is_control() {
                if !header.fin || header.len > 125 {
                    return Err(FrameError::Control);
                }
                // Bounded by the check above: 125 bytes.
                let len = header.len as usize;
                if input.len() < header.size + len {
                    return Ok(decoded);
                }
                input.advance(header.size);
                let mut payload = input.split_to(len).to_vec();
                unmask(&mut payload, header.mask, 0);
                if header.opcode == Opcode::Close && payload.len() == 1 {
                    return Err(FrameError::Close);
                }
                decoded.control = Some((header.opcode, payload));
                decoded.progress = true;
                continue;
            }
            match (header.opcode, self.in_message) {
                (Opcode::Text, _) => return Err(FrameError::Text),
                (Opcode::Continuation, false) => return Err(FrameError::Continuation),
                (Opcode::Binary, true) => return Err(FrameError::Interleaved),
                _ => {}
            }
            self.in_message = !header.fin;
            input.advance(header.size);
            decoded.progress = true;
            if header.len > 0 {
                self.frame = Some(DataFrame {
                    left: header.len,
                    mask: header.mask,
                    offset: 0,
                });
            }
        }
    }
}

/// Appends a final, unmasked frame (a server's) of `opcode` carrying `payload` to `out`.
pub fn encode(opcode: Opcode, payload: &[u8], out: &mut BytesMut) {
    out.reserve(10 + payload.len());
    out.extend_from_slice(&[0x80 | opcode.bits()]);
    match payload.len() {
        len @ 0..=125 => out.extend_from_slice(&[len as u8]),
        len @ 126..=0xFFFF => {
            out.extend_from_slice(&[126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.extend_from_slice(&[127]);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests;
