//! The bench's transports: plain TCP, TLS (`--tls`), WebSocket (`--ws`) and WebSocket over TLS
//! (both).
//!
//! [`Stream::Tcp`] keeps the `TcpStream` itself, so that the plain-TCP path stays what it was:
//! the publisher waits for readiness and calls `try_read_buf` / `try_write`, no boxing, no
//! virtual calls, no extra buffer. Every other transport is a [`Layered`] stream: a boxed
//! `AsyncRead + AsyncWrite` (tokio-rustls, and/or the WebSocket adapter [`WsClientStream`]) that the
//! publisher polls for reading and writing in one future ([`Stream::exchange`]), flushing what
//! the layer buffers (a TLS record, a WebSocket message) after each write.
//!
//! TLS is rustls with the ring provider, the CA of `--ca` as the only root (or no verification
//! at all with `--tls-no-verify`), the host the client connects to as the server name, ALPN from
//! `--alpn`, and no session resumption unless `--tls-resume` (so that every connection of
//! `handshakes` pays a full handshake).

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll, Waker};

use anyhow::{anyhow, bail, Context as _};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::transport::WsClientStream;

/// Whatever a layered stream is made of.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to the broker.
pub enum Stream {
    /// Plain TCP, driven by readiness.
    Tcp(TcpStream),
    /// TLS, WebSocket or both.
    Layered(Layered),
}

/// A boxed stream and whether it may still hold written bytes.
pub struct Layered {
    io: Box<dyn Io>,
    /// Set by a write, cleared by a completed flush: TLS and WebSocket keep what was written in
    /// their own buffers until flushed.
    unflushed: bool,
}

/// What one [`Stream::exchange`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exchanged {
    /// Bytes read into the buffer: `None` when nothing was ready, `Some(0)` at the end of the
    /// stream.
    pub read: Option<usize>,
    /// Bytes of `out` taken.
    pub wrote: usize,
}

impl Stream {
    /// Waits until the stream can be read, or written when `out` is not empty, then reads what
    /// is there into `rbuf` and writes what it takes of `out`. `rbuf` must have spare capacity.
    ///
    /// Cancel-safe: what was read or written is always returned, a dropped call did neither.
    pub async fn exchange(&mut self, rbuf: &mut BytesMut, out: &[u8]) -> io::Result<Exchanged> {
        match self {
            Stream::Tcp(tcp) => {
                let interest = if out.is_empty() {
                    tokio::io::Interest::READABLE
                } else {
                    tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE
                };
                let ready = tcp.ready(interest).await?;
                let mut done = Exchanged::default();
                if ready.is_readable() || ready.is_read_closed() {
                    match tcp.try_read_buf(rbuf) {
                        Ok(0) => {
                            done.read = Some(0);
                            return Ok(done);
                        }
                        Ok(n) => done.read = Some(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                if !out.is_empty() && ready.is_writable() {
                    match tcp.try_write(out) {
                        Ok(n) => done.wrote = n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(done)
            }
            Stream::Layered(layered) => poll_fn(|cx| layered.poll_exchange(cx, rbuf, out)).await,
        }
    }

    /// Writes all of `bytes` and flushes them out of any layer.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            // Nothing to flush: a subscriber's PUBACKs cost one write, as before layers.
            Stream::Tcp(tcp) => tcp.write_all(bytes).await,
            Stream::Layered(layered) => {
                layered.io.write_all(bytes).await?;
                layered.io.flush().await?;
                layered.unflushed = false;
                Ok(())
            }
        }
    }

    /// Writes what the stream takes of `bytes` (a parting DISCONNECT) and, for a layer, starts
    /// closing it (TLS close_notify, WebSocket Close), all without waiting; the stream is to be
    /// dropped next. A TLS peer that sees the socket end without close_notify logs an error
    /// (Mosquitto does, once per connection).
    pub async fn close_now(&mut self, bytes: &[u8]) {
        match self {
            Stream::Tcp(tcp) => {
                let _ = tcp.try_write(bytes);
            }
            Stream::Layered(layered) => {
                once_unbudgeted(|cx| {
                    // Unread bytes in the socket (a TLS 1.3 server's session tickets) would make
                    // the close a reset.
                    let mut sink = [0u8; 4096];
                    for _ in 0..16 {
                        let mut buf = ReadBuf::new(&mut sink);
                        match Pin::new(&mut layered.io).poll_read(cx, &mut buf) {
                            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                            _ => break,
                        }
                    }
                    if let Poll::Ready(Ok(_)) = Pin::new(&mut layered.io).poll_write(cx, bytes) {
                        let _ = Pin::new(&mut layered.io).poll_flush(cx);
                    }
                    let _ = Pin::new(&mut layered.io).poll_shutdown(cx);
                })
                .await;
            }
        }
    }

    /// Whether the broker closed the connection (or it failed), looking without waiting.
    pub async fn closed_now(&mut self) -> bool {
        let mut probe = [0u8; 64];
        match self {
            Stream::Tcp(tcp) => match tcp.try_read(&mut probe) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            },
            Stream::Layered(layered) => {
                once_unbudgeted(|cx| {
                    let mut buf = ReadBuf::new(&mut probe);
                    match Pin::new(&mut layered.io).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) => buf.filled().is_empty(),
                        Poll::Ready(Err(_)) => true,
                        Poll::Pending => false,
                    }
                })
                .await
            }
        }
    }
}

