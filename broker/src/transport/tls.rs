//! TLS over a client's TCP socket with rustls, driven by the socket's readiness.
//!
//! [`accept`] runs the handshake: it reads the ClientHello first (rustls's `Acceptor`), so that
//! the configuration can be picked per client: ALPN "mqtt" (or "http/1.1" for WebSocket) is
//! agreed when the client offers it, and a client offering only other protocols, or none, is
//! still served, as by Mosquitto. The configuration is the one in force at that moment, so a
//! reloaded certificate reaches every handshake that starts after the reload.
//!
//! [`TlsStream`] is then a [`Layer`]: reads decrypt what the socket has (reading the socket only
//! when no plaintext is buffered), writes encrypt into rustls's buffer and send what the socket
//! takes; what it does not take is [`Layer::has_pending_output`] until a flush sends it.

use std::io::{self, Write};

use rustls::pki_types::CertificateDer;
use rustls::server::{Acceptor, ServerConnection};
use tokio::net::TcpStream;

use super::certificates::CertificateStore;
use super::{would_block, HandshakeFailure, Io, Layer, TransportError};

/// The application protocol a listener agrees to when a client offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// "mqtt" (IANA), for MQTT over TLS.
    Mqtt,
    /// "http/1.1", for WebSocket over TLS (browsers offer it).
    Http,
}

impl Alpn {
    pub fn protocol(self) -> &'static [u8] {
        match self {
            Alpn::Mqtt => b"mqtt",
            Alpn::Http => b"http/1.1",
        }
    }
}

/// An established TLS session over a TCP socket.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Whether decrypted input may be waiting in rustls (it says exactly only when records
    /// are processed; a read that filled its buffer may have left some).
    plaintext_waiting: bool,
    /// Record bytes written to the socket so far.
    sent: u64,
}

fn tls_error(detail: impl ToString) -> TransportError {
    TransportError::new(HandshakeFailure::Tls, detail.to_string())
}

fn closed(detail: impl ToString) -> TransportError {
    TransportError::new(HandshakeFailure::Closed, detail.to_string())
}

/// Runs the server side of the TLS handshake on `tcp`.
pub async fn accept(
    tcp: TcpStream,
    store: &CertificateStore,
    alpn: Alpn,
) -> Result<TlsStream, TransportError> {
    let mut io = Io {
        layer: tcp,
        blocked_on_write: false,
    };
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match acceptor.read_tls(&mut io) {
            Ok(0) => return Err(closed("connection closed before its ClientHello")),
            Ok(_) => {}
            Err(error) if would_block(&error) => {
                io.layer.readable().await.map_err(closed)?;
                continue;
            }
            Err(error) => return Err(closed(error)),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((error, mut alert)) => {
                let _ = alert.write(&mut io);
                return Err(tls_error(error));
            }
        }
    };
    let offered = accepted
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == alpn.protocol()));
    let config = store.server_config(offered.then_some(alpn));
    let tls = match accepted.into_connection(config) {
        Ok(tls) => tls,
        Err((error, mut alert)) => {
            let _ = alert.write(&mut io);
            return Err(tls_error(error));
        }
    };
    let mut stream = TlsStream {
        tcp: io.layer,
        tls,
        plaintext_waiting: false,
        sent: 0,
    };
    while stream.tls.is_handshaking() {
        match stream.flush() {
            Ok(()) => {}
            Err(error) if would_block(&error) => {
                stream.tcp.writable().await.map_err(closed)?;
                continue;
            }
            Err(error) => return Err(closed(error)),
        }
        if !stream.tls.is_handshaking() {
            break;
        }
        match stream.read_records() {
            Ok(0) => return Err(closed("connection closed during the TLS handshake")),
            Ok(_) => stream.process().map_err(tls_error)?,
            Err(error) if would_block(&error) => stream.tcp.readable().await.map_err(closed)?,
            Err(error) => return Err(closed(error)),
        }
    }
    // The handshake's last flight (TLS 1.2's Finished, TLS 1.3's session tickets) goes out
    // now: a TLS 1.2 client sends nothing before it has the Finished, and until CONNECT the
    // handshake only waits for input.
    loop {
        match stream.flush() {
            Ok(()) => return Ok(stream),
            Err(error) if would_block(&error) => stream.tcp.writable().await.map_err(closed)?,
            Err(error) => return Err(closed(error)),
        }
    }
}

impl TlsStream {
    /// The client's certificate (its own, not the chain), when it presented one.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.tls.peer_certificates().and_then(|chain| chain.first())
    }

    /// Reads records from the socket into rustls.
    fn read_records(&mut self) -> io::Result<usize> {
        self.tls.read_tls(&mut Socket(&self.tcp))
    }

    /// Decrypts the records read; on a TLS error the alert rustls queued is sent (best effort).
    fn process(&mut self) -> Result<(), rustls::Error> {
        match self.tls.process_new_packets() {
            Ok(state) => {
                self.plaintext_waiting = state.plaintext_bytes_to_read() > 0;
                Ok(())
            }
            Err(error) => {
                let _ = self.flush();
                Err(error)
            }
        }
    }
}

/// The socket as rustls reads and writes it once the session is set up: non-blocking, through
/// the runtime's readiness (`WouldBlock` clears it, so the loop waits for the next event).
struct Socket<'a>(&'a TcpStream);

impl io::Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Layer for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match io::Read::read(&mut self.tls.reader(), buf) {
                // Ok(0): the client sent close_notify.
                Ok(n) => {
                    self.plaintext_waiting = n == buf.len();
                    return Ok(n);
                }
                // A TCP close without close_notify: a close all the same (MQTT has its own
                // DISCONNECT; truncation cannot forge one).
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) if would_block(&error) => self.plaintext_waiting = false,
                Err(error) => return Err(error),
            }
            // Nothing decrypted is waiting: only now is the socket read (see the module).
            if self.read_records()? == 0 {
                // rustls has seen the end: the reader says how it ended.
                continue;
            }
            self.process()
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            // A key update or an alert may want an answer.
            if let Err(error) = self.flush() {
                if !would_block(&error) {
                    return Err(error);
                }
            }
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Earlier records first: rustls's buffer never grows past what one write adds.
        self.flush()?;
        let n = self.tls.writer().write(buf)?;
        if let Err(error) = self.flush() {
            if !would_block(&error) {
                return Err(error);
            }
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Socket(&self.tcp))? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => self.sent += n as u64,
            }
        }
        Ok(())
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn has_pending_output(&self) -> bool {
        self.tls.wants_write()
    }

    fn has_buffered_input(&self) -> bool {
        self.plaintext_waiting
    }

    fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
    }
}
