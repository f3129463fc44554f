//! Broker-wide counters and gauges, exposed in Prometheus text on `/metrics` and as JSON on `/sys`.
//!
//! One [`Metrics`] is created at start and shared (`Arc`) by the listener, the connections and the
//! router. Series that the publish path touches are resolved once here (one handle per QoS and per
//! drop reason) so that counting a message is an atomic add, never a label lookup; connections
//! add their per-batch totals rather than one increment per message.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::codec::QoS;
use crate::config::ListenerKind;
use crate::transport::HandshakeFailure;

/// Why a message did not reach a subscriber (or the broker refused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's queue was full; the oldest message was dropped to make room.
    QueueFull,
    /// A QoS 0 message for a persistent session whose client is offline.
    OfflineQos0,
    /// A PUBLISH that no online subscriber (nor persistent session) could take.
    NoSubscribers,
    /// Its MQTT 5 Message Expiry Interval passed while it waited.
    Expired,
    /// Larger than the Maximum Packet Size the receiving MQTT 5 client allows.
    PacketTooLarge,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::OfflineQos0,
        DropReason::NoSubscribers,
        DropReason::Expired,
        DropReason::PacketTooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::OfflineQos0 => "offline_qos0",
            DropReason::NoSubscribers => "no_subscribers",
            DropReason::Expired => "expired",
            DropReason::PacketTooLarge => "packet_too_large",
        }
    }
}

/// Why authentication failed (`auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailureKind {
    /// Wrong or missing credentials: a bad token, password or user.
    BadCredentials,
    /// The credentials are fine but the client may not connect (the HTTP service said deny).
    NotAuthorized,
    /// The authenticating service did not answer, or answered nonsense.
    Unavailable,
}

impl AuthFailureKind {
    pub const ALL: [AuthFailureKind; 3] = [
        AuthFailureKind::BadCredentials,
        AuthFailureKind::NotAuthorized,
        AuthFailureKind::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailureKind::BadCredentials => "bad_credentials",
            AuthFailureKind::NotAuthorized => "not_authorized",
            AuthFailureKind::Unavailable => "unavailable",
        }
    }
}

/// What the authorization rules refused (`authorization_denied_total{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Publish,
    Subscribe,
    Will,
    /// A message (live or retained) a subscriber may not read, dropped before it was sent.
    Delivery,
    /// A subscription that reloaded rules no longer allow, removed.
    Revoked,
}

impl Denied {
    pub const ALL: [Denied; 5] = [
        Denied::Publish,
        Denied::Subscribe,
        Denied::Will,
        Denied::Delivery,
        Denied::Revoked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Denied::Publish => "publish",
            Denied::Subscribe => "subscribe",
            Denied::Will => "will",
            Denied::Delivery => "delivery",
            Denied::Revoked => "revoked",
        }
    }
}

/// Why a connection was refused before it could hold a session or an HTTP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first packet was not CONNECT (judged from its fixed header).
    NotConnect,
    /// The CONNECT announced more than `-mcl` (or `-mpl`) bytes.
    ConnectTooLarge,
    /// The read buffers of handshakes in progress would have exceeded `-mhb`.
    HandshakeMemory,
    /// Every MQTT socket the fd limit allows was open: closed when accepted.
    MqttSockets,
    /// `-mc` connections had completed CONNECT: CONNACK 0x03.
    MaxConnections,
    /// `-hmc` HTTP connections were open: the oldest was closed to make room.
    HttpConnections,
    /// The listener was over its `-cr` connection rate: closed when accepted.
    ConnectionRate,
    /// The client id was banned (`-dt`) after breaking `-pl` or `-psl`: CONNACK 0x05 / 0x9F.
    Banned,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::NotConnect,
        Refusal::ConnectTooLarge,
        Refusal::HandshakeMemory,
        Refusal::MqttSockets,
        Refusal::MaxConnections,
        Refusal::HttpConnections,
        Refusal::ConnectionRate,
        Refusal::Banned,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotConnect => "not_connect",
            Refusal::ConnectTooLarge => "connect_too_large",
            Refusal::HandshakeMemory => "handshake_memory",
            Refusal::MqttSockets => "mqtt_sockets",
            Refusal::MaxConnections => "max_connections",
            Refusal::HttpConnections => "http_connections",
            Refusal::ConnectionRate => "connection_rate",
            Refusal::Banned => "banned",
        }
    }
}