/// Runs `f` once with a waker that wakes nothing, outside tokio's cooperative budget: a loop
/// over thousands of connections in one task would otherwise see every socket after the first
/// hundred or so as not ready (the budget makes tokio's I/O answer `Pending`).
async fn once_unbudgeted<T>(f: impl FnOnce(&mut Context<'_>) -> T) -> T {
    let mut f = Some(f);
    tokio::task::unconstrained(poll_fn(move |_| {
        let mut cx = Context::from_waker(Waker::noop());
        Poll::Ready(f.take().expect("polled once")(&mut cx))
    }))
    .await
}

impl Layered {
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        rbuf: &mut BytesMut,
        out: &[u8],
    ) -> Poll<io::Result<Exchanged>> {
        let mut done = Exchanged::default();
        {
            // A fresh read future per poll: it holds nothing between polls, so dropping it
            // when it is not ready loses nothing (and it reads into the spare capacity safely).
            let read = pin!(self.io.read_buf(rbuf));
            if let Poll::Ready(read) = read.poll(cx) {
                let n = read?;
                done.read = Some(n);
                if n == 0 {
                    return Poll::Ready(Ok(done));
                }
            }
        }
        if !out.is_empty() {
            if let Poll::Ready(wrote) = Pin::new(&mut self.io).poll_write(cx, out) {
                done.wrote = wrote?;
                self.unflushed = true;
            }
        }
        if self.unflushed {
            if let Poll::Ready(flushed) = Pin::new(&mut self.io).poll_flush(cx) {
                flushed?;
                self.unflushed = false;
            }
        }
        if done.read.is_some() || done.wrote > 0 {
            Poll::Ready(Ok(done))
        } else {
            // Every poll above that was pending registered the waker.
            Poll::Pending
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Layered(layered) => Pin::new(&mut layered.io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Layered(layered) => {
                let n = ready!(Pin::new(&mut layered.io).poll_write(cx, buf))?;
                layered.unflushed = true;
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Layered(layered) => {
                ready!(Pin::new(&mut layered.io).poll_flush(cx))?;
                layered.unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Layered(layered) => Pin::new(&mut layered.io).poll_shutdown(cx),
        }
    }
}

/// The transport options, shared by every connection of a run.
#[derive(Clone, Default)]
pub struct Transport {
    /// `--tls`: the client configuration.
    pub tls: Option<Arc<ClientConfig>>,
    /// `--ws`: the path of the WebSocket endpoint.
    pub ws_path: Option<String>,
}

/// A TLS client configuration: trusting only the PEM certificates of `ca_file`, or (`None`)
/// anything the broker presents.
pub fn tls_config(
    ca_file: Option<&Path>,
    alpn: &[String],
    resume: bool,
) -> anyhow::Result<ClientConfig> {
    // ring, as the workspace's rustls is built with; named explicitly because the process may
    // link more than one provider.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match ca_file {
        Some(ca_file) => {
            let pem =
                std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.with_context(|| format!("a certificate in {}", ca_file.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a CA certificate in {}", ca_file.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no PEM certificate", ca_file.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(config)
}

/// `--tls-no-verify`: accepts any certificate and any handshake signature, so that the bench's
/// side of a handshake costs less than the broker's (verifying the chain and the handshake
/// signature are two ECDSA verifications, each dearer than the broker's one signature).
#[derive(Debug)]
struct TrustAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the run's first TLS handshake agreed: version, cipher suite, key exchange group.
static NEGOTIATED: OnceLock<String> = OnceLock::new();

/// [`NEGOTIATED`], once a TLS handshake was made.
pub fn negotiated_tls() -> Option<&'static str> {
    NEGOTIATED.get().map(String::as_str)
}

/// How to reach one broker address over the run's transport.
#[derive(Clone)]
pub struct Dialer {
    pub addr: SocketAddr,
    /// The host as given (the TLS server name and the WebSocket Host).
    host: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    ws_path: Option<String>,
    /// SO_SNDBUF asked for each socket (the kernel doubles it), so that what this side has
    /// written and the broker not yet read stays bounded; `None`: the kernel's autotuning.
    pub send_buffer: Option<u32>,
}

impl Dialer {
    pub fn new(transport: &Transport, host: &str, addr: SocketAddr) -> anyhow::Result<Dialer> {
        let tls = match &transport.tls {
            Some(config) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| anyhow!("'{host}' is not a TLS server name: {e}"))?;
                Some((TlsConnector::from(config.clone()), name))
            }
            None => None,
        };
        Ok(Dialer {
            addr,
            host: host.to_string(),
            tls,
            ws_path: transport.ws_path.clone(),
            send_buffer: None,
        })
    }

    /// The transport's layers over a connected socket: the TLS handshake, the WebSocket upgrade.
    pub async fn layer(&self, tcp: TcpStream) -> anyhow::Result<Stream> {
        Ok(match (&self.tls, &self.ws_path) {
            (None, None) => Stream::Tcp(tcp),
            (None, Some(path)) => layered(self.upgrade(tcp, "ws", path).await?),
            (Some(tls), None) => layered(self.handshake(tls, tcp).await?),
            (Some(tls), Some(path)) => {
                let tls = self.handshake(tls, tcp).await?;
                layered(self.upgrade(tls, "wss", path).await?)
            }
        })
    }

    async fn handshake(
        &self,
        (connector, name): &(TlsConnector, ServerName<'static>),
        tcp: TcpStream,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", self.addr))?;
        if NEGOTIATED.get().is_none() {
            let (_, session) = tls.get_ref();
            let version = session.protocol_version().map(|v| format!("{v:?}"));
            let suite = session
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()));
            let group = session
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()));
            let _ = NEGOTIATED.set(
                [version, suite, group]
                    .into_iter()
                    .map(|p| p.unwrap_or_else(|| "?".into()))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        Ok(tls)
    }

    async fn upgrade<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        stream: S,
        scheme: &str,
        path: &str,
    ) -> anyhow::Result<WsClientStream<S>> {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let url = format!("{scheme}://{host}:{}{path}", self.addr.port());
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("WebSocket request for {url}"))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        // tungstenite keeps a read buffer of this size per connection for its whole life.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .with_context(|| format!("WebSocket upgrade at {url}"))?;
        Ok(WsClientStream::new(ws, None))
    }
}

