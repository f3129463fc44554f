//! The command line: Coolpy7-compatible flags and `COOLPY7_*` environment variables, parsed
//! with clap and resolved into a [`Config`].
//!
//! The original broker used Go's `flag` package, where `-mc=10`, `-mc 10`, `--mc=10` and
//! `--mc 10` are all the same flag. clap only accepts multi-letter names after `--`, so argv is
//! normalised first (see [`normalise_args`]). Adding a flag is one field in [`Args`] plus its
//! resolution in [`Config::from_parsed`]; the normaliser reads the flag names from clap itself.

mod access;
mod listeners;

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::net::{TcpListener, UdpSocket};

use crate::auth::acl::Permission;
use crate::cluster::config::{ClusterConfig, ClusterFlags, SharedPolicy};
use crate::codec::{QoS, MAX_REMAINING_LENGTH};
use crate::scheduling::ThreadScheduling;
use access::{parse_auth_mode, parse_permission, parse_secret, AccessFlags, AuthMode, Secret};
pub use access::{
    AbuseLimits, AccessConfig, Authentication, HttpServiceSettings, JwtKey, SecretSource,
};
use listeners::{
    parse_cert_identity, parse_client_verify, parse_proxy_listeners, ListenerFlags, ProxyListeners,
};
pub use listeners::{CertIdentity, ClientVerify, Listener, ListenerKind, TlsSettings};

/// The largest MQTT packet: a fixed header byte, four length bytes and the largest body.
const PROTOCOL_MAX_PACKET: usize = MAX_REMAINING_LENGTH + 5;

/// `-mpl`'s default, 1 MiB: four times the largest message AWS IoT Core (128 KB) or Azure IoT
/// Hub (256 KB) accept, the default of EMQX, and half of Mosquitto 2.1's 2 MB: every connection
/// may hold one partial packet of this size, so it multiplies by the number of clients.
const DEFAULT_MAX_PACKET: u64 = 1024 * 1024;

/// `-mcl`'s default, 64 KiB. A 3.1.1 CONNECT carries a client id (tens of bytes), a username, a
/// password (a JWT or SAS token is 0.2 to 4 KB) and a will (topic and payload, usually small);
/// 64 KiB holds all of these with room for a will of tens of KB, while a connection that has
/// proved nothing yet can make the broker buffer no more than that.
const DEFAULT_MAX_CONNECT: u64 = 64 * 1024;

/// `-mhb`'s default, 64 MiB: 1,024 handshakes with CONNECTs of the largest default size, or a
/// reconnect storm of 260,000 clients with ordinary (< 256 bytes) ones, at the same time.
const DEFAULT_HANDSHAKE_BYTES: u64 = 64 * 1024 * 1024;

/// The smallest `-mcl`: a 3.1.1 CONNECT with an empty client id is 14 bytes.
const MIN_CONNECT_LIMIT: u64 = 64;

/// Timeouts are capped so that `Instant + timeout` can never overflow.
const MAX_TIMEOUT_SECS: u64 = u32::MAX as u64;

/// `-syst` when not given, as the original Coolpy7 has it. It is printed in the README, so it
/// may open read-only figures but never an action (`DELETE /clients/<id>`).
pub const DEFAULT_SYS_TOKEN: &str = "coolpy7";

/// Where to listen: `host:port`, or `:port` for every interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    pub host: Option<String>,
    pub port: u16,
}

/// Why a listen address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    #[error("missing port: expected host:port or :port")]
    MissingPort,
    #[error("invalid port {0:?}: expected a number from 0 to 65535")]
    InvalidPort(String),
    #[error("empty host inside [ ]")]
    EmptyHost,
    #[error("missing ']' after an IPv6 address")]
    UnclosedBracket,
    #[error("an IPv6 address must be written in brackets, as [{0}]:port")]
    UnbracketedIpv6(String),
    #[error("unexpected text between ']' and ':port'")]
    TrailingText,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or(ListenAddrError::UnclosedBracket)?;
            if host.is_empty() {
                return Err(ListenAddrError::EmptyHost);
            }
            let port = match after.strip_prefix(':') {
                Some(port) => port,
                None if after.is_empty() => return Err(ListenAddrError::MissingPort),
                None => return Err(ListenAddrError::TrailingText),
            };
            (Some(host), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(ListenAddrError::MissingPort)?;
            if host.contains(':') {
                return Err(ListenAddrError::UnbracketedIpv6(host.to_string()));
            }
            ((!host.is_empty()).then_some(host), port)
        };
        if port.is_empty() {
            return Err(ListenAddrError::MissingPort);
        }
        // u16::from_str accepts a leading '+'; a port is digits only.
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ListenAddrError::InvalidPort(port.to_string()));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| ListenAddrError::InvalidPort(port.to_string()))?;
        Ok(ListenAddr {
            host: host.map(str::to_string),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            None => write!(f, ":{}", self.port),
            Some(host) if host.contains(':') => write!(f, "[{host}]:{}", self.port),
            Some(host) => write!(f, "{host}:{}", self.port),
        }
    }
}

impl ListenAddr {
    /// Binds a TCP listener. With no host, binds [::] (dual stack) and falls back to 0.0.0.0
    /// when IPv6 is unavailable; a host name is resolved and each address tried in turn.
    pub async fn bind_tcp(&self) -> std::io::Result<TcpListener> {
        match &self.host {
            Some(host) => TcpListener::bind((host.as_str(), self.port)).await,
            None => {
                let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, self.port));
                match TcpListener::bind(any6).await {
                    Ok(listener) => Ok(listener),
                    // These would fail the same way on IPv4; report the real cause.
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                        ) =>
                    {
                        Err(err)
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot bind [::], falling back to 0.0.0.0");
                        TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)))
                            .await
                    }
                }
            }
        }
    }

    /// Binds a UDP socket, as [`ListenAddr::bind_tcp`] binds a listener: with no host, [::]
    /// (dual stack) or else 0.0.0.0; a host name is resolved and each address tried in turn.
    pub async fn bind_udp(&self) -> std::io::Result<UdpSocket> {
        match &self.host {
            Some(host) => UdpSocket::bind((host.as_str(), self.port)).await,
            None => {
                let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, self.port));
                match UdpSocket::bind(any6).await {
                    Ok(socket) => Ok(socket),
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                        ) =>
                    {
                        Err(err)
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot bind udp [::], falling back to 0.0.0.0");
                        UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port))).await
                    }
                }
            }
        }
    }
}

