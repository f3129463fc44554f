//! Connections and the per-connection loops.
//!
//! Each publisher and each subscriber is one task owning its [`Stream`] (a `TcpStream`, or TLS
//! and/or WebSocket layered over one: see [`super::stream`]). Reads go into a
//! reused `BytesMut` (64 KiB at a time) and every whole packet in it is decoded in place; writes
//! are batched into a reused `Vec`. Counters are per connection ([`Counters`], padded to a cache
//! line pair) and only `store`d by their owner once per batch; the coordinator sums them.
//!
//! A [`Conn`] speaks MQTT 3.1.1 or 5.0 ([`Login`]). With 5.0 it keeps what the broker announced in
//! CONNACK (Receive Maximum, Topic Alias Maximum, Maximum QoS) and both topic alias tables: the
//! broker's aliases towards us (resolved for every PUBLISH read) and ours towards the broker
//! (publishers send their topic once with an alias, then only the alias).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::{interval_at, MissedTickBehavior};

use super::codec::{self, ConnAckProps, InboundAliases, OutboundAliases, Packet, Version};
use super::stream::{Dialer, Stream};

/// Bytes asked of each read.
pub const READ_CHUNK: usize = 64 * 1024;
/// A publisher refills its write buffer when fewer than this many bytes are pending...
const WRITE_LOW: usize = 16 * 1024;
/// ... with up to this many bytes of PUBLISHes.
const WRITE_BATCH: usize = 48 * 1024;
/// Payload header: publisher id (u32), sequence (u32), send time (u64 ns since start).
pub const HEADER: usize = 16;

/// Run phases, broadcast on a `watch` channel.
pub const SETUP: u8 = 0;
pub const RUN: u8 = 1;
/// Publishers stop producing (and flush what they have).
pub const STOP: u8 = 2;
/// Everyone disconnects.
pub const CLOSE: u8 = 3;

/// State shared by every task of a run.
pub struct Shared {
    /// Time zero for payload timestamps.
    pub t0: Instant,
    /// Latency samples are kept for messages sent in [from, to) (ns since `t0`).
    pub window_from_ns: AtomicU64,
    pub window_to_ns: AtomicU64,
    /// Latency samples, handed over once by each subscriber when it ends.
    pub samples: Mutex<Vec<u64>>,
    pub keepalive: u16,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

/// One connection's counters (written by its task only).
#[derive(Default)]
#[repr(align(128))]
pub struct Counters {
    /// Publisher: PUBLISHes produced (counted when queued; flushed before `done`).
    pub sent: AtomicU64,
    /// Publisher: PUBACKs received.
    pub acked: AtomicU64,
    /// Subscriber: distinct messages received (by publisher sequence).
    pub delivered: AtomicU64,
    /// Subscriber: messages whose sequence was already seen.
    pub duplicates: AtomicU64,
    /// Subscriber: sequence numbers skipped at arrival (QoS 0 drops, or reordering).
    pub gaps: AtomicU64,
    /// Subscriber: PUBLISHes that do not carry a bench header.
    pub foreign: AtomicU64,
    /// Socket errors, protocol errors, unexpected disconnects.
    pub errors: AtomicU64,
    /// Publisher: stopped and flushed (or dead).
    pub done: AtomicBool,
    /// Publisher: bytes of one PUBLISH on the wire (set once it starts), to turn bytes the
    /// broker has not read yet into messages.
    pub publish_len: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed) + n, Relaxed);
}

/// What a client puts in its CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Login {
    pub version: Version,
    pub keepalive: u16,
    /// v5 Receive Maximum: QoS 1 PUBLISHes the broker may have unacknowledged towards us.
    pub receive_maximum: u16,
    /// v5 Topic Alias Maximum: aliases the broker may set towards us. 0 also keeps us from using
    /// aliases towards the broker.
    pub topic_alias_maximum: u16,
    /// User Name and Password (`--username`, `--password`, `--password-file`, `--users`).
    pub auth: Auth,
    /// 0: a clean session; otherwise a session the broker keeps after the connection (3.1.1
    /// Clean Session 0; v5 Clean Start 0 with this Session Expiry Interval, seconds).
    pub session_expiry: u32,
}

