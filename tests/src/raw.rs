//! A raw MQTT client over a TCP socket: sends whatever bytes a test builds (valid or not) and
//! decodes what the broker answers with an independent decoder: [`crate::packets`] for 3.1/3.1.1
//! ([`RawClient`], the default) or [`crate::packets5`] for 5.0 ([`RawClient5`]). The socket
//! handling is shared; the [`Codec`] parameter only picks the decoder and the packet type.
//!
//! Every read is bounded by a timeout. Packets that a helper skips while it waits for a specific
//! acknowledgement are kept, in order, and returned by the next [`RawClient::recv`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use crate::packets::{self, Connect, DecodeError, Packet, Publish};
use crate::packets5;
use crate::TIMEOUT;

/// The protocol version a [`RawClient`] decodes the broker's packets as.
pub trait Codec {
    type Packet: fmt::Debug + Clone + PartialEq;
    fn decode(buf: &[u8]) -> Result<(Self::Packet, usize), DecodeError>;
    fn is_ping_resp(packet: &Self::Packet) -> bool;
}

/// MQTT 3.1 / 3.1.1: [`crate::packets`].
#[derive(Debug)]
pub struct V3;

impl Codec for V3 {
    type Packet = Packet;
    fn decode(buf: &[u8]) -> Result<(Packet, usize), DecodeError> {
        packets::decode(buf)
    }
    fn is_ping_resp(packet: &Packet) -> bool {
        *packet == Packet::PingResp
    }
}

/// MQTT 5.0: [`crate::packets5`].
#[derive(Debug)]
pub struct V5;

impl Codec for V5 {
    type Packet = packets5::Packet;
    fn decode(buf: &[u8]) -> Result<(packets5::Packet, usize), DecodeError> {
        packets5::decode(buf)
    }
    fn is_ping_resp(packet: &packets5::Packet) -> bool {
        *packet == packets5::Packet::PingResp
    }
}

/// A raw MQTT 5.0 client.
pub type RawClient5 = RawClient<V5>;

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

/// What a raw client talks over: TCP, or the test's own TLS or WebSocket client on top of it
/// (see [`crate::transport`]).
pub trait ClientStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientStream for T {}

