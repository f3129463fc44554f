//! A bounds-checked cursor over a packet body, shared by the packet and property decoders:
//! every read checks the length first and reports a shortfall as a malformed packet.

use bytes::{Buf, Bytes};

use super::DecodeError;

pub(super) fn malformed(packet: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::Malformed { packet, reason }
}

/// A bounds-checked cursor over a packet body. Every read checks the length first and reports a
/// shortfall as [`DecodeError::Malformed`] naming the packet.
pub(super) struct Reader {
    rest: Bytes,
    packet: &'static str,
}

impl Reader {
    pub(super) fn new(body: Bytes, packet: &'static str) -> Reader {
        Reader { rest: body, packet }
    }

    pub(super) fn len(&self) -> usize {
        self.rest.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(super) fn ends_early(&self) -> DecodeError {
        malformed(self.packet, "packet ends inside a field")
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.rest.first().ok_or_else(|| self.ends_early())?;
        self.rest.advance(1);
        Ok(byte)
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let Some(&[high, low]) = self.rest.get(..2) else {
            return Err(self.ends_early());
        };
        let value = u16::from_be_bytes([high, low]);
        self.rest.advance(2);
        Ok(value)
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let Some(&[a, b, c, d]) = self.rest.get(..4) else {
            return Err(self.ends_early());
        };
        self.rest.advance(4);
        Ok(u32::from_be_bytes([a, b, c, d]))
    }

    /// A variable byte integer (§1.5.5 of MQTT 5): at most four bytes, the last without its
    /// continuation bit.
    pub(super) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for index in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(
            self.packet,
            "variable byte integer longer than four bytes",
        ))
    }

    /// The next `len` bytes as a reader of their own (a property list), failing if the packet
    /// is shorter.
    pub(super) fn sub_reader(&mut self, len: usize) -> Result<Reader, DecodeError> {
        if len > self.rest.len() {
            return Err(malformed(
                self.packet,
                "property length runs past the end of the packet",
            ));
        }
        Ok(Reader::new(self.rest.split_to(len), self.packet))
    }

    /// The next `n` bytes, without reading them; `None` when fewer are left.
    pub(super) fn peek(&self, n: usize) -> Option<&[u8]> {
        self.rest.get(..n)
    }

    /// Skips `n` bytes that [`Reader::peek`] returned.
    pub(super) fn skip(&mut self, n: usize) {
        let n = n.min(self.rest.len());
        bytes::Buf::advance(&mut self.rest, n);
    }

    pub(super) fn packet(&self) -> &'static str {
        self.packet
    }

    /// A packet identifier where the protocol requires one: 0 is not a valid id [MQTT-2.3.1-1].
    pub(super) fn nonzero_packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(malformed(self.packet, "packet identifier 0")),
            id => Ok(id),
        }
    }

    /// Binary data with a two-byte length prefix, as a zero-copy slice of the packet.
    pub(super) fn length_prefixed(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > self.rest.len() {
            return Err(malformed(
                self.packet,
                "length prefix runs past the end of the packet",
            ));
        }
        Ok(self.rest.split_to(len))
    }

    /// A UTF-8 string kept as bytes (zero-copy), checked as [`Reader::string`] checks.
    pub(super) fn utf8(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let raw = self.length_prefixed()?;
        // Most topics are ASCII without U+0000: one pass, without the general UTF-8 decoder.
        if !raw.iter().all(|&b| b.wrapping_sub(1) < 0x7f) {
            check_utf8(&raw, field)?;
        }
        Ok(raw)
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 [MQTT-1.5.3-1, MQTT-1.5.3-2].
    pub(super) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let raw = self.rest.get(..len).ok_or_else(|| {
            malformed(self.packet, "length prefix runs past the end of the packet")
        })?;
        let string = check_utf8(raw, field)?.to_owned();
        self.rest.advance(len);
        Ok(string)
    }

    /// Everything left, as a zero-copy slice of the packet.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.rest)
    }

    /// Every packet must be exactly as long as its fields.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.packet,
                "unexpected bytes after the last field",
            ))
        }
    }
}

pub(super) fn check_utf8<'a>(raw: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    // In UTF-8 a zero byte only ever encodes U+0000, so a byte search is enough.
    if raw.contains(&0) {
        return Err(DecodeError::InvalidUtf8(field));
    }
    std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8(field))
}
