//! A raw MQTT client over a TCP socket: sends whatever bytes a test builds (valid or not) and
//! decodes what the broker answers with the independent decoder of [`crate::packets`].
//!
//! Every read is bounded by a timeout. Packets that a helper skips while it waits for a specific
//! acknowledgement are kept, in order, and returned by the next [`RawClient::recv`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::packets::{self, Connect, DecodeError, Packet, Publish};
use crate::TIMEOUT;

/// Why [`RawClient::try_recv`] returned no packet.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing (complete) arrived in time; the connection is still open.
    Timeout,
    /// The broker closed the connection (EOF, or a reset).
    Closed(String),
    /// The broker sent bytes that are not a valid server-to-client packet.
    Invalid(String),
}

pub struct RawClient {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
    held: VecDeque<Packet>,
    closed: Option<String>,
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

impl RawClient {
    /// Opens a TCP connection (no MQTT yet).
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::connect_with(addr, None).await
    }

    /// Opens a TCP connection whose receive buffer is set to `recv_buffer` bytes (the kernel
    /// may round it up): a client that then does not read stalls the broker's writes quickly.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, recv_buffer: u32) -> RawClient {
        RawClient::connect_with(addr, Some(recv_buffer)).await
    }

    async fn connect_with(addr: SocketAddr, recv_buffer: Option<u32>) -> RawClient {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = match tokio::time::timeout(TIMEOUT, socket.connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => panic!("TCP connect to broker at {addr} failed: {e}"),
            Err(_) => panic!("TCP connect to broker at {addr} timed out"),
        };
        stream.set_nodelay(true).expect("set_nodelay");
        RawClient {
            stream,
            addr,
            buf: Vec::new(),
            held: VecDeque::new(),
            closed: None,
        }
    }

    /// Opens a connection, sends `connect` and asserts a CONNACK with return code 0.
    /// Returns the client and the CONNACK's session-present flag.
    pub async fn handshake(addr: SocketAddr, connect: &Connect) -> (RawClient, bool) {
        let mut client = RawClient::connect(addr).await;
        client.send(&connect.encode()).await;
        match client.recv(TIMEOUT).await {
            Packet::ConnAck {
                session_present,
                code: 0,
            } => (client, session_present),
            other => panic!(
                "expected CONNACK 0 for client id {:?}, got {other:?}",
                String::from_utf8_lossy(&connect.client_id)
            ),
        }
    }

    /// A 3.1.1 connection with the given client id, clean session and keep alive 0.
    pub async fn connect_v311(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::handshake(addr, &Connect::v311(client_id))
            .await
            .0
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes `bytes`; panics if the socket refuses them.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes).await {
            panic!("writing {} bytes to the broker failed: {e}", bytes.len());
        }
    }

    /// Writes `bytes`, reporting (not panicking on) a socket error: for tests in which the broker
    /// may legitimately close the connection while the client is still writing.
    pub async fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// Reads at most once more from the socket before `deadline`.
    async fn fill(&mut self, deadline: Instant) -> Result<(), RecvError> {
        if let Some(reason) = &self.closed {
            return Err(RecvError::Closed(reason.clone()));
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(RecvError::Timeout),
            Ok(Ok(0)) => {
                self.closed = Some("EOF".into());
                Err(RecvError::Closed("EOF".into()))
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) if is_reset(&e) => {
                let reason = format!("reset: {e}");
                self.closed = Some(reason.clone());
                Err(RecvError::Closed(reason))
            }
            Ok(Err(e)) => {
                let reason = format!("read error: {e}");
                self.closed = Some(reason.clone());
                Err(RecvError::Closed(reason))
            }
        }
    }

    /// The next packet from the socket itself (ignoring held packets).
    async fn next_from_socket(&mut self, deadline: Instant) -> Result<Packet, RecvError> {
        loop {
            match packets::decode(&self.buf) {
                Ok((packet, used)) => {
                    self.buf.drain(..used);
                    return Ok(packet);
                }
                Err(DecodeError::Invalid(msg)) => return Err(RecvError::Invalid(msg)),
                Err(DecodeError::Incomplete) => {}
            }
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(RecvError::Closed(reason)) if !self.buf.is_empty() => {
                    return Err(RecvError::Closed(format!(
                        "{reason}, after a partial packet {:02x?}",
                        self.buf
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next packet (held ones first), or why there is none within `timeout`.
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        if let Some(packet) = self.held.pop_front() {
            return Ok(packet);
        }
        self.next_from_socket(Instant::now() + timeout).await
    }

    /// The next packet; panics on timeout, close or an invalid packet.
    pub async fn recv(&mut self, timeout: Duration) -> Packet {
        match self.try_recv(timeout).await {
            Ok(packet) => packet,
            Err(RecvError::Timeout) => panic!("no packet from the broker within {timeout:?}"),
            Err(RecvError::Closed(reason)) => {
                panic!("broker closed the connection while a packet was expected ({reason})")
            }
            Err(RecvError::Invalid(msg)) => panic!("broker sent an invalid packet: {msg}"),
        }
    }

    /// Receives the next packet and asserts it equals `expected`.
    pub async fn expect(&mut self, expected: Packet) {
        let got = self.recv(TIMEOUT).await;
        assert_eq!(got, expected, "unexpected packet from the broker");
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Publish {
        match self.recv(timeout).await {
            Packet::Publish(publish) => publish,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    /// Waits for the first packet for which `pick` is true; packets before it are held for later
    /// `recv`s, in order.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pick: impl Fn(&Packet) -> bool,
    ) -> Packet {
        let deadline = Instant::now() + timeout;
        if let Some(index) = self.held.iter().position(&pick) {
            return self.held.remove(index).expect("index is in range");
        }
        loop {
            match self.next_from_socket(deadline).await {
                Ok(packet) if pick(&packet) => return packet,
                Ok(packet) => self.held.push_back(packet),
                Err(RecvError::Timeout) => panic!(
                    "no {what} from the broker within {timeout:?} (meanwhile got {:?})",
                    self.held
                ),
                Err(RecvError::Closed(reason)) => panic!(
                    "broker closed the connection while waiting for {what} ({reason}; \
                     meanwhile got {:?})",
                    self.held
                ),
                Err(RecvError::Invalid(msg)) => panic!("broker sent an invalid packet: {msg}"),
            }
        }
    }

    /// Asserts that no packet arrives within `quiet` and the connection stays open.
    pub async fn expect_no_packet(&mut self, quiet: Duration) {
        match self.try_recv(quiet).await {
            Err(RecvError::Timeout) => {}
            Ok(packet) => panic!("expected no packet for {quiet:?}, got {packet:?}"),
            Err(RecvError::Closed(reason)) => {
                panic!("expected the connection to stay open for {quiet:?}, it closed ({reason})")
            }
            Err(RecvError::Invalid(msg)) => panic!("broker sent an invalid packet: {msg}"),
        }
    }

    /// Asserts the connection stays open for `duration`; packets arriving meanwhile are held.
    pub async fn assert_open_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        loop {
            match self.next_from_socket(deadline).await {
                Ok(packet) => self.held.push_back(packet),
                Err(RecvError::Timeout) => return,
                Err(RecvError::Closed(reason)) => panic!(
                    "expected the connection to stay open for {duration:?}, it closed ({reason})"
                ),
                Err(RecvError::Invalid(msg)) => panic!("broker sent an invalid packet: {msg}"),
            }
        }
    }

    /// Asserts the broker closes the connection within `timeout`. Returns the packets that
    /// arrived before the close (held ones included), so tests can check there were none or
    /// which ones.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + timeout;
        let mut before: Vec<Packet> = self.held.drain(..).collect();
        loop {
            match self.next_from_socket(deadline).await {
                Ok(packet) => before.push(packet),
                Err(RecvError::Closed(_)) => return before,
                Err(RecvError::Timeout) => panic!(
                    "expected the broker to close the connection within {timeout:?}, it is \
                     still open (packets received meanwhile: {before:?})"
                ),
                // Whatever follows garbage from the broker, it is not a clean close.
                Err(RecvError::Invalid(msg)) => panic!(
                    "expected a close, the broker sent an invalid packet: {msg} (before: {before:?})"
                ),
            }
        }
    }

    /// Like [`RawClient::expect_closed`] but also asserts nothing at all was received first.
    pub async fn expect_closed_silently(&mut self, timeout: Duration) {
        let before = self.expect_closed(timeout).await;
        assert!(
            before.is_empty(),
            "expected the broker to close the connection without sending anything, got {before:?}"
        );
    }

    /// Sends SUBSCRIBE and returns the SUBACK's return codes (asserting its packet id).
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&packets::subscribe(pkid, filters)).await;
        self.wait_suback(pkid, filters.len()).await
    }

    /// Waits for the SUBACK of `pkid` and checks it has one code per filter.
    pub async fn wait_suback(&mut self, pkid: u16, filters: usize) -> Vec<u8> {
        let packet = self
            .wait_for("SUBACK", TIMEOUT, |p| matches!(p, Packet::SubAck { .. }))
            .await;
        let Packet::SubAck { pkid: got, codes } = packet else {
            unreachable!()
        };
        assert_eq!(got, pkid, "SUBACK packet id must match the SUBSCRIBE's");
        assert_eq!(
            codes.len(),
            filters,
            "SUBACK must have one return code per topic filter: {codes:?}"
        );
        codes
    }

    pub async fn unsubscribe(&mut self, pkid: u16, filters: &[&str]) {
        self.send(&packets::unsubscribe(pkid, filters)).await;
        let packet = self
            .wait_for("UNSUBACK", TIMEOUT, |p| matches!(p, Packet::UnsubAck(_)))
            .await;
        assert_eq!(packet, Packet::UnsubAck(pkid), "UNSUBACK packet id");
    }

    pub async fn publish_qos0(&mut self, topic: &str, payload: &[u8]) {
        self.send(&packets::publish(topic, 0, 0, payload)).await;
    }

    /// QoS 1 PUBLISH, waiting for its PUBACK.
    pub async fn publish_qos1(&mut self, topic: &str, pkid: u16, payload: &[u8]) {
        self.send(&packets::publish(topic, 1, pkid, payload)).await;
        let packet = self
            .wait_for("PUBACK", TIMEOUT, |p| matches!(p, Packet::PubAck(_)))
            .await;
        assert_eq!(packet, Packet::PubAck(pkid), "PUBACK packet id");
    }

    /// The whole QoS 2 flow: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    pub async fn publish_qos2(&mut self, topic: &str, pkid: u16, payload: &[u8]) {
        self.send(&packets::publish(topic, 2, pkid, payload)).await;
        let packet = self
            .wait_for("PUBREC", TIMEOUT, |p| matches!(p, Packet::PubRec(_)))
            .await;
        assert_eq!(packet, Packet::PubRec(pkid), "PUBREC packet id");
        self.send(&packets::pubrel(pkid)).await;
        let packet = self
            .wait_for("PUBCOMP", TIMEOUT, |p| matches!(p, Packet::PubComp(_)))
            .await;
        assert_eq!(packet, Packet::PubComp(pkid), "PUBCOMP packet id");
    }

    /// PINGREQ, waiting for PINGRESP.
    pub async fn ping(&mut self) {
        self.send(&packets::pingreq()).await;
        self.wait_for("PINGRESP", TIMEOUT, |p| *p == Packet::PingResp)
            .await;
    }

    /// Sends DISCONNECT and closes the socket.
    pub async fn disconnect(mut self) {
        self.send(&packets::disconnect()).await;
        let _ = self.stream.shutdown().await;
    }
}
