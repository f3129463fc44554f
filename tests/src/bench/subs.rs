//! The `subs` scenario: what many subscriptions cost the broker, and whether removing them all
//! at once stalls anyone else.
//!
//! 1. `--clients` holders connect (the broker's RSS is read before and after), then subscribe
//!    `--filters` filters between them, half exact (`s/<k>/x`) and half with `+` (`s/+/<k>`),
//!    in SUBSCRIBE packets of 100 with a bounded number awaiting their SUBACK. After a second of
//!    settling the RSS again gives the bytes per filter (connections not included).
//! 2. An unrelated pair starts: a publisher sends a QoS 0 message every millisecond to
//!    `pair/<prefix>`, a subscriber records when each arrives. After a second, every holder
//!    disconnects at once (clean sessions: the broker drops all their subscriptions), and a
//!    prober connects a fresh client over and over for `--secs` s, timing CONNECT to CONNACK.
//! 3. Reported: the longest gap the pair's subscriber saw before the disconnect (the baseline)
//!    and after it (the stall), the slowest and the first CONNECT after it (one that got no
//!    CONNACK within `--connect-timeout` counts as that long, and in `connect_failed`).
//!
//! With `--persistent` ([`persistent_sessions`]) the holders do not stay connected: each one
//! connects with a persistent session, subscribes its filters, waits for the SUBACKs, sends
//! DISCONNECT and waits for the broker to close (so that TIME_WAIT stays on the broker's side),
//! 64 at a time and from 127.0.0.2, .3, ... (`--conns-per-ip` each), since 100,000 clients
//! cannot be 100,000 open connections here (20,000 file descriptors, 28,000 ephemeral ports).
//! The broker's RSS before the first and 2 s after the last gives the bytes per filter and per
//! session (each figure the whole growth: sessions and filters together). A sample of 16
//! clients then connects again with the same persistent session and must find it (Session
//! Present), else the figures are not what they seem. Step 2 does not follow: the sessions
//! are offline, so nothing would leave at once, and discarding 100,000 of them one by one
//! would cost as long again as making them; the broker is stopped with them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::client::{self, Conn, Login};
use super::codec::{self, Packet};
use super::report;
use super::run::{self, source_address};
use super::stream::Dialer;
use super::Args;

/// Filters per SUBSCRIBE packet.
const PER_PACKET: usize = 100;
/// SUBSCRIBE packets a holder may have awaiting their SUBACK.
const WINDOW: usize = 64;
/// Holders set up at once.
const SETUP_CONCURRENCY: usize = 256;

/// Filter number `k` of the scenario: even ones exact, odd ones with a `+` level.
pub fn filter(k: u64) -> String {
    if k.is_multiple_of(2) {
        format!("s/{k}/x")
    } else {
        format!("s/+/{k}")
    }
}

pub async fn subs(args: &Args) -> anyhow::Result<Map<String, Value>> {
    let addr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("resolving {}:{}", args.host, args.port))?
        .next()
        .ok_or_else(|| anyhow!("{}:{} resolves to nothing", args.host, args.port))?;
    let dialer = Arc::new(Dialer::new(&args.transport()?, &args.host, addr)?);
    let timeout = Duration::try_from_secs_f64(args.connect_timeout.max(0.0))
        .unwrap_or(Duration::from_secs(86_400));
    let clients = args.clients.max(1) as u64;
    let filters = args.filters;
    let rss = || args.pid.and_then(report::rss_kb);
    let mut out = Map::new();
    out.insert("scenario".into(), "subs".into());
    out.insert("mqtt".into(), args.mqtt_number().into());
    out.insert("transport".into(), args.transport_name().into());
    out.insert("filters".into(), filters.into());
    out.insert("clients".into(), clients.into());
    if args.persistent {
        out.extend(persistent_sessions(&dialer, args, timeout).await?);
        return Ok(out);
    }

    let rss_start = rss();
    let started = Instant::now();
    let holders = connect_holders(&dialer, clients, args, timeout).await?;
    let connected_secs = started.elapsed().as_secs_f64();
    let rss_connected = rss();

    let subscribing = Instant::now();
    let holders = subscribe_holders(holders, clients, filters, args.qos).await?;
    let subscribe_secs = subscribing.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_subscribed = rss();
    eprintln!(
        "subs: {clients} client(s) connected in {connected_secs:.2}s, {filters} filter(s) \
         subscribed in {subscribe_secs:.2}s"
    );
    out.insert("connect_secs".into(), round3(connected_secs).into());
    out.insert("subscribe_secs".into(), round3(subscribe_secs).into());
    for (name, value) in [
        ("rss_start_kb", rss_start),
        ("rss_connected_kb", rss_connected),
        ("rss_subscribed_kb", rss_subscribed),
    ] {
        if let Some(v) = value {
            out.insert(name.into(), v.into());
        }
    }
    if let (Some(before), Some(after)) = (rss_connected, rss_subscribed) {
        let per = (after.saturating_sub(before) * 1024) as f64 / filters.max(1) as f64;
        out.insert("rss_per_filter_bytes".into(), per.round().into());
        eprintln!("subs: broker rss {before} kB -> {after} kB = {per:.0} bytes/filter");
    }

    let stall = measure_teardown(&dialer, holders, args, timeout).await?;
    out.extend(stall);
    out.insert("ok".into(), true.into());
    out.insert("timed_out".into(), false.into());
    Ok(out)
}

