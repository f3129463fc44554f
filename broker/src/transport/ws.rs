//! MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): tungstenite answers the HTTP upgrade on `-wsp`;
//! then [`frames`] carries the MQTT byte stream in binary frames, over the layer below (TCP, or
//! TLS for WSS).
//!
//! MQTT packets may be split across frames and a frame may hold several packets: the frames'
//! payloads are simply the stream, so they are unmasked into the connection's read buffer as
//! they arrive, without waiting for a frame or a message to be whole. What the layer below
//! delivers is held here only until it is decoded (a read's worth, or a frame header or control
//! frame in pieces), so a large message costs the connection its read buffer, as on TCP, and
//! nothing once it is handled. Pings are answered with the connection's next write; a text
//! frame, an unmasked frame or a broken one closes the connection ([MQTT-6.0.0-1], RFC 6455).
//! The upgrade agrees to the subprotocol "mqtt" (or "mqttv3.1", older clients' name), spelled
//! as the client spelled it; a client that offers subprotocols but neither is refused, as is a
//! request for another path.

pub(crate) mod frames;

use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, StatusCode};

use super::{read_into_spare, would_block, HandshakeFailure, Io, Layer, TransportError};
use frames::{close_answer, Decoder, Opcode};

/// The subprotocols MQTT clients ask for, in our order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// What is read from the layer at a time.
const READ_CHUNK: usize = 4096;

/// The most frame bytes read in one call when they yield no MQTT bytes (pings, empty frames):
/// beyond it the call says "nothing now" and the connection's loop, whose readiness is still
/// set, comes back after the runtime has let other tasks run.
const READ_BUDGET: usize = 64 * 1024;

/// The largest frame one write becomes.
const MAX_WRITE: usize = 64 * 1024;

/// A WebSocket session over a layer.
pub struct WsStream<L: Layer> {
    layer: L,
    /// Bytes read from the layer and not decoded yet: at most a read's worth, or a frame header
    /// or control frame in pieces. Freed when empty.
    input: BytesMut,
    decoder: Decoder,
    /// Frames (data, pongs, the closing frame) the layer has not taken yet. Freed when empty.
    output: BytesMut,
    /// The payload of the latest ping not answered yet: only the latest is owed (RFC 6455
    /// §5.5.3), so a ping flood queues one pong.
    pong: Option<Vec<u8>>,
    /// A Close frame was sent: nothing may follow it.
    closing: bool,
    /// The client sent Close, or the layer ended: the stream's end once its bytes are handed up.
    ended: bool,
    /// Frame bytes handed to the layer so far (see [`WsStream::bytes_sent`]).
    sent: u64,
}

fn ws_error(detail: impl ToString) -> TransportError {
    TransportError::new(HandshakeFailure::WebSocket, detail.to_string())
}

/// The upgrade's answer to `request`: 101 with the subprotocol agreed, or why not.
// The shape of tungstenite's `Callback`, called once per upgrade.
#[allow(clippy::result_large_err)]
fn answer(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut response = ErrorResponse::new(Some(why.to_string()));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != path {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "no MQTT WebSocket endpoint here\n",
        ));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .collect();
    if offered.is_empty() {
        // MQTT says a client must offer "mqtt"; some do not, and are served all the same.
        return Ok(response);
    }
    // The client's own spelling: a client may compare it byte for byte.
    let Some(chosen) = SUBPROTOCOLS.iter().find_map(|ours| {
        offered
            .iter()
            .find(|theirs| theirs.eq_ignore_ascii_case(ours))
    }) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket subprotocol: offer mqtt\n",
        ));
    };
    let chosen = HeaderValue::from_str(chosen)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "invalid subprotocol\n"))?;
    response
        .headers_mut()
        .insert("sec-websocket-protocol", chosen);
    Ok(response)
}

/// Runs the server side of the WebSocket upgrade over `layer`.
#[allow(clippy::result_large_err)] // the callback's shape is tungstenite's
pub async fn accept<L: Layer>(layer: L, path: &str) -> Result<WsStream<L>, TransportError> {
    let io = Io {
        layer,
        blocked_on_write: false,
    };
    let callback = |request: &Request, response: Response| answer(path, request, response);
    let mut attempt = tungstenite::accept_hdr(io, callback);
    let ws = loop {
        match attempt {
            Ok(ws) => break ws,
            Err(HandshakeError::Interrupted(mid)) => {
                let io = mid.get_ref().get_ref();
                let ready = if io.blocked_on_write {
                    io.layer.tcp().writable().await
                } else {
                    io.layer.tcp().readable().await
                };
                ready.map_err(|error| {
                    TransportError::new(HandshakeFailure::Closed, error.to_string())
                })?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(tungstenite::Error::Io(error))) => {
                return Err(TransportError::new(
                    HandshakeFailure::Closed,
                    error.to_string(),
                ))
            }
            Err(HandshakeError::Failure(error)) => return Err(ws_error(error)),
        }
    };
    // tungstenite refuses bytes behind the request (a client may send frames only after the
    // 101), so nothing of the session is buffered in it: the frames are read from here on.
    Ok(WsStream {
        layer: ws.into_inner().layer,
        input: BytesMut::new(),
        decoder: Decoder::default(),
        output: BytesMut::new(),
        pong: None,
        closing: false,
        ended: false,
        sent: 0,
    })
}