/// What became of a datagram on the CoAP publish listener (`coap_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoapOutcome {
    /// Published: 2.04 Changed.
    Published,
    /// 4.00: no topic, an invalid one, or a bad query.
    BadRequest,
    /// 4.01: the credentials were refused.
    Unauthorized,
    /// 4.02: an unrecognised critical option.
    BadOption,
    /// 4.03: the rules do not let the client publish to the topic.
    Forbidden,
    /// 4.05: a method other than POST.
    MethodNotAllowed,
    /// 4.13: over `-mpl`, or the first of several blocks (no block-wise transfer).
    TooLarge,
    /// 5.03: the authentication service did not answer.
    AuthUnavailable,
    /// 5.03: too many requests were already in progress.
    Busy,
    /// 5.05: a Proxy-Uri or Proxy-Scheme option (not a proxy).
    ProxyingNotSupported,
    /// A retransmission of a request already seen: its answer was sent again (or it was
    /// ignored while in progress, or for a non-confirmable one), not published twice.
    Duplicate,
    /// Not a CoAP message (or not version 1): ignored, or reset when confirmable.
    Malformed,
    /// An empty message (a ping: reset), an acknowledgement, a reset or a response.
    NotRequest,
}

impl CoapOutcome {
    pub const ALL: [CoapOutcome; 13] = [
        CoapOutcome::Published,
        CoapOutcome::BadRequest,
        CoapOutcome::Unauthorized,
        CoapOutcome::BadOption,
        CoapOutcome::Forbidden,
        CoapOutcome::MethodNotAllowed,
        CoapOutcome::TooLarge,
        CoapOutcome::AuthUnavailable,
        CoapOutcome::Busy,
        CoapOutcome::ProxyingNotSupported,
        CoapOutcome::Duplicate,
        CoapOutcome::Malformed,
        CoapOutcome::NotRequest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CoapOutcome::Published => "published",
            CoapOutcome::BadRequest => "bad_request",
            CoapOutcome::Unauthorized => "unauthorized",
            CoapOutcome::BadOption => "bad_option",
            CoapOutcome::Forbidden => "forbidden",
            CoapOutcome::MethodNotAllowed => "method_not_allowed",
            CoapOutcome::TooLarge => "too_large",
            CoapOutcome::AuthUnavailable => "auth_unavailable",
            CoapOutcome::Busy => "busy",
            CoapOutcome::ProxyingNotSupported => "proxying_not_supported",
            CoapOutcome::Duplicate => "duplicate",
            CoapOutcome::Malformed => "malformed",
            CoapOutcome::NotRequest => "not_request",
        }
    }
}

/// Per-QoS counters: index with `qos as usize`.
type PerQos = [Counter<u64, AtomicU64>; 3];

