//! `coolpy7-bench`: an MQTT 3.1.1 / 5.0 load generator for comparing coolpy7 with other brokers
//! (Mosquitto, rumqttd) on one small machine, where the generator shares the CPU with the broker
//! and so must cost as little as possible.
//!
//! - [`codec`]: a small client-side codec (encoders into reused buffers, a borrowing decoder),
//!   3.1.1 and 5.0 (properties, reason codes, topic aliases both ways).
//! - [`client`]: connection set-up and the publisher / subscriber loops: one task per
//!   connection, 64 KiB reads decoded in place, batched writes, per-connection counters in
//!   atomics (no locks, no allocation per message).
//! - [`stream`]: the transports: plain TCP, TLS (`--tls`), WebSocket (`--ws`) and both.
//! - [`run`]: the scenarios (`fanin`, `fanout`, `p2p`, `latency`, `conns`) and the measurement
//!   window.
//! - [`subs`]: the `subs` scenario (memory per subscription, and the stall while a client with
//!   many subscriptions leaves; with `--persistent`, memory per offline session and filter).
//! - [`handshakes`]: the `handshakes` scenario (connections set up and torn down per second).
//! - [`report`]: `/proc` readings (RSS, CPU), percentiles and the JSON line.
//!
//! Every CONNECT carries `--username` and the password of `--password` / `--password-file` when
//! given (nothing by default), in every scenario: the cost of authentication shows in
//! `handshakes` (per connection) and in the traffic scenarios (per message, with rules).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use codec::Version;

pub mod client;
pub mod codec;
pub mod handshakes;
pub mod report;
pub mod run;
pub mod stream;
pub mod subs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// P publishers → `bench/fanin/<p>`; one subscriber on `bench/fanin/+` (with `--topics N`:
    /// → `bench/fanin/<p>/<j>`, the subscriber on `bench/fanin/+/+`).
    Fanin,
    /// One publisher → `bench/fanout`; N subscribers on it.
    Fanout,
    /// N pairs: publisher i → `bench/p2p/<i>` → subscriber i.
    P2p,
    /// One publisher → one subscriber on `bench/lat` at `--rate` (default 1000 msg/s);
    /// end-to-end latency percentiles.
    Latency,
    /// C idle connections; the broker's RSS per connection (with `--pid`).
    Conns,
    /// `--clients` clients subscribe `--filters` filters (half exact, half with `+`): the
    /// broker's RSS per filter (with `--pid`); then they all disconnect while an unrelated QoS 0
    /// pair runs at 1 msg/ms: its longest gap, and how long a new CONNECT takes meanwhile.
    /// With `--persistent`: each client leaves a persistent session with its filters behind
    /// instead, and the broker's RSS per filter and per session of those offline sessions is
    /// the figure.
    Subs,
    /// `--connectors` clients each connect (TCP, TLS with `--tls`, the WebSocket upgrade with
    /// `--ws`), CONNECT, wait for CONNACK, DISCONNECT and wait for the broker to close, over and
    /// over: completed cycles per second over the window, and their set-up time percentiles.
    Handshakes,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::P2p => "p2p",
            Scenario::Latency => "latency",
            Scenario::Conns => "conns",
            Scenario::Subs => "subs",
            Scenario::Handshakes => "handshakes",
        }
    }
}

