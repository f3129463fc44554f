//! One client connection: the MQTT protocol state machine over one TCP stream.
//!
//! [`serve`] runs the handshake (CONNECT within `-nt` seconds, checks, session claim, CONNACK,
//! resend of what was in flight) and then one loop that waits on whichever comes first: bytes
//! from the client, room in the socket for pending output, a delivery in the session's mailbox,
//! the keepalive or write-stall deadline, a takeover or the server's shutdown. Incoming packets
//! are decoded in batches and answered into one write buffer; deliveries are pulled from the
//! mailbox within the in-flight window and appended to the same buffer, which is written when the
//! socket can take it, so many packets share one system call. No buffer is kept while a
//! connection is idle. When the loop ends the session goes back to the registry and, unless the
//! client sent DISCONNECT, its will is published.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};
use tracing::{debug, info};

use crate::broker::{Admission, Broker};
use crate::codec::{
    self, ConnAck, Connect, ConnectReturnCode, DecodeError, LastWill, Packet, Protocol, Publish,
    QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe,
};
use crate::router::{Delivery, Message};
use crate::session::{Holder, SessionState};
use crate::topic::{self, Subscription};

/// Read at least this much at a time before CONNECT.
const CONNECT_READ_CHUNK: usize = 256;
/// Read at least this much at a time.
const READ_CHUNK: usize = 4096;
/// Stop pulling deliveries while this much output is waiting for the socket: beyond it the
/// mailbox (bounded, counted) holds the backlog, not the write buffer.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a client while this much output to it is waiting.
const READ_PAUSE: usize = 4 * WRITE_HIGH_WATER;
/// The longest a publisher waits at a time for a congested subscriber to drain.
const CONGESTION_WAIT: Duration = Duration::from_millis(50);
/// Deliveries moved from the mailbox per pull, so one busy subscriber cannot hog its worker.
const PULL_BATCH: usize = 256;
/// Payloads up to this size are copied out of the read buffer into their own allocation, so
/// that the read buffer can be reused and queued messages do not pin it.
const COPY_PAYLOAD_MAX: usize = 4096;

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT: the only close that does not publish the will.
    Disconnect,
    PeerClosed,
    KeepaliveTimeout,
    WriteTimeout,
    Protocol(String),
    Io(io::Error),
    TakenOver,
    Shutdown,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Disconnect => f.write_str("client sent DISCONNECT"),
            Close::PeerClosed => f.write_str("client closed the connection"),
            Close::KeepaliveTimeout => f.write_str("keepalive expired"),
            Close::WriteTimeout => f.write_str("client stopped reading (write timeout)"),
            Close::Protocol(reason) => write!(f, "protocol error: {reason}"),
            Close::Io(error) => write!(f, "network error: {error}"),
            Close::TakenOver => f.write_str("taken over by a new connection"),
            Close::Shutdown => f.write_str("server shutting down"),
        }
    }
}

impl Close {
    fn publishes_will(&self) -> bool {
        !matches!(self, Close::Disconnect)
    }
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    // The handshake's futures are large and needed once; boxed, they are freed before the
    // connection settles into its loop, which is all an idle connection keeps in memory.
    let accepted = Box::pin(handshake(stream, peer, &broker)).await;
    if let Some((connection, admission)) = accepted {
        connection.run(admission).await;
    }
}