pub struct Metrics {
    registry: Registry,
    /// Open MQTT connections that completed CONNECT.
    pub connections: Gauge,
    /// Of those, how many sleep in the parker (idle, without a task).
    pub connections_sleeping: Gauge,
    /// TCP connections accepted (before CONNECT).
    pub connections_accepted: Counter,
    /// Connections refused: by `-mc`, a bad CONNECT, or a CONNECT timeout.
    pub connections_refused: Counter,
    /// Refusals by the admission limits, by reason (MQTT ones also count in
    /// `connections_refused`).
    refused: [Counter; Refusal::ALL.len()],
    /// Authentications failed, by reason.
    auth_failures: [Counter; AuthFailureKind::ALL.len()],
    /// Actions the authorization rules refused, by action.
    denied: [Counter; Denied::ALL.len()],
    /// Connections accepted, by listener.
    listener_connections: [Counter; ListenerKind::ALL.len()],
    /// Transport handshakes (PROXY, TLS, WebSocket) and CONNECT deadlines failed, by listener
    /// and reason.
    handshake_failures: [[Counter; HandshakeFailure::ALL.len()]; ListenerKind::ALL.len()],
    /// MQTT TCP connections open, before and after CONNECT (bounded by the fd limit).
    pub mqtt_sockets: Gauge,
    /// Bytes held in read buffers by connections that have not completed CONNECT.
    pub handshake_bytes: Gauge,
    /// Open HTTP API connections.
    pub http_connections: Gauge,
    /// MQTT connections an administrator closed (`DELETE /clients/<id>`).
    pub admin_disconnects: Counter,
    /// Datagrams on the CoAP publish listener, by outcome.
    coap_requests: [Counter; CoapOutcome::ALL.len()],
    /// CoAP publish requests being authenticated and published (bounded).
    pub coap_in_flight: Gauge,
    /// Sessions held in memory, online or not.
    pub sessions: Gauge,
    pub subscriptions: Gauge,
    pub retained: Gauge,
    /// Messages waiting in session queues (not yet written to their client).
    pub queued: Gauge,
    pub messages_received: PerQos,
    pub messages_sent: PerQos,
    pub payload_bytes_received: PerQos,
    pub payload_bytes_sent: PerQos,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    /// SUBACK / UNSUBACK packets discarded because even without a Reason String or User
    /// Properties they exceed the client's Maximum Packet Size ([MQTT-3.1.2-25]).
    pub acks_too_large: Counter,
    /// Membership and forwarding between nodes (zero outside cluster mode).
    pub cluster: ClusterMetrics,
    started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("coolpy7");
        let reg = &mut registry;
        Metrics {
            connections: gauge(reg, "connections", "Open MQTT connections"),
            connections_sleeping: gauge(
                reg,
                "connections_sleeping",
                "Open MQTT connections idle long enough to sleep without a task",
            ),
            connections_accepted: counter(reg, "connections_accepted", "TCP connections accepted"),
            connections_refused: counter(
                reg,
                "connections_refused",
                "Connections refused (limit, bad CONNECT, CONNECT timeout)",
            ),
            refused: labelled(
                reg,
                "admission_refused",
                "Connections refused by the admission limits, by reason",
                "reason",
                Refusal::ALL.map(Refusal::label),
            ),
            auth_failures: labelled(
                reg,
                "auth_failures",
                "CONNECTs refused by authentication, by reason",
                "reason",
                AuthFailureKind::ALL.map(AuthFailureKind::label),
            ),
            denied: labelled(
                reg,
                "authorization_denied",
                "Actions refused by the authorization rules, by action",
                "action",
                Denied::ALL.map(Denied::label),
            ),
            listener_connections: labelled(
                reg,
                "listener_connections",
                "Connections accepted, by listener (tcp, tls, ws, wss)",
                "listener",
                ListenerKind::ALL.map(ListenerKind::name),
            ),
            handshake_failures: handshake_failures(reg),
            mqtt_sockets: gauge(
                reg,
                "mqtt_sockets",
                "MQTT TCP connections open, before and after CONNECT",
            ),
            handshake_bytes: gauge(
                reg,
                "handshake_buffer_bytes",
                "Bytes buffered by connections that have not completed CONNECT",
            ),
            http_connections: gauge(reg, "http_connections", "Open HTTP API connections"),
            admin_disconnects: counter(
                reg,
                "admin_disconnects",
                "MQTT connections closed by DELETE /clients/<id> on the HTTP API",
            ),
            coap_requests: labelled(
                reg,
                "coap_requests",
                "Datagrams on the CoAP publish listener (-cl), by outcome",
                "outcome",
                CoapOutcome::ALL.map(CoapOutcome::label),
            ),
            coap_in_flight: gauge(
                reg,
                "coap_in_flight",
                "CoAP publish requests being authenticated and published",
            ),
            sessions: gauge(reg, "sessions", "Sessions in memory, online or offline"),
            subscriptions: gauge(reg, "subscriptions", "Subscriptions held"),
            retained: gauge(reg, "retained_messages", "Retained messages stored"),
            queued: gauge(reg, "queued_messages", "Messages waiting in session queues"),
            messages_received: per_qos(
                reg,
                "messages_received",
                "PUBLISH packets received from clients",
            ),
            messages_sent: per_qos(reg, "messages_sent", "PUBLISH packets sent to clients"),
            payload_bytes_received: per_qos(
                reg,
                "payload_bytes_received",
                "Payload bytes of PUBLISH packets received",
            ),
            payload_bytes_sent: per_qos(
                reg,
                "payload_bytes_sent",
                "Payload bytes of PUBLISH packets sent",
            ),
            bytes_received: counter(reg, "bytes_received", "Bytes read from MQTT connections"),
            bytes_sent: counter(reg, "bytes_sent", "Bytes written to MQTT connections"),
            dropped: labelled(
                reg,
                "messages_dropped",
                "Messages dropped, by reason",
                "reason",
                DropReason::ALL.map(DropReason::label),
            ),
            acks_too_large: counter(
                reg,
                "acks_too_large",
                "SUBACK/UNSUBACK packets not sent: larger than the client's Maximum Packet Size",
            ),
            cluster: ClusterMetrics::register(reg),
            started: std::time::Instant::now(),
            registry,
        }
    }

    pub fn dropped(&self, reason: DropReason) -> &Counter {
        &self.dropped[reason as usize]
    }

    pub fn listener_accepted(&self, kind: ListenerKind) -> &Counter {
        &self.listener_connections[kind as usize]
    }

    pub fn handshake_failed(&self, kind: ListenerKind, failure: HandshakeFailure) -> &Counter {
        &self.handshake_failures[kind as usize][failure as usize]
    }

    pub fn auth_failed(&self, kind: AuthFailureKind) -> &Counter {
        &self.auth_failures[kind as usize]
    }

    pub fn denied(&self, action: Denied) -> &Counter {
        &self.denied[action as usize]
    }

    pub fn refused(&self, reason: Refusal) -> &Counter {
        &self.refused[reason as usize]
    }

    pub fn coap(&self, outcome: CoapOutcome) -> &Counter {
        &self.coap_requests[outcome as usize]
    }

    pub fn record_received(&self, qos: QoS, payload_len: usize) {
        self.messages_received[qos as usize].inc();
        self.payload_bytes_received[qos as usize].inc_by(payload_len as u64);
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The Prometheus text exposition of every series.
    pub fn encode_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The two UDP ports of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterPort {
    Gossip,
    Sync,
}

impl ClusterPort {
    pub fn label(self) -> &'static str {
        match self {
            ClusterPort::Gossip => "gossip",
            ClusterPort::Sync => "sync",
        }
    }
}