/// The flags as clap sees them. Names and defaults follow the original Coolpy7.
#[derive(Debug, Parser)]
#[command(
    name = "coolpy7",
    version,
    // Go's flag package lets a repeated flag override the earlier one; scripts rely on it.
    args_override_self = true,
    about = "Clustered MQTT broker for Kubernetes (a Rust rebuild of Coolpy7)",
    after_help = "Flags take one or two dashes and '=' or a space: -l=:1883, -l :1883, --l :1883.\n\
                  Every flag can also be set with the environment variable shown; \
                  a flag on the command line wins."
)]
struct Args {
    /// MQTT TCP listen address: host:port, or :port for every interface; empty or "nil" turns it off
    #[arg(short = 'l', long = "l", env = "COOLPY7_L", value_name = "ADDR",
          default_value = ":1883", value_parser = parse_optional_listen)]
    listen: OptionalListen,

    /// MQTT over TLS listen address, e.g. :8883 (off unless given; needs -tc and -tk)
    #[arg(long = "tl", env = "COOLPY7_TL", value_name = "ADDR", value_parser = parse_optional_listen)]
    tls_listen: Option<OptionalListen>,

    /// MQTT over WebSocket listen address, e.g. :8083 (off unless given)
    #[arg(long = "wl", env = "COOLPY7_WL", value_name = "ADDR", value_parser = parse_optional_listen)]
    ws_listen: Option<OptionalListen>,

    /// MQTT over WebSocket over TLS listen address, e.g. :8084 (off unless given; needs -tc and -tk)
    #[arg(long = "wsl", env = "COOLPY7_WSL", value_name = "ADDR", value_parser = parse_optional_listen)]
    wss_listen: Option<OptionalListen>,

    /// The HTTP path WebSocket clients connect to
    #[arg(long = "wsp", env = "COOLPY7_WSP", value_name = "PATH", default_value = "/mqtt",
          value_parser = parse_ws_path)]
    ws_path: String,

    /// Listeners whose connections start with a PROXY protocol v1/v2 header: a comma-separated
    /// list of tcp, tls, ws, wss (a connection without a valid header is closed)
    #[arg(long = "pp", env = "COOLPY7_PP", value_name = "LISTENERS", default_value = "",
          value_parser = parse_proxy_listeners)]
    proxy_protocol: ProxyListeners,

    /// TLS certificate chain, PEM (the server's certificate first)
    #[arg(long = "tc", env = "COOLPY7_TC", value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// TLS private key, PEM (PKCS#8, PKCS#1 or SEC1)
    #[arg(long = "tk", env = "COOLPY7_TK", value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// CA bundle, PEM, that client certificates must chain to; turns client certificates on
    #[arg(long = "tca", env = "COOLPY7_TCA", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,

    /// Client certificates: none, optional or required [default: required with -tca, else none]
    #[arg(long = "tv", env = "COOLPY7_TV", value_name = "MODE", value_parser = parse_client_verify)]
    tls_verify: Option<ClientVerify>,

    /// Use the client certificate's identity as the MQTT username: off, cn (subject Common Name)
    /// or san (first Subject Alternative Name)
    #[arg(long = "tcn", env = "COOLPY7_TCN", value_name = "FIELD", default_value = "off",
          value_parser = parse_cert_identity)]
    tls_identity: CertIdentity,

    /// Seconds between checks of the TLS files for changes (a change is loaded without a
    /// restart; so is SIGHUP)
    #[arg(long = "tri", env = "COOLPY7_TRI", value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    tls_reload_interval: u64,

    /// Authentication: 0 none, 1 JWT (-jsk/-jskf/-jpk; the token is the MQTT password), 2 HTTP
    /// service (-ha), 3 password file (-pwf)
    #[arg(long = "as", env = "COOLPY7_AS", value_name = "MODE", default_value = "0",
          value_parser = parse_auth_mode)]
    auth_mode: AuthMode,

    /// JWT HMAC secret (HS256/384/512), for -as=1
    #[arg(long = "jsk", env = "COOLPY7_JSK", value_name = "SECRET", hide_env_values = true,
          value_parser = parse_secret)]
    jwt_secret: Option<Secret>,

    /// File holding the JWT HMAC secret (re-read when it changes), instead of -jsk
    #[arg(long = "jskf", env = "COOLPY7_JSKF", value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,

    /// PEM public key JWTs are signed for (RS*, PS*, ES256, ES384, EdDSA), instead of -jsk
    #[arg(long = "jpk", env = "COOLPY7_JPK", value_name = "FILE")]
    jwt_public_key: Option<PathBuf>,

    /// HTTP authentication service for -as=2: a URL (http://host:port/path) or host:port
    /// [default: localhost:5683]
    #[arg(long = "ha", env = "COOLPY7_HA", value_name = "URL")]
    http_service: Option<String>,

    /// Token sent to the HTTP authentication service as "Authorization: Bearer" [default:
    /// coolpy7]
    #[arg(long = "ht", env = "COOLPY7_HT", value_name = "TOKEN", hide_env_values = true,
          value_parser = parse_secret)]
    http_service_token: Option<Secret>,

    /// File holding the HTTP authentication service's token, instead of -ht
    #[arg(long = "htf", env = "COOLPY7_HTF", value_name = "FILE")]
    http_service_token_file: Option<PathBuf>,

    /// Seconds the HTTP authentication service has to answer (no answer denies)
    #[arg(long = "hat", env = "COOLPY7_HAT", value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    http_service_timeout: u64,

    /// Seconds the HTTP authentication service's answers are reused for the same credentials
    /// (0 = ask every time)
    #[arg(long = "hac", env = "COOLPY7_HAC", value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    http_service_cache: u64,

    /// Password file for -as=3: user:hash lines (argon2id; Mosquitto's $7$ and $6$ too)
    #[arg(long = "pwf", env = "COOLPY7_PWF", value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// Authorization rules file (allow|deny publish|subscribe|all FILTER [user U] [client C]
    /// [address CIDR])
    #[arg(long = "acl", env = "COOLPY7_ACL", value_name = "FILE")]
    acl_file: Option<PathBuf>,

    /// Decision when no authorization rule matches: allow or deny
    #[arg(long = "acld", env = "COOLPY7_ACLD", value_name = "DECISION", default_value = "deny",
          value_parser = parse_permission)]
    acl_default: Permission,

    /// Seconds between checks of the -acl, -pwf, -jskf, -jpk and -htf files for changes
    /// (SIGHUP checks at once)
    #[arg(long = "ari", env = "COOLPY7_ARI", value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    access_reload_interval: u64,

    /// Minimum seconds between a client's PINGREQs; a client pinging faster is closed (and
    /// banned for -dt). 0 = off
    #[arg(long = "pl", env = "COOLPY7_PL", value_name = "SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    ping_limit: u64,

    /// Minimum milliseconds between a client's PUBLISHes; a client publishing faster is closed
    /// (and banned for -dt). 0 = off
    #[arg(long = "psl", env = "COOLPY7_PSL", value_name = "MILLIS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    publish_limit: u64,

    /// Seconds a client closed by -pl or -psl is refused (CONNACK 0x05, MQTT 5 0x9F). 0 = off
    #[arg(long = "dt", env = "COOLPY7_DT", value_name = "SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    ban_time: u64,

    /// New connections accepted per second per listener (a burst of one second's worth);
    /// beyond it new sockets are closed at once. 0 = unlimited
    #[arg(long = "cr", env = "COOLPY7_CR", value_name = "N", default_value_t = 0)]
    connection_rate: u32,

    /// PUBLISH packets per second per client; a faster client is not read from until it is
    /// back within the rate (nothing is dropped). 0 = unlimited
    #[arg(
        long = "prm",
        env = "COOLPY7_PRM",
        value_name = "N",
        default_value_t = 0
    )]
    publish_rate_messages: u32,

    /// PUBLISH payload bytes per second per client, as -prm. 0 = unlimited
    #[arg(
        long = "prb",
        env = "COOLPY7_PRB",
        value_name = "BYTES",
        default_value_t = 0
    )]
    publish_rate_bytes: u64,

    /// HTTP API address (/healthz, /metrics, /sys); empty or "nil" disables HTTP
    #[arg(long = "hl", env = "COOLPY7_HL", value_name = "ADDR",
          default_value = ":8081", value_parser = parse_optional_listen)]
    http_listen: OptionalListen,

    /// CoAP publish listen address (UDP), e.g. :5683: devices POST messages to topics with the
    /// MQTT credentials (off unless given; empty or "nil" turns it off)
    #[arg(long = "cl", env = "COOLPY7_CL", value_name = "ADDR", value_parser = parse_optional_listen)]
    coap_listen: Option<OptionalListen>,

    /// Token required by GET /sys, GET /brokers and (not the default) DELETE /clients/<id>
    #[arg(long = "syst", env = "COOLPY7_SYST", value_name = "TOKEN",
          default_value = DEFAULT_SYS_TOKEN, hide_env_values = true, value_parser = parse_token)]
    sys_token: String,

    /// Maximum concurrent MQTT connections, 0 = derived from the open-files limit (logged at start)
    #[arg(long = "mc", env = "COOLPY7_MC", value_name = "N", default_value_t = 0)]
    max_connections: usize,

    /// Maximum MQTT packet size in bytes (whole packet), 0 = protocol maximum (256 MB)
    #[arg(long = "mpl", env = "COOLPY7_MPL", value_name = "BYTES",
          default_value_t = DEFAULT_MAX_PACKET,
          value_parser = clap::value_parser!(u64).range(0..=PROTOCOL_MAX_PACKET as u64))]
    max_packet_size: u64,

    /// Maximum CONNECT packet size in bytes (whole packet); a larger one is refused from its header
    #[arg(long = "mcl", env = "COOLPY7_MCL", value_name = "BYTES",
          default_value_t = DEFAULT_MAX_CONNECT,
          value_parser = clap::value_parser!(u64).range(MIN_CONNECT_LIMIT..=PROTOCOL_MAX_PACKET as u64))]
    max_connect_size: u64,

    /// Bytes all connections that have not completed CONNECT may buffer together; beyond it they are closed
    #[arg(long = "mhb", env = "COOLPY7_MHB", value_name = "BYTES",
          default_value_t = DEFAULT_HANDSHAKE_BYTES,
          value_parser = clap::value_parser!(u64).range(MIN_CONNECT_LIMIT..))]
    handshake_bytes: u64,

    /// Maximum concurrent HTTP API connections; a new one beyond them closes the oldest
    #[arg(long = "hmc", env = "COOLPY7_HMC", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    http_max_connections: u64,

    /// Seconds an HTTP client has to send its request's headers; a connection is closed at twice that
    #[arg(long = "hto", env = "COOLPY7_HTO", value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_timeout: u64,

    /// Seconds a new connection has to send CONNECT
    #[arg(long = "nt", env = "COOLPY7_NT", value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    connect_timeout: u64,

    /// Seconds a write to a client may stall before the connection is closed
    #[arg(short = 't', long = "t", env = "COOLPY7_T", value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    write_timeout: u64,

    /// Maximum QoS granted to subscriptions (0, 1 or 2)
    #[arg(long = "mqos", env = "COOLPY7_MQOS", value_name = "QOS", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(0..=2))]
    max_qos: u8,

    /// In-flight window: unacknowledged QoS 1/2 messages per client, at most -mq (an MQTT 5
    /// client's smaller Receive Maximum lowers it)
    #[arg(long = "mif", env = "COOLPY7_MIF", value_name = "N", default_value_t = 65535,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_inflight: u16,

    /// Maximum messages queued per client (online backlog and offline); the oldest are dropped beyond it
    #[arg(long = "mq", env = "COOLPY7_MQ", value_name = "N", default_value_t = 1000,
          value_parser = parse_positive_usize)]
    max_queued: usize,

    /// Maximum subscriptions (distinct filters) per client, 0 = unlimited; SUBACK refuses (0x80)
    /// the filters beyond it
    #[arg(
        long = "msc",
        env = "COOLPY7_MSC",
        value_name = "N",
        default_value_t = 10_000
    )]
    max_subscriptions: usize,

    /// MQTT 5 Server Keep Alive: the longest keepalive (seconds) a client may use; a longer or
    /// zero one is replaced by it (0 = no cap)
    #[arg(
        long = "mka",
        env = "COOLPY7_MKA",
        value_name = "SECS",
        default_value_t = 0
    )]
    max_keep_alive: u16,

    /// MQTT 5 Receive Maximum: QoS 2 messages a client may have awaiting PUBREL (1-65535)
    #[arg(long = "mri", env = "COOLPY7_MRI", value_name = "N", default_value_t = 65535,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_receive: u16,

    /// MQTT 5 Topic Alias Maximum: topic aliases per connection, each way (0 = none)
    #[arg(
        long = "mta",
        env = "COOLPY7_MTA",
        value_name = "N",
        default_value_t = 64
    )]
    max_topic_aliases: u16,

    /// MQTT 5 Wildcard Subscription Available: whether topic filters may hold + or # (true or
    /// false); when false an MQTT 5 SUBSCRIBE with one gets DISCONNECT 0xA2, a 3.1.1 one SUBACK
    /// 0x80 for that filter
    #[arg(long = "wsa", env = "COOLPY7_WSA", value_name = "BOOL", default_value = "true",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    wildcard_subscriptions: bool,

    /// MQTT 5 Subscription Identifiers Available (true or false); when false a SUBSCRIBE with a
    /// Subscription Identifier gets DISCONNECT 0xA1
    #[arg(long = "sia", env = "COOLPY7_SIA", value_name = "BOOL", default_value = "true",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    subscription_identifiers: bool,

    /// Seconds an offline persistent session (clean session 0) is kept, 0 = forever
    #[arg(long = "se", env = "COOLPY7_SE", value_name = "SECS", default_value_t = 7200,
          value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    session_expiry: u64,

    /// Cluster: this node's name, unique in the cluster (name or name@address); turns cluster mode on
    #[arg(long = "nid", env = "COOLPY7_NID", value_name = "NAME")]
    node_id: Option<String>,

    /// Cluster: seeds to join, host[:port],... (DNS names allowed; port defaults to 7946)
    #[arg(long = "mbs", env = "COOLPY7_MBS", value_name = "SEEDS")]
    seeds: Option<String>,

    /// Cluster: the shared key that authenticates every datagram between nodes
    #[arg(
        long = "csk",
        env = "COOLPY7_CSK",
        value_name = "KEY",
        hide_env_values = true
    )]
    cluster_key: Option<String>,

    /// Cluster: gossip (membership) UDP port, 0 = any
    #[arg(
        long = "crp",
        env = "COOLPY7_CRP",
        value_name = "PORT",
        default_value_t = 7946
    )]
    gossip_port: u16,

    /// Cluster: sync (message forwarding) UDP port, 0 = any
    #[arg(
        long = "csp",
        env = "COOLPY7_CSP",
        value_name = "PORT",
        default_value_t = 7947
    )]
    sync_port: u16,

    /// Cluster: seconds between attempts to join seeds that are not members
    #[arg(long = "ol", env = "COOLPY7_OL", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    rejoin_secs: u64,

    /// Cluster: the address peers reach this node at [default: the host of -l, else the host's
    /// first private IPv4 address]
    #[arg(long = "cad", env = "COOLPY7_CAD", value_name = "ADDR")]
    advertise: Option<String>,

    /// Cluster: largest forwarded record in bytes (topic + payload + 7, + MQTT 5 properties + 2 and
    /// expiry 4 when present); larger ones stay local. 0: no limit (what -mpl admits)
    #[arg(
        long = "csl",
        env = "COOLPY7_CSL",
        value_name = "BYTES",
        default_value_t = 0
    )]
    sync_limit: usize,

    /// Cluster: bytes held per peer for QoS 1 and 2 messages it has not acknowledged yet;
    /// publishers wait past half of it, and beyond it such messages for that peer are dropped
    /// (counted)
    #[arg(
        long = "csb",
        env = "COOLPY7_CSB",
        value_name = "BYTES",
        default_value_t = 16 << 20
    )]
    sync_buffer: usize,

    /// Cluster: newest sync (forwarding) version this node writes and reads, 1 to 6; 5 plays a
    /// node of a release before session snapshots version 2 (sessions handed over without when
    /// their client connected and how long it has been gone), 4 one before cluster-wide client ids (no claims, no sessions handed over), 3
    /// one before retained anti-entropy (retained messages without stamps), 2 one before
    /// acknowledged forwarding (every message best effort), 1 one before MQTT 5 (messages cross
    /// without their MQTT 5 properties)
    #[arg(long = "csv", env = "COOLPY7_CSV", value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u8).range(1..=6))]
    sync_version: u8,

    /// Cluster: milliseconds a CONNECT waits for the other nodes to give up its client id (and
    /// hand its session over); a node that has not answered by then is not waited for, and the
    /// client starts a new session if none came
    #[arg(long = "cht", env = "COOLPY7_CHT", value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    handover_timeout_ms: u64,

    /// Cluster: where a shared subscription group's messages go: local (a member on the
    /// publishing node when one is online, else one on another node) or cluster (spread over
    /// every node with members)
    #[arg(long = "ssp", env = "COOLPY7_SSP", value_name = "POLICY", default_value = "local",
          value_parser = clap::value_parser!(SharedPolicy))]
    shared_policy: SharedPolicy,

    /// Cluster: milliseconds between probes of a random member
    #[arg(long = "cpp", env = "COOLPY7_CPP", value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    probe_period_ms: u64,

    /// Cluster: milliseconds to wait for a direct probe's answer before probing indirectly
    #[arg(long = "cpr", env = "COOLPY7_CPR", value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    probe_rtt_ms: u64,

    /// Cluster: members asked to probe an unresponsive member indirectly
    #[arg(long = "cip", env = "COOLPY7_CIP", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=16))]
    indirect_probes: u64,

    /// Cluster: milliseconds a suspected member has to refute before it is marked down
    #[arg(long = "csd", env = "COOLPY7_CSD", value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    suspect_to_down_ms: u64,

    /// Seconds a node drains after SIGTERM before it exits: it answers /readyz 503, stops
    /// accepting connections and disconnects its clients at -dr per second; whoever is still
    /// connected when this runs out is disconnected at once. 0 = disconnect everyone at once
    #[arg(long = "dg", env = "COOLPY7_DG", value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    drain_grace: u64,

    /// Clients disconnected per second while draining (spreads the reconnect over the other
    /// nodes), 0 = all at once
    #[arg(long = "dr", env = "COOLPY7_DR", value_name = "PER_SEC", default_value_t = 1000,
          value_parser = clap::value_parser!(u32))]
    drain_rate: u32,

    /// Server Reference sent to MQTT 5 clients disconnected by a drain, with reason 0x9C "Use
    /// another server" instead of 0x8B "Server shutting down" (e.g. the load balancer's
    /// host:port)
    #[arg(long = "dsr", env = "COOLPY7_DSR", value_name = "REFERENCE",
          value_parser = parse_server_reference)]
    drain_server_reference: Option<String>,

    /// Data directory: persistent sessions (subscriptions, queued and in-flight QoS 1/2
    /// messages, QoS 2 state) and retained messages are kept there and read back at start-up.
    /// Left out = in memory only
    #[arg(long = "dd", env = "COOLPY7_DD", value_name = "DIR", value_parser = parse_data_dir)]
    data_dir: Option<std::path::PathBuf>,

    /// With -dd: 0 = every acknowledgement (PUBACK, PUBREC, SUBACK, CONNACK) waits for an
    /// fsync of what it acknowledges; N = acknowledge once written to the operating system and
    /// fsync every N ms (a crash of the process loses nothing, a power loss the last N ms)
    #[arg(long = "dfs", env = "COOLPY7_DFS", value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    data_fsync_ms: u64,

    /// Scheduling of the broker's threads: batch (Linux SCHED_BATCH: a woken thread does not
    /// preempt a busy CPU's, more work per switch under load) or normal (as started)
    #[arg(long = "tsp", env = "COOLPY7_TSP", value_name = "POLICY", default_value = "batch",
          value_parser = clap::value_parser!(ThreadScheduling))]
    thread_scheduling: ThreadScheduling,

    /// Log filter in tracing EnvFilter syntax, e.g. info or coolpy7=debug,warn
    /// [default: info, or RUST_LOG when set]
    #[arg(long = "log-level", env = "COOLPY7_LOG_LEVEL", value_name = "FILTER",
          value_parser = parse_log_filter)]
    log_level: Option<String>,
}

