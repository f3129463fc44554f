//! How clients reach the broker, below MQTT: plain TCP, TLS, WebSocket and WebSocket over TLS,
//! each optionally behind a PROXY protocol header.
//!
//! A listener accepts a TCP connection; [`accept`] reads the PROXY header where the listener
//! expects one ([`proxy`]), runs the TLS handshake ([`tls`]; certificates from
//! [`certificates`], which reloads them) and the WebSocket upgrade ([`ws`]) as the listener's
//! kind asks, and hands the connection a [`Stream`]. The connection reads and writes MQTT bytes
//! through the stream's non-blocking calls and the TCP socket's readiness, as it would a plain
//! socket; only this module knows what lies between. Every layer keeps one rule that makes the
//! socket's readiness enough to drive it: a layer reads from the socket only when it has nothing
//! buffered, so input can never wait in a layer while the socket reports nothing new.

pub mod certificates;
pub mod proxy;
mod tls;
pub(crate) mod ws;

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ListenerKind;
pub use certificates::{CertificateStore, PeerIdentity};
pub use tls::TlsStream;
pub use ws::WsStream;

/// A client's connection as the MQTT connection sees it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    Ws(Box<WsStream<TcpStream>>),
    Wss(Box<WsStream<TlsStream>>),
}

/// Why a connection failed before MQTT: the `reason` label of the handshake-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No valid PROXY header on a listener that expects one.
    ProxyHeader,
    /// The TLS handshake failed (a bad certificate, no common cipher, not TLS at all).
    Tls,
    /// The WebSocket upgrade failed (wrong path, not an upgrade request, bad subprotocol).
    WebSocket,
    /// The client closed, or the network failed, before the transport was set up.
    Closed,
    /// The transport and CONNECT were not done within `-nt`.
    Timeout,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::ProxyHeader,
        HandshakeFailure::Tls,
        HandshakeFailure::WebSocket,
        HandshakeFailure::Closed,
        HandshakeFailure::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::ProxyHeader => "proxy_header",
            HandshakeFailure::Tls => "tls",
            HandshakeFailure::WebSocket => "websocket",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}

/// A transport handshake that failed, with what to log.
#[derive(Debug)]
pub struct TransportError {
    pub failure: HandshakeFailure,
    pub detail: String,
    /// The client's address from a PROXY header read before the failure.
    pub proxied_peer: Option<SocketAddr>,
}

impl TransportError {
    fn new(failure: HandshakeFailure, detail: impl Into<String>) -> TransportError {
        TransportError {
            failure,
            detail: detail.into(),
            proxied_peer: None,
        }
    }
}

/// What a listener's connections need for their transport handshake.
pub struct TransportSettings {
    pub kind: ListenerKind,
    pub proxy_protocol: bool,
    /// Present for the TLS kinds.
    pub certificates: Option<Arc<CertificateStore>>,
    /// `-wsp`.
    pub ws_path: String,
}

/// A connection with its transport set up: the stream, the client's address (from the PROXY
/// header when there is one) and the client certificate's identity.
pub struct Accepted {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// Whether `peer` came from a PROXY header (and so differs from the socket's).
    pub proxied: bool,
    pub identity: Option<PeerIdentity>,
}

/// The memory a TLS or WebSocket handshake is counted for against `-mhb`: rustls's record
/// buffer holds a whole record (16 KiB and its overhead); tungstenite reads the upgrade request
/// in 4 KiB chunks. Either may hold more for a client that sends more (a ClientHello or an
/// upgrade request of up to 64 KiB), so this is what an ordinary handshake costs, not a bound.
pub const LAYER_HANDSHAKE_BYTES: usize = 24 * 1024;