/// Why a cluster datagram or a record was not sent or not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterDrop {
    /// The record is larger than `-csl` (not forwarded).
    TooBig,
    /// `$` topics stay on the node where they were published.
    DollarTopic,
    /// The forwarding queue was full: peers are slower than local publishers.
    QueueFull,
    /// The socket refused a datagram.
    SendError,
    /// Missing or wrong HMAC tag.
    BadTag,
    /// Authenticated but not a datagram this version understands.
    Malformed,
    /// A sequence number already seen (or too old to tell).
    Replay,
    /// Addressed to another node, or to an earlier boot of this one.
    WrongDestination,
    /// The origin is not a member that is up.
    UnknownOrigin,
    /// The origin's boot epoch is not its current one.
    StaleEpoch,
    /// A QoS 1 or 2 message not forwarded to a peer: what this node holds for it, not yet
    /// acknowledged, reached `-csb`.
    BufferFull,
    /// Messages held for a peer, not yet acknowledged, when membership declared it down (or it
    /// restarted, or refused the link): given up.
    PeerGone,
    /// A segment of a link its sender has since replaced.
    StaleLink,
}

impl ClusterDrop {
    pub const ALL: [ClusterDrop; 13] = [
        ClusterDrop::TooBig,
        ClusterDrop::DollarTopic,
        ClusterDrop::QueueFull,
        ClusterDrop::SendError,
        ClusterDrop::BadTag,
        ClusterDrop::Malformed,
        ClusterDrop::Replay,
        ClusterDrop::WrongDestination,
        ClusterDrop::UnknownOrigin,
        ClusterDrop::StaleEpoch,
        ClusterDrop::BufferFull,
        ClusterDrop::PeerGone,
        ClusterDrop::StaleLink,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ClusterDrop::TooBig => "too_big",
            ClusterDrop::DollarTopic => "dollar_topic",
            ClusterDrop::QueueFull => "queue_full",
            ClusterDrop::SendError => "send_error",
            ClusterDrop::BadTag => "bad_tag",
            ClusterDrop::Malformed => "malformed",
            ClusterDrop::Replay => "replay",
            ClusterDrop::WrongDestination => "wrong_destination",
            ClusterDrop::UnknownOrigin => "unknown_origin",
            ClusterDrop::StaleEpoch => "stale_epoch",
            ClusterDrop::BufferFull => "buffer_full",
            ClusterDrop::PeerGone => "peer_gone",
            ClusterDrop::StaleLink => "stale_link",
        }
    }
}

