//! MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): the HTTP upgrade on `-wsp`, then binary
//! messages carrying the MQTT byte stream, with tungstenite as the protocol state machine over
//! the layer below (TCP, or TLS for WSS).
//!
//! MQTT packets may be split across messages and a message may hold several packets: the
//! messages' payloads are simply the stream, and the connection's decoder finds the packets. The
//! upgrade agrees to the subprotocol "mqtt" (or "mqttv3.1", older clients' name); a client that
//! offers subprotocols but neither is refused, as is a request for another path. Text messages
//! are refused (MQTT uses binary ones); pings are answered by tungstenite.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::{would_block, HandshakeFailure, Io, Layer, TransportError};

/// The subprotocols MQTT clients ask for, in our order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// What tungstenite reads from the socket at a time: it keeps this buffer for the connection's
/// whole life, so it is small (4 KiB, like the TCP connections' reads).
const READ_BUFFER: usize = 4096;

/// The largest message one write becomes. tungstenite's output buffer keeps the capacity of the
/// largest message it held for the connection's life, so messages are kept small; the frame
/// header this adds per 16 KiB is 4 bytes.
const MAX_WRITE: usize = 16 * 1024;

/// A WebSocket session over a layer.
pub struct WsStream<L: Layer> {
    ws: WebSocket<Io<L>>,
    /// Whether tungstenite holds output the socket did not take.
    pending: bool,
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
        .collect();
    if offered.is_empty() {
        // MQTT says a client must offer "mqtt"; some do not, and are served all the same.
        return Ok(response);
    }
    let Some(chosen) = SUBPROTOCOLS.iter().find(|ours| {
        offered
            .iter()
            .any(|theirs| theirs.eq_ignore_ascii_case(ours))
    }) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket subprotocol: offer mqtt\n",
        ));
    };
    response
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
    Ok(response)
}

/// Runs the server side of the WebSocket upgrade over `layer`.
#[allow(clippy::result_large_err)] // the callback's shape is tungstenite's
pub async fn accept<L: Layer>(
    layer: L,
    path: &str,
    max_message: usize,
) -> Result<WsStream<L>, TransportError> {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    // Every message goes out as it is written; the connection batches its packets already.
    config.write_buffer_size = 0;
    config.max_write_buffer_size = 2 * MAX_WRITE;
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    let io = Io {
        layer,
        blocked_on_write: false,
    };
    let callback = |request: &Request, response: Response| answer(path, request, response);
    let mut attempt = tungstenite::accept_hdr_with_config(io, callback, Some(config));
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
    Ok(WsStream { ws, pending: false })
}

/// tungstenite's errors as the connection sees them: a closed session is the end of the stream.
fn io_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::ConnectionAborted.into()
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<L: Layer> WsStream<L> {
    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref().layer.tcp()
    }

    /// Appends the next message's payload to `buf`; `Ok(0)` when the client closed.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(payload)) if payload.is_empty() => {}
                Ok(Message::Binary(payload)) => {
                    buf.extend_from_slice(&payload);
                    return Ok(payload.len());
                }
                Ok(Message::Text(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT uses binary ones",
                    ))
                }
                // Answered by tungstenite (the pong goes out with the next write or read).
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    // tungstenite queued the answering Close frame.
                    let _ = self.flush();
                    return Ok(0);
                }
                // A client that closes its socket without a Close frame has closed all the same.
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                ) => return Ok(0),
                Err(tungstenite::Error::Io(error))
                    if error.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(0)
                }
                Err(error) => return Err(io_error(error)),
            }
        }
    }

    /// Sends up to [`MAX_WRITE`] bytes of `buf` as one binary message.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Earlier messages first: tungstenite's buffer holds at most one unsent message.
        self.flush()?;
        let n = buf.len().min(MAX_WRITE);
        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        match self.ws.write(message) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(error)) if would_block(&error) => {}
            Err(error) => return Err(io_error(error)),
        }
        if let Err(error) = self.flush() {
            if !would_block(&error) {
                return Err(error);
            }
        }
        Ok(n)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match self.ws.flush() {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(error) => {
                let error = io_error(error);
                self.pending = would_block(&error);
                Err(error)
            }
        }
    }

    pub fn has_pending_output(&self) -> bool {
        self.pending || self.ws.get_ref().layer.has_pending_output()
    }

    pub fn has_buffered_input(&self) -> bool {
        self.ws.get_ref().layer.has_buffered_input()
    }

    /// Sends a Close frame, best effort.
    pub fn close(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.flush();
    }
}