/// Sets up the transport of a TCP connection accepted by a listener of `settings.kind`.
pub async fn accept(
    mut tcp: TcpStream,
    peer: SocketAddr,
    settings: &TransportSettings,
) -> Result<Accepted, TransportError> {
    let _ = tcp.set_nodelay(true);
    let (peer, proxied) = if settings.proxy_protocol {
        match read_proxy_header(&mut tcp).await? {
            Some(source) => (source, Some(source)),
            None => (peer, None),
        }
    } else {
        (peer, None)
    };
    let (stream, identity) = set_up(tcp, settings).await.map_err(|mut error| {
        error.proxied_peer = proxied;
        error
    })?;
    Ok(Accepted {
        stream,
        peer,
        proxied: proxied.is_some(),
        identity,
    })
}

/// The TLS handshake and the WebSocket upgrade, as the listener's kind asks.
async fn set_up(
    tcp: TcpStream,
    settings: &TransportSettings,
) -> Result<(Stream, Option<PeerIdentity>), TransportError> {
    let store = || {
        settings
            .certificates
            .as_ref()
            .ok_or_else(|| TransportError::new(HandshakeFailure::Tls, "no certificates loaded"))
    };
    // The TLS and WebSocket handshakes' futures are boxed: inline, they would make every
    // plain TCP handshake's future (boxed per connection, see `connection::serve`) kilobytes
    // larger.
    let (stream, identity) = match settings.kind {
        ListenerKind::Tcp => (Stream::Tcp(tcp), None),
        ListenerKind::Tls => {
            let store = store()?;
            let tls = Box::pin(tls::accept(tcp, store, tls::Alpn::Mqtt)).await?;
            let identity = store.identity(tls.peer_certificate());
            (Stream::Tls(Box::new(tls)), identity)
        }
        ListenerKind::Ws => {
            let ws = Box::pin(ws::accept(tcp, &settings.ws_path)).await?;
            (Stream::Ws(Box::new(ws)), None)
        }
        ListenerKind::Wss => {
            let store = store()?;
            let tls = Box::pin(tls::accept(tcp, store, tls::Alpn::Http)).await?;
            let identity = store.identity(tls.peer_certificate());
            let ws = Box::pin(ws::accept(tls, &settings.ws_path)).await?;
            (Stream::Wss(Box::new(ws)), identity)
        }
    };
    Ok((stream, identity))
}

/// Reads the PROXY header, and no byte more: it is peeked until whole, so the bytes behind it
/// (a TLS ClientHello, a WebSocket upgrade, a CONNECT) stay in the socket for the next layer.
/// `None` for a LOCAL header (a health check of the balancer itself).
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, TransportError> {
    let mut buf = vec![0u8; proxy::V2_MAX];
    // A header comes in one segment in practice; a client dribbling it is given short
    // pauses, all within the handshake's `-nt` deadline.
    let mut pause = Duration::from_millis(1);
    let mut seen = 0;
    loop {
        let n = tcp
            .peek(&mut buf)
            .await
            .map_err(|e| TransportError::new(HandshakeFailure::Closed, e.to_string()))?;
        if n == 0 {
            return Err(TransportError::new(
                HandshakeFailure::Closed,
                "connection closed before its PROXY header",
            ));
        }
        match proxy::parse(&buf[..n]) {
            Ok(proxy::Parsed::Complete { header, len }) => {
                tcp.read_exact(&mut buf[..len])
                    .await
                    .map_err(|e| TransportError::new(HandshakeFailure::Closed, e.to_string()))?;
                return Ok(match header {
                    proxy::Header::Proxied { source, .. } => Some(source),
                    proxy::Header::Local => None,
                });
            }
            Ok(proxy::Parsed::Incomplete) if n == buf.len() => {
                return Err(TransportError::new(
                    HandshakeFailure::ProxyHeader,
                    "PROXY header longer than its maximum",
                ))
            }
            Ok(proxy::Parsed::Incomplete) => {
                if n > seen {
                    seen = n;
                    pause = Duration::from_millis(1);
                } else {
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                tokio::time::sleep(pause).await;
            }
            Err(error) => {
                return Err(TransportError::new(
                    HandshakeFailure::ProxyHeader,
                    error.to_string(),
                ))
            }
        }
    }
}

/// What a transport layer offers the layer above it: non-blocking reads and writes over the
/// TCP socket at the bottom, whose readiness drives them all.
pub trait Layer {
    fn tcp(&self) -> &TcpStream;
    /// Reads what is available; `Ok(0)` at the end of the stream, `WouldBlock` when nothing is.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Takes what it can of `buf`; `WouldBlock` when it can take nothing now.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Writes out what the layer has taken but not yet sent; `WouldBlock` while some is left.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether taken output is still waiting to be sent.
    fn has_pending_output(&self) -> bool;
    /// Bytes this layer has written to the socket so far (0 for the socket itself, whose
    /// writes say what they wrote): a change is progress for the write timeout.
    fn bytes_sent(&self) -> u64 {
        0
    }
    /// Whether input has been read from the socket and not yet handed up.
    fn has_buffered_input(&self) -> bool;
    /// Ends the layer politely (TLS close_notify), best effort.
    fn close(&mut self) {}
}

impl Layer for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn has_pending_output(&self) -> bool {
        false
    }
    fn has_buffered_input(&self) -> bool {
        false
    }
}