/// Reads and checks CONNECT within `-nt`, and answers it.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    broker: &Arc<Broker>,
) -> Option<(Box<Connection>, Admission)> {
    let id = broker.next_connection_id();
    let _ = stream.set_nodelay(true);
    let mut handshake = Handshake {
        stream,
        rbuf: BytesMut::new(),
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
    rbuf: BytesMut,
    broker: &'a Arc<Broker>,
}

impl Handshake<'_> {
    async fn read_connect(&mut self) -> Result<Connect, String> {
        let max = self.broker.config.max_packet_size;
        loop {
            match codec::decode(&mut self.rbuf, None, max) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(other)) => return Err(format!("{} before CONNECT", other.name())),
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocol { name, level }) => {
                    // Answer in 3.1.1 framing, which every version of the protocol can parse.
                    self.refuse(
                        Protocol::V311,
                        ConnectReturnCode::UnacceptableProtocolVersion,
                    )
                    .await;
                    return Err(format!("unsupported protocol {name:?} level {level}"));
                }
                Err(error) => return Err(error.to_string()),
            }
            // A CONNECT is small: a read buffer of ordinary size, allocated and freed around
            // every connection's long-lived allocations, would fragment the heap.
            self.rbuf.reserve(CONNECT_READ_CHUNK);
            match read_some(&self.stream, &mut self.rbuf).await {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => {
                    self.broker.metrics.bytes_received.inc_by(n as u64);
                }
                Err(error) => return Err(error.to_string()),
            }
        }
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
                self.refuse(protocol, ConnectReturnCode::IdentifierRejected)
                    .await;
                return None;
            }
            connect.client_id = generated_client_id(id);
        }
        let takeover = self.broker.sessions.is_connected(&connect.client_id);
        let Some(admission) = self.broker.admit(takeover) else {
            debug!(%peer, connection = id, "connection limit reached");
            self.refuse(protocol, ConnectReturnCode::ServerUnavailable)
                .await;
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
                self.refuse(protocol, ConnectReturnCode::ServerUnavailable)
                    .await;
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
            rbuf: self.rbuf,
            wbuf: BytesMut::new(),
            congested: None,
            woke_subscribers: false,
        });
        connection.send(&Packet::ConnAck(ConnAck {
            session_present: claimed.session_present,
            code: ConnectReturnCode::Accepted,
        }));
        connection.resend_in_flight();
        Some((connection, admission))
    }

    /// Sends a refusing CONNACK (best effort, bounded by the CONNECT timeout) before closing.
    async fn refuse(&mut self, protocol: Protocol, code: ConnectReturnCode) {
        let mut out = BytesMut::new();
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
        });
        if connack.encode(protocol, &mut out).is_ok() {
            let write = write_all(&self.stream, &out);
            let _ = tokio::time::timeout(self.broker.config.connect_timeout, write).await;
        }
    }
}

/// An accepted connection with its session.
struct Connection {
    stream: TcpStream,
    broker: Arc<Broker>,
    protocol: Protocol,
    holder: Holder,
    state: Box<SessionState>,
    clean_session: bool,
    /// Boxed: most clients have none, and every connection would pay for the space.
    will: Option<Box<LastWill>>,
    /// 1.5 × the keepalive the client asked for; `None` when it asked for none.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// When the socket last refused output that was waiting; cleared by progress.
    write_blocked_since: Option<Instant>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// A subscriber's mailbox this client's messages filled past its soft limit: reading from
    /// this client waits until it drains (flow control; see [`crate::session::Mailbox`]).
    congested: Option<Arc<crate::session::Mailbox>>,
    /// Set when this client's messages were queued for subscribers since the loop last yielded.
    woke_subscribers: bool,
}

impl Connection {
    async fn run(mut self: Box<Self>, admission: Admission) {
        let mut close = self.serve().await;
        if matches!(
            close,
            Close::Io(_) | Close::TakenOver | Close::WriteTimeout | Close::Shutdown
        ) && self.sent_disconnect()
        {
            close = Close::Disconnect;
        }
        match &close {
            Close::Disconnect | Close::PeerClosed | Close::Shutdown => {
                debug!(peer = ?self.stream.peer_addr().ok(), client_id = self.state.client_id(), reason = %close, "connection closed")
            }
            _ => {
                debug!(peer = ?self.stream.peer_addr().ok(), client_id = self.state.client_id(), reason = %close, "connection dropped")
            }
        }
        // Best effort: flush what is pending (a PINGRESP, a PUBACK) without waiting for a client
        // that does not read.
        if !self.wbuf.is_empty() && !matches!(close, Close::Io(_) | Close::WriteTimeout) {
            let _ = self.write_now();
        }
        let Connection {
            broker,
            holder,
            state,
            clean_session,
            will,
            ..
        } = *self;
        broker
            .sessions
            .release(&holder, state, clean_session, &broker.router);
        if close.publishes_will() {
            if let Some(will) = will {
                let will = *will;
                let message = Message::new(
                    Bytes::from(will.topic.into_bytes()),
                    will.payload,
                    will.qos,
                    will.retain,
                );
                broker.publish(Arc::new(message));
            }
        }
        drop(admission);
    }