async fn connect_holders(
    dialer: &Arc<Dialer>,
    clients: u64,
    args: &Args,
    timeout: Duration,
) -> anyhow::Result<Vec<Conn>> {
    let mut set = JoinSet::new();
    let mut conns: Vec<Option<Conn>> = (0..clients).map(|_| None).collect();
    for i in 0..clients {
        while set.len() >= SETUP_CONCURRENCY {
            store(&mut conns, set.join_next().await)?;
        }
        let id = format!("{}-h{i}", args.id_prefix);
        let login = args.login();
        let dialer = dialer.clone();
        set.spawn(async move {
            let conn = client::open(&dialer, None, &id, &login, timeout).await?;
            anyhow::Ok((i as usize, conn))
        });
    }
    while let Some(joined) = set.join_next().await {
        store(&mut conns, Some(joined))?;
    }
    Ok(conns.into_iter().flatten().collect())
}

type Joined<T> = Option<Result<anyhow::Result<(usize, T)>, tokio::task::JoinError>>;

fn store<T>(slots: &mut [Option<T>], joined: Joined<T>) -> anyhow::Result<()> {
    if let Some(joined) = joined {
        let (i, value) = joined.map_err(|e| anyhow!("set-up task failed: {e}"))??;
        slots[i] = Some(value);
    }
    Ok(())
}

/// Holder `i` of `clients` subscribes filters `i`, `i + clients`, ... below `filters`.
async fn subscribe_holders(
    holders: Vec<Conn>,
    clients: u64,
    filters: u64,
    qos: u8,
) -> anyhow::Result<Vec<Conn>> {
    let mut set = JoinSet::new();
    let mut done: Vec<Option<Conn>> = (0..holders.len()).map(|_| None).collect();
    for (i, mut conn) in holders.into_iter().enumerate() {
        while set.len() >= SETUP_CONCURRENCY {
            store(&mut done, set.join_next().await)?;
        }
        set.spawn(async move {
            let mine = (i as u64..filters).step_by(clients as usize).map(filter);
            let refused = subscribe_windowed(&mut conn, mine, qos).await?;
            if refused > 0 {
                bail!("holder {i}: {refused} subscription(s) refused (a per-client cap?)");
            }
            anyhow::Ok((i, conn))
        });
    }
    while let Some(joined) = set.join_next().await {
        store(&mut done, Some(joined))?;
    }
    Ok(done.into_iter().flatten().collect())
}

/// Subscribes to every filter, [`PER_PACKET`] per SUBSCRIBE with at most [`WINDOW`] awaiting
/// their SUBACK (writing everything before reading would fill both sides' socket buffers);
/// returns how many the broker refused.
async fn subscribe_windowed(
    conn: &mut Conn,
    filters: impl Iterator<Item = String>,
    qos: u8,
) -> anyhow::Result<u64> {
    let mut filters = filters.peekable();
    let mut waiting = std::collections::VecDeque::new();
    let mut refused = 0u64;
    let mut out = Vec::new();
    loop {
        while waiting.len() < WINDOW && filters.peek().is_some() {
            let chunk: Vec<String> = filters.by_ref().take(PER_PACKET).collect();
            let id = conn.next_packet_id;
            conn.next_packet_id = conn.next_packet_id.wrapping_add(1).max(1);
            codec::subscribe(&mut out, conn.version, id, &chunk, qos);
            waiting.push_back(id);
        }
        if !out.is_empty() {
            conn.stream.send(&out).await.context("send SUBSCRIBE")?;
            out.clear();
        }
        let Some(id) = waiting.pop_front() else {
            return Ok(refused);
        };
        refused += conn
            .wait_for(|p| match p {
                Packet::SubAck { packet_id, codes } if packet_id == id => {
                    Some(client::refused(codes) as u64)
                }
                _ => None,
            })
            .await
            .context("waiting for SUBACK")?;
    }
}

