//! The handshake: sets up the transport (PROXY header, TLS, WebSocket; see [`transport`]) and
//! reads CONNECT, both within `-nt`; checks CONNECT, admits the connection against `-mc`, claims
//! the client's session and answers CONNACK, turning an accepted TCP socket into a
//! [`Connection`].
//!
//! Until CONNECT is accepted a client has proved nothing, so what it can make the broker hold is
//! small and judged early: a first packet that is not CONNECT is refused from its first byte, a
//! CONNECT larger than `-mcl` from its fixed header, and the read buffer grows only as the
//! CONNECT's bytes arrive, each growth taken from the budget all handshakes share (`-mhb`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use bytes::Bytes;

use super::negotiated::Negotiated;
use super::{Connection, Will};
use crate::abuse::ClientLimits;
use crate::admission::MemoryLease;
use crate::auth::{AuthFailure, Credentials};
use crate::broker::{Admission, Broker};
use crate::cluster::handover::claims::Request;
use crate::cluster::handover::ClaimVerdict;
use crate::codec::{
    self, ConnAck, Connect, DecodeError, LastWill, Packet, Properties, PropertyValues, Protocol,
    QoS, ReasonCode,
};
use crate::config::{Config, ListenerKind};
use crate::metrics::{AuthFailureKind, Refusal};
use crate::router::Message;
use crate::session::{ClaimError, Holder, KickReason, SessionExpiry, SessionId, SessionOwner};
use crate::topic;
use crate::transport::{self, PeerIdentity, Stream, TransportSettings};

/// The read buffer a handshake starts with: room for an ordinary CONNECT (client id, short
/// credentials), so that most handshakes never grow it. Small on purpose: a buffer of ordinary
/// read size, allocated and freed around every connection's long-lived allocations, would
/// fragment the heap.
const CONNECT_READ_CHUNK: usize = 256;

/// Sets up the transport and reads CONNECT within `-nt`, checks it, and answers it.
pub(super) async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    listener: Arc<TransportSettings>,
) -> Option<(Box<Connection>, Admission)> {
    let broker = &broker;
    let id = broker.next_connection_id();
    let first_buffer = CONNECT_READ_CHUNK.min(broker.config.connect_limit());
    let Some(lease) = broker.handshake_memory.lease(first_buffer) else {
        debug!(%peer, connection = id, "pre-CONNECT memory budget (-mhb) exhausted; closing");
        broker.metrics.refused(Refusal::HandshakeMemory).inc();
        broker.metrics.connections_refused.inc();
        return None;
    };
    // What rustls and tungstenite hold while they set up, counted until CONNECT is accepted.
    let layers =
        usize::from(listener.kind.uses_tls()) + usize::from(listener.kind.uses_websocket());
    let Some(_layer_lease) = broker
        .handshake_memory
        .lease(layers * transport::LAYER_HANDSHAKE_BYTES)
    else {
        debug!(%peer, connection = id, "pre-CONNECT memory budget (-mhb) exhausted; closing");
        broker.metrics.refused(Refusal::HandshakeMemory).inc();
        broker.metrics.connections_refused.inc();
        return None;
    };
    let kind = listener.kind;
    // One deadline for everything before CONNECT is read, whatever the transport.
    let connect_timeout = broker.config.connect_timeout;
    let before_connect = async {
        let accepted = transport::accept(tcp, peer, &listener)
            .await
            .map_err(|error| {
                broker.metrics.handshake_failed(kind, error.failure).inc();
                match error.proxied_peer {
                    Some(source) => format!(
                        "{kind} handshake failed (client {source} by its PROXY header): {}",
                        error.detail
                    ),
                    None => format!("{kind} handshake failed: {}", error.detail),
                }
            })?;
        let mut handshake = Handshake {
            stream: accepted.stream,
            rbuf: BytesMut::with_capacity(first_buffer),
            lease,
            broker,
        };
        let connect = handshake.read_connect().await?;
        let proxied = accepted.proxied.then_some(accepted.peer);
        Ok::<_, String>((
            handshake,
            connect,
            accepted.peer,
            proxied,
            accepted.identity,
        ))
    };
    let (handshake, mut connect, peer, proxied, identity) = match tokio::time::timeout(
        connect_timeout,
        before_connect,
    )
    .await
    {
        Ok(Ok(done)) => done,
        Ok(Err(reason)) => {
            debug!(%peer, connection = id, listener = %kind, %reason, "closed before CONNECT completed");
            broker.metrics.connections_refused.inc();
            return None;
        }
        Err(_) => {
            debug!(%peer, connection = id, listener = %kind, "no CONNECT in time");
            broker
                .metrics
                .handshake_failed(kind, transport::HandshakeFailure::Timeout)
                .inc();
            broker.metrics.connections_refused.inc();
            return None;
        }
    };
    let mut certificate_user = false;
    if let Some(PeerIdentity { username }) = identity {
        // -tcn: the certificate names the client; CONNECT's own username is not believed.
        certificate_user = username.is_some();
        connect.username = username;
    }
    let accepted = handshake
        .accept(connect, id, peer, proxied, kind, certificate_user)
        .await;
    if accepted.is_none() {
        broker.metrics.connections_refused.inc();
    }
    accepted
}