/// A listen address that may be turned off (empty or "nil"): clap treats a field of type
/// `Option` as "flag may be absent", so the "disabled" state needs its own type.
#[derive(Debug, Clone)]
struct OptionalListen(Option<ListenAddr>);

fn parse_optional_listen(s: &str) -> Result<OptionalListen, ListenAddrError> {
    if s.is_empty() || s.eq_ignore_ascii_case("nil") {
        return Ok(OptionalListen(None));
    }
    s.parse().map(|addr| OptionalListen(Some(addr)))
}

fn parse_ws_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.contains(['?', '#']) || s.chars().any(char::is_whitespace) {
        return Err("expected an absolute path such as /mqtt (no query, no spaces)".to_string());
    }
    Ok(s.to_string())
}

/// A Server Reference is an MQTT UTF-8 string: at most 65,535 bytes and no U+0000.
fn parse_data_dir(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() {
        return Err(
            "the data directory must not be empty (leave -dd out to keep state in memory only)"
                .to_string(),
        );
    }
    Ok(std::path::PathBuf::from(s))
}

fn parse_server_reference(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the server reference must not be empty".to_string());
    }
    if s.len() > usize::from(u16::MAX) || s.contains('\0') {
        return Err("expected at most 65,535 bytes of UTF-8 without NUL".to_string());
    }
    Ok(s.to_string())
}

fn parse_token(s: &str) -> Result<String, String> {
    // An empty token would make `/sys?token=` open to anyone.
    if s.is_empty() {
        return Err("the token must not be empty".to_string());
    }
    Ok(s.to_string())
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// A boolean flag's value, spelled as Go's `strconv.ParseBool` (and so the original Coolpy7)
/// accepts it: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False. The value is required
/// (`-wsa=false`, `-wsa false`): a bare `-wsa` would make `-wsa false` ambiguous.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false (also 1/0, t/f, TRUE/FALSE, True/False)".to_string()),
    }
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    validate_log_filter(s)?;
    Ok(s.to_string())
}

fn validate_log_filter(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("the filter must not be empty".to_string());
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(drop)
        .map_err(|err| err.to_string())
}

