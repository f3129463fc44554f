//! The handshake: reads CONNECT within `-nt`, checks it, admits the connection against `-mc`,
//! claims the client's session and answers CONNACK, turning a TCP stream into a [`Connection`].
//!
//! Until CONNECT is accepted a client has proved nothing, so what it can make the broker hold is
//! small and judged early: a first packet that is not CONNECT is refused from its first byte, a
//! CONNECT larger than `-mcl` from its fixed header, and the read buffer grows only as the
//! CONNECT's bytes arrive, each growth taken from the budget all handshakes share (`-mhb`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::Connection;
use crate::admission::MemoryLease;
use crate::broker::{Admission, Broker};
use crate::codec::{self, ConnAck, Connect, DecodeError, Packet, Properties, Protocol, ReasonCode};
use crate::metrics::Refusal;
use crate::session::Holder;
use crate::topic;

/// The read buffer a handshake starts with: room for an ordinary CONNECT (client id, short
/// credentials), so that most handshakes never grow it. Small on purpose: a buffer of ordinary
/// read size, allocated and freed around every connection's long-lived allocations, would
/// fragment the heap.
const CONNECT_READ_CHUNK: usize = 256;

/// Reads and checks CONNECT within `-nt`, and answers it.
pub(super) async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    broker: &Arc<Broker>,
) -> Option<(Box<Connection>, Admission)> {
    let id = broker.next_connection_id();
    let first_buffer = CONNECT_READ_CHUNK.min(broker.config.connect_limit());
    let Some(lease) = broker.handshake_memory.lease(first_buffer) else {
        debug!(%peer, connection = id, "pre-CONNECT memory budget (-mhb) exhausted; closing");
        broker.metrics.refused(Refusal::HandshakeMemory).inc();
        broker.metrics.connections_refused.inc();
        return None;
    };
    let _ = stream.set_nodelay(true);
    let mut handshake = Handshake {
        stream,
        rbuf: BytesMut::with_capacity(first_buffer),
        lease,
        broker,
    };
    let connect_timeout = broker.config.connect_timeout;
    let connect = match tokio::time::timeout(connect_timeout, handshake.read_connect()).await {
        Ok(Ok(connect)) => connect,
        Ok(Err(reason)) => {
            debug!(%peer, connection = id, %reason, "closed before CONNECT completed");
            broker.metrics.connections_refused.inc();
            return None;
        }
        Err(_) => {
            debug!(%peer, connection = id, "no CONNECT in time");
            broker.metrics.connections_refused.inc();
            return None;
        }
    };
    let accepted = handshake.accept(connect, id, peer).await;
    if accepted.is_none() {
        broker.metrics.connections_refused.inc();
    }
    accepted
}

/// A connection before its CONNECT has been accepted.
struct Handshake<'a> {
    stream: TcpStream,
    /// Its capacity is always what `lease` holds.
    rbuf: BytesMut,
    lease: MemoryLease<'a>,
    broker: &'a Arc<Broker>,
}