/// The cluster's series, named in the design notes' "What to observe".
pub struct ClusterMetrics {
    /// Other members by state: index 0 up, 1 suspect, 2 down.
    pub members: [Gauge; 3],
    /// `[port][0 = in, 1 = out]`.
    datagrams: [[Counter; 2]; 2],
    /// Messages queued for at least one member (those whose interest matches, retained ones
    /// for every member that is up).
    pub records_forwarded: Counter,
    /// Messages not sent to a peer because none of its subscriptions matched them.
    pub records_skipped: Counter,
    /// Authenticated, fresh records received from peers.
    pub records_received: Counter,
    /// Deliveries to local subscribers of records received from peers.
    pub records_delivered: Counter,
    dropped: [[Counter; ClusterDrop::ALL.len()]; 2],
    /// Times another live node was seen using this node's `-nid`.
    pub duplicate_node_id: Counter,
    /// Link segments sent again (lost, or acknowledged late).
    pub segments_retransmitted: Counter,
    /// Link segments received again (retransmissions of what had arrived, or replays).
    pub segments_repeated: Counter,
    /// Bytes held on links to peers (QoS 1 and 2 messages, large ones): not yet sent, or not
    /// yet acknowledged.
    pub buffered_bytes: Gauge,
    /// Retained messages and tombstones sent to peers that lacked them or held older ones
    /// (anti-entropy).
    pub retained_repaired: Counter,
    /// Retained records from peers not stored because this node holds a later write of the
    /// topic (those forwarded live are still delivered).
    pub retained_stale: Counter,
}