/// The credentials every CONNECT of the process carries. The strings are read once at start and
/// live for the whole process (`&'static`), so that a [`Login`] stays `Copy`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Auth {
    pub username: Option<&'static str>,
    pub password: Option<&'static [u8]>,
    /// When not 0, CONNECTs take turns over this many user names: the k-th CONNECT the process
    /// sends (counted over every client) names `<username><k mod users>`.
    pub users: u32,
}

/// CONNECTs sent with numbered user names (`--users`), over the whole process.
static NUMBERED_CONNECTS: AtomicU64 = AtomicU64::new(0);

/// How many CONNECTs took a numbered user name so far (`--users`).
pub fn numbered_connects() -> u64 {
    NUMBERED_CONNECTS.load(Relaxed)
}

impl Auth {
    /// Whether CONNECTs carry anything: without, they are what they were before credentials.
    pub fn is_some(&self) -> bool {
        self.username.is_some() || self.password.is_some()
    }

    /// The user name for the next CONNECT: `--username`, or its next numbered form.
    fn next_username(&self) -> Option<std::borrow::Cow<'static, str>> {
        let username = self.username?;
        if self.users == 0 {
            return Some(username.into());
        }
        let k = NUMBERED_CONNECTS.fetch_add(1, Relaxed) % u64::from(self.users);
        Some(format!("{username}{k}").into())
    }
}

impl Login {
    /// The same login with another Receive Maximum.
    pub fn receive_maximum(self, receive_maximum: u16) -> Login {
        Login {
            receive_maximum,
            ..self
        }
    }

    /// The same login asking for a session kept `session_expiry` s after the connection (0:
    /// a clean session).
    pub fn session_expiry(self, session_expiry: u32) -> Login {
        Login {
            session_expiry,
            ..self
        }
    }
}

/// A connected MQTT client: the stream plus whatever was read beyond the last packet used.
pub struct Conn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub next_packet_id: u16,
    pub version: Version,
    /// The broker's Receive Maximum (65535 for 3.1.1 and when not announced).
    pub server_receive_maximum: u16,
    /// The broker's Maximum QoS (2 for 3.1.1 and when not announced).
    pub server_maximum_qos: u8,
    /// The broker's Topic Alias Maximum (0 for 3.1.1 and when not announced).
    pub server_topic_alias_maximum: u16,
    /// Topic aliases the broker set towards us.
    pub aliases: InboundAliases,
    /// Topic aliases we set towards the broker.
    pub out_aliases: OutboundAliases,
    /// This side's address of the TCP connection (to find its queues in `/proc/net/tcp`).
    pub local_addr: Option<SocketAddr>,
    /// CONNACK's Session Present: the broker had kept a session for this client id.
    pub session_present: bool,
}