impl Handshake<'_> {
    async fn read_connect(&mut self) -> Result<Connect, String> {
        let limit = self.broker.config.connect_limit();
        loop {
            // Judged from the fixed header, before any of the body is buffered.
            let header = codec::peek_fixed_header(&self.rbuf, None).map_err(|e| e.to_string())?;
            if let Some(header) = header {
                if !header.is_connect() {
                    self.broker.metrics.refused(Refusal::NotConnect).inc();
                    return Err(format!("{} before CONNECT", header.name()));
                }
                if let Some(size) = header.packet_size.filter(|&size| size > limit) {
                    self.broker.metrics.refused(Refusal::ConnectTooLarge).inc();
                    return Err(format!(
                        "CONNECT of {size} bytes exceeds the CONNECT limit of {limit} bytes"
                    ));
                }
            }
            match codec::decode(&mut self.rbuf, None, limit) {
                Ok(Some(Packet::Connect(connect))) => return Ok(*connect),
                Ok(Some(other)) => return Err(format!("{} before CONNECT", other.name())),
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocol { name, level }) => {
                    // Answer in 3.1.1 framing, which every version of the protocol can parse.
                    self.refuse(Protocol::V311, ReasonCode::UnsupportedProtocolVersion)
                        .await;
                    return Err(format!("unsupported protocol {name:?} level {level}"));
                }
                Err(error) => return Err(error.to_string()),
            }
            self.make_room(header.and_then(|header| header.packet_size))?;
            match read_some(&self.stream, &mut self.rbuf).await {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => {
                    self.broker.metrics.bytes_received.inc_by(n as u64);
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Makes room in the read buffer for the next read: when it is full, doubles it up to the
    /// CONNECT's `packet_size`, taking the growth from the handshakes' budget. The buffer is
    /// reallocated at exactly the size leased (`BytesMut::reserve` may double past it); copying
    /// at most `-mcl` bytes a few times is cheap next to a handshake.
    fn make_room(&mut self, packet_size: Option<usize>) -> Result<(), String> {
        let (len, capacity) = (self.rbuf.len(), self.rbuf.capacity());
        if len < capacity {
            return Ok(());
        }
        // The first buffer holds a whole fixed header (5 bytes), so a full buffer has one; and
        // a whole CONNECT would have been decoded.
        let size = packet_size
            .filter(|&size| size > len)
            .ok_or_else(|| format!("read buffer full at {len} bytes before CONNECT"))?;
        let target = size.min(capacity.saturating_mul(2).max(CONNECT_READ_CHUNK));
        if !self.lease.grow(target - capacity) {
            self.broker.metrics.refused(Refusal::HandshakeMemory).inc();
            return Err(format!(
                "pre-CONNECT memory budget (-mhb) exhausted at {len} of a {size}-byte CONNECT"
            ));
        }
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.rbuf);
        self.rbuf = grown;
        Ok(())
    }

    /// Checks CONNECT, admits the connection, claims its session and sends CONNACK.
    async fn accept(
        mut self,
        mut connect: Connect,
        id: u64,
        peer: SocketAddr,
    ) -> Option<(Box<Connection>, Admission)> {
        let protocol = connect.protocol;
        if let Some(will) = &connect.will {
            if !topic::is_valid_topic_name(will.topic.as_bytes()) {
                debug!(%peer, connection = id, "invalid will topic");
                return None;
            }
        }
        if connect.client_id.is_empty() {
            if !connect.clean_session {
                self.refuse(protocol, ReasonCode::ClientIdentifierNotValid)
                    .await;
                return None;
            }
            connect.client_id = generated_client_id(id);
        }
        let takeover = self.broker.sessions.is_connected(&connect.client_id);
        let Some(admission) = self.broker.admit(takeover) else {
            debug!(%peer, connection = id, "connection limit reached");
            self.refuse(protocol, ReasonCode::ServerUnavailable).await;
            return None;
        };
        let holder = Holder::new(id);
        let broker = self.broker.clone();
        let claimed = match broker
            .sessions
            .claim(
                &connect.client_id,
                connect.clean_session,
                &holder,
                &broker.router,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                info!(%peer, connection = id, %error, "session unavailable");
                self.refuse(protocol, ReasonCode::ServerUnavailable).await;
                return None;
            }
        };
        debug!(
            %peer,
            connection = id,
            client_id = %connect.client_id,
            clean_session = connect.clean_session,
            keep_alive = connect.keep_alive,
            session_present = claimed.session_present,
            "client connected"
        );
        // Boxed: moved into an async fn, it would be stored twice in the task (rustc keeps the
        // argument and its binding apart), and every idle connection would pay for that.
        let mut connection = Box::new(Connection {
            stream: self.stream,
            broker,
            protocol,
            holder,
            state: claimed.state,
            clean_session: connect.clean_session,
            will: connect.will.map(Box::new),
            keep_alive: (connect.keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
            last_packet: Instant::now(),
            write_blocked_since: None,
            unacknowledged_since: None,
            rbuf: self.rbuf,
            wbuf: BytesMut::new(),
            congested: None,
            woke_subscribers: false,
        });
        connection.send(&Packet::ConnAck(ConnAck {
            session_present: claimed.session_present,
            code: ReasonCode::Success,
            properties: Properties::default(),
        }));
        connection.resend_in_flight();
        Some((connection, admission))
    }

    /// Sends a refusing CONNACK (best effort, bounded by the CONNECT timeout) before closing.
    async fn refuse(&mut self, protocol: Protocol, code: ReasonCode) {
        let mut out = BytesMut::new();
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        });
        if connack.encode(protocol, &mut out).is_ok() {
            let write = write_all(&self.stream, &out);
            let _ = tokio::time::timeout(self.broker.config.connect_timeout, write).await;
        }
    }
}

/// Waits until the socket is readable and reads what is there.
async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A client id for a client that sent none (allowed with clean session): unique per process
/// and unlikely to collide with ids clients choose.
fn generated_client_id(connection: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process; good enough to avoid guessable ids.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(connection);
    format!("coolpy7-{:016x}{connection:x}", hasher.finish())
}