impl ClusterMetrics {
    fn register(reg: &mut Registry) -> ClusterMetrics {
        let members = Family::<Vec<(String, String)>, Gauge>::default();
        let member_gauges = ["up", "suspect", "down"]
            .map(|state| members.get_or_create(&labels(&[("state", state)])).clone());
        reg.register(
            "cluster_members",
            "Other cluster members, by state",
            members,
        );

        let datagrams = Family::<Vec<(String, String)>, Counter>::default();
        let datagram_counters = [ClusterPort::Gossip, ClusterPort::Sync].map(|port| {
            ["in", "out"].map(|direction| {
                datagrams
                    .get_or_create(&labels(&[("port", port.label()), ("direction", direction)]))
                    .clone()
            })
        });
        reg.register(
            "cluster_datagrams",
            "Cluster datagrams, by port and direction",
            datagrams,
        );

        let dropped = Family::<Vec<(String, String)>, Counter>::default();
        let dropped_counters = [ClusterPort::Gossip, ClusterPort::Sync].map(|port| {
            ClusterDrop::ALL.map(|reason| {
                dropped
                    .get_or_create(&labels(&[
                        ("port", port.label()),
                        ("reason", reason.label()),
                    ]))
                    .clone()
            })
        });
        reg.register(
            "cluster_dropped",
            "Cluster datagrams or records dropped, by port and reason",
            dropped,
        );
        ClusterMetrics {
            members: member_gauges,
            datagrams: datagram_counters,
            records_forwarded: counter(
                reg,
                "cluster_records_forwarded",
                "Messages accepted for forwarding to the other members",
            ),
            records_skipped: counter(
                reg,
                "cluster_records_skipped",
                "Messages not sent to a member because none of its subscriptions matched them",
            ),
            records_received: counter(
                reg,
                "cluster_records_received",
                "Authenticated records received from other members",
            ),
            records_delivered: counter(
                reg,
                "cluster_records_delivered",
                "Deliveries to local subscribers of records from other members",
            ),
            dropped: dropped_counters,
            duplicate_node_id: counter(
                reg,
                "cluster_duplicate_node_id",
                "Times another live node was seen with this node's -nid",
            ),
            segments_retransmitted: counter(
                reg,
                "cluster_segments_retransmitted",
                "Link segments sent again to other members",
            ),
            segments_repeated: counter(
                reg,
                "cluster_segments_repeated",
                "Link segments received again from other members",
            ),
            buffered_bytes: gauge(
                reg,
                "cluster_buffered_bytes",
                "Bytes of QoS 1 and 2 messages held on links to other members, not yet sent or not yet acknowledged",
            ),
            retained_repaired: counter(
                reg,
                "cluster_retained_repaired",
                "Retained messages and tombstones sent to members that lacked them or held older ones",
            ),
            retained_stale: counter(
                reg,
                "cluster_retained_stale",
                "Retained records from members not stored: this node holds a later write of the topic",
            ),
        }
    }

    pub fn datagram_in(&self, port: ClusterPort) {
        self.datagrams[port as usize][0].inc();
    }

    pub fn datagram_out(&self, port: ClusterPort) {
        self.datagrams[port as usize][1].inc();
    }

    pub fn datagrams_out(&self, port: ClusterPort, count: u64) {
        self.datagrams[port as usize][1].inc_by(count);
    }

    pub fn dropped(&self, port: ClusterPort, reason: ClusterDrop) -> &Counter {
        &self.dropped[port as usize][reason as usize]
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

/// `handshake_failures_total{listener, reason}`, every pair resolved up front.
fn handshake_failures(
    registry: &mut Registry,
) -> [[Counter; HandshakeFailure::ALL.len()]; ListenerKind::ALL.len()] {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    let counters = ListenerKind::ALL.map(|kind| {
        HandshakeFailure::ALL.map(|failure| {
            family
                .get_or_create(&vec![
                    ("listener".to_string(), kind.name().to_string()),
                    ("reason".to_string(), failure.label().to_string()),
                ])
                .clone()
        })
    });
    registry.register(
        "handshake_failures",
        "Connections closed before MQTT: PROXY header, TLS or WebSocket handshake failed, \
         closed, or no CONNECT within -nt; by listener and reason",
        family,
    );
    counters
}

fn per_qos(registry: &mut Registry, name: &str, help: &str) -> PerQos {
    labelled(registry, name, help, "qos", ["0", "1", "2"])
}

/// A family with a fixed set of label values, resolved up front so the hot path holds plain
/// counters (clones share their atomic with the family's).
fn labelled<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: [&str; N],
) -> [Counter; N] {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    let counters = values.map(|value| {
        family
            .get_or_create(&vec![(label.to_string(), value.to_string())])
            .clone()
    });
    registry.register(name, help, family);
    counters
}