/// Connects (optionally from source address `bind`) over the dialer's transport, sends CONNECT
/// and waits for CONNACK 0, all within `timeout`.
pub async fn open(
    dialer: &Dialer,
    bind: Option<IpAddr>,
    client_id: &str,
    login: &Login,
    timeout: Duration,
) -> anyhow::Result<Conn> {
    let addr = dialer.addr;
    tokio::time::timeout(timeout, async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if let Some(bytes) = dialer.send_buffer {
            socket.set_send_buffer_size(bytes).context("SO_SNDBUF")?;
        }
        if let Some(ip) = bind {
            // Let connect() pick the port for the whole 4-tuple: binding to port 0 would search
            // for a port free for *every* destination, which gets slow with thousands bound.
            bind_no_port(&socket);
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true).ok();
        let local_addr = tcp.local_addr().ok();
        let stream = dialer.layer(tcp).await?;
        let v5 = login.version == Version::V5;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(256),
            next_packet_id: 1,
            version: login.version,
            server_receive_maximum: u16::MAX,
            server_maximum_qos: 2,
            server_topic_alias_maximum: 0,
            aliases: InboundAliases::new(if v5 { login.topic_alias_maximum } else { 0 }),
            out_aliases: OutboundAliases::new(0),
            local_addr,
            session_present: false,
        };
        let username = login.auth.next_username();
        let credentials = codec::Credentials {
            username: username.as_deref(),
            password: login.auth.password,
        };
        let mut out = Vec::with_capacity(
            32 + client_id.len()
                + username.as_ref().map_or(0, |u| 2 + u.len())
                + login.auth.password.map_or(0, |p| 2 + p.len()),
        );
        if v5 {
            codec::connect_v5(
                &mut out,
                client_id,
                login.keepalive,
                login.receive_maximum,
                login.topic_alias_maximum,
                credentials,
                login.session_expiry,
            );
        } else {
            codec::connect(
                &mut out,
                client_id,
                login.keepalive,
                credentials,
                login.session_expiry,
            );
        }
        conn.stream.send(&out).await.context("send CONNECT")?;
        let (session_present, code, props, reason) = conn
            .wait_for(|p| match p {
                Packet::ConnAck {
                    session_present,
                    code,
                    props,
                } => Some((
                    session_present,
                    code,
                    // Without the borrowed reason string, which is kept as a String.
                    ConnAckProps {
                        reason_string: &[],
                        ..props
                    },
                    String::from_utf8_lossy(props.reason_string).into_owned(),
                )),
                _ => None,
            })
            .await
            .context("waiting for CONNACK")?;
        if code != 0 {
            if v5 && code == 0x01 {
                // A 3.1.1 broker's "unacceptable protocol level".
                bail!("CONNACK code 0x01: the broker refuses protocol level 5 (no MQTT 5.0?)");
            }
            if v5 {
                bail!("CONNACK reason code 0x{code:02x} {reason:?}");
            }
            let what = match code {
                4 => " (bad user name or password: see --username, --password)",
                5 => " (not authorized: see --username, --password)",
                _ => "",
            };
            bail!("CONNACK return code {code}{what}");
        }
        conn.session_present = session_present;
        conn.server_receive_maximum = props.receive_maximum;
        conn.server_maximum_qos = props.maximum_qos;
        conn.server_topic_alias_maximum = props.topic_alias_maximum;
        if v5 && login.topic_alias_maximum > 0 {
            conn.out_aliases = OutboundAliases::new(props.topic_alias_maximum);
        }
        Ok(conn)
    })
    .await
    .map_err(|_| anyhow!("{client_id}: no CONNACK from {addr} within {timeout:?}"))?
    .with_context(|| client_id.to_string())
}

#[cfg(target_os = "linux")]
fn bind_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the stated size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_no_port(_socket: &TcpSocket) {}