/// MQTT 3.1.1 / 5.0 load generator. Prints one JSON line on stdout and a summary on stderr.
///
/// Exit status: 0 when the run completed (even with loss or socket errors, which are reported),
/// 1 when the set-up failed (could not connect or subscribe), 2 on bad arguments.
///
/// `conns`: each connection needs one file descriptor here and one in the broker, so C is bounded
/// by RLIMIT_NOFILE of both processes (this process raises its soft limit to the hard limit; on
/// a machine with a 20,000 limit, C stays below about 19,900).
#[derive(Debug, Clone, Parser)]
#[command(name = "coolpy7-bench", version)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host (publishers, and everything else unless --sub-host is given).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Host the subscribers (measured, stalled and --extra-subs clients) connect to
    /// [default: --host].
    #[arg(long)]
    pub sub_host: Option<String>,
    /// [default: --port]
    #[arg(long)]
    pub sub_port: Option<u16>,
    /// MQTT version every client speaks: 3 (3.1.1) or 5 (5.0: CONNECT with Receive Maximum and
    /// Topic Alias Maximum, publishers send their topic once with an alias and then only the
    /// alias when the broker allows aliases, the broker's aliases are resolved).
    #[arg(long, default_value = "3", value_parser = parse_mqtt)]
    pub mqtt: Version,
    /// v5: Topic Alias Maximum sent in CONNECT (how many aliases the broker may use towards each
    /// client); 0 also keeps publishers from using aliases.
    #[arg(long, default_value_t = 64)]
    pub topic_alias_max: u16,
    /// v5: Receive Maximum sent in CONNECT by subscribers (and every other client but the
    /// publishers, which send --inflight); 65535 is the protocol's default, no window, as in 3.1.1.
    #[arg(long, default_value_t = 65_535, value_parser = clap::value_parser!(u16).range(1..))]
    pub receive_max: u16,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload bytes (at least 16: publisher id, sequence, send timestamp).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=67_108_864))]
    pub size: u32,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Seconds of publishing before the window starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Max seconds to wait for in-flight deliveries once publishers stop.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Total msg/s across publishers; 0 = as fast as possible (latency: 0 means 1000).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// fanin: number of publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// fanin: topics per publisher. 1: publisher p publishes to `bench/fanin/<p>`; N > 1: its
    /// PUBLISHes take turns over `bench/fanin/<p>/0` .. `/<N-1>` (and the subscriber takes
    /// `bench/fanin/+/+`), e.g. to go past a broker's per-connection cache of decisions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub topics: u32,
    /// fanout: number of subscribers.
    #[arg(long, default_value_t = 8)]
    pub subscribers: u32,
    /// p2p: number of publisher/subscriber pairs.
    #[arg(long, default_value_t = 8)]
    pub pairs: u32,
    /// conns: number of idle connections.
    #[arg(long, default_value_t = 10_000)]
    pub conns: u32,
    /// subs: number of filters (between all clients).
    #[arg(long, default_value_t = 1_000_000)]
    pub filters: u64,
    /// subs: number of clients holding the filters.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// subs: each client connects with a persistent session (3.1.1 Clean Session 0; v5 Clean
    /// Start 0 and Session Expiry Interval 3600 s), subscribes its filters, waits for the SUBACKs,
    /// sends DISCONNECT and waits for the broker to close, 64 clients at a time, from source
    /// addresses spread as in `conns` (--conns-per-ip): the broker keeps --clients offline
    /// sessions holding --filters filters, and its RSS before the first and after the last gives
    /// the bytes per filter and per session. Not followed by the disconnect phase.
    #[arg(long)]
    pub persistent: bool,

    /// Subscribers (and every other client but the publishers) ask for a session the broker
    /// keeps this many seconds after the connection (3.1.1 Clean Session 0; v5 Clean Start 0
    /// with this Session Expiry Interval): what a broker with a data directory writes to disk
    /// for every QoS 1 message. 0: clean sessions.
    #[arg(long, default_value_t = 0)]
    pub session_expiry: u32,
    /// Broker pid, to read its RSS (VmRSS) and CPU time from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Keepalive sent in CONNECT, seconds (clients PINGREQ every keepalive/2).
    #[arg(long, default_value_t = 600)]
    pub keepalive: u16,
    /// QoS 1: max unacknowledged PUBLISHes per publisher (v5: also its Receive Maximum, and the
    /// broker's Receive Maximum caps it).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub inflight: u32,
    /// Subscriptions on unrelated topics added first (half exact, half wildcard), spread over
    /// 10 idle clients, to measure routing cost.
    #[arg(long, default_value_t = 0)]
    pub extra_subs: u32,
    /// Extra subscribers to the measured topic(s) that never read their socket; with --pid the
    /// broker's RSS is reported before and after.
    #[arg(long, default_value_t = 0)]
    pub stalled: u32,
    /// Client id prefix.
    #[arg(long, default_value = "bench")]
    pub id_prefix: String,
    /// Seconds allowed for connecting and subscribing everything.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// conns: seconds the connections stay idle before the broker's RSS is read. A broker may
    /// give idle connections' memory back only after a while (coolpy7 puts a connection idle
    /// for 1-2 s to sleep, and its allocator returns the pages freed a second later), so the
    /// RSS of idle connections is read once they have been idle that long.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// conns: connects in flight at once.
    #[arg(long, default_value_t = 256)]
    pub conn_concurrency: usize,
    /// conns, subs --persistent: connections per source address (127.0.0.2, 127.0.0.3, ... when
    /// the broker is on loopback), to get past the ephemeral port range.
    #[arg(long, default_value_t = 20_000)]
    pub conns_per_ip: u32,
    /// Print a progress line every second on stderr.
    #[arg(long)]
    pub progress: bool,
    /// handshakes: clients connecting over and over at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub connectors: u32,
    /// Connect over TLS (needs --ca or --tls-no-verify; the server name is the host the client
    /// connects to).
    #[arg(long)]
    pub tls: bool,
    /// TLS: PEM file of the CA (or CAs) to trust, the only roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// TLS: ALPN protocol(s) to offer, comma-separated (e.g. mqtt) [default: none].
    #[arg(long, value_delimiter = ',')]
    pub alpn: Vec<String>,
    /// TLS: accept whatever certificate the broker presents, without checking it or the
    /// handshake's signature (makes the bench's side of a handshake cheaper than the broker's).
    #[arg(long)]
    pub tls_no_verify: bool,
    /// TLS: let the client resume sessions (tickets, session ids); by default every connection
    /// makes a full handshake.
    #[arg(long)]
    pub tls_resume: bool,
    /// MQTT over WebSocket (binary messages, subprotocol mqtt); with --tls, over TLS (WSS).
    #[arg(long)]
    pub ws: bool,
    /// WebSocket: the HTTP path of the endpoint.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// User Name in every CONNECT the bench sends, whatever the scenario (publishers,
    /// subscribers, idle and stalled clients, handshake cycles) [default: none].
    #[arg(long, value_name = "U")]
    pub username: Option<String>,
    /// Password in every CONNECT (e.g. a JWT for a broker started with -as 1); visible in `ps`,
    /// so --password-file is better for a token. MQTT 3.1.1 needs --username with it.
    #[arg(long, value_name = "P", conflicts_with = "password_file")]
    pub password: Option<String>,
    /// File holding the password of every CONNECT (its bytes; one trailing line end is
    /// dropped), so that a token or password need not be on the command line.
    #[arg(long, value_name = "F")]
    pub password_file: Option<PathBuf>,
    /// With --username: CONNECTs take turns over N user names, `<U>0` to `<U><N-1>` (the k-th
    /// CONNECT of the run, over all clients, names `<U><k mod N>`). Against a password file
    /// holding them all, N above the number of CONNECTs made means every one is a user the
    /// broker has not seen yet: what a first connect costs, past any cache of verified
    /// passwords. 0: always --username.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "username")]
    pub users: u32,
    /// The credentials, resolved by [`Args::resolve_auth`].
    #[arg(skip)]
    pub auth: client::Auth,
}

