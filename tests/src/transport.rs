//! The tests' own TLS and WebSocket clients, and the certificates they need: a test CA made with
//! rcgen, a server certificate for 127.0.0.1 and localhost, client certificates, all written as
//! PEM files the broker is pointed at (`-tc -tk -tca`).
//!
//! TLS is tokio-rustls and WebSocket is tokio-tungstenite: independent of the broker's own
//! transport code (rustls driven by hand, tungstenite's sans-I/O core). [`WsClientStream`] makes
//! a WebSocket look like a byte stream to [`crate::RawClient`], one binary message per write, so
//! a test decides exactly how MQTT packets fall into messages.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, Stream};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::raw::ClientStream;
use crate::TIMEOUT;

/// A directory of its own under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "coolpy7-test-{name}-{}-{}",
            std::process::id(),
            crate::unique_id("d")
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, as PEM and as rustls wants them.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("test certificate PEM")
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("test key PEM")
    }
}

/// A test CA that signs server and client certificates.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, with `name` as its CN (so a test can
    /// tell two certificates apart).
    pub fn server(&self, name: &str) -> Identity {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate with `cn` as its Common Name and `dns` as its SAN.
    pub fn client(&self, cn: &str, dns: &str) -> Identity {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(vec![dns.to_string()]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The files a TLS broker is started with: `-tc`, `-tk` and `-tca`.
pub struct TlsFiles {
    pub dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl TlsFiles {
    pub fn write(server: &Identity, client_ca: &TestCa) -> TlsFiles {
        let dir = TempDir::new("tls");
        TlsFiles {
            cert: dir.write("tls.crt", server.cert_pem.as_bytes()),
            key: dir.write("tls.key", server.key_pem.as_bytes()),
            client_ca: dir.write("ca.crt", client_ca.cert_pem.as_bytes()),
            dir,
        }
    }

    /// `-tc=… -tk=…`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            format!("-tc={}", self.cert.display()),
            format!("-tk={}", self.key.display()),
        ]
    }
}

/// rustls's ring provider for the test clients (the process may link others).
fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `ca`, presenting `identity` when given, offering `alpn`.
pub fn client_config(ca: &TestCa, identity: Option<&Identity>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain(), identity.key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A client configuration trusting `ca` that speaks TLS 1.2 only (older devices).
pub fn client_config_tls12(ca: &TestCa) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS connection to `addr` (server name 127.0.0.1), or the handshake's error.
pub async fn try_connect_tls(
    addr: SocketAddr,
    config: ClientConfig,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let connector = TlsConnector::from(Arc::new(config));
    tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The certificate the server presented on `stream`: its own, DER.
pub fn server_certificate(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .expect("the server presented a certificate")
}

/// The CN of a server certificate made by [`TestCa::server`], found by its bytes.
pub fn certificate_has_cn(der: &[u8], cn: &str) -> bool {
    der.windows(cn.len()).any(|window| window == cn.as_bytes())
}

/// A WebSocket over `stream` to path `path`, asking for `subprotocols` (none when empty).
pub async fn try_connect_ws<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    subprotocols: &str,
) -> Result<WsClientStream<S>, String> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if !subprotocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(subprotocols).map_err(|e| e.to_string())?,
        );
    }
    let (ws, response) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
            .await
            .map_err(|_| "WebSocket upgrade timed out".to_string())?
            .map_err(|e| e.to_string())?;
    let agreed = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(WsClientStream::new(ws, agreed))
}

/// Plain TCP to `addr`, for [`try_connect_ws`].
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// A WebSocket as a byte stream: each write is one binary message; reads return the binary
/// messages' payloads in order (a Close or the end of the socket is the end of the stream; a
/// text message, which MQTT does not use, is an error). The load generator uses it too.
pub struct WsClientStream<S> {
    ws: WebSocketStream<S>,
    /// The subprotocol the server agreed to.
    pub agreed: Option<String>,
    /// What is left of the message being read.
    reading: Option<(bytes::Bytes, usize)>,
}

impl<S> WsClientStream<S> {
    /// A byte stream over an established WebSocket; `agreed` is the subprotocol its upgrade
    /// agreed to.
    pub fn new(ws: WebSocketStream<S>, agreed: Option<String>) -> WsClientStream<S> {
        WsClientStream {
            ws,
            agreed,
            reading: None,
        }
    }

    /// The WebSocket itself, for what a byte stream cannot say (a text message, a ping).
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsClientStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some((message, used)) = self.reading.take() {
                let n = (message.len() - used).min(buf.remaining());
                buf.put_slice(&message[used..used + n]);
                if used + n < message.len() {
                    self.reading = Some((message, used + n));
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                // An empty message would read as the end of the stream.
                Some(Ok(Message::Binary(payload))) if !payload.is_empty() => {
                    self.reading = Some((payload, 0));
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the broker sent a WebSocket text message",
                    )))
                }
                // Pings are answered by tungstenite; pongs and empty messages carry nothing.
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        error.to_string(),
                    )))
                }
            }
        }
    }
}

fn ws_io(error: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, error.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::binary(buf.to_vec()))
            .map_err(ws_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_io)
    }
}

/// A boxed stream for [`crate::RawClient::over`].
pub fn boxed(stream: impl ClientStream + 'static) -> Box<dyn ClientStream> {
    Box::new(stream)
}

/// How a WebSocket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// The peer sent Close, with this status code if any.
    Close(Option<u16>),
    /// The stream ended without a Close frame.
    Eof,
    /// The stream failed (a reset, a protocol error).
    Error(String),
}

/// Reads (and skips) messages until the WebSocket ends, for at most `within`.
pub async fn ws_end<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    within: std::time::Duration,
) -> Option<WsEnd> {
    use futures_util::StreamExt;
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return WsEnd::Close(frame.map(|f| u16::from(f.code)))
                }
                None => return WsEnd::Eof,
                Some(Err(error)) => return WsEnd::Error(error.to_string()),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
}

/// Publishes 16 KiB QoS 0 messages on `flood/x` from `publisher` until the broker logs that
/// `client_id` (subscribed to them, not reading) was closed for its write timeout (`-t`),
/// within 20 s.
pub async fn flood_until_write_timeout(
    broker: &crate::Broker,
    publisher: &mut crate::RawClient,
    client_id: &str,
) {
    let payload = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        for _ in 0..64 {
            publisher.publish_qos0("flood/x", &payload).await;
        }
        let logs = broker.logs();
        if logs
            .lines()
            .any(|l| l.contains(client_id) && l.contains("write timeout"))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id} was not closed for its write timeout; log:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