    async fn serve(&mut self) -> Close {
        let mailbox = self.state.mailbox.clone();
        let holder = self.holder.clone();
        let mut timer: Pin<Box<Sleep>> = Box::pin(sleep_until(self.next_deadline()));
        let mut scratch = Vec::new();
        // A shutdown that began while this connection was still in its handshake kicked nobody.
        if self.broker.is_shutting_down() {
            return Close::Shutdown;
        }
        // Packets the client sent right behind its CONNECT.
        if let Err(close) = self.handle_buffered() {
            return close;
        }
        loop {
            if std::mem::take(&mut self.woke_subscribers) {
                // Let the subscribers this batch woke write first: they are what the publish's
                // latency is measured on, and our PUBACKs and next read can wait a moment.
                tokio::task::yield_now().await;
            }
            if let Some(mailbox) = self.congested.take() {
                // Never while deliveries to this client wait: two clients flooding each other
                // would each wait for the other to drain. Bounded, so kicks and keepalive wait
                // little.
                if self.state.mailbox.is_empty() {
                    mailbox.drained(CONGESTION_WAIT).await;
                }
            }
            self.pull(&mut scratch);
            // One write per batch of input or deliveries, not one per packet.
            if !self.wbuf.is_empty() {
                if let Err(error) = self.write_now() {
                    return Close::Io(error);
                }
            }
            let writing = !self.wbuf.is_empty();
            // A client that does not read its acknowledgements is not read from either, so its
            // output cannot grow without bound (TCP pushes back on it instead).
            let reading = self.wbuf.len() < READ_PAUSE;
            let can_pull = self.can_pull();
            let deadline = self.next_deadline();
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                // One signal for takeover and shutdown keeps every idle task smaller.
                _ = holder.kicked() => {
                    return if self.broker.is_shutting_down() {
                        Close::Shutdown
                    } else {
                        Close::TakenOver
                    };
                }
                // poll_*_ready keep the waker in the socket's own slot; the readable() and
                // writable() futures would add 300 bytes to every connection's task.
                ready = poll_fn(|cx| self.stream.poll_read_ready(cx)), if reading => {
                    if let Err(error) = ready {
                        return Close::Io(error);
                    }
                    if let Err(close) = self.read() {
                        return close;
                    }
                }
                ready = poll_fn(|cx| self.stream.poll_write_ready(cx)), if writing => {
                    if let Err(error) = ready.and_then(|()| self.write_now()) {
                        return Close::Io(error);
                    }
                }
                _ = mailbox.ready(), if can_pull => {}
                _ = &mut timer => {
                    let now = Instant::now();
                    if !reading {
                        // We are not reading, so silence is ours, not the client's; a client
                        // that is gone shows up as a write stall instead.
                        self.last_packet = now;
                    }
                    if self.keep_alive.is_some_and(|limit| now >= self.last_packet + limit) {
                        return Close::KeepaliveTimeout;
                    }
                    let write_limit = self.broker.config.write_timeout;
                    if self.write_blocked_since.is_some_and(|since| now >= since + write_limit) {
                        return Close::WriteTimeout;
                    }
                    timer.as_mut().reset(self.next_deadline());
                }
            }
        }
    }

    /// Whether input not yet handled holds a DISCONNECT (it can when reading was paused, or a
    /// takeover or network error won the race): then the client asked for no will. Best effort,
    /// bounded, and without handling anything else it finds.
    fn sent_disconnect(&mut self) -> bool {
        let max = self.broker.config.max_packet_size;
        for _ in 0..16 {
            loop {
                match codec::decode(&mut self.rbuf, Some(self.protocol), max) {
                    Ok(Some(Packet::Disconnect)) => return true,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
        false
    }

    /// The earliest moment the connection must be checked: keepalive expiry or write stall.
    fn next_deadline(&self) -> Instant {
        let keep_alive = self.keep_alive.map(|limit| self.last_packet + limit);
        let write = self
            .write_blocked_since
            .map(|since| since + self.broker.config.write_timeout);
        match (keep_alive, write) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // Nothing to watch: a deadline far enough away never to fire in practice.
            (None, None) => Instant::now() + Duration::from_secs(86_400 * 365),
        }
    }

    fn can_pull(&self) -> bool {
        self.wbuf.len() < WRITE_HIGH_WATER
            && self.state.outgoing.len() < usize::from(self.broker.config.max_inflight)
    }

    /// Reads what the socket has and handles every complete packet in it.
    fn read(&mut self) -> Result<(), Close> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Err(Close::PeerClosed),
            Ok(n) => {
                self.broker.metrics.bytes_received.inc_by(n as u64);
                self.last_packet = Instant::now();
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // Readiness can be stale (the handshake read up to the CONNECT without draining
                // the socket): an idle connection must not keep the buffer reserved for it.
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                return Ok(());
            }
            Err(error) => return Err(Close::Io(error)),
        }
        self.handle_buffered()
    }

    /// Handles every complete packet in the read buffer.
    fn handle_buffered(&mut self) -> Result<(), Close> {
        let max = self.broker.config.max_packet_size;
        loop {
            match codec::decode(&mut self.rbuf, Some(self.protocol), max) {
                Ok(Some(packet)) => self.handle(packet)?,
                Ok(None) => break,
                Err(error) => return Err(Close::Protocol(error.to_string())),
            }
        }
        if self.rbuf.is_empty() {
            // Idle connections keep no read buffer.
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish)?,
            Packet::PubAck(id) => {
                self.state.outgoing.acknowledge(id);
            }
            Packet::PubRec(id) => {
                if self.state.outgoing.received(id) {
                    self.send(&Packet::PubRel(id));
                }
            }
            Packet::PubRel(id) => {
                self.state.incoming_qos2.remove(&id);
                self.send(&Packet::PubComp(id));
            }
            Packet::PubComp(id) => {
                self.state.outgoing.complete(id);
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect => return Err(Close::Disconnect),
            other => {
                return Err(Close::Protocol(format!(
                    "unexpected {} from a client",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn handle_publish(&mut self, publish: Publish) -> Result<(), Close> {
        if !topic::is_valid_topic_name(&publish.topic) {
            return Err(Close::Protocol("invalid topic name in PUBLISH".into()));
        }
        self.broker
            .metrics
            .record_received(publish.qos, publish.payload.len());
        let qos = publish.qos;
        let packet_id = publish.packet_id.unwrap_or(0);
        match qos {
            QoS::AtMostOnce => self.route(publish),
            QoS::AtLeastOnce => {
                self.route(publish);
                self.send(&Packet::PubAck(packet_id));
            }
            QoS::ExactlyOnce => {
                // Delivered on first receipt; a resend of the same id before PUBREL is only
                // acknowledged again, so it is delivered exactly once.
                if self.state.incoming_qos2.insert(packet_id) {
                    self.route(publish);
                }
                self.send(&Packet::PubRec(packet_id));
            }
        }
        Ok(())
    }

    fn route(&mut self, publish: Publish) {
        let (topic, payload) = if publish.payload.len() <= COPY_PAYLOAD_MAX {
            // One allocation for both, and the read buffer stays ours to reuse.
            let mut owned = BytesMut::with_capacity(publish.topic.len() + publish.payload.len());
            owned.extend_from_slice(&publish.topic);
            owned.extend_from_slice(&publish.payload);
            let mut owned = owned.freeze();
            let topic = owned.split_to(publish.topic.len());
            (topic, owned)
        } else {
            (publish.topic, publish.payload)
        };
        let message = Message::new(topic, payload, publish.qos, publish.retain);
        let routed = self.broker.publish(Arc::new(message));
        self.woke_subscribers |= routed.deliveries > 0;
        if self.congested.is_none() {
            self.congested = routed.congested;
        }
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) {
        let max_qos = self.broker.config.max_qos;
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for (raw, requested) in subscribe.filters {
            let Some(subscription) = Subscription::parse(&raw) else {
                return_codes.push(SubscribeReturnCode::Failure);
                continue;
            };
            let granted = requested.min(max_qos);
            self.broker
                .router
                .subscribe(&self.state.mailbox, &subscription, granted);
            // Shared subscriptions get no retained messages: they would reach one member at
            // random, which serves nobody.
            if subscription.group().is_none() {
                retained.extend(
                    self.broker
                        .router
                        .retained(subscription.filter())
                        .into_iter()
                        .map(|message| Delivery {
                            qos: message.qos.min(granted),
                            message,
                            retain: true,
                        }),
                );
            }
            self.state.subscriptions.insert(raw, granted);
            return_codes.push(SubscribeReturnCode::Granted(granted));
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            return_codes,
        }));
        // Through the mailbox, so they follow the SUBACK and respect the in-flight window.
        for delivery in retained {
            self.state.mailbox.push(delivery, &self.broker.metrics);
        }
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        for raw in &unsubscribe.filters {
            if self.state.subscriptions.remove(raw).is_some() {
                if let Some(subscription) = Subscription::parse(raw) {
                    self.broker
                        .router
                        .unsubscribe(self.state.mailbox.id(), &subscription);
                }
            }
        }
        self.send(&Packet::UnsubAck(unsubscribe.packet_id));
    }

    /// Moves deliveries from the mailbox into the write buffer, within the in-flight window.
    fn pull(&mut self, scratch: &mut Vec<Delivery>) {
        if !self.can_pull() {
            return;
        }
        let window = usize::from(self.broker.config.max_inflight) - self.state.outgoing.len();
        let budget = WRITE_HIGH_WATER - self.wbuf.len();
        let metrics = &self.broker.metrics;
        self.state
            .mailbox
            .take(PULL_BATCH, window, budget, scratch, metrics);
        if scratch.is_empty() {
            return;
        }
        self.wbuf.reserve(READ_CHUNK);
        // Counted per batch: one atomic add per QoS, not one per message.
        let mut messages = [0u64; 3];
        let mut payload_bytes = [0u64; 3];
        for delivery in scratch.drain(..) {
            let qos = delivery.qos;
            // Other references mean other subscribers: worth encoding once for all of them.
            let shared = Arc::strong_count(&delivery.message) > 1;
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                self.state.outgoing.publish(delivery.clone())
            };
            let message = &delivery.message;
            if message.write_to(
                &mut self.wbuf,
                qos,
                packet_id,
                delivery.retain,
                false,
                shared,
            ) {
                messages[qos as usize] += 1;
                payload_bytes[qos as usize] += message.payload.len() as u64;
            }
        }
        let metrics = &self.broker.metrics;
        for qos in 0..3 {
            if messages[qos] > 0 {
                metrics.messages_sent[qos].inc_by(messages[qos]);
                metrics.payload_bytes_sent[qos].inc_by(payload_bytes[qos]);
            }
        }
        if scratch.capacity() > PULL_BATCH {
            *scratch = Vec::new();
        }
    }

    /// After CONNACK on a resumed session: everything unacknowledged goes again, in order, with
    /// DUP set (PUBREL for QoS 2 messages the client had already received).
    fn resend_in_flight(&mut self) {
        let mut out = std::mem::take(&mut self.wbuf);
        for (packet_id, in_flight) in self.state.outgoing.iter() {
            match in_flight {
                crate::session::InFlight::Published(delivery) => {
                    delivery.message.write_to(
                        &mut out,
                        delivery.qos,
                        *packet_id,
                        delivery.retain,
                        true,
                        false,
                    );
                }
                crate::session::InFlight::Released => {
                    let _ = Packet::PubRel(*packet_id).encode(self.protocol, &mut out);
                }
            }
        }
        self.wbuf = out;
    }

    /// Appends a packet to the write buffer; it goes out with the next write.
    fn send(&mut self, packet: &Packet) {
        if let Err(error) = packet.encode(self.protocol, &mut self.wbuf) {
            debug!(peer = ?self.stream.peer_addr().ok(), %error, "could not encode {}", packet.name());
        }
    }

    /// Writes as much pending output as the socket takes now, without waiting.
    fn write_now(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                    self.broker.metrics.bytes_sent.inc_by(n as u64);
                    self.write_blocked_since = None;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked_since.get_or_insert_with(Instant::now);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        if self.wbuf.is_empty() {
            // Idle connections keep no write buffer.
            self.wbuf = BytesMut::new();
        }
        Ok(())
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