fn parse_mqtt(s: &str) -> Result<Version, String> {
    match s {
        "3" | "3.1.1" | "4" => Ok(Version::V311),
        "5" | "5.0" => Ok(Version::V5),
        _ => Err(format!("'{s}' is not 3 (MQTT 3.1.1) or 5 (MQTT 5.0)")),
    }
}

impl Args {
    /// The version as a number for reports: 3 or 5.
    pub fn mqtt_number(&self) -> u8 {
        match self.mqtt {
            Version::V311 => 3,
            Version::V5 => 5,
        }
    }

    /// What subscribers and other non-publishing clients send in CONNECT.
    pub fn login(&self) -> client::Login {
        client::Login {
            version: self.mqtt,
            keepalive: self.keepalive,
            receive_maximum: self.receive_max,
            topic_alias_maximum: self.topic_alias_max,
            auth: self.auth,
            session_expiry: self.session_expiry,
        }
    }

    /// Reads `--password-file` and fixes the credentials every CONNECT carries, once: they are
    /// kept for the rest of the process (leaked), so that every [`client::Login`] can share
    /// them without copying or counting references.
    pub fn resolve_auth(&mut self) -> anyhow::Result<()> {
        let password: Option<Vec<u8>> = match (&self.password, &self.password_file) {
            (Some(p), _) => Some(p.clone().into_bytes()),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--password-file {}: {e}", path.display()))?;
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                Some(bytes)
            }
            (None, None) => None,
        };
        for (what, len) in [
            ("--username", self.username.as_ref().map(|u| u.len())),
            ("the password", password.as_ref().map(|p| p.len())),
        ] {
            if len.is_some_and(|n| n > usize::from(u16::MAX)) {
                bail!("{what} is longer than MQTT's 65535 bytes");
            }
        }
        self.auth = client::Auth {
            username: self
                .username
                .clone()
                .map(|u| &*Box::leak(u.into_boxed_str())),
            password: password.map(|p| &*Box::leak(p.into_boxed_slice())),
            users: self.users,
        };
        Ok(())
    }

    /// Arguments that only make sense together.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.tls && self.ca.is_none() && !self.tls_no_verify {
            bail!(
                "--tls needs --ca FILE (the CA that signed the broker's certificate) or \
                 --tls-no-verify"
            );
        }
        if self.ca.is_some() && self.tls_no_verify {
            bail!("--ca and --tls-no-verify exclude each other");
        }
        if !self.tls
            && (self.ca.is_some() || !self.alpn.is_empty() || self.tls_resume || self.tls_no_verify)
        {
            bail!("--ca, --alpn, --tls-resume and --tls-no-verify need --tls");
        }
        if self.ws && !self.ws_path.starts_with('/') {
            bail!("--ws-path must start with '/'");
        }
        if self.topics > 1 && self.scenario != Scenario::Fanin {
            bail!("--topics is for fanin only");
        }
        if self.persistent && self.scenario != Scenario::Subs {
            bail!("--persistent is for subs only");
        }
        if self.mqtt == Version::V311
            && self.username.is_none()
            && (self.password.is_some() || self.password_file.is_some())
        {
            bail!("MQTT 3.1.1 sends a password only with a user name: add --username");
        }
        Ok(())
    }

    /// `tcp`, `tls`, `ws` or `wss`, for reports.
    pub fn transport_name(&self) -> &'static str {
        match (self.tls, self.ws) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }

    /// The transport every client of the run uses (reads the CA file).
    pub fn transport(&self) -> anyhow::Result<stream::Transport> {
        let tls = if self.tls {
            Some(Arc::new(stream::tls_config(
                self.ca.as_deref(),
                &self.alpn,
                self.tls_resume,
            )?))
        } else {
            None
        };
        Ok(stream::Transport {
            tls,
            ws_path: self.ws.then(|| self.ws_path.clone()),
        })
    }

    /// What publishers send: their Receive Maximum is their in-flight window.
    pub fn publisher_login(&self) -> client::Login {
        self.login()
            .receive_maximum(self.inflight.min(65_535) as u16)
    }
}