impl Conn {
    /// Reads until a packet for which `f` returns `Some`; other packets are skipped (the topic
    /// aliases of skipped PUBLISHes are still learnt). A DISCONNECT from the broker is an error.
    pub(super) async fn wait_for<T>(
        &mut self,
        mut f: impl FnMut(Packet<'_>) -> Option<T>,
    ) -> anyhow::Result<T> {
        loop {
            let mut used = 0;
            let mut found = None;
            while let Some((p, n)) = codec::decode(&self.rbuf[used..], self.version)? {
                used += n;
                match p {
                    Packet::Publish {
                        topic, topic_alias, ..
                    } if topic_alias != 0 => {
                        self.aliases.resolve(topic, topic_alias)?;
                    }
                    Packet::Disconnect {
                        code,
                        reason_string,
                    } => return Err(broker_disconnect(code, reason_string)),
                    _ => {}
                }
                if let Some(t) = f(p) {
                    found = Some(t);
                    break;
                }
            }
            self.rbuf.advance(used);
            if let Some(t) = found {
                return Ok(t);
            }
            self.rbuf.reserve(4096);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }

    /// Subscribes to `filters` (in SUBSCRIBE packets of at most 100 filters) and waits for every
    /// SUBACK; fails if any filter is refused.
    pub async fn subscribe<S: AsRef<str>>(&mut self, filters: &[S], qos: u8) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut ids = Vec::new();
        for chunk in filters.chunks(100) {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            codec::subscribe(&mut out, self.version, id, chunk, qos);
            ids.push(id);
        }
        self.stream.send(&out).await.context("send SUBSCRIBE")?;
        for id in ids {
            let refused = self
                .wait_for(|p| match p {
                    Packet::SubAck { packet_id, codes } if packet_id == id => Some(refused(codes)),
                    _ => None,
                })
                .await
                .context("waiting for SUBACK")?;
            if refused > 0 {
                bail!("{refused} subscription(s) refused");
            }
        }
        Ok(())
    }

    /// Appends a PUBLISH of `payload` to `topic`: in v5 with the topic's alias when the broker
    /// allows one (the first PUBLISH on a topic carries the topic too, later ones only the alias).
    pub fn encode_publish(
        &mut self,
        out: &mut Vec<u8>,
        topic: &str,
        qos: u8,
        packet_id: u16,
        payload: &[u8],
    ) {
        match self.version {
            Version::V311 => codec::publish(out, topic, qos, packet_id, payload),
            Version::V5 => match self.out_aliases.alias(topic) {
                Some((alias, true)) => codec::publish_v5(out, "", alias, qos, packet_id, payload),
                Some((alias, false)) => {
                    codec::publish_v5(out, topic, alias, qos, packet_id, payload)
                }
                None => codec::publish_v5(out, topic, 0, qos, packet_id, payload),
            },
        }
    }
}

/// How many SUBACK codes are failures (0x80 in 3.1.1; 0x80 and up in v5).
pub fn refused(codes: &[u8]) -> usize {
    codes.iter().filter(|&&c| c >= 0x80).count()
}

/// The error for a DISCONNECT sent by the broker.
pub fn broker_disconnect(code: u8, reason_string: &[u8]) -> anyhow::Error {
    anyhow!(
        "the broker sent DISCONNECT with reason code 0x{code:02x} {:?}",
        String::from_utf8_lossy(reason_string)
    )
}

fn ping_interval(keepalive: u16) -> tokio::time::Interval {
    let period = Duration::from_millis(u64::from(keepalive.max(1)) * 500);
    let mut ping = interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// What a publisher sends.
pub struct PubSpec {
    /// Written into every payload, indexes the subscribers' sequence tables.
    pub id: u32,
    pub topic: String,
    /// 1: every PUBLISH goes to `topic`; more: they take turns over `<topic>/0` ..
    /// `<topic>/<topics - 1>`.
    pub topics: u32,
    pub qos: u8,
    pub size: usize,
    /// QoS 1 window.
    pub inflight: u64,
    /// msg/s for this publisher; 0 = as fast as possible.
    pub rate: f64,
    /// Take a fresh timestamp per message (latency); otherwise one per batch.
    pub stamp_each: bool,
}

/// The publisher loop: produce into `wbuf` (respecting the QoS 1 window and the rate), write
/// when the socket is writable, read PUBACKs when readable. One task, no locks.
pub async fn publisher(
    mut conn: Conn,
    spec: PubSpec,
    shared: Arc<Shared>,
    ctr: Arc<Counters>,
    mut phase_rx: watch::Receiver<u8>,
) {
    if let Err(e) = publisher_loop(&mut conn, &spec, &shared, &ctr, &mut phase_rx).await {
        bump(&ctr.errors, 1);
        eprintln!("publisher {}: {e:#}", spec.id);
    }
    ctr.done.store(true, Relaxed);
    let mut bye = Vec::with_capacity(2);
    codec::disconnect(&mut bye);
    conn.stream.close_now(&bye).await;
}

async fn publisher_loop(
    conn: &mut Conn,
    spec: &PubSpec,
    shared: &Shared,
    ctr: &Counters,
    phase_rx: &mut watch::Receiver<u8>,
) -> anyhow::Result<()> {
    // The message templates, one per topic: the PUBLISH with a zero payload; id, sequence and
    // time are patched. In v5 with a topic alias the first one of a topic carries the topic and
    // the alias, the rest (`tmpls`) only the alias; otherwise both are the same.
    let topics: Vec<String> = if spec.topics > 1 {
        (0..spec.topics)
            .map(|j| format!("{}/{j}", spec.topic))
            .collect()
    } else {
        vec![spec.topic.clone()]
    };
    let first_tmpls: Vec<Template> = topics
        .iter()
        .map(|t| Template::new(conn, spec, t))
        .collect();
    let tmpls: Vec<Template> = topics
        .iter()
        .map(|t| Template::new(conn, spec, t))
        .collect();
    let msg_len = tmpls.iter().map(|t| t.bytes.len()).max().unwrap_or(1);
    let first_len = first_tmpls.iter().map(|t| t.bytes.len()).max().unwrap_or(1);
    ctr.publish_len.store(msg_len as u64, Relaxed);
    let mut next_topic = 0usize;
    let batch = (WRITE_BATCH / msg_len).max(1) as u64;
    // A v5 broker may take fewer unacknowledged QoS 1 PUBLISHes than our window.
    let inflight = spec
        .inflight
        .min(u64::from(conn.server_receive_maximum))
        .max(1);
    let refill_at = (inflight / 4).clamp(1, batch);

    let mut phase = *phase_rx.borrow_and_update();
    while phase == SETUP {
        if phase_rx.changed().await.is_err() {
            return Ok(());
        }
        phase = *phase_rx.borrow_and_update();
    }

    let mut wbuf: Vec<u8> = Vec::with_capacity(WRITE_LOW + WRITE_BATCH + first_len.max(msg_len));
    let mut wpos = 0usize;
    conn.rbuf.reserve(READ_CHUNK);
    let mut produced: u64 = 0;
    let mut acked: u64 = 0;
    let rate_limited = spec.rate > 0.0;
    let rate_start = Instant::now();
    let mut credited: u64 = 0;
    let mut tokens: u64 = if rate_limited { 0 } else { u64::MAX };
    // Falling behind (a full window) does not build up a burst of more than ~50 ms.
    let max_tokens = ((spec.rate / 20.0) as u64).max(batch);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ping = ping_interval(shared.keepalive);
    let mut flushed = false;

    loop {
        if phase == RUN && wbuf.len() - wpos < WRITE_LOW {
            let mut n = batch.min(tokens);
            if spec.qos > 0 {
                let free = inflight.saturating_sub(produced.saturating_sub(acked));
                // Refill only once a quarter of the window is free, so that acks trickling in
                // one by one do not cost one small write each.
                n = if free >= refill_at { n.min(free) } else { 0 };
            }
            if n > 0 {
                if wpos > 0 {
                    wbuf.drain(..wpos);
                    wpos = 0;
                }
                let mut ts = shared.now_ns();
                for _ in 0..n {
                    let t = if produced < topics.len() as u64 {
                        &first_tmpls[next_topic]
                    } else {
                        &tmpls[next_topic]
                    };
                    next_topic += 1;
                    if next_topic == topics.len() {
                        next_topic = 0;
                    }
                    let (id_at, payload_at) = (t.id_at, t.payload_at);
                    let at = wbuf.len();
                    wbuf.extend_from_slice(&t.bytes);
                    let m = &mut wbuf[at..];
                    if spec.qos > 0 {
                        let id = (produced % 65_535) as u16 + 1;
                        m[id_at..id_at + 2].copy_from_slice(&id.to_be_bytes());
                    }
                    if spec.stamp_each {
                        ts = shared.now_ns();
                    }
                    m[payload_at + 4..payload_at + 8]
                        .copy_from_slice(&(produced as u32).to_be_bytes());
                    m[payload_at + 8..payload_at + 16].copy_from_slice(&ts.to_be_bytes());
                    produced += 1;
                }
                if rate_limited {
                    tokens -= n;
                }
                ctr.sent.store(produced, Relaxed);
            }
        } else if phase >= STOP && !flushed && wpos == wbuf.len() {
            flushed = true;
            ctr.done.store(true, Relaxed);
        }

        tokio::select! {
            biased;
            changed = phase_rx.changed() => {
                phase = if changed.is_ok() { *phase_rx.borrow_and_update() } else { CLOSE };
                if phase >= CLOSE {
                    return Ok(());
                }
            }
            // Reads what arrived and writes what the socket takes of the pending bytes.
            done = conn.stream.exchange(&mut conn.rbuf, &wbuf[wpos..]) => {
                let done = done?;
                if let Some(n) = done.read {
                    if n == 0 {
                        bail!("connection closed by the broker");
                    }
                    let mut used = 0;
                    let mut acks = 0;
                    let mut refused = 0;
                    while let Some((p, n)) = codec::decode(&conn.rbuf[used..], conn.version)? {
                        used += n;
                        match p {
                            Packet::PubAck { code, .. } => {
                                acks += 1;
                                // 0x10 (no matching subscribers) is a success.
                                if code >= 0x80 {
                                    refused += 1;
                                }
                            }
                            Packet::Disconnect { code, reason_string } => {
                                return Err(broker_disconnect(code, reason_string));
                            }
                            _ => {}
                        }
                    }
                    conn.rbuf.advance(used);
                    conn.rbuf.reserve(READ_CHUNK);
                    if acks > 0 {
                        acked += acks;
                        ctr.acked.store(acked, Relaxed);
                    }
                    if refused > 0 {
                        // Counted as errors: the subscribers will miss these.
                        bump(&ctr.errors, refused);
                    }
                }
                if done.wrote > 0 {
                    wpos += done.wrote;
                    if wpos == wbuf.len() {
                        wbuf.clear();
                        wpos = 0;
                    }
                }
            }
            _ = tick.tick(), if rate_limited && phase == RUN => {
                let due = (spec.rate * rate_start.elapsed().as_secs_f64()) as u64;
                if due > credited {
                    tokens = (tokens + (due - credited)).min(max_tokens);
                    credited = due;
                }
            }
            _ = ping.tick() => {
                if wpos > 0 {
                    wbuf.drain(..wpos);
                    wpos = 0;
                }
                codec::pingreq(&mut wbuf);
            }
        }
    }
}

/// A PUBLISH as the publisher loop sends it, with a zero payload but for the publisher id; the
/// packet id, sequence and time are patched in per message.
struct Template {
    bytes: Vec<u8>,
    /// Where the packet id is (QoS 1 only).
    id_at: usize,
    payload_at: usize,
}

impl Template {
    /// The next PUBLISH on `topic` for this connection (see [`Conn::encode_publish`]).
    fn new(conn: &mut Conn, spec: &PubSpec, topic: &str) -> Template {
        let mut bytes = Vec::new();
        conn.encode_publish(&mut bytes, topic, spec.qos, 1, &vec![0u8; spec.size]);
        let payload_at = bytes.len() - spec.size;
        bytes[payload_at..payload_at + 4].copy_from_slice(&spec.id.to_be_bytes());
        // The packet id follows the fixed header and the topic (v3 and v5 alike).
        let remaining_length_len = bytes[1..].iter().take_while(|&&b| b & 0x80 != 0).count() + 1;
        let topic_at = 1 + remaining_length_len;
        let topic_len = u16::from_be_bytes([bytes[topic_at], bytes[topic_at + 1]]) as usize;
        let id_at = topic_at + 2 + topic_len;
        Template {
            bytes,
            id_at,
            payload_at,
        }
    }
}

/// What a subscriber expects.
pub struct SubSpec {
    /// Publishers whose ids may appear (sizes the sequence table).
    pub publishers: usize,
    /// Keep latency samples (one clock reading per read batch).
    pub latency: bool,
}

/// The subscriber loop: read 64 KiB at a time, decode every PUBLISH in place, track sequences,
/// queue PUBACKs and write them once per read.
pub async fn subscriber(
    mut conn: Conn,
    spec: SubSpec,
    shared: Arc<Shared>,
    ctr: Arc<Counters>,
    mut phase_rx: watch::Receiver<u8>,
) {
    let mut samples = Vec::new();
    if let Err(e) =
        subscriber_loop(&mut conn, &spec, &shared, &ctr, &mut phase_rx, &mut samples).await
    {
        bump(&ctr.errors, 1);
        eprintln!("subscriber: {e:#}");
    }
    if !samples.is_empty() {
        let mut all = shared.samples.lock().unwrap_or_else(|e| e.into_inner());
        all.extend_from_slice(&samples);
    }
    let mut bye = Vec::with_capacity(2);
    codec::disconnect(&mut bye);
    conn.stream.close_now(&bye).await;
}

/// At most this many latency samples are kept (800 MB of u64).
const MAX_SAMPLES: usize = 100_000_000;

async fn subscriber_loop(
    conn: &mut Conn,
    spec: &SubSpec,
    shared: &Shared,
    ctr: &Counters,
    phase_rx: &mut watch::Receiver<u8>,
    samples: &mut Vec<u64>,
) -> anyhow::Result<()> {
    let mut next_seq: Vec<u32> = vec![0; spec.publishers.max(1)];
    let mut acks: Vec<u8> = Vec::with_capacity(4096);
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let mut gaps = 0u64;
    let mut foreign = 0u64;
    let mut ping = ping_interval(shared.keepalive);
    let mut first = true;
    loop {
        conn.rbuf.reserve(READ_CHUNK);
        // Bytes that arrived with the SUBACK are processed before the first read.
        if !first || conn.rbuf.is_empty() {
            tokio::select! {
                biased;
                changed = phase_rx.changed() => {
                    if changed.is_err() || *phase_rx.borrow_and_update() >= CLOSE {
                        return Ok(());
                    }
                    continue;
                }
                r = conn.stream.read_buf(&mut conn.rbuf) => {
                    if r? == 0 {
                        bail!("connection closed by the broker");
                    }
                }
                _ = ping.tick() => {
                    codec::pingreq(&mut acks);
                }
            }
        }
        first = false;
        let (now, from, to) = if spec.latency {
            (
                shared.now_ns(),
                shared.window_from_ns.load(Relaxed),
                shared.window_to_ns.load(Relaxed),
            )
        } else {
            (0, 0, 0)
        };
        let mut used = 0;
        while let Some((p, n)) = codec::decode(&conn.rbuf[used..], conn.version)? {
            used += n;
            if let Packet::Disconnect {
                code,
                reason_string,
            } = p
            {
                return Err(broker_disconnect(code, reason_string));
            }
            if let Packet::Publish {
                qos,
                packet_id,
                topic,
                topic_alias,
                payload,
                ..
            } = p
            {
                if topic_alias != 0 {
                    // Learns or checks the broker's alias (the topic itself is not needed).
                    conn.aliases.resolve(topic, topic_alias)?;
                }
                if qos == 1 {
                    codec::puback(&mut acks, packet_id);
                }
                if payload.len() < HEADER {
                    foreign += 1;
                    continue;
                }
                let id = u32::from_be_bytes(payload[0..4].try_into().unwrap()) as usize;
                let seq = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                let Some(next) = next_seq.get_mut(id) else {
                    foreign += 1;
                    continue;
                };
                if seq >= *next {
                    gaps += u64::from(seq - *next);
                    *next = seq + 1;
                    delivered += 1;
                    if spec.latency {
                        let ts = u64::from_be_bytes(payload[8..16].try_into().unwrap());
                        if ts >= from && ts < to && samples.len() < MAX_SAMPLES {
                            samples.push(now.saturating_sub(ts));
                        }
                    }
                } else {
                    duplicates += 1;
                }
            }
        }
        conn.rbuf.advance(used);
        ctr.delivered.store(delivered, Relaxed);
        ctr.duplicates.store(duplicates, Relaxed);
        ctr.gaps.store(gaps, Relaxed);
        ctr.foreign.store(foreign, Relaxed);
        if !acks.is_empty() {
            conn.stream.send(&acks).await?;
            acks.clear();
        }
    }
}