/// Step 2: the pair, the disconnect of every holder, and the prober.
async fn measure_teardown(
    dialer: &Dialer,
    holders: Vec<Conn>,
    args: &Args,
    timeout: Duration,
) -> anyhow::Result<Map<String, Value>> {
    let topic = format!("pair/{}", args.id_prefix);
    let login = args.login();
    let version = login.version;
    let Conn {
        stream: mut subscriber,
        aliases: mut sub_aliases,
        ..
    } = client::open(dialer, None, &format!("{topic}-s"), &login, timeout).await?;
    let mut buf = Vec::new();
    codec::subscribe(&mut buf, version, 1, &[topic.as_str()], 0);
    subscriber.send(&buf).await?;
    let mut publisher = client::open(dialer, None, &format!("{topic}-p"), &login, timeout).await?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // The subscriber: every PUBLISH's arrival time (the SUBACK is skipped by the decoder loop).
    let receiving = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut arrivals: Vec<Instant> = Vec::new();
            let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = stop.changed() => return arrivals,
                    read = subscriber.read(&mut chunk) => {
                        let Ok(n) = read else { return arrivals };
                        if n == 0 {
                            return arrivals;
                        }
                        let now = Instant::now();
                        rbuf.extend_from_slice(&chunk[..n]);
                        let mut used = 0;
                        while let Ok(Some((packet, len))) = codec::decode(&rbuf[used..], version) {
                            used += len;
                            if let Packet::Publish { topic, topic_alias, .. } = packet {
                                // A broker breaking the alias rules ends the arrivals here.
                                if sub_aliases.resolve(topic, topic_alias).is_err() {
                                    return arrivals;
                                }
                                arrivals.push(now);
                            }
                        }
                        rbuf.drain(..used);
                    }
                }
            }
        })
    };
    // The publisher: one QoS 0 message per millisecond until told to stop.
    let publishing = {
        let mut stop = stop_rx.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // In v5 the first PUBLISH may set a topic alias that the others use.
            let mut first = Vec::new();
            publisher.encode_publish(&mut first, &topic, 0, 0, b"tick");
            let mut packet = Vec::new();
            publisher.encode_publish(&mut packet, &topic, 0, 0, b"tick");
            let mut next = &first;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {
                        if publisher.stream.send(next).await.is_err() {
                            return;
                        }
                        next = &packet;
                    }
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let disconnected = Instant::now();
    let mut bye = Vec::new();
    codec::disconnect(&mut bye);
    for mut holder in holders {
        let _ = holder.stream.send(&bye).await;
        let _ = holder.stream.shutdown().await;
    }

    // The prober: fresh clients one after another for the rest of the window.
    let window = Duration::try_from_secs_f64(args.secs.max(0.5)).unwrap_or(Duration::from_secs(5));
    let mut connects: Vec<(f64, f64)> = Vec::new();
    let mut attempt = 0u32;
    let mut failed = 0u32;
    while disconnected.elapsed() < window {
        let start = Instant::now();
        let id = format!("{topic}-probe{attempt}");
        attempt += 1;
        let conn = client::open(dialer, None, &id, &login, timeout).await;
        let took = start.elapsed().as_secs_f64() * 1000.0;
        let at = (start - disconnected).as_secs_f64() * 1000.0;
        // A CONNECT that gets no CONNACK within --connect-timeout counts with the time it
        // waited: that is the finding, not a failure of the run.
        match conn {
            Ok(mut conn) => {
                let _ = conn.stream.send(&bye).await;
            }
            Err(e) => {
                eprintln!("subs: probe CONNECT {attempt} failed after {took:.0} ms: {e:#}");
                failed += 1;
            }
        }
        connects.push((at, took));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let arrivals = receiving.await.unwrap_or_default();
    let _ = publishing.await;

    let gap_ms = |from: Instant, to: Instant| -> f64 {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for &t in arrivals.iter().filter(|&&t| t > from && t <= to) {
            longest = longest.max(t - last);
            last = t;
        }
        longest = longest.max(to.saturating_duration_since(last));
        longest.as_secs_f64() * 1000.0
    };
    let baseline_from = disconnected - Duration::from_millis(500);
    let end = disconnected + window;
    let baseline = gap_ms(baseline_from, disconnected);
    let stall = gap_ms(disconnected, end);
    let received_after = arrivals.iter().filter(|&&t| t > disconnected).count();
    let slowest = connects.iter().map(|c| c.1).fold(0.0, f64::max);
    let first = connects.first().map(|c| c.1).unwrap_or(0.0);
    eprintln!(
        "subs: pair's longest gap {baseline:.1} ms before the disconnect, {stall:.1} ms in the \
         {:.1} s after it ({received_after} received); CONNECT took {first:.1} ms first, \
         {slowest:.1} ms at most ({} probes)",
        window.as_secs_f64(),
        connects.len()
    );
    let mut out = Map::new();
    out.insert("pair_gap_before_ms".into(), round1(baseline).into());
    out.insert("pair_gap_after_ms".into(), round1(stall).into());
    out.insert("pair_received_after".into(), received_after.into());
    out.insert("connect_first_ms".into(), round1(first).into());
    out.insert("connect_max_ms".into(), round1(slowest).into());
    out.insert("connect_probes".into(), connects.len().into());
    out.insert("connect_failed".into(), failed.into());
    out.insert("window_secs".into(), round3(window.as_secs_f64()).into());
    Ok(out)
}

/// Session Expiry Interval of the `--persistent` sessions in v5: longer than any run (the
/// broker is stopped with them), short enough not to outlive a broker that is kept.
const PERSISTENT_SESSION_EXPIRY: u32 = 3600;

/// How long a client that sent DISCONNECT waits for the broker to close the connection before
/// closing it itself.
const BROKER_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Clients of the `--persistent` sample that connect again to find their session.
const SAMPLE: u64 = 16;

/// What one `--persistent` client did.
struct Left {
    filters: u64,
    /// The broker closed the connection after DISCONNECT within [`BROKER_CLOSE_WAIT`].
    closed_by_broker: bool,
    session_present: bool,
}

/// One `--persistent` client: connect (with its persistent session), subscribe `filters`
/// (none for a check of the sample), DISCONNECT, wait for the broker to close.
async fn leave_session(
    dialer: &Dialer,
    bind: Option<std::net::IpAddr>,
    id: &str,
    login: &Login,
    filters: Vec<String>,
    qos: u8,
    timeout: Duration,
) -> anyhow::Result<Left> {
    let mut conn = client::open(dialer, bind, id, login, timeout).await?;
    let session_present = conn.session_present;
    let count = filters.len() as u64;
    let refused = tokio::time::timeout(
        timeout,
        subscribe_windowed(&mut conn, filters.into_iter(), qos),
    )
    .await
    .map_err(|_| anyhow!("{id}: no SUBACK within {timeout:?}"))?
    .with_context(|| id.to_string())?;
    if refused > 0 {
        bail!("{id}: {refused} subscription(s) refused (a per-client cap?)");
    }
    let mut bye = Vec::new();
    codec::disconnect(&mut bye);
    conn.stream
        .send(&bye)
        .await
        .with_context(|| format!("{id}: send DISCONNECT"))?;
    // Reads until the broker's close; anything it still sends is of no interest.
    let mut sink = [0u8; 512];
    let closed_by_broker = tokio::time::timeout(BROKER_CLOSE_WAIT, async {
        loop {
            match conn.stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    Ok(Left {
        filters: count,
        closed_by_broker,
        session_present,
    })
}

/// `--persistent`: `--clients` persistent sessions holding `--filters` filters left offline in
/// the broker (see the module's documentation).
async fn persistent_sessions(
    dialer: &Arc<Dialer>,
    args: &Args,
    timeout: Duration,
) -> anyhow::Result<Map<String, Value>> {
    let clients = args.clients.max(1) as u64;
    let filters = args.filters;
    let qos = args.qos;
    let login = args.login().session_expiry(PERSISTENT_SESSION_EXPIRY);
    let per_ip = args.conns_per_ip.max(1) as usize;
    let rss = || args.pid.and_then(report::rss_kb);
    // Whole client and its filters, or one attempt of a sample's check, bounded as a whole.
    let client_limit = timeout * 2 + BROKER_CLOSE_WAIT;

    let rss_start = rss();
    let started = Instant::now();
    let mut set = JoinSet::new();
    let mut made = vec![false; clients as usize];
    let (mut sessions, mut subscribed, mut failed, mut not_closed) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut last_progress = Instant::now();
    let mut tally = |joined: Option<Result<(usize, anyhow::Result<Left>), _>>| match joined {
        Some(Ok((i, Ok(left)))) => {
            made[i] = true;
            sessions += 1;
            subscribed += left.filters;
            not_closed += u64::from(!left.closed_by_broker);
        }
        Some(Ok((_, Err(e)))) => {
            failed += 1;
            first_error.get_or_insert_with(|| format!("{e:#}"));
        }
        Some(Err(e)) => {
            failed += 1;
            first_error.get_or_insert_with(|| format!("task: {e}"));
        }
        None => {}
    };
    for i in 0..clients {
        while set.len() >= run::SETUP_CONCURRENCY {
            tally(set.join_next().await);
        }
        if args.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {i} of {clients} sessions started");
            last_progress = Instant::now();
        }
        let dialer = dialer.clone();
        let bind = source_address(dialer.addr, i as usize, per_ip);
        let id = format!("{}-h{i}", args.id_prefix);
        let mine: Vec<String> = (i..filters).step_by(clients as usize).map(filter).collect();
        set.spawn(async move {
            let left = tokio::time::timeout(
                client_limit,
                leave_session(&dialer, bind, &id, &login, mine, qos, timeout),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow!("{id}: not done within {client_limit:?}")));
            (i as usize, left)
        });
    }
    while let Some(joined) = set.join_next().await {
        tally(Some(joined));
    }
    let setup_secs = started.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!("subs: {failed} client(s) failed; the first: {e}");
    }
    if sessions == 0 {
        bail!(
            "no persistent session was made: {}",
            first_error.unwrap_or_default()
        );
    }
    eprintln!(
        "subs: {sessions} persistent session(s) with {subscribed} filter(s) left in {setup_secs:.2}s \
         ({:.0}/s); settling 2s",
        sessions as f64 / setup_secs.max(1e-9)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = rss();

    // The sample: evenly spread clients whose session was made find it again.
    let (mut checked, mut present) = (0u64, 0u64);
    for k in 0..SAMPLE.min(clients) {
        let i = k * clients / SAMPLE.min(clients);
        if !made[i as usize] {
            continue;
        }
        let id = format!("{}-h{i}", args.id_prefix);
        let bind = source_address(dialer.addr, i as usize, per_ip);
        let check = tokio::time::timeout(
            client_limit,
            leave_session(dialer, bind, &id, &login, Vec::new(), qos, timeout),
        )
        .await;
        checked += 1;
        match check {
            Ok(Ok(left)) => present += u64::from(left.session_present),
            Ok(Err(e)) => eprintln!("subs: checking {id}'s session: {e:#}"),
            Err(_) => eprintln!("subs: checking {id}'s session: not done within {client_limit:?}"),
        }
    }
    if present < checked {
        eprintln!(
            "warning: the broker had kept only {present} of {checked} sampled sessions: the bytes \
             per filter are not those of offline sessions"
        );
    }

    let mut out = Map::new();
    out.insert("persistent".into(), true.into());
    out.insert("sessions".into(), sessions.into());
    out.insert("filters_subscribed".into(), subscribed.into());
    out.insert("errors".into(), failed.into());
    out.insert("not_closed_by_broker".into(), not_closed.into());
    out.insert("setup_secs".into(), round3(setup_secs).into());
    out.insert(
        "sessions_per_sec".into(),
        (sessions as f64 / setup_secs.max(1e-9)).round().into(),
    );
    out.insert("sessions_checked".into(), checked.into());
    out.insert("sessions_present".into(), present.into());
    if let Some(v) = rss_start {
        out.insert("rss_start_kb".into(), v.into());
    }
    if let Some(v) = rss_end {
        out.insert("rss_end_kb".into(), v.into());
    }
    if let (Some(before), Some(after)) = (rss_start, rss_end) {
        let grown = (after.saturating_sub(before) * 1024) as f64;
        let per_filter = grown / subscribed.max(1) as f64;
        let per_session = grown / sessions as f64;
        out.insert("rss_per_filter_bytes".into(), per_filter.round().into());
        out.insert("rss_per_session_bytes".into(), per_session.round().into());
        eprintln!(
            "subs: broker rss {before} kB -> {after} kB = {per_filter:.0} bytes/filter, \
             {per_session:.0} bytes/session ({sessions} offline sessions, {subscribed} filters; \
             each figure the whole growth); {present}/{checked} sampled sessions kept"
        );
    } else {
        eprintln!(
            "subs: {sessions} offline sessions, {subscribed} filters (no --pid: no rss); \
             {present}/{checked} sampled sessions kept"
        );
    }
    out.insert("ok".into(), true.into());
    out.insert("timed_out".into(), false.into());
    Ok(out)
}

fn round1(x: f64) -> f64 {
    report::round1(x)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_alternate_exact_and_wildcard() {
        assert_eq!(filter(0), "s/0/x");
        assert_eq!(filter(1), "s/+/1");
        assert_eq!(filter(1_000_000), "s/1000000/x");
    }
}