/// Rewrites Go-style `-name` / `-name=value` into clap's `--name` / `--name=value`.
///
/// A single-dash argument with more than one character after the dash becomes a long one when
/// its name is a long flag of `cmd`; also when it starts with a letter that is no short flag, so
/// that an unknown `-zzz` is reported by its whole name rather than as `-z`. Short flags keep
/// working (`-h`, `-V`, `-l :1883`, `-t 5`), and nothing after `--` is touched.
fn normalise_args(cmd: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let longs: Vec<&str> = cmd
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .chain(["help", "version"])
        .collect();
    let shorts: Vec<char> = cmd
        .get_arguments()
        .filter_map(clap::Arg::get_short)
        .chain(['h', 'V'])
        .collect();
    let mut out = Vec::with_capacity(args.len());
    let mut rest_is_positional = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_is_positional {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest_is_positional = true;
            out.push(arg);
            continue;
        }
        // Non-UTF-8 arguments cannot be one of our names; clap reports them as they are.
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        let rewrite = match text.strip_prefix('-') {
            Some(body) if !body.starts_with('-') && body.chars().count() > 1 => {
                let name = body.split_once('=').map_or(body, |(name, _)| name);
                let first = body.chars().next().unwrap_or('-');
                longs.contains(&name) || (first.is_ascii_alphabetic() && !shorts.contains(&first))
            }
            _ => false,
        };
        if rewrite {
            out.push(OsString::from(format!("-{text}")));
        } else {
            out.push(arg);
        }
    }
    out
}

/// Everything the broker needs from the command line, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The MQTT listeners, at least one, in [`ListenerKind::ALL`] order.
    pub listeners: Vec<Listener>,
    /// The certificate, key and client-certificate rules; present when a TLS listener is on.
    pub tls: Option<TlsSettings>,
    /// `-wsp`: the path WebSocket clients connect to.
    pub ws_path: String,
    /// `None` disables the HTTP API.
    pub http_listen: Option<ListenAddr>,
    /// `-cl`: the CoAP publish listener (UDP); `None` (the default) = off.
    pub coap_listen: Option<ListenAddr>,
    pub sys_token: String,
    /// `-mc`; `None` = derived from the open-files limit when the server starts (see
    /// [`crate::admission::ConnectionPlan`]), unlimited if nothing resolves it.
    pub max_connections: Option<usize>,
    /// Resolved: `-mpl=0` becomes the protocol maximum.
    pub max_packet_size: usize,
    /// `-mcl`: the largest CONNECT, whole packet.
    pub max_connect_size: usize,
    /// `-mhb`: read-buffer bytes of all connections before CONNECT, together.
    pub handshake_bytes: usize,
    /// `-hmc`: open HTTP API connections.
    pub http_max_connections: usize,
    /// `-hto`: time to receive an HTTP request's headers.
    pub http_header_timeout: Duration,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub max_qos: QoS,
    pub max_inflight: u16,
    pub max_queued: usize,
    /// Distinct filters one session may hold; `None` = unlimited.
    pub max_subscriptions: Option<usize>,
    /// How long an offline persistent session is kept; `None` = forever. Caps what MQTT 5
    /// clients ask for.
    pub session_expiry: Option<Duration>,
    /// `-mka`: MQTT 5 Server Keep Alive in seconds; `None` = keepalives are not capped.
    pub max_keep_alive: Option<u16>,
    /// `-mri`: the Receive Maximum announced to MQTT 5 clients.
    pub max_receive: u16,
    /// `-mta`: the Topic Alias Maximum, inbound and outbound.
    pub max_topic_aliases: u16,
    /// `-wsa`: whether topic filters may hold wildcards (MQTT 5 Wildcard Subscription
    /// Available).
    pub wildcard_subscriptions: bool,
    /// `-sia`: whether a SUBSCRIBE may carry a Subscription Identifier (MQTT 5 Subscription
    /// Identifiers Available).
    pub subscription_identifiers: bool,
    /// `-tsp`: how the kernel schedules the broker's threads.
    pub thread_scheduling: ThreadScheduling,
    /// `-dg`, `-dr`, `-dsr`: what SIGTERM does (see [`crate::drain`]).
    pub drain: DrainConfig,
    /// `-dd`: the data directory; `None`: in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// `-dfs`: when what is written to the data directory is durable.
    pub data_sync: crate::store::SyncPolicy,

    /// The effective log filter (flag or `COOLPY7_LOG_LEVEL`, else `RUST_LOG`, else `info`).
    pub log_level: String,
    /// `None` unless `-nid` is given.
    pub cluster: Option<ClusterConfig>,
    /// Authentication and authorization.
    pub access: AccessConfig,
    /// `-pl`, `-psl`, `-dt`, `-cr`, `-prm`, `-prb`.
    pub limits: AbuseLimits,
}

/// How a node drains on SIGTERM (`-dg`, `-dr`, `-dsr`; see [`crate::drain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// The longest the drain takes: then whoever is left is disconnected at once.
    pub grace: Duration,
    /// Clients disconnected per second; 0 = all at once.
    pub rate: u32,
    /// Sent to MQTT 5 clients with reason 0x9C "Use another server"; `None`: 0x8B.
    pub server_reference: Option<String>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            grace: Duration::from_secs(30),
            rate: 1000,
            server_reference: None,
        }
    }
}

impl Default for Config {
    /// The documented defaults, as if started with no flags.
    fn default() -> Self {
        Config {
            listeners: vec![Listener {
                kind: ListenerKind::Tcp,
                addr: ListenAddr {
                    host: None,
                    port: 1883,
                },
                proxy_protocol: false,
            }],
            tls: None,
            ws_path: "/mqtt".to_string(),
            http_listen: Some(ListenAddr {
                host: None,
                port: 8081,
            }),
            coap_listen: None,
            sys_token: "coolpy7".to_string(),
            max_connections: None,
            max_packet_size: DEFAULT_MAX_PACKET as usize,
            max_connect_size: DEFAULT_MAX_CONNECT as usize,
            handshake_bytes: DEFAULT_HANDSHAKE_BYTES as usize,
            http_max_connections: 32,
            http_header_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(60),
            max_qos: QoS::ExactlyOnce,
            max_inflight: 65535,
            max_queued: 1000,
            max_subscriptions: Some(10_000),
            session_expiry: Some(Duration::from_secs(7200)),
            max_keep_alive: None,
            max_receive: 65535,
            max_topic_aliases: 64,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            thread_scheduling: ThreadScheduling::Batch,
            drain: DrainConfig::default(),
            data_dir: None,
            data_sync: crate::store::SyncPolicy::EveryAcknowledgement,
            log_level: "info".to_string(),
            cluster: None,
            access: AccessConfig::default(),
            limits: AbuseLimits::default(),
        }
    }
}

impl Config {
    /// The listener of `kind`, when it is on.
    pub fn listener(&self, kind: ListenerKind) -> Option<&Listener> {
        self.listeners.iter().find(|listener| listener.kind == kind)
    }

    /// The largest CONNECT accepted: `-mcl`, or `-mpl` when that is smaller.
    pub fn connect_limit(&self) -> usize {
        self.max_connect_size.min(self.max_packet_size)
    }

    /// Parses argv (including argv[0]) and `COOLPY7_*` environment variables; on error prints
    /// it and exits 2 (clap's `exit()`); `-h` prints help and exits 0.
    pub fn from_args() -> Config {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Same as [`Config::from_args`], without exiting: for tests and embedding.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let rust_log = std::env::var_os("RUST_LOG");
        Self::parse_with_rust_log(args, rust_log.as_ref().and_then(|v| v.to_str()))
    }

    /// Defaults for tests: an ephemeral port on loopback and no HTTP API.
    pub fn for_tests() -> Config {
        Config {
            listeners: vec![Listener {
                kind: ListenerKind::Tcp,
                addr: ListenAddr {
                    host: Some("127.0.0.1".to_string()),
                    port: 0,
                },
                proxy_protocol: false,
            }],
            http_listen: None,
            coap_listen: None,
            ..Config::default()
        }
    }