fn invalid(detail: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.into())
}

impl<L: Layer> WsStream<L> {
    pub fn tcp(&self) -> &TcpStream {
        self.layer.tcp()
    }

    /// Appends MQTT bytes from the frames to `buf`, up to its spare capacity (which the caller
    /// makes non-zero, as for a socket); `Ok(0)` when the client closed.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // Nothing the client sends after its Close is read (RFC 6455 §5.5.1).
        if self.ended {
            return Ok(0);
        }
        let mut read = 0;
        loop {
            let room = buf.capacity() - buf.len();
            debug_assert!(room > 0, "no room to read into");
            let decoded = match self.decoder.decode(&mut self.input, buf, room) {
                Ok(decoded) => decoded,
                Err(error) => {
                    // The Close frame saying why goes now: the connection ends on this error
                    // without writing anything more.
                    self.queue_close(error.close_code());
                    let _ = self.flush();
                    self.layer.close();
                    return Err(invalid(error.to_string()));
                }
            };
            if let Some((opcode, payload)) = decoded.control {
                match opcode {
                    Opcode::Ping => self.pong = Some(payload),
                    Opcode::Close => {
                        self.queue_close(close_answer(&payload));
                        self.ended = true;
                    }
                    _ => {}
                }
            }
            if self.input.is_empty() {
                self.input = BytesMut::new();
            }
            if decoded.payload > 0 {
                return Ok(decoded.payload);
            }
            if self.ended {
                return Ok(0);
            }
            if decoded.progress {
                // A control frame or an empty one: look for more in what is buffered.
                continue;
            }
            if read >= READ_BUDGET {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Nothing decodable is buffered: only now is the layer read (see the module).
            self.input.reserve(READ_CHUNK);
            match read_into_spare(&mut self.layer, &mut self.input) {
                Ok(0) => {
                    // A socket closed without a Close frame has closed all the same.
                    self.ended = true;
                    return Ok(0);
                }
                Ok(n) => read += n,
                Err(error) => {
                    if self.input.is_empty() {
                        self.input = BytesMut::new();
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Sends up to [`MAX_WRITE`] bytes of `buf` as one binary frame.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ended {
            // The client sent Close: what the connection still writes (an answer to the packets
            // before it) is dropped, and its next read ends it as a close by the client.
            return Ok(buf.len());
        }
        if self.closing {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // Earlier frames first, so that what is held stays bounded by one frame.
        self.flush()?;
        let n = buf.len().min(MAX_WRITE);
        frames::encode(Opcode::Binary, &buf[..n], &mut self.output);
        if let Err(error) = self.flush() {
            if !would_block(&error) {
                return Err(error);
            }
        }
        Ok(n)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        // A pong joins the output only once it is empty: pings arriving while the client does
        // not read replace the one pong owed instead of piling up.
        if self.output.is_empty() {
            if let Some(payload) = self.pong.take() {
                if !self.closing {
                    frames::encode(Opcode::Pong, &payload, &mut self.output);
                }
            }
        }
        while !self.output.is_empty() {
            match self.layer.try_write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.output.split_to(n);
                    self.sent += n as u64;
                }
                Err(error) => return Err(error),
            }
        }
        self.output = BytesMut::new();
        self.layer.flush()?;
        if self.pong.is_some() {
            // Owed since the output was last busy.
            return self.flush();
        }
        Ok(())
    }

    /// Bytes handed to the layer so far, and what the layer sent: changes whenever output
    /// moved.
    pub fn bytes_sent(&self) -> u64 {
        self.sent + self.layer.bytes_sent()
    }

    pub fn has_pending_output(&self) -> bool {
        !self.output.is_empty() || self.pong.is_some() || self.layer.has_pending_output()
    }

    /// Payload waiting for room in the caller's buffer; a frame header or control frame in
    /// pieces is not input the client finished sending.
    pub fn has_buffered_input(&self) -> bool {
        (self.decoder.in_payload() && !self.input.is_empty()) || self.layer.has_buffered_input()
    }

    fn queue_close(&mut self, code: u16) {
        if !self.closing {
            self.closing = true;
            frames::encode(Opcode::Close, &code.to_be_bytes(), &mut self.output);
        }
    }

    /// Sends a Close frame and ends the layer, best effort.
    pub fn close(&mut self) {
        self.queue_close(1000);
        let _ = self.flush();
        self.layer.close();
    }
}