fn layered(io: impl Io + 'static) -> Stream {
    Stream::Layered(Layered {
        io: Box::new(io),
        unflushed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// A WebSocket client (as [`Dialer::upgrade`] makes it) and the server end, over memory.
    async fn ws_pair() -> (Stream, WebSocketStream<tokio::io::DuplexStream>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let accepting = tokio::spawn(tokio_tungstenite::accept_async(server));
        let (ws, _) = tokio_tungstenite::client_async("ws://127.0.0.1:1/mqtt", client)
            .await
            .expect("client handshake");
        let server = accepting.await.expect("join").expect("server handshake");
        (layered(WsClientStream::new(ws, None)), server)
    }

    #[tokio::test]
    async fn exchange_writes_one_flushed_message_and_reads_across_messages() {
        let (mut stream, mut server) = ws_pair().await;
        let mut rbuf = BytesMut::with_capacity(64);
        let done = stream
            .exchange(&mut rbuf, b"\xc0\x00")
            .await
            .expect("write");
        assert_eq!(done.wrote, 2);
        // Flushed by the exchange itself: the server gets it without another call.
        let got = futures_util::StreamExt::next(&mut server).await;
        assert!(matches!(got, Some(Ok(Message::Binary(b))) if b.as_ref() == b"\xc0\x00"));

        // An empty message is skipped (it would read as the end of the stream); a packet split
        // over two messages reads whole.
        for part in [&b""[..], b"\xd0", b"\x00"] {
            server
                .send(Message::binary(part.to_vec()))
                .await
                .expect("send");
        }
        while rbuf.len() < 2 {
            let done = stream.exchange(&mut rbuf, b"").await.expect("read");
            assert_ne!(done.read, Some(0), "not the end of the stream");
        }
        assert_eq!(&rbuf[..], b"\xd0\x00");

        server.close(None).await.expect("close");
        let done = stream.exchange(&mut rbuf, b"").await.expect("read");
        assert_eq!(done.read, Some(0), "a Close is the end of the stream");
    }

    #[tokio::test]
    async fn a_text_message_is_an_error() {
        let (mut stream, mut server) = ws_pair().await;
        server.send(Message::text("hi")).await.expect("send");
        let mut rbuf = BytesMut::with_capacity(64);
        let err = stream.exchange(&mut rbuf, b"").await.expect_err("text");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn tls_config_needs_a_certificate_in_the_ca_file() {
        let dir = std::env::temp_dir().join(format!("bench-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"no PEM here\n").expect("write");
        let err = tls_config(Some(&empty), &[], false).expect_err("no certificate");
        assert!(
            format!("{err:#}").contains("holds no PEM certificate"),
            "{err:#}"
        );
        let config = tls_config(None, &["mqtt".to_string()], false).expect("no-verify config");
        assert_eq!(config.alpn_protocols, vec![b"mqtt".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