pub struct RawClient<C: Codec = V3> {
    stream: Box<dyn ClientStream>,
    addr: SocketAddr,
    buf: Vec<u8>,
    held: VecDeque<C::Packet>,
    closed: Option<String>,
    codec: PhantomData<C>,
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
        RawClient::open_with(addr, None).await
    }

    /// Opens a TCP connection whose receive buffer is set to `recv_buffer` bytes (the kernel
    /// may round it up): a client that then does not read stalls the broker's writes quickly.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, recv_buffer: u32) -> RawClient {
        RawClient::open_with(addr, Some(recv_buffer)).await
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

    /// Sends a 3.1.1 CONNECT for `client_id` over an established stream (TLS, WebSocket) and
    /// asserts CONNACK 0.
    pub async fn connect_over(
        stream: Box<dyn ClientStream>,
        addr: SocketAddr,
        client_id: &str,
    ) -> RawClient {
        let mut client = RawClient::over(stream, addr);
        client.send(&Connect::v311(client_id).encode()).await;
        match client.recv(TIMEOUT).await {
            Packet::ConnAck { code: 0, .. } => client,
            other => panic!("expected CONNACK 0 for {client_id:?}, got {other:?}"),
        }
    }

    /// A 3.1.1 connection with the given client id, clean session and keep alive 0.
    pub async fn connect_v311(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::handshake(addr, &Connect::v311(client_id))
            .await
            .0
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Publish {
        match self.recv(timeout).await {
            Packet::Publish(publish) => publish,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
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
}

impl<C: Codec> RawClient<C> {
    async fn open_with(addr: SocketAddr, recv_buffer: Option<u32>) -> RawClient<C> {
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
        RawClient::over(Box::new(stream), addr)
    }

    /// A client over an established stream (TLS, WebSocket) to the broker at `addr`.
    pub fn over(stream: Box<dyn ClientStream>, addr: SocketAddr) -> RawClient<C> {
        RawClient {
            stream,
            addr,
            buf: Vec::new(),
            held: VecDeque::new(),
            closed: None,
            codec: PhantomData,
        }
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
    async fn next_from_socket(&mut self, deadline: Instant) -> Result<C::Packet, RecvError> {
        loop {
            match C::decode(&self.buf) {
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
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<C::Packet, RecvError> {
        if let Some(packet) = self.held.pop_front() {
            return Ok(packet);
        }
        self.next_from_socket(Instant::now() + timeout).await
    }

    /// The next packet; panics on timeout, close or an invalid packet.
    pub async fn recv(&mut self, timeout: Duration) -> C::Packet {
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
    pub async fn expect(&mut self, expected: C::Packet) {
        let got = self.recv(TIMEOUT).await;
        assert_eq!(got, expected, "unexpected packet from the broker");
    }

    /// Waits for the first packet for which `pick` is true; packets before it are held for later
    /// `recv`s, in order.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pick: impl Fn(&C::Packet) -> bool,
    ) -> C::Packet {
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
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<C::Packet> {
        let deadline = Instant::now() + timeout;
        let mut before: Vec<C::Packet> = self.held.drain(..).collect();
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

    /// PINGREQ, waiting for PINGRESP.
    pub async fn ping(&mut self) {
        self.send(&packets::pingreq()).await;
        self.wait_for("PINGRESP", TIMEOUT, C::is_ping_resp).await;
    }

    /// Sends DISCONNECT and closes the socket.
    pub async fn disconnect(mut self) {
        self.send(&packets::disconnect()).await;
        let _ = self.stream.shutdown().await;
    }
}

/// MQTT 5.0 conveniences: constructors that return the decoded CONNACK, and the usual flows
/// with reason codes and properties. Assertions name the reason codes in hex.
impl RawClient<V5> {
    /// Opens a TCP connection (no MQTT yet) that decodes the broker's packets as MQTT 5.0.
    pub async fn open(addr: SocketAddr) -> RawClient5 {
        RawClient::open_with(addr, None).await
    }

    /// Like [`RawClient5::open`] with a small receive buffer (see
    /// [`RawClient::connect_with_recv_buffer`]).
    pub async fn open_with_recv_buffer(addr: SocketAddr, recv_buffer: u32) -> RawClient5 {
        RawClient::open_with(addr, Some(recv_buffer)).await
    }

    /// Opens a connection, sends `connect` and returns the CONNACK whatever its reason code.
    pub async fn try_connect_v5(
        addr: SocketAddr,
        connect: &packets5::Connect,
    ) -> (RawClient5, packets5::ConnAck) {
        let mut client = RawClient5::open(addr).await;
        client.send(&connect.encode()).await;
        match client.recv(TIMEOUT).await {
            packets5::Packet::ConnAck(connack) => (client, connack),
            other => panic!(
                "expected CONNACK for client id {:?}, got {other:?}",
                String::from_utf8_lossy(&connect.client_id)
            ),
        }
    }

    /// Opens a connection, sends `connect` and asserts CONNACK reason 0x00; returns the CONNACK.
    pub async fn connect_v5(
        addr: SocketAddr,
        connect: &packets5::Connect,
    ) -> (RawClient5, packets5::ConnAck) {
        let (client, connack) = RawClient5::try_connect_v5(addr, connect).await;
        assert_eq!(
            connack.code,
            0,
            "CONNACK reason for client id {:?}: {connack:?}",
            String::from_utf8_lossy(&connect.client_id)
        );
        (client, connack)
    }

    /// A v5 connection with Clean Start, keep alive 0 and no properties.
    pub async fn connect_simple(addr: SocketAddr, client_id: &str) -> RawClient5 {
        RawClient5::connect_v5(addr, &packets5::Connect::new(client_id))
            .await
            .0
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self, timeout: Duration) -> packets5::Publish {
        match self.recv(timeout).await {
            packets5::Packet::Publish(publish) => publish,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    /// Sends `subscribe` and returns its SUBACK (asserting packet id and one code per filter).
    pub async fn subscribe(&mut self, subscribe: &packets5::SubscribePacket) -> packets5::SubAck {
        self.send(&subscribe.encode()).await;
        let packet = self
            .wait_for("SUBACK", TIMEOUT, |p| {
                matches!(p, packets5::Packet::SubAck(_))
            })
            .await;
        let packets5::Packet::SubAck(suback) = packet else {
            unreachable!()
        };
        assert_eq!(suback.pkid, subscribe.pkid, "SUBACK packet id");
        assert_eq!(
            suback.codes.len(),
            subscribe.filters.len(),
            "SUBACK must have one reason code per filter: {suback:?}"
        );
        suback
    }

    /// Subscribes to one filter with an options byte (a plain QoS is one) and asserts the
    /// granted QoS equals the requested one.
    pub async fn subscribe_ok(&mut self, pkid: u16, filter: &str, options: u8) {
        let suback = self
            .subscribe(&packets5::SubscribePacket::new(pkid).filter(filter, options))
            .await;
        assert_eq!(
            suback.codes,
            vec![options & 0x03],
            "SUBACK for {filter:?} with options {options:#04x}: {suback:?}"
        );
    }

    /// Acknowledges a PUBLISH from the broker: PUBACK for QoS 1; for QoS 2 PUBREC, then waits for
    /// the PUBREL (asserting reason 0x00) and sends PUBCOMP. QoS 0: nothing.
    pub async fn ack(&mut self, publish: &packets5::Publish) {
        let pkid = publish.pkid;
        match publish.qos {
            1 => self.send(&packets5::puback(pkid)).await,
            2 => {
                self.send(&packets5::pubrec(pkid)).await;
                let packet = self
                    .wait_for(
                        "PUBREL",
                        TIMEOUT,
                        |p| matches!(p, packets5::Packet::PubRel(a) if a.pkid == pkid),
                    )
                    .await;
                let packets5::Packet::PubRel(rel) = packet else {
                    unreachable!()
                };
                assert_eq!(rel.code, 0, "PUBREL reason: {rel:?}");
                self.send(&packets5::pubcomp(pkid)).await;
            }
            _ => {}
        }
    }

    /// The next PUBLISH, acknowledged (see [`RawClient5::ack`]).
    pub async fn recv_publish_acked(&mut self, timeout: Duration) -> packets5::Publish {
        let publish = self.recv_publish(timeout).await;
        self.ack(&publish).await;
        publish
    }

    /// Sends UNSUBSCRIBE and returns its UNSUBACK (asserting packet id and code count).
    pub async fn unsubscribe(&mut self, pkid: u16, filters: &[&str]) -> packets5::SubAck {
        self.send(&packets5::UnsubscribePacket::new(pkid, filters).encode())
            .await;
        let packet = self
            .wait_for("UNSUBACK", TIMEOUT, |p| {
                matches!(p, packets5::Packet::UnsubAck(_))
            })
            .await;
        let packets5::Packet::UnsubAck(unsuback) = packet else {
            unreachable!()
        };
        assert_eq!(unsuback.pkid, pkid, "UNSUBACK packet id");
        assert_eq!(
            unsuback.codes.len(),
            filters.len(),
            "UNSUBACK must have one reason code per filter: {unsuback:?}"
        );
        unsuback
    }

    /// Sends `publish`. QoS 0: returns `None`. QoS 1: waits for the PUBACK and returns it.
    /// QoS 2: waits for the PUBREC, and when its code is below 0x80 completes the flow with
    /// PUBREL / PUBCOMP (asserting PUBCOMP 0x00); returns the PUBREC.
    pub async fn publish(&mut self, publish: &packets5::PublishPacket) -> Option<packets5::Ack> {
        self.send(&publish.encode()).await;
        let pkid = publish.pkid;
        match publish.qos {
            1 => {
                let packet = self
                    .wait_for(
                        "PUBACK",
                        TIMEOUT,
                        |p| matches!(p, packets5::Packet::PubAck(a) if a.pkid == pkid),
                    )
                    .await;
                let packets5::Packet::PubAck(ack) = packet else {
                    unreachable!()
                };
                Some(ack)
            }
            2 => {
                let packet = self
                    .wait_for(
                        "PUBREC",
                        TIMEOUT,
                        |p| matches!(p, packets5::Packet::PubRec(a) if a.pkid == pkid),
                    )
                    .await;
                let packets5::Packet::PubRec(rec) = packet else {
                    unreachable!()
                };
                if rec.code < 0x80 {
                    self.send(&packets5::pubrel(pkid)).await;
                    let packet = self
                        .wait_for(
                            "PUBCOMP",
                            TIMEOUT,
                            |p| matches!(p, packets5::Packet::PubComp(a) if a.pkid == pkid),
                        )
                        .await;
                    let packets5::Packet::PubComp(comp) = packet else {
                        unreachable!()
                    };
                    assert_eq!(comp.code, 0, "PUBCOMP reason: {comp:?}");
                }
                Some(rec)
            }
            _ => None,
        }
    }

    /// Publishes at QoS 1 (without properties) and asserts PUBACK 0x00 or 0x10.
    pub async fn publish_qos1(&mut self, topic: &str, pkid: u16, payload: &[u8]) {
        let ack = self
            .publish(&packets5::PublishPacket::new(topic, 1, pkid, payload))
            .await
            .expect("QoS 1 has a PUBACK");
        assert!(
            matches!(ack.code, 0x00 | 0x10),
            "PUBACK reason for {topic:?}: {ack:?}"
        );
    }

    /// Waits for a DISCONNECT from the broker, then for the connection to close; returns the
    /// DISCONNECT. Panics if anything follows the DISCONNECT (§3.14.4: the sender closes the
    /// connection after it) or no DISCONNECT comes. Packets before it are returned too.
    pub async fn expect_disconnect_after(
        &mut self,
        timeout: Duration,
    ) -> (packets5::Reason, Vec<packets5::Packet>) {
        let mut packets = self.expect_closed(timeout).await;
        match packets.pop() {
            Some(packets5::Packet::Disconnect(reason)) => (reason, packets),
            last => panic!(
                "expected the broker to send DISCONNECT then close; the last packet before \
                 the close was {last:?} (earlier: {packets:?})"
            ),
        }
    }

    /// Asserts the broker sends DISCONNECT with reason `code` (and nothing else first, other
    /// than PUBLISHes and acknowledgements that may be in flight) and closes the connection.
    pub async fn expect_disconnect(&mut self, code: u8) -> packets5::Reason {
        let (reason, _) = self.expect_disconnect_after(TIMEOUT).await;
        assert_eq!(
            reason.code, code,
            "DISCONNECT reason: expected {code:#04x}, got {:#04x} ({reason:?})",
            reason.code
        );
        reason
    }

    /// Sends DISCONNECT with `reason` and `props`, then closes the socket.
    pub async fn disconnect_with(mut self, packet: &packets5::ReasonPacket) {
        self.send(&packet.encode()).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Starts `publishers` clients on `addr` that each send a burst of `each` QoS 1 PUBLISHes to
/// `topic` (payloads `<publisher>-<i>`) in one write and wait until every one is acknowledged
/// (panicking on anything else); the burst is what flow-control tests throw at a slow
/// subscriber.
pub fn qos1_bursts(
    addr: SocketAddr,
    topic: &'static str,
    publishers: usize,
    each: usize,
) -> tokio::task::JoinSet<()> {
    let mut bursts = tokio::task::JoinSet::new();
    for p in 0..publishers {
        bursts.spawn(async move {
            let mut publisher = RawClient::connect_v311(addr, &crate::unique_id("burst")).await;
            let burst: Vec<u8> = (0..each)
                .flat_map(|i| {
                    let payload = format!("{p}-{i}");
                    packets::publish(topic, 1, i as u16 + 1, payload.as_bytes())
                })
                .collect();
            publisher.send(&burst).await;
            let mut acked = 0;
            while acked < each {
                match publisher.recv(TIMEOUT * 4).await {
                    Packet::PubAck(_) => acked += 1,
                    other => panic!("publisher {p}: expected PUBACK, got {other:?}"),
                }
            }
            publisher.disconnect().await;
        });
    }
    bursts
}

/// Receives `n` distinct payloads at QoS 1, acknowledging each (`ack_delay` later, to play a
/// slow client); panics on anything else, on a silence of [`TIMEOUT`] or when `within`
/// has passed.
pub async fn receive_distinct_acking(
    subscriber: &mut RawClient,
    n: usize,
    ack_delay: Duration,
    within: Duration,
) -> std::collections::HashSet<Vec<u8>> {
    let mut got = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber: {} of {n} distinct payloads",
            got.len()
        );
        match subscriber.try_recv(TIMEOUT).await {
            Ok(Packet::Publish(publish)) => {
                if !ack_delay.is_zero() {
                    tokio::time::sleep(ack_delay).await;
                }
                subscriber.send(&packets::puback(publish.pkid)).await;
                got.insert(publish.payload);
            }
            Ok(other) => panic!("subscriber: expected PUBLISH, got {other:?}"),
            Err(e) => panic!("subscriber: no PUBLISH after {} of {n} ({e:?})", got.len()),
        }
    }
    got
}