/// A connection before its CONNECT has been accepted.
struct Handshake<'a> {
    stream: Stream,
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
            // Known before decoding, which consumes a CONNECT it finds malformed.
            let v5 = is_v5_connect(&self.rbuf);
            match codec::decode(&mut self.rbuf, None, limit) {
                Ok(Some(Packet::Connect(connect))) => return Ok(*connect),
                Ok(Some(other)) => return Err(format!("{} before CONNECT", other.name())),
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocol { name, level }) => {
                    // Answer in 3.1.1 framing, which every version of the protocol can parse
                    // (an MQTT 5 client reads 0x01 there as "unsupported protocol version").
                    self.refuse(Protocol::V311, ReasonCode::UnsupportedProtocolVersion)
                        .await;
                    return Err(format!("unsupported protocol {name:?} level {level}"));
                }
                Err(error) if v5 => {
                    // An MQTT 5 client is owed a reason (0x81 malformed, 0x82 protocol error).
                    self.refuse(Protocol::V5, error.reason_code()).await;
                    return Err(error.to_string());
                }
                Err(error) => return Err(error.to_string()),
            }
            self.make_room(header.and_then(|header| header.packet_size))?;
            match self.stream.read_buf(&mut self.rbuf).await {
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
        proxied: Option<SocketAddr>,
        listener: ListenerKind,
        certificate_user: bool,
    ) -> Option<(Box<Connection>, Admission)> {
        let protocol = connect.protocol;
        let v5 = protocol == Protocol::V5;
        if let Some(will) = &connect.will {
            if !topic::is_valid_topic_name(will.topic.as_bytes())
                || !valid_response_topic(&will.properties)
            {
                debug!(%peer, connection = id, "invalid will topic");
                if v5 {
                    self.refuse(protocol, ReasonCode::TopicNameInvalid).await;
                }
                return None;
            }
            // [MQTT-3.2.2-12]: a will the broker could not publish at its QoS is refused. (An
            // MQTT 3.1.1 client cannot be told about -mqos; its will is delivered within it.)
            if v5 && will.qos > self.broker.config.max_qos {
                debug!(%peer, connection = id, "will QoS above the maximum QoS");
                self.refuse(protocol, ReasonCode::QoSNotSupported).await;
                return None;
            }
        }
        // No enhanced authentication method is supported (yet): the client is told so rather
        // than left to guess.
        if connect.properties.authentication_method.is_some() {
            debug!(%peer, connection = id, "authentication method not supported");
            self.refuse(protocol, ReasonCode::BadAuthenticationMethod)
                .await;
            return None;
        }
        let mut assigned_client_id = false;
        if connect.client_id.is_empty() {
            // MQTT 5 lets a client with a stored session leave it to the server, which names it
            // in CONNACK; 3.1.1 only with a clean session.
            if !connect.clean_session && !v5 {
                self.refuse(protocol, ReasonCode::ClientIdentifierNotValid)
                    .await;
                return None;
            }
            connect.client_id = generated_client_id(id);
            assigned_client_id = true;
        }
        // As a ban was recorded: with the username only under access control (where the
        // banned client had proved it; see `Bans`).
        let username = connect
            .username
            .as_deref()
            .filter(|_| self.broker.access.is_some());
        let banned = self
            .broker
            .bans
            .is_banned(&connect.client_id, username, Instant::now());
        if banned {
            debug!(%peer, connection = id, client_id = %connect.client_id, "client id banned (-dt)");
            self.broker.metrics.refused(Refusal::Banned).inc();
            let code = if v5 {
                ReasonCode::ConnectionRateExceeded
            } else {
                ReasonCode::NotAuthorized
            };
            self.refuse(protocol, code).await;
            return None;
        }
        // Before the session is claimed: a client that cannot prove who it is must not take
        // over the connection that holds its client id.
        let identity = match &self.broker.access {
            Some(control) => {
                let credentials = Credentials {
                    client_id: &connect.client_id,
                    username: connect.username.as_deref(),
                    password: connect.password.as_deref(),
                    peer,
                    protocol: protocol.level(),
                    listener: listener.name(),
                    certificate_user,
                };
                let bound = control.authentication_bound(self.broker.config.connect_timeout);
                // Boxed: inline, an HTTP request's or a password check's state would grow every
                // handshake's future, with access control or without.
                let authenticating = Box::pin(control.authenticate(&credentials));
                let checked = tokio::time::timeout(bound, authenticating)
                    .await
                    .unwrap_or_else(|_| {
                        Err(AuthFailure {
                            kind: AuthFailureKind::Unavailable,
                            reason: format!("authentication took longer than {bound:?}"),
                        })
                    });
                match checked {
                    Ok(identity) => Some(identity),
                    Err(failure) => {
                        self.broker.metrics.auth_failed(failure.kind).inc();
                        debug!(%peer, connection = id, client_id = %connect.client_id, reason = %failure.reason, "authentication failed");
                        // 3.1.1 says 0x05 "not authorized" for both refusals, and 0x03 "server
                        // unavailable" when the client could not be judged (worth retrying).
                        let code = match failure.kind {
                            AuthFailureKind::BadCredentials if v5 => {
                                ReasonCode::BadUserNameOrPassword
                            }
                            AuthFailureKind::Unavailable => ReasonCode::ServerUnavailable,
                            _ => ReasonCode::NotAuthorized,
                        };
                        self.refuse(protocol, code).await;
                        return None;
                    }
                }
            }
            None => None,
        };
        let takeover = self.broker.sessions.is_connected(&connect.client_id);
        let Some(admission) = self.broker.admit(takeover) else {
            debug!(%peer, connection = id, "connection limit reached");
            self.refuse(protocol, ReasonCode::ServerBusy).await;
            return None;
        };
        let holder = match &identity {
            Some(identity) => Holder::owned_by(id, identity.username.as_deref()),
            None => Holder::new(id),
        };
        let broker = self.broker.clone();
        let owner = match &identity {
            Some(identity) => SessionOwner::User(identity.username.as_deref()),
            None => SessionOwner::Unchecked,
        };
        // In a cluster, the client id is first claimed from the other nodes: a connection
        // with it there closes, and a session it continues moves here.
        let cluster_claim = match &broker.handover {
            Some(handover) => {
                let request = Request {
                    want_session: !connect.clean_session,
                    adopt_only: false,
                    owner: identity.as_ref().map(|identity| identity.username.clone()),
                };
                let (verdict, claim) = Box::pin(handover.claim(&connect.client_id, request)).await;
                match verdict {
                    ClaimVerdict::Won => claim.map(|claim| (handover.clone(), claim)),
                    ClaimVerdict::Lost => {
                        debug!(%peer, connection = id, client_id = %connect.client_id, "a later connection with this client id on another node won");
                        self.refuse(protocol, ReasonCode::ServerUnavailable).await;
                        return None;
                    }
                    ClaimVerdict::Foreign => {
                        debug!(%peer, connection = id, client_id = %connect.client_id, "client id belongs to another user's session on another node");
                        self.broker
                            .metrics
                            .auth_failed(AuthFailureKind::NotAuthorized)
                            .inc();
                        self.refuse(protocol, ReasonCode::NotAuthorized).await;
                        return None;
                    }
                }
            }
            None => None,
        };
        let claimed = match broker
            .sessions
            .claim_as(
                &connect.client_id,
                connect.clean_session,
                owner,
                &holder,
                &broker.router,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(error @ ClaimError::OwnedByAnother(_)) => {
                debug!(%peer, connection = id, %error, "client id refused");
                self.broker
                    .metrics
                    .auth_failed(AuthFailureKind::NotAuthorized)
                    .inc();
                self.refuse(protocol, ReasonCode::NotAuthorized).await;
                return None;
            }
            Err(error) => {
                info!(%peer, connection = id, %error, "session unavailable");
                self.refuse(protocol, ReasonCode::ServerUnavailable).await;
                return None;
            }
        };
        // The delayed will of a session this clean start ended.
        if let Some(will) = claimed.will_due {
            broker.publish(will);
        }
        // A later claim from another node that came while this one was finishing found no
        // connection here to close: this one closes as soon as it is up.
        if let Some((handover, claim)) = &cluster_claim {
            if handover.taken_over_since(&connect.client_id, claim) {
                let _ = broker
                    .sessions
                    .kick(&connect.client_id, KickReason::TakenOver);
            }
        }
        let config = &broker.config;
        let broker_has_store = broker.sessions.store().is_some();
        let mut state = claimed.state;
        let mut connack = Properties::default();
        state.expiry = if v5 {
            let (expiry, told) = session_expiry(&connect.properties, config);
            if let Some(told) = told {
                connack.set().session_expiry_interval = Some(told);
            }
            expiry.into()
        } else if connect.clean_session {
            SessionExpiry::ZERO
        } else {
            config.session_expiry.into()
        };
        let keep_alive = match config.max_keep_alive {
            Some(max) if connect.keep_alive == 0 || connect.keep_alive > max => {
                if v5 {
                    connack.set().server_keep_alive = Some(max);
                }
                max
            }
            _ => connect.keep_alive,
        };
        let negotiated = v5.then(|| {
            if assigned_client_id {
                connack.set().assigned_client_identifier = Some(connect.client_id.clone());
            }
            if connect.properties.request_response_information == Some(true) {
                connack.set().response_information =
                    Some(format!("coolpy7/response/{}/", connect.client_id));
            }
            announce_limits(connack.set(), config);
            Box::new(Negotiated::new(&connect.properties, config))
        });
        debug!(
            %peer,
            connection = id,
            client_id = %connect.client_id,
            username = ?connect.username,
            protocol = protocol.level(),
            clean_session = connect.clean_session,
            keep_alive,
            session_present = claimed.session_present,
            "client connected"
        );
        let access = match (&broker.access, identity) {
            (Some(control), Some(identity)) => {
                let client_id = state.mailbox.client_id_shared();
                Some(control.authorizer(identity, client_id, Some(peer.ip())))
            }
            _ => None,
        };
        let limits = ClientLimits::new(&config.limits, Instant::now()).map(Box::new);
        let origin = state.mailbox.id();
        let will = connect
            .will
            .map(|will| Box::new(Will::from_connect(will, origin)));
        // Boxed: moved into an async fn, it would be stored twice in the task (rustc keeps the
        // argument and its binding apart), and every idle connection would pay for that.
        let mut connection = Box::new(Connection {
            stream: self.stream,
            proxied_peer: proxied.map(Box::new),
            broker,
            protocol,
            v5: negotiated,
            holder,
            state,
            will,
            keep_alive,
            last_packet: Instant::now(),
            write_blocked_since: None,
            unacknowledged_since: None,
            rbuf: self.rbuf,
            wbuf: BytesMut::new(),
            waiting: None,
            woke_subscribers: 0,
            pulled_many: false,
            input_held: false,
            busy: false,
            idle_check_at: Instant::now() + super::sleeping::SLEEP_AFTER,
            access,
            limits,
            hold_for_durable: false,
        });
        // A stored session's subscriptions were granted to whoever held the client id before.
        connection.rejudge_subscriptions();
        // Its record (and, for a session that has become persistent, all it holds) is durable
        // before CONNACK says it exists; so is the end of a session a clean start discarded
        // (queued while claiming, on whichever thread: so the CONNACK waits for everything
        // queued so far).
        connection.keep_journal();
        if broker_has_store {
            connection.hold_for_durable = true;
        }
        if let Some(v5) = &connection.v5 {
            fit_connack(&mut connack, v5.maximum_packet_size);
        }
        connection.send(&Packet::ConnAck(ConnAck {
            session_present: claimed.session_present,
            code: ReasonCode::Success,
            properties: connack,
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
            let timeout = self.broker.config.connect_timeout;
            let write = async {
                self.stream.write_all(&out).await?;
                self.stream.close();
                Ok::<_, std::io::Error>(())
            };
            let _ = tokio::time::timeout(timeout, write).await;
        }
    }
}

/// Whether `buf` starts with an MQTT 5 CONNECT's fixed header, protocol name and level.
fn is_v5_connect(buf: &[u8]) -> bool {
    let Some((&first, rest)) = buf.split_first() else {
        return false;
    };
    if first != 0x10 {
        return false;
    }
    let Some(length_bytes) = rest.iter().take(4).position(|byte| byte & 0x80 == 0) else {
        return false;
    };
    rest.get(length_bytes + 1..length_bytes + 8) == Some(&[0, 4, b'M', b'Q', b'T', b'T', 5][..])
}

/// The session expiry an MQTT 5 CONNECT asks for, capped by `-se`: the expiry (`None` =
/// never) and, when the cap changed it, the interval CONNACK must tell the client.
fn session_expiry(connect: &PropertyValues, config: &Config) -> (Option<Duration>, Option<u32>) {
    let asked = connect.session_expiry_interval.unwrap_or(0);
    // 0xFFFFFFFF: the session does not expire (§3.1.2.11.2).
    let asked_duration = (asked != u32::MAX).then(|| Duration::from_secs(u64::from(asked)));
    match (asked_duration, config.session_expiry) {
        (Some(asked), Some(cap)) if asked <= cap => (Some(asked), None),
        (None, None) => (None, None),
        (Some(asked), None) => (Some(asked), None),
        (_, Some(cap)) => {
            let told = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX - 1);
            (Some(cap), Some(told))
        }
    }
}