/// Runs the load generator; returns the process exit code.
pub fn main(mut args: Args) -> i32 {
    if let Err(e) = args.check() {
        eprintln!("coolpy7-bench: {e}");
        return 2;
    }
    if let Err(e) = args.resolve_auth() {
        eprintln!("coolpy7-bench: {e}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coolpy7-bench: cannot start the runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(run::run(args));
    // Tasks still blocked on a stuck socket must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        let mut args = Args::try_parse_from([&["coolpy7-bench"], list].concat()).unwrap();
        args.check().unwrap();
        args.resolve_auth().unwrap();
        args
    }

    #[test]
    fn no_credentials_by_default() {
        let a = args(&["handshakes"]);
        assert!(!a.auth.is_some());
        assert_eq!(a.login().auth.username, None);
        assert_eq!(a.publisher_login().auth.password, None);
    }

    #[test]
    fn credentials_reach_every_login() {
        let a = args(&[
            "fanin",
            "--username",
            "u",
            "--password",
            "p",
            "--users",
            "3",
        ]);
        for login in [a.login(), a.publisher_login()] {
            assert_eq!(login.auth.username, Some("u"));
            assert_eq!(login.auth.password, Some(&b"p"[..]));
            assert_eq!(login.auth.users, 3);
        }
    }

    #[test]
    fn password_file_loses_one_line_end_only() {
        let dir = std::env::temp_dir().join(format!("coolpy7-bench-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, expected) in [
            (&b"tok.en\n"[..], &b"tok.en"[..]),
            (b"tok.en\r\n", b"tok.en"),
            (b"tok.en", b"tok.en"),
            (b" pw \n\n", b" pw \n"),
        ] {
            let path = dir.join("pw");
            std::fs::write(&path, content).unwrap();
            let a = args(&[
                "handshakes",
                "--username",
                "bench",
                "--password-file",
                path.to_str().unwrap(),
            ]);
            assert_eq!(a.auth.password, Some(expected));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn topics_only_for_fanin() {
        let parse = |list: &[&str]| Args::try_parse_from([&["coolpy7-bench"], list].concat());
        assert!(parse(&["fanin", "--topics", "16"]).unwrap().check().is_ok());
        assert!(parse(&["p2p", "--topics", "16"]).unwrap().check().is_err());
        assert!(parse(&["fanin", "--topics", "0"]).is_err());
    }

    #[test]
    fn persistent_only_for_subs() {
        let parse = |list: &[&str]| Args::try_parse_from([&["coolpy7-bench"], list].concat());
        assert!(parse(&["subs", "--persistent"]).unwrap().check().is_ok());
        assert!(parse(&["conns", "--persistent"]).unwrap().check().is_err());
        assert_eq!(args(&["subs"]).login().session_expiry, 0);
    }

    #[test]
    fn bad_credential_arguments() {
        let parse = |list: &[&str]| Args::try_parse_from([&["coolpy7-bench"], list].concat());
        // 3.1.1 carries a password only after a user name; MQTT 5 may send one alone.
        let a = parse(&["handshakes", "--password", "p"]).unwrap();
        assert!(a.check().is_err());
        let a = parse(&["handshakes", "--password", "p", "--mqtt", "5"]).unwrap();
        assert!(a.check().is_ok());
        assert!(parse(&["handshakes", "--password", "p", "--password-file", "f"]).is_err());
        assert!(parse(&["handshakes", "--users", "5"]).is_err());
        let mut a = parse(&[
            "handshakes",
            "--username",
            "u",
            "--password-file",
            "/no/such",
        ])
        .unwrap();
        assert!(a.resolve_auth().is_err());
    }
}