    fn parse_with_rust_log<I, T>(args: I, rust_log: Option<&str>) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cmd = Args::command();
        let args = normalise_args(&cmd, args.into_iter().map(Into::into).collect());
        let matches = cmd.try_get_matches_from_mut(args)?;
        let parsed = Args::from_arg_matches(&matches).map_err(|err| err.format(&mut cmd))?;
        Self::from_parsed(parsed, rust_log)
            .map_err(|msg| cmd.error(ErrorKind::ValueValidation, msg))
    }

    fn from_parsed(args: Args, rust_log: Option<&str>) -> Result<Config, String> {
        let log_level = match (args.log_level, rust_log) {
            (Some(explicit), _) => explicit,
            (None, Some(env)) if !env.trim().is_empty() => {
                validate_log_filter(env)
                    .map_err(|err| format!("invalid RUST_LOG {env:?}: {err}"))?;
                env.to_string()
            }
            (None, _) => "info".to_string(),
        };
        let cluster = ClusterFlags {
            node_id: args.node_id,
            seeds: args.seeds,
            key: args.cluster_key,
            advertise: args.advertise,
            gossip_port: args.gossip_port,
            sync_port: args.sync_port,
            rejoin_secs: args.rejoin_secs,
            sync_limit: args.sync_limit,
            sync_buffer: args.sync_buffer,
            sync_version: args.sync_version,
            shared_policy: args.shared_policy,
            probe_period_ms: args.probe_period_ms,
            probe_rtt_ms: args.probe_rtt_ms,
            // Bounded to 1..=16 by the value parser.
            indirect_probes: usize::try_from(args.indirect_probes).unwrap_or(3),
            suspect_to_down_ms: args.suspect_to_down_ms,
            handover_timeout_ms: args.handover_timeout_ms,
        }
        .resolve()?;
        let (listeners, tls) = ListenerFlags {
            tcp: args.listen.0,
            tls: args.tls_listen.and_then(|l| l.0),
            ws: args.ws_listen.and_then(|l| l.0),
            wss: args.wss_listen.and_then(|l| l.0),
            proxy: args.proxy_protocol.0,
            cert: args.tls_cert,
            key: args.tls_key,
            client_ca: args.tls_client_ca,
            verify: args.tls_verify,
            identity: args.tls_identity,
            reload_secs: args.tls_reload_interval,
        }
        .resolve()?;
        let access = AccessFlags {
            mode: args.auth_mode,
            jwt_secret: args.jwt_secret,
            jwt_secret_file: args.jwt_secret_file,
            jwt_public_key: args.jwt_public_key,
            http_url: args.http_service,
            http_token: args.http_service_token,
            http_token_file: args.http_service_token_file,
            http_timeout: args.http_service_timeout,
            http_cache: args.http_service_cache,
            password_file: args.password_file,
            rules: args.acl_file,
            default: args.acl_default,
            reload_secs: args.access_reload_interval,
        }
        .resolve()?;
        // Bounded by the value parsers to PROTOCOL_MAX_PACKET, which fits in usize.
        let max_packet_size = match args.max_packet_size {
            0 => PROTOCOL_MAX_PACKET,
            n => usize::try_from(n).unwrap_or(PROTOCOL_MAX_PACKET),
        };
        let max_connect_size = usize::try_from(args.max_connect_size).unwrap_or(usize::MAX);
        let handshake_bytes = usize::try_from(args.handshake_bytes).unwrap_or(usize::MAX);
        let connect_limit = max_connect_size.min(max_packet_size);
        // A TLS or WebSocket handshake is counted too, per layer (WSS has two).
        let layers = listeners
            .iter()
            .map(|l| usize::from(l.kind.uses_tls()) + usize::from(l.kind.uses_websocket()))
            .max()
            .unwrap_or(0);
        let one_handshake = connect_limit + layers * crate::transport::LAYER_HANDSHAKE_BYTES;
        if handshake_bytes < one_handshake {
            return Err(format!(
                "invalid value '{handshake_bytes}' for '--mhb': must be at least the largest \
                 CONNECT ({connect_limit} bytes, the smaller of -mcl and -mpl){}, or no CONNECT \
                 of that size could ever be read",
                if layers > 0 {
                    format!(
                        " and {} bytes per TLS or WebSocket layer of the listeners",
                        crate::transport::LAYER_HANDSHAKE_BYTES
                    )
                } else {
                    String::new()
                }
            ));
        }
        Ok(Config {
            listeners,
            tls,
            ws_path: args.ws_path,
            http_listen: args.http_listen.0,
            coap_listen: args.coap_listen.and_then(|l| l.0),
            sys_token: args.sys_token,
            max_connections: (args.max_connections != 0).then_some(args.max_connections),
            max_packet_size,
            max_connect_size,
            handshake_bytes,
            // Bounded by the value parser to 65,536.
            http_max_connections: usize::try_from(args.http_max_connections).unwrap_or(32),
            http_header_timeout: Duration::from_secs(args.http_header_timeout),
            connect_timeout: Duration::from_secs(args.connect_timeout),
            write_timeout: Duration::from_secs(args.write_timeout),
            max_qos: QoS::from_u8(args.max_qos)
                .ok_or_else(|| format!("invalid value '{}' for '--mqos'", args.max_qos))?,
            max_inflight: args.max_inflight,
            max_queued: args.max_queued,
            max_subscriptions: (args.max_subscriptions != 0).then_some(args.max_subscriptions),
            session_expiry: (args.session_expiry != 0)
                .then(|| Duration::from_secs(args.session_expiry)),
            max_keep_alive: (args.max_keep_alive != 0).then_some(args.max_keep_alive),
            max_receive: args.max_receive,
            max_topic_aliases: args.max_topic_aliases,
            wildcard_subscriptions: args.wildcard_subscriptions,
            subscription_identifiers: args.subscription_identifiers,
            thread_scheduling: args.thread_scheduling,
            drain: DrainConfig {
                grace: Duration::from_secs(args.drain_grace),
                rate: args.drain_rate,
                server_reference: args.drain_server_reference,
            },
            data_dir: args.data_dir,
            data_sync: match args.data_fsync_ms {
                0 => crate::store::SyncPolicy::EveryAcknowledgement,
                ms => crate::store::SyncPolicy::Interval(Duration::from_millis(ms)),
            },
            log_level,
            cluster,
            access,
            limits: AbuseLimits {
                ping_interval: (args.ping_limit > 0).then(|| Duration::from_secs(args.ping_limit)),
                publish_interval: (args.publish_limit > 0)
                    .then(|| Duration::from_millis(args.publish_limit)),
                ban: (args.ban_time > 0).then(|| Duration::from_secs(args.ban_time)),
                connection_rate: (args.connection_rate > 0).then_some(args.connection_rate),
                publish_messages: (args.publish_rate_messages > 0)
                    .then_some(args.publish_rate_messages),
                publish_bytes: (args.publish_rate_bytes > 0).then_some(args.publish_rate_bytes),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard};

    /// clap reads the process environment, so tests that parse hold this lock: the env-var tests
    /// set `COOLPY7_*` and would otherwise leak into parallel parses.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn lock_env() -> MutexGuard<'static, ()> {
        let guard = ENV_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("COOLPY7_")) {
                std::env::remove_var(key);
            }
        }
        guard
    }

    /// The plain TCP listener's address.
    fn tcp(config: &Config) -> Option<ListenAddr> {
        config.listener(ListenerKind::Tcp).map(|l| l.addr.clone())
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let argv = std::iter::once("coolpy7").chain(args.iter().copied());
        Config::parse_with_rust_log(argv, None)
    }

    fn ok(args: &[&str]) -> Config {
        match parse(args) {
            Ok(config) => config,
            Err(err) => panic!("{args:?} should parse: {err}"),
        }
    }

    fn err(args: &[&str]) -> clap::Error {
        match parse(args) {
            Ok(config) => panic!("{args:?} should fail, got {config:?}"),
            Err(err) => err,
        }
    }

    fn addr(host: Option<&str>, port: u16) -> ListenAddr {
        ListenAddr {
            host: host.map(str::to_string),
            port,
        }
    }

    /// Each flag in the four spellings Go's flag package accepts, and the single-dash space form.
    fn all_forms(name: &str, value: &str) -> Vec<Vec<String>> {
        vec![
            vec![format!("-{name}={value}")],
            vec![format!("--{name}={value}")],
            vec![format!("-{name}"), value.to_string()],
            vec![format!("--{name}"), value.to_string()],
        ]
    }

    fn ok_forms(name: &str, value: &str, check: impl Fn(&Config)) {
        for form in all_forms(name, value) {
            let form: Vec<&str> = form.iter().map(String::as_str).collect();
            check(&ok(&form));
        }
    }

    #[test]
    fn no_flags_gives_documented_defaults() {
        let _env = lock_env();
        let config = ok(&[]);
        assert_eq!(config, Config::default());
        assert_eq!(
            tcp(&config).map(|a| a.to_string()).as_deref(),
            Some(":1883")
        );
        assert_eq!(config.http_listen, Some(addr(None, 8081)));
        assert_eq!(config.max_packet_size, 1_048_576);
        assert_eq!(config.max_connect_size, 65_536);
        assert_eq!(config.connect_limit(), 65_536);
        assert_eq!(config.handshake_bytes, 67_108_864);
        assert_eq!(config.http_max_connections, 32);
        assert_eq!(config.http_header_timeout, Duration::from_secs(5));
        assert_eq!(config.max_connections, None);
        assert_eq!(config.max_subscriptions, Some(10_000));
        assert_eq!(config.max_qos, QoS::ExactlyOnce);
        assert!(config.wildcard_subscriptions);
        assert!(config.subscription_identifiers);
        assert_eq!(config.log_level, "info");
    }

    #[test]
    fn for_tests_uses_loopback_ephemeral_and_no_http() {
        let config = Config::for_tests();
        assert_eq!(tcp(&config), Some(addr(Some("127.0.0.1"), 0)));
        assert_eq!(config.http_listen, None);
        assert_eq!(config.max_inflight, 65535);
    }

    #[test]
    fn every_flag_in_every_form() {
        let _env = lock_env();
        ok_forms("l", "127.0.0.1:0", |c| {
            assert_eq!(tcp(c), Some(addr(Some("127.0.0.1"), 0)))
        });
        ok_forms("l", ":1884", |c| assert_eq!(tcp(c), Some(addr(None, 1884))));
        ok_forms("hl", "localhost:9000", |c| {
            assert_eq!(c.http_listen, Some(addr(Some("localhost"), 9000)))
        });
        ok_forms("syst", "s3cret", |c| assert_eq!(c.sys_token, "s3cret"));
        ok_forms("mc", "10", |c| assert_eq!(c.max_connections, Some(10)));
        ok_forms("mc", "0", |c| assert_eq!(c.max_connections, None));
        ok_forms("mpl", "1024", |c| assert_eq!(c.max_packet_size, 1024));
        ok_forms("mpl", "0", |c| {
            assert_eq!(c.max_packet_size, PROTOCOL_MAX_PACKET)
        });
        ok_forms("mpl", "100", |c| {
            assert_eq!(c.connect_limit(), 100, "-mpl bounds CONNECT too")
        });
        ok_forms("mcl", "4096", |c| {
            assert_eq!(c.max_connect_size, 4096);
            assert_eq!(c.connect_limit(), 4096);
        });
        ok_forms("mhb", "100000", |c| assert_eq!(c.handshake_bytes, 100_000));
        ok_forms("hmc", "4", |c| assert_eq!(c.http_max_connections, 4));
        ok_forms("hto", "9", |c| {
            assert_eq!(c.http_header_timeout, Duration::from_secs(9))
        });
        ok_forms("nt", "5", |c| {
            assert_eq!(c.connect_timeout, Duration::from_secs(5))
        });
        ok_forms("t", "7", |c| {
            assert_eq!(c.write_timeout, Duration::from_secs(7))
        });
        ok_forms("mqos", "0", |c| assert_eq!(c.max_qos, QoS::AtMostOnce));
        ok_forms("mqos", "1", |c| assert_eq!(c.max_qos, QoS::AtLeastOnce));
        ok_forms("mif", "65535", |c| assert_eq!(c.max_inflight, 65535));
        ok_forms("mq", "5", |c| assert_eq!(c.max_queued, 5));
        ok_forms("msc", "3", |c| assert_eq!(c.max_subscriptions, Some(3)));
        ok_forms("msc", "0", |c| assert_eq!(c.max_subscriptions, None));
        ok_forms("se", "30", |c| {
            assert_eq!(c.session_expiry, Some(Duration::from_secs(30)))
        });
        ok_forms("se", "0", |c| assert_eq!(c.session_expiry, None));
        ok_forms("mka", "30", |c| assert_eq!(c.max_keep_alive, Some(30)));
        ok_forms("mka", "0", |c| assert_eq!(c.max_keep_alive, None));
        ok_forms("mri", "2", |c| assert_eq!(c.max_receive, 2));
        ok_forms("mta", "0", |c| assert_eq!(c.max_topic_aliases, 0));
        ok_forms("mta", "1000", |c| assert_eq!(c.max_topic_aliases, 1000));
        for off in ["false", "0", "f", "F", "FALSE", "False"] {
            ok_forms("wsa", off, |c| {
                assert!(!c.wildcard_subscriptions, "-wsa={off}")
            });
            ok_forms("sia", off, |c| {
                assert!(!c.subscription_identifiers, "-sia={off}")
            });
        }
        for on in ["true", "1", "t", "T", "TRUE", "True"] {
            ok_forms("wsa", on, |c| {
                assert!(c.wildcard_subscriptions, "-wsa={on}")
            });
            ok_forms("sia", on, |c| {
                assert!(c.subscription_identifiers, "-sia={on}")
            });
        }
        ok_forms("log-level", "coolpy7=debug,warn", |c| {
            assert_eq!(c.log_level, "coolpy7=debug,warn")
        });
    }

    #[test]
    fn flags_combine() {
        let _env = lock_env();
        let config = ok(&[
            "-l", ":1", "--hl=:2", "-mc=3", "--mif", "4", "-t=5", "-t", "6",
        ]);
        assert_eq!(tcp(&config), Some(addr(None, 1)));
        assert_eq!(config.http_listen, Some(addr(None, 2)));
        assert_eq!(config.max_connections, Some(3));
        assert_eq!(config.max_inflight, 4);
        // Like Go's flag package, the last occurrence wins.
        assert_eq!(config.write_timeout, Duration::from_secs(6));
    }

    #[test]
    fn transport_listeners_and_tls_files() {
        let _env = lock_env();
        let config = ok(&[
            "-tl=:8883",
            "-wl",
            "127.0.0.1:8083",
            "--wsl=:8084",
            "-wsp=/ws",
            "-pp=tcp,wss",
            "-tc",
            "/etc/tls/tls.crt",
            "-tk=/etc/tls/tls.key",
            "-tca=/etc/ca/ca.crt",
            "-tv=optional",
            "-tcn=cn",
            "-tri=2",
        ]);
        let kinds: Vec<_> = config
            .listeners
            .iter()
            .map(|l| (l.kind, l.addr.to_string(), l.proxy_protocol))
            .collect();
        assert_eq!(
            kinds,
            [
                (ListenerKind::Tcp, ":1883".to_string(), true),
                (ListenerKind::Tls, ":8883".to_string(), false),
                (ListenerKind::Ws, "127.0.0.1:8083".to_string(), false),
                (ListenerKind::Wss, ":8084".to_string(), true),
            ]
        );
        assert_eq!(config.ws_path, "/ws");
        let tls = config.tls.expect("TLS settings");
        assert_eq!(tls.cert, PathBuf::from("/etc/tls/tls.crt"));
        assert_eq!(tls.key, PathBuf::from("/etc/tls/tls.key"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/ca/ca.crt")));
        assert_eq!(tls.verify, ClientVerify::Optional);
        assert_eq!(tls.identity, CertIdentity::CommonName);
        assert_eq!(tls.reload_interval, Duration::from_secs(2));

        // The plain listener can be turned off when another is on.
        let config = ok(&["-l=nil", "-wl=:8083"]);
        assert_eq!(tcp(&config), None);
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.tls, None);

        for (args, expected) in [
            (&["-l="][..], "every MQTT listener is off"),
            (&["-tl=:8883"], "-tc"),
            (&["-wsp=mqtt"], "absolute path"),
            (&["-pp=quic"], "unknown listener"),
            (&["-pp=ws"], "-pp names the ws listener"),
            (&["-tv=sometimes"], "none, optional or required"),
            (&["-tri=0"], "--tri"),
            (
                &["-wl=:8083", "-mcl=1000", "-mhb=20000"],
                "per TLS or WebSocket layer",
            ),
        ] {
            let error = err(args).to_string();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn transport_flags_from_the_environment() {
        let _env = lock_env();
        let vars = [
            ("COOLPY7_L", "nil"),
            ("COOLPY7_TL", ":18883"),
            ("COOLPY7_WL", ":18083"),
            ("COOLPY7_WSL", ":18084"),
            ("COOLPY7_WSP", "/broker"),
            ("COOLPY7_PP", "tls"),
            ("COOLPY7_TC", "c.pem"),
            ("COOLPY7_TK", "k.pem"),
            ("COOLPY7_TCA", "ca.pem"),
            ("COOLPY7_TV", "required"),
            ("COOLPY7_TCN", "san"),
            ("COOLPY7_TRI", "9"),
        ];
        for (key, value) in vars {
            std::env::set_var(key, value);
        }
        let config = parse(&[]);
        for (key, _) in vars {
            std::env::remove_var(key);
        }
        let config = config.expect("valid");
        let kinds: Vec<_> = config.listeners.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            [ListenerKind::Tls, ListenerKind::Ws, ListenerKind::Wss]
        );
        assert!(config.listeners[0].proxy_protocol);
        assert_eq!(config.ws_path, "/broker");
        let tls = config.tls.expect("TLS settings");
        assert_eq!(tls.verify, ClientVerify::Required);
        assert_eq!(tls.identity, CertIdentity::SubjectAltName);
        assert_eq!(tls.reload_interval, Duration::from_secs(9));
    }

    #[test]
    fn http_can_be_disabled() {
        let _env = lock_env();
        for args in [&["-hl="][..], &["-hl=nil"], &["--hl", ""], &["-hl", "NIL"]] {
            assert_eq!(ok(args).http_listen, None, "{args:?}");
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let _env = lock_env();
        let cases: &[(&[&str], &str)] = &[
            (&["-l=:70000"], "--l"),
            (&["-l=1883"], "missing port"),
            (&["-l", ":abc"], "invalid port"),
            (&["-hl=:99999"], "--hl"),
            (&["-mc=abc"], "--mc"),
            (&["-mc=-1"], "--mc"),
            (&["-mpl=268435461"], "--mpl"),
            (&["-mcl=63"], "--mcl"),
            (&["-mcl=268435461"], "--mcl"),
            (&["-mcl=x"], "--mcl"),
            (&["-mhb=0"], "--mhb"),
            (&["-mhb=65535"], "--mhb"),
            (&["-mcl=1000", "-mhb=999"], "--mhb"),
            (&["-hmc=0"], "--hmc"),
            (&["-hmc=65537"], "--hmc"),
            (&["-hto=0"], "--hto"),
            (&["-hto=3601"], "--hto"),
            (&["-mqos=3"], "--mqos"),
            (&["-nt=0"], "--nt"),
            (&["-t=0"], "--t"),
            (&["-mif=0"], "--mif"),
            (&["-mif=65536"], "--mif"),
            (&["-mri=0"], "--mri"),
            (&["-mri=65536"], "--mri"),
            (&["-mka=-1"], "--mka"),
            (&["-mta=65536"], "--mta"),
            (&["-wsa=no"], "--wsa"),
            (&["-wsa="], "--wsa"),
            (&["-wsa", "2"], "--wsa"),
            (&["-sia=off"], "--sia"),
            (&["-sia=yes"], "--sia"),
            (&["-mq=0"], "--mq"),
            (&["-msc=abc"], "--msc"),
            (&["-msc=-1"], "--msc"),
            (&["-syst="], "--syst"),
            (&["--log-level=foo["], "--log-level"),
            (&["--log-level="], "--log-level"),
        ];
        for (args, needle) in cases {
            let error = err(args);
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{args:?}");
            let text = error.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
        }
    }

    #[test]
    fn handover_timeout_flag() {
        let _env = lock_env();
        let cluster = ["-nid", "n1", "-csk", "k"];
        let timeout = |extra: &[&str]| {
            let args: Vec<&str> = cluster.iter().chain(extra).copied().collect();
            ok(&args).cluster.expect("cluster mode").handover_timeout
        };
        assert_eq!(timeout(&[]), Duration::from_millis(2000), "default");
        for form in all_forms("cht", "250") {
            let form: Vec<&str> = form.iter().map(String::as_str).collect();
            assert_eq!(timeout(&form), Duration::from_millis(250), "{form:?}");
        }
        for bad in ["9", "60001", "x", ""] {
            let flag = format!("-cht={bad}");
            let args: Vec<&str> = cluster.iter().copied().chain([flag.as_str()]).collect();
            let error = err(&args);
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert!(error.to_string().contains("--cht"), "{args:?}: {error}");
        }
    }

    #[test]
    fn sync_version_flag() {
        let _env = lock_env();
        let cluster = ["-nid", "n1", "-csk", "k"];
        let version = |extra: &[&str]| {
            let args: Vec<&str> = cluster.iter().chain(extra).copied().collect();
            ok(&args).cluster.expect("cluster mode").sync_version
        };
        assert_eq!(version(&[]), 6, "default");
        for form in all_forms("csv", "1") {
            let form: Vec<&str> = form.iter().map(String::as_str).collect();
            assert_eq!(version(&form), 1, "{form:?}");
        }
        assert_eq!(version(&["-csv=1", "-csv=2"]), 2, "the last one wins");
        for bad in ["0", "7", "x", "", "-1", "256"] {
            let flag = format!("-csv={bad}");
            let args: Vec<&str> = cluster.iter().copied().chain([flag.as_str()]).collect();
            let error = err(&args);
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert!(error.to_string().contains("--csv"), "{args:?}: {error}");
        }

        std::env::set_var("COOLPY7_CSV", "1");
        let from_env = parse(&cluster);
        let cli_wins = parse(&[&cluster[..], &["-csv", "2"]].concat());
        std::env::set_var("COOLPY7_CSV", "7");
        let bad_env = parse(&cluster);
        std::env::remove_var("COOLPY7_CSV");
        let sync_version = |parsed: Result<Config, clap::Error>| {
            parsed.map(|config| config.cluster.map(|cluster| cluster.sync_version))
        };
        assert_eq!(sync_version(from_env).ok(), Some(Some(1)));
        assert_eq!(sync_version(cli_wins).ok(), Some(Some(2)));
        match bad_env {
            Ok(config) => panic!("COOLPY7_CSV=7 accepted: {config:?}"),
            Err(error) => {
                assert_eq!(error.exit_code(), 2);
                assert!(error.to_string().contains("--csv"), "{error}");
            }
        }
    }

    #[test]
    fn shared_subscription_policy_flag() {
        let _env = lock_env();
        let cluster = ["-nid", "n1", "-csk", "k"];
        let policy = |extra: &[&str]| {
            let args: Vec<&str> = cluster.iter().chain(extra).copied().collect();
            ok(&args).cluster.expect("cluster mode").shared_policy
        };
        assert_eq!(policy(&[]), SharedPolicy::Local, "default");
        for form in all_forms("ssp", "cluster") {
            let form: Vec<&str> = form.iter().map(String::as_str).collect();
            assert_eq!(policy(&form), SharedPolicy::Cluster, "{form:?}");
        }
        assert_eq!(policy(&["-ssp=local"]), SharedPolicy::Local);
        for bad in ["", "both", "prefer_local", "1"] {
            let flag = format!("-ssp={bad}");
            let args: Vec<&str> = cluster.iter().copied().chain([flag.as_str()]).collect();
            let error = err(&args);
            assert_eq!(error.exit_code(), 2, "{args:?}");
            let text = error.to_string();
            assert!(text.contains("--ssp"), "{args:?}: {text}");
            assert!(text.contains("local or cluster"), "{args:?}: {text}");
        }
    }

    #[test]
    fn thread_scheduling_flag() {
        let _env = lock_env();
        assert_eq!(
            ok(&[]).thread_scheduling,
            ThreadScheduling::Batch,
            "default"
        );
        for form in all_forms("tsp", "normal") {
            let form: Vec<&str> = form.iter().map(String::as_str).collect();
            assert_eq!(
                ok(&form).thread_scheduling,
                ThreadScheduling::Normal,
                "{form:?}"
            );
        }
        assert_eq!(
            ok(&["-tsp=BATCH"]).thread_scheduling,
            ThreadScheduling::Batch
        );
        for bad in ["", "fifo", "1"] {
            let flag = format!("-tsp={bad}");
            let error = err(&[flag.as_str()]);
            assert_eq!(error.exit_code(), 2, "{flag}");
            let text = error.to_string();
            assert!(text.contains("--tsp"), "{flag}: {text}");
            assert!(text.contains("batch or normal"), "{flag}: {text}");
        }
    }

    #[test]
    fn drain_flags() {
        let _env = lock_env();
        assert_eq!(ok(&[]).drain, DrainConfig::default(), "default");
        assert_eq!(ok(&[]).drain.grace, Duration::from_secs(30));
        assert_eq!(ok(&[]).drain.rate, 1000);
        ok_forms("dg", "0", |c| assert_eq!(c.drain.grace, Duration::ZERO));
        ok_forms("dg", "120", |c| {
            assert_eq!(c.drain.grace, Duration::from_secs(120))
        });
        ok_forms("dr", "50", |c| assert_eq!(c.drain.rate, 50));
        ok_forms("dr", "0", |c| assert_eq!(c.drain.rate, 0));
        ok_forms("dsr", "mqtt.example.com:1883", |c| {
            assert_eq!(
                c.drain.server_reference.as_deref(),
                Some("mqtt.example.com:1883")
            )
        });
        for (flag, bad, says) in [
            ("dg", "-1", "--dg"),
            ("dg", "86401", "--dg"),
            ("dg", "soon", "--dg"),
            ("dr", "-5", "--dr"),
            ("dr", "fast", "--dr"),
            ("dsr", "", "must not be empty"),
            ("dsr", "a\0b", "without NUL"),
        ] {
            let flag = format!("-{flag}={bad}");
            let error = err(&[flag.as_str()]);
            assert_eq!(error.exit_code(), 2, "{flag}");
            let text = error.to_string();
            assert!(text.contains(says), "{flag}: {text}");
        }
        let long = format!("-dsr={}", "a".repeat(65_536));
        assert!(err(&[long.as_str()]).to_string().contains("65,535"));
        std::env::set_var("COOLPY7_DG", "7");
        std::env::set_var("COOLPY7_DR", "9");
        std::env::set_var("COOLPY7_DSR", "lb:1883");
        let drain = ok(&[]).drain;
        std::env::remove_var("COOLPY7_DG");
        std::env::remove_var("COOLPY7_DR");
        std::env::remove_var("COOLPY7_DSR");
        assert_eq!(
            drain,
            DrainConfig {
                grace: Duration::from_secs(7),
                rate: 9,
                server_reference: Some("lb:1883".to_string()),
            }
        );
    }

    #[test]
    fn unknown_flags_are_named_in_the_error() {
        let _env = lock_env();
        for (args, needle) in [
            (&["-zzz=1"][..], "zzz"),
            (&["--zzz"], "zzz"),
            (&["-nid=node1"], "nid"),
            (&["stray"], "stray"),
        ] {
            let error = err(args);
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert!(error.to_string().contains(needle), "{args:?}: {error}");
        }
    }

    #[test]
    fn help_and_version_are_not_errors_of_use() {
        let _env = lock_env();
        for args in [&["-h"][..], &["--help"], &["-help"]] {
            let error = err(args);
            assert_eq!(error.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(error.exit_code(), 0);
        }
        for args in [&["-V"][..], &["--version"], &["-version"]] {
            assert_eq!(err(args).kind(), ErrorKind::DisplayVersion, "{args:?}");
        }
    }

    #[test]
    fn help_documents_every_flag_with_its_default() {
        let help = Args::command().render_long_help().to_string();
        for (flag, default) in [
            ("--l", ":1883"),
            ("--hl", ":8081"),
            ("--syst", "coolpy7"),
            ("--mc", "0"),
            ("--mpl", "1048576"),
            ("--mcl", "65536"),
            ("--mhb", "67108864"),
            ("--hmc", "32"),
            ("--hto", "5"),
            ("--nt", "2"),
            ("--t", "60"),
            ("--mqos", "2"),
            ("--mif", "32"),
            ("--mq", "1000"),
            ("--msc", "10000"),
            ("--se", "7200"),
            ("--wsa", "true"),
            ("--sia", "true"),
            ("--wsp", "/mqtt"),
            ("--tcn", "off"),
            ("--tri", "5"),
            ("--log-level", "info"),
        ] {
            assert!(help.contains(flag), "{flag} missing from help:\n{help}");
            assert!(
                help.contains(&format!("[default: {default}")),
                "default of {flag} missing from help:\n{help}"
            );
        }
        assert!(help.contains("COOLPY7_LOG_LEVEL"));
    }

    #[test]
    fn environment_variables_set_flags_and_lose_to_the_command_line() {
        let _env = lock_env();
        let vars = [
            ("COOLPY7_L", "127.0.0.1:1999"),
            ("COOLPY7_HL", "nil"),
            ("COOLPY7_SYST", "tok"),
            ("COOLPY7_MC", "9"),
            ("COOLPY7_MPL", "4096"),
            ("COOLPY7_MCL", "2048"),
            ("COOLPY7_MHB", "8192"),
            ("COOLPY7_HMC", "3"),
            ("COOLPY7_HTO", "7"),
            ("COOLPY7_NT", "3"),
            ("COOLPY7_T", "4"),
            ("COOLPY7_MQOS", "1"),
            ("COOLPY7_MIF", "8"),
            ("COOLPY7_MQ", "50"),
            ("COOLPY7_MSC", "7"),
            ("COOLPY7_WSA", "false"),
            ("COOLPY7_SIA", "0"),
            ("COOLPY7_LOG_LEVEL", "debug"),
        ];
        for (key, value) in vars {
            std::env::set_var(key, value);
        }
        let config = ok(&[]);
        let from_cli = ok(&["-mc=1", "--log-level=warn", "-wsa", "true", "-sia=1"]);
        std::env::set_var("COOLPY7_HL", "");
        let empty_hl = ok(&[]).http_listen;
        let bad = {
            std::env::set_var("COOLPY7_MC", "abc");
            parse(&[])
        };
        for (key, _) in vars {
            std::env::remove_var(key);
        }

        assert_eq!(tcp(&config), Some(addr(Some("127.0.0.1"), 1999)));
        assert_eq!(config.http_listen, None);
        assert_eq!(empty_hl, None);
        assert_eq!(config.sys_token, "tok");
        assert_eq!(config.max_connections, Some(9));
        assert_eq!(config.max_packet_size, 4096);
        assert_eq!(config.max_connect_size, 2048);
        assert_eq!(config.handshake_bytes, 8192);
        assert_eq!(config.http_max_connections, 3);
        assert_eq!(config.http_header_timeout, Duration::from_secs(7));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.write_timeout, Duration::from_secs(4));
        assert_eq!(config.max_qos, QoS::AtLeastOnce);
        assert_eq!(config.max_inflight, 8);
        assert_eq!(config.max_queued, 50);
        assert_eq!(config.max_subscriptions, Some(7));
        assert!(!config.wildcard_subscriptions);
        assert!(!config.subscription_identifiers);
        assert_eq!(config.log_level, "debug");
        assert_eq!(from_cli.max_connections, Some(1));
        assert_eq!(from_cli.log_level, "warn");
        assert!(from_cli.wildcard_subscriptions, "the command line wins");
        assert!(from_cli.subscription_identifiers, "the command line wins");
        match bad {
            Ok(config) => panic!("COOLPY7_MC=abc accepted: {config:?}"),
            Err(error) => {
                assert_eq!(error.exit_code(), 2);
                assert!(error.to_string().contains("--mc"), "{error}");
            }
        }
    }

    #[test]
    fn log_level_precedence() {
        let _env = lock_env();
        let argv = |extra: &'static [&'static str]| {
            std::iter::once("coolpy7").chain(extra.iter().copied())
        };
        let level = |extra, rust_log| {
            Config::parse_with_rust_log(argv(extra), rust_log).map(|c| c.log_level)
        };
        assert_eq!(level(&[], None).ok().as_deref(), Some("info"));
        assert_eq!(level(&[], Some("")).ok().as_deref(), Some("info"));
        assert_eq!(level(&[], Some("trace")).ok().as_deref(), Some("trace"));
        assert_eq!(
            level(&["--log-level=warn"], Some("trace")).ok().as_deref(),
            Some("warn")
        );
        match level(&[], Some("foo[")) {
            Ok(level) => panic!("bad RUST_LOG accepted: {level}"),
            Err(error) => {
                assert_eq!(error.exit_code(), 2);
                assert!(error.to_string().contains("RUST_LOG"), "{error}");
            }
        }
    }

    #[test]
    fn normalise_only_rewrites_our_long_flags() {
        let cmd = Args::command();
        let norm = |args: &[&str]| -> Vec<String> {
            let args = args.iter().map(OsString::from).collect();
            normalise_args(&cmd, args)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            norm(&[
                "-mc",
                "-mc=1",
                "-mc",
                "5",
                "-l",
                "-l=:1",
                "-h",
                "-V",
                "-t=3",
                "-log-level=x"
            ]),
            [
                "-mc",
                "--mc=1",
                "--mc",
                "5",
                "-l",
                "--l=:1",
                "-h",
                "-V",
                "--t=3",
                "--log-level=x"
            ]
        );
        assert_eq!(
            norm(&["x", "--mc=1", "-1", "-", "--", "-mc"]),
            ["x", "--mc=1", "-1", "-", "--", "-mc"]
        );
        assert_eq!(norm(&["x", "-zzz", "-l:1883"]), ["x", "--zzz", "-l:1883"]);
    }

    #[test]
    fn listen_addr_parses_and_displays() {
        let cases = [
            (":1883", None, 1883),
            (":0", None, 0),
            ("0.0.0.0:1883", Some("0.0.0.0"), 1883),
            ("localhost:80", Some("localhost"), 80),
            ("[::1]:1883", Some("::1"), 1883),
            ("[::]:65535", Some("::"), 65535),
            ("[fe80::1%eth0]:1", Some("fe80::1%eth0"), 1),
        ];
        for (text, host, port) in cases {
            let parsed: ListenAddr = match text.parse() {
                Ok(parsed) => parsed,
                Err(error) => panic!("{text}: {error}"),
            };
            assert_eq!(parsed, addr(host, port), "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn listen_addr_errors() {
        use ListenAddrError::*;
        let cases = [
            ("", MissingPort),
            ("1883", MissingPort),
            ("host:", MissingPort),
            (":", MissingPort),
            ("[::1]", MissingPort),
            ("[::1", UnclosedBracket),
            ("[]:1", EmptyHost),
            ("[::1]x:1", TrailingText),
            ("::1:1883", UnbracketedIpv6("::1".to_string())),
            (":70000", InvalidPort("70000".to_string())),
            (":+80", InvalidPort("+80".to_string())),
            (":abc", InvalidPort("abc".to_string())),
            (":-1", InvalidPort("-1".to_string())),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<ListenAddr>(), Err(expected), "{text:?}");
        }
        assert!(ListenAddrError::MissingPort
            .to_string()
            .contains("missing port"));
        assert!(ListenAddrError::InvalidPort("x".into())
            .to_string()
            .contains("invalid port"));
    }

    #[tokio::test]
    async fn bind_tcp_binds_ephemeral_ports() -> std::io::Result<()> {
        let loopback = addr(Some("127.0.0.1"), 0).bind_tcp().await?;
        assert!(loopback.local_addr()?.ip().is_loopback());
        assert_ne!(loopback.local_addr()?.port(), 0);

        let any = addr(None, 0).bind_tcp().await?;
        assert!(any.local_addr()?.ip().is_unspecified());

        let named = addr(Some("localhost"), 0).bind_tcp().await?;
        assert!(named.local_addr()?.ip().is_loopback());
        Ok(())
    }

    #[tokio::test]
    async fn bind_tcp_reports_a_port_in_use() -> std::io::Result<()> {
        let first = addr(Some("127.0.0.1"), 0).bind_tcp().await?;
        let port = first.local_addr()?.port();
        let second = addr(Some("127.0.0.1"), port).bind_tcp().await;
        assert!(second.is_err());
        Ok(())
    }

    #[test]
    fn coap_listener_is_off_unless_given() {
        let _env = lock_env();
        assert_eq!(ok(&[]).coap_listen, None);
        assert_eq!(Config::default().coap_listen, None);
        assert_eq!(Config::for_tests().coap_listen, None);
        ok_forms("cl", ":5683", |c| {
            assert_eq!(c.coap_listen, Some(addr(None, 5683)))
        });
        ok_forms("cl", "127.0.0.1:0", |c| {
            assert_eq!(c.coap_listen, Some(addr(Some("127.0.0.1"), 0)))
        });
        ok_forms("cl", "[::1]:5684", |c| {
            assert_eq!(c.coap_listen, Some(addr(Some("::1"), 5684)))
        });
        for args in [&["-cl="][..], &["-cl=nil"], &["--cl", ""], &["-cl", "NIL"]] {
            assert_eq!(ok(args).coap_listen, None, "{args:?}");
        }
        assert_eq!(
            ok(&["-cl=:5683", "-cl=:5684"]).coap_listen,
            Some(addr(None, 5684)),
            "the last one wins"
        );
        assert_eq!(
            ok(&["-cl=:5683", "-cl=nil"]).coap_listen,
            None,
            "a later nil turns it off"
        );
        // The MQTT listeners are unaffected.
        assert_eq!(tcp(&ok(&["-cl=:5683"])), Some(addr(None, 1883)));
    }

    #[test]
    fn coap_listener_bad_values_are_usage_errors() {
        let _env = lock_env();
        for (args, needle) in [
            (&["-cl=5683"][..], "missing port"),
            (&["-cl=:70000"], "invalid port"),
            (&["-cl", ":x"], "invalid port"),
            (&["-cl=::1:5683"], "brackets"),
            (&["-cl=[::1"], "']'"),
        ] {
            let error = err(args);
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{args:?}");
            let text = error.to_string();
            assert!(text.contains("--cl"), "{args:?}: {text}");
            assert!(text.contains(needle), "{args:?}: {text}");
        }
    }

    #[test]
    fn coap_listener_from_the_environment() {
        let _env = lock_env();
        std::env::set_var("COOLPY7_CL", "127.0.0.1:5683");
        let from_env = parse(&[]).map(|c| c.coap_listen);
        let cli_wins = parse(&["-cl=:5684"]).map(|c| c.coap_listen);
        let cli_off = parse(&["-cl=nil"]).map(|c| c.coap_listen);
        std::env::set_var("COOLPY7_CL", "");
        let empty = parse(&[]).map(|c| c.coap_listen);
        std::env::set_var("COOLPY7_CL", "5683");
        let bad = parse(&[]).map(|c| c.coap_listen);
        std::env::remove_var("COOLPY7_CL");
        assert_eq!(from_env.ok(), Some(Some(addr(Some("127.0.0.1"), 5683))));
        assert_eq!(cli_wins.ok(), Some(Some(addr(None, 5684))));
        assert_eq!(cli_off.ok(), Some(None));
        assert_eq!(empty.ok(), Some(None));
        match bad {
            Ok(listen) => panic!("COOLPY7_CL=5683 accepted: {listen:?}"),
            Err(error) => {
                assert_eq!(error.exit_code(), 2);
                assert!(error.to_string().contains("--cl"), "{error}");
            }
        }
    }

    #[test]
    fn help_documents_the_coap_listener() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("--cl <ADDR>"), "{help}");
        assert!(help.contains("COOLPY7_CL"), "{help}");
        assert!(help.contains("CoAP"), "{help}");
    }

    #[tokio::test]
    async fn bind_udp_binds_ephemeral_ports() -> std::io::Result<()> {
        let loopback = addr(Some("127.0.0.1"), 0).bind_udp().await?;
        assert!(loopback.local_addr()?.ip().is_loopback());
        assert_ne!(loopback.local_addr()?.port(), 0);

        let any = addr(None, 0).bind_udp().await?;
        assert!(any.local_addr()?.ip().is_unspecified());

        let named = addr(Some("localhost"), 0).bind_udp().await?;
        assert!(named.local_addr()?.ip().is_loopback());

        let port = loopback.local_addr()?.port();
        assert!(addr(Some("127.0.0.1"), port).bind_udp().await.is_err());
        Ok(())
    }
}