/// The broker's limits an MQTT 5 client learns from CONNACK (each only when it differs from
/// what the standard lets a client assume).
fn announce_limits(connack: &mut PropertyValues, config: &Config) {
    if config.max_receive < u16::MAX {
        connack.receive_maximum = Some(config.max_receive);
    }
    if config.max_qos < QoS::ExactlyOnce {
        connack.maximum_qos = Some(config.max_qos.as_u8());
    }
    if config.max_packet_size < codec::MAX_REMAINING_LENGTH + 5 {
        connack.maximum_packet_size = u32::try_from(config.max_packet_size).ok();
    }
    if config.max_topic_aliases > 0 {
        connack.topic_alias_maximum = Some(config.max_topic_aliases);
    }
    // `-wsa` / `-sia`. Announced either way: a client told 0 knows what it may not send, and
    // sending it anyway is then a Protocol Error (§3.2.2.3.11, §3.2.2.3.12; see
    // `Connection::refuse_unavailable`).
    connack.wildcard_subscription_available = Some(config.wildcard_subscriptions);
    connack.subscription_identifier_available = Some(config.subscription_identifiers);
    connack.shared_subscription_available = Some(true);
}

/// Leaves out of CONNACK's properties what it may do without, until the packet fits the
/// client's Maximum Packet Size ([MQTT-3.1.2-24]): Response Information (which the Server MAY
/// return), then the properties whose absence says the same (the "available" flags that say 1:
/// absent means available) or less (no Topic Alias Maximum: the client sets no aliases). The
/// rest is owed, an "available" flag that says 0 too: without it the client would take the
/// feature as available and be disconnected for using it.
fn fit_connack(connack: &mut Properties, limit: usize) {
    // Flags, reason code and the properties, behind the fixed header.
    let fits = |properties: &Properties| {
        properties.wire_len().is_ok_and(|len| {
            let remaining = 2 + len;
            1 + codec::properties::varint_len(remaining) + remaining <= limit
        })
    };
    if fits(connack) {
        return;
    }
    let values = connack.set();
    values.response_information = None;
    if fits(connack) {
        return;
    }
    let values = connack.set();
    for available in [
        &mut values.wildcard_subscription_available,
        &mut values.subscription_identifier_available,
        &mut values.shared_subscription_available,
    ] {
        if *available == Some(true) {
            *available = None;
        }
    }
    if fits(connack) {
        return;
    }
    connack.set().topic_alias_maximum = None;
}

/// A Response Topic, where one is given, must be a topic name (no wildcards).
pub(super) fn valid_response_topic(properties: &PropertyValues) -> bool {
    properties
        .response_topic
        .as_ref()
        .is_none_or(|topic| topic::is_valid_topic_name(topic.as_bytes()))
}

impl Will {
    /// The will of a CONNECT, as the message it will become.
    fn from_connect(will: LastWill, origin: SessionId) -> Will {
        let LastWill {
            topic,
            payload,
            qos,
            retain,
            mut properties,
        } = will;
        let (expiry, delay, carried) = if properties.is_empty() {
            (None, 0, Bytes::new())
        } else {
            let values = properties.set();
            // Decoded properties always encode again.
            let carried = values.take_message_properties().unwrap_or_default();
            (
                values.message_expiry_interval,
                values.will_delay_interval.unwrap_or(0),
                carried,
            )
        };
        let mut message = Message::new(Bytes::from(topic.into_bytes()), payload, qos, retain);
        message.properties = carried;
        message.origin = origin;
        Will {
            message,
            expiry,
            delay: Duration::from_secs(u64::from(delay)),
        }
    }
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