/// A [`Layer`] as `std::io` sees it, for the state machines (rustls, tungstenite) that read and
/// write through `Read` and `Write`. Remembers which direction last would have blocked, so that
/// a handshake in progress waits for the right readiness.
struct Io<L> {
    layer: L,
    blocked_on_write: bool,
}

impl<L: Layer> io::Read for Io<L> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.layer.try_read(buf);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked_on_write = false;
        }
        result
    }
}

impl<L: Layer> io::Write for Io<L> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.layer.try_write(buf);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked_on_write = true;
        }
        result
    }
    fn flush(&mut self) -> io::Result<()> {
        let result = self.layer.flush();
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked_on_write = true;
        }
        result
    }
}

fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

/// The most one read through a layer asks for: a TLS record's plaintext. The slice it reads
/// into is zeroed first, so a large buffer (a packet of megabytes in progress) is not zeroed
/// whole for every record.
const LAYER_READ_MAX: usize = 16 * 1024;

/// Reads into `buf`'s spare capacity through a layer that takes a `&mut [u8]`.
fn read_into_spare(layer: &mut impl Layer, buf: &mut BytesMut) -> io::Result<usize> {
    let start = buf.len();
    let end = buf.capacity().min(start + LAYER_READ_MAX);
    buf.resize(end, 0);
    let result = layer.try_read(&mut buf[start..]);
    buf.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}

/// Reads what `tcp` has into `buf`'s spare room. A read that leaves room unfilled has drained
/// the socket, so the runtime is told it is no longer readable, as a `WouldBlock` would: without
/// that, every batch a client sends costs a second `recv` that only finds the socket empty (a
/// third of the broker's reads under load). The runtime clears readiness only if no new event
/// arrived since it reported it, so data that came in meanwhile is still announced.
fn read_tcp(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut short_read = None;
    let result = tcp.try_io(tokio::io::Interest::READABLE, || {
        let n = tcp.try_read_buf(buf)?;
        if n > 0 && n < room {
            short_read = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short_read {
        Some(n) => Ok(n),
        None => result,
    }
}

impl Stream {
    /// The address of the socket's other end (the balancer's, behind a PROXY header).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.tcp(),
            Stream::Ws(ws) => ws.tcp(),
            Stream::Wss(ws) => ws.tcp(),
        }
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Appends what is available to `buf`; `Ok(0)` at the end of the stream, `WouldBlock` when
    /// nothing is. A WebSocket message is appended whole (its size is bounded by the listener).
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => read_tcp(tcp, buf),
            Stream::Tls(tls) => read_into_spare(tls.as_mut(), buf),
            Stream::Ws(ws) => ws.try_read_buf(buf),
            Stream::Wss(ws) => ws.try_read_buf(buf),
        }
    }

    /// Takes what it can of `buf`; `WouldBlock` when it can take nothing now. What TLS and
    /// WebSocket take may still wait in them: see [`Stream::has_pending_output`].
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_write(buf),
            Stream::Tls(tls) => tls.try_write(buf),
            Stream::Ws(ws) => ws.try_write(buf),
            Stream::Wss(ws) => ws.try_write(buf),
        }
    }

    /// Writes out what TLS or WebSocket took and could not send yet; `WouldBlock` while some is
    /// left.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) => Ok(()),
            Stream::Tls(tls) => tls.flush(),
            Stream::Ws(ws) => ws.flush(),
            Stream::Wss(ws) => ws.flush(),
        }
    }

    /// Grows whenever a TLS or WebSocket layer moved output the connection wrote earlier: a
    /// client that reads slowly makes progress even while its writes would block.
    pub fn bytes_sent(&self) -> u64 {
        match self {
            Stream::Tcp(_) => 0,
            Stream::Tls(tls) => tls.bytes_sent(),
            Stream::Ws(ws) => ws.bytes_sent(),
            Stream::Wss(ws) => ws.bytes_sent(),
        }
    }

    pub fn has_pending_output(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(tls) => tls.has_pending_output(),
            Stream::Ws(ws) => ws.has_pending_output(),
            Stream::Wss(ws) => ws.has_pending_output(),
        }
    }

    /// Whether the client has sent bytes not handed to MQTT yet, asking the socket itself rather
    /// than the runtime's readiness flags (which lag after the process was paused).
    pub fn input_waiting(&self) -> bool {
        let buffered = match self {
            Stream::Tcp(_) => false,
            Stream::Tls(tls) => tls.has_buffered_input(),
            Stream::Ws(ws) => ws.has_buffered_input(),
            Stream::Wss(ws) => ws.has_buffered_input(),
        };
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        buffered || matches!(SockRef::from(self.tcp()).peek(&mut probe), Ok(n) if n > 0)
    }

    /// Offers `buf` to the socket with one direct system call, past the runtime's readiness
    /// flags (see [`Stream::input_waiting`]). Over TLS and WebSocket, whose records go out
    /// through the runtime, it is an ordinary write.
    pub fn send_bypassing_readiness(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => SockRef::from(&*tcp).send(buf),
            other => {
                let n = other.try_write(buf)?;
                match other.flush() {
                    Err(error) if !would_block(&error) => Err(error),
                    _ => Ok(n),
                }
            }
        }
    }

    /// Waits until some input is available and appends it to `buf` (see
    /// [`Stream::try_read_buf`]).
    /// What the layers owe the client meanwhile (a WebSocket pong) is sent as the socket
    /// takes it.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.try_read_buf(buf) {
                Err(error) if would_block(&error) => {
                    if self.has_pending_output() {
                        match self.flush() {
                            Err(error) if !would_block(&error) => return Err(error),
                            _ => {}
                        }
                    }
                    std::future::poll_fn(|cx| self.poll_read_ready(cx)).await?
                }
                Ok(0) => {
                    // The end: what the layer owes in answer (a WebSocket Close) goes if it can.
                    let _ = self.flush();
                    return Ok(0);
                }
                result => return result,
            }
        }
    }

    /// Writes all of `bytes` and what the layers hold, waiting for the socket as needed.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        loop {
            let result = if bytes.is_empty() {
                match self.flush() {
                    Ok(()) => return Ok(()),
                    Err(error) => Err(error),
                }
            } else {
                self.try_write(bytes).map(|n| bytes = &bytes[n..])
            };
            match result {
                Ok(()) => {}
                Err(error) if would_block(&error) => {
                    std::future::poll_fn(|cx| self.poll_write_ready(cx)).await?
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Ends the transport politely where it has a way to (TLS close_notify, a WebSocket Close
    /// frame), without waiting for a client that does not read.
    pub fn close(&mut self) {
        match self {
            Stream::Tcp(_) => {}
            Stream::Tls(tls) => Layer::close(tls.as_mut()),
            Stream::Ws(ws) => ws.close(),
            Stream::Wss(ws) => ws.close(),
        }
    }
}
