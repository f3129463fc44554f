//! The scenarios and the measurement window.
//!
//! Traffic scenarios: connect and subscribe everything (waiting for SUBACKs), start the
//! publishers, snapshot the counters after `--warmup` s and again `--secs` s later (the rates),
//! stop the publishers, wait until every expected delivery arrived or `--drain` s passed, then
//! disconnect. The whole run is bounded by a global deadline
//! (connect-timeout + warmup + secs + drain + 10 s).
//!
//! `sent` counts what the publishers handed to the kernel. What the broker had not read yet when
//! the drain ended (in the publishers' send queues and, with the broker on this machine, in its
//! receive queues: `unread`) is neither expected nor lost. Publishers whose send queues could
//! stand for more than [`KERNEL_BACKLOG_DELIVERIES`] deliveries between them (many publishers,
//! or a large fan-out) get a smaller SO_SNDBUF than the kernel's autotuning would give.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::client::{self, Conn, Counters, Login, PubSpec, Shared, SubSpec};
use super::codec;
use super::report::{self, round1};
use super::stream::{Dialer, Stream};
use super::{Args, Scenario};

/// Runs the scenario and prints the report; returns the exit code.
pub async fn run(args: Args) -> i32 {
    let nofile = report::raise_nofile_limit();
    let result = match args.scenario {
        Scenario::Conns => conns(&args, nofile).await,
        Scenario::Handshakes => super::handshakes::handshakes(&args).await,
        Scenario::Subs => super::subs::subs(&args).await,
        _ => traffic(&args).await,
    };
    match result {
        Ok(mut out) => {
            if let Some(tls) = super::stream::negotiated_tls() {
                eprintln!("TLS: {tls}");
                out.insert("tls".into(), tls.into());
            }
            if args.auth.is_some() {
                out.insert("auth".into(), auth_json(&args));
            }
            println!("{}", Value::Object(out));
            0
        }
        Err(e) => {
            eprintln!("coolpy7-bench: set-up failed: {e:#}");
            println!(
                "{}",
                json!({"scenario": args.scenario.name(), "ok": false, "error": format!("{e:#}")})
            );
            1
        }
    }
}

/// What the CONNECTs carried (never the password): `username`, `password` (whether each was
/// sent) and, with `--users`, how many numbered user names were used and whether they ran out
/// (a name used twice may have hit the broker's cache of verified passwords).
fn auth_json(args: &Args) -> Value {
    let auth = &args.auth;
    let mut out = Map::new();
    out.insert("username".into(), auth.username.is_some().into());
    out.insert("password".into(), auth.password.is_some().into());
    if auth.users > 0 {
        let connects = client::numbered_connects();
        out.insert("users".into(), auth.users.into());
        out.insert("connects".into(), connects.into());
        out.insert(
            "users_reused".into(),
            (connects > u64::from(auth.users)).into(),
        );
        if connects > u64::from(auth.users) {
            eprintln!(
                "note: {connects} CONNECTs over {} user names: some names were used twice",
                auth.users
            );
        }
    }
    Value::Object(out)
}

pub(super) async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}:{port}"))?
        .next()
        .ok_or_else(|| anyhow!("{host}:{port} resolves to nothing"))
}

pub(super) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_secs(86_400))
}

/// Who publishes where and who subscribes to what.
struct Plan {
    publishers: Vec<PubSpec>,
    /// One entry per measured subscriber: its filters.
    subscribers: Vec<Vec<String>>,
    /// Filters of stalled subscriber j: `stalled[j % len]`.
    stalled: Vec<String>,
    /// Deliveries each published message should cause.
    fanout: u64,
    rate: u64,
}

fn plan(args: &Args) -> Plan {
    let size = args.size as usize;
    let qos = args.qos;
    let inflight = u64::from(args.inflight);
    let rate = if args.scenario == Scenario::Latency && args.rate == 0 {
        1000
    } else {
        args.rate
    };
    let latency = args.scenario == Scenario::Latency;
    let topics: Vec<String> = match args.scenario {
        Scenario::Fanin => (0..args.publishers.max(1))
            .map(|p| format!("bench/fanin/{p}"))
            .collect(),
        Scenario::Fanout => vec!["bench/fanout".into()],
        Scenario::P2p => (0..args.pairs.max(1))
            .map(|i| format!("bench/p2p/{i}"))
            .collect(),
        Scenario::Latency | Scenario::Conns | Scenario::Subs | Scenario::Handshakes => {
            vec!["bench/lat".into()]
        }
    };
    let n = topics.len() as u64;
    let publishers = topics
        .iter()
        .enumerate()
        .map(|(i, topic)| PubSpec {
            id: i as u32,
            topic: topic.clone(),
            topics: args.topics,
            qos,
            size,
            inflight,
            // The total rate split evenly (the first ones take the remainder).
            rate: if rate == 0 {
                0.0
            } else {
                (rate / n + u64::from((i as u64) < rate % n)) as f64
            },
            stamp_each: latency,
        })
        .collect();
    let (subscribers, stalled, fanout) = match args.scenario {
        Scenario::Fanin => {
            // With --topics, publisher p publishes to bench/fanin/<p>/<j>.
            let filter = if args.topics > 1 {
                "bench/fanin/+/+"
            } else {
                "bench/fanin/+"
            };
            (vec![vec![filter.to_string()]], vec![filter.to_string()], 1)
        }
        Scenario::Fanout => (
            (0..args.subscribers.max(1))
                .map(|_| vec!["bench/fanout".to_string()])
                .collect(),
            vec!["bench/fanout".to_string()],
            u64::from(args.subscribers.max(1)),
        ),
        Scenario::P2p => (
            topics.iter().map(|t| vec![t.clone()]).collect(),
            topics.clone(),
            1,
        ),
        Scenario::Latency | Scenario::Conns | Scenario::Subs | Scenario::Handshakes => {
            (vec![vec!["bench/lat".into()]], vec!["bench/lat".into()], 1)
        }
    };
    Plan {
        publishers,
        subscribers,
        stalled,
        fanout,
        rate,
    }
}

/// The unrelated subscriptions of `--extra-subs`: half exact, half wildcard.
fn extra_filters(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 | 2 => format!("extra/{i}/data"),
            1 => format!("extra/{i}/+/x"),
            _ => format!("extra2/{i}/#"),
        })
        .collect()
}

/// Connects in flight at once while the clients of a scenario are set up. A listener's accept
/// queue is short (Mosquitto's and coolpy7's overflowed here with 256 SYNs at once), and a SYN
/// it drops is sent again only a second later: 1,000 clients took 1.0 s with 256 in flight and
/// 0.05 s with 64.
pub(super) const SETUP_CONCURRENCY: usize = 64;

/// Opens (and subscribes) every client, `concurrency` at a time; fails on the first failure,
/// and when a v5 broker's Maximum QoS is below `qos`.
async fn open_all(
    dialer: &Arc<Dialer>,
    clients: Vec<(String, Vec<String>)>,
    qos: u8,
    login: Login,
    timeout: Duration,
    concurrency: usize,
) -> anyhow::Result<Vec<Conn>> {
    let mut set = JoinSet::new();
    let count = clients.len();
    let mut conns: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
    let mut store = |joined: Result<anyhow::Result<(usize, Conn)>, tokio::task::JoinError>| {
        let (i, conn) = joined.map_err(|e| anyhow!("set-up task failed: {e}"))??;
        conns[i] = Some(conn);
        anyhow::Ok(())
    };
    for (i, (id, filters)) in clients.into_iter().enumerate() {
        while set.len() >= concurrency.max(1) {
            if let Some(joined) = set.join_next().await {
                store(joined)?;
            }
        }
        let dialer = dialer.clone();
        set.spawn(async move {
            let mut conn = client::open(&dialer, None, &id, &login, timeout).await?;
            if conn.server_maximum_qos < qos {
                return Err(anyhow!(
                    "{id}: the broker's Maximum QoS is {}, below --qos {qos}",
                    conn.server_maximum_qos
                ));
            }
            if !filters.is_empty() {
                tokio::time::timeout(timeout, conn.subscribe(&filters, qos))
                    .await
                    .map_err(|_| anyhow!("{id}: no SUBACK within {timeout:?}"))?
                    .with_context(|| format!("{id}: subscribe"))?;
            }
            anyhow::Ok((i, conn))
        });
    }
    while let Some(joined) = set.join_next().await {
        store(joined)?;
    }
    Ok(conns.into_iter().map(|c| c.expect("joined")).collect())
}

#[derive(Default, Clone, Copy)]
struct Totals {
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    gaps: u64,
    foreign: u64,
    errors: u64,
}

fn totals(pubs: &[Arc<Counters>], subs: &[Arc<Counters>]) -> Totals {
    let mut t = Totals::default();
    for c in pubs {
        t.sent += c.sent.load(Relaxed);
        t.acked += c.acked.load(Relaxed);
        t.errors += c.errors.load(Relaxed);
    }
    for c in subs {
        t.delivered += c.delivered.load(Relaxed);
        t.duplicates += c.duplicates.load(Relaxed);
        t.gaps += c.gaps.load(Relaxed);
        t.foreign += c.foreign.load(Relaxed);
        t.errors += c.errors.load(Relaxed);
    }
    t
}

/// What the traffic run collected; filled in as it goes so that a run cut short by the global
/// deadline still reports.
#[derive(Default)]
struct State {
    pubs: Vec<Arc<Counters>>,
    subs: Vec<Arc<Counters>>,
    tasks: Vec<JoinHandle<()>>,
    /// Idle (--extra-subs) and stalled clients, kept open until the end.
    held: Vec<Conn>,
    setup_secs: f64,
    /// v5: the broker's Receive Maximum and Topic Alias Maximum (from a publisher's CONNACK).
    broker_limits: Option<(u16, u16)>,
    rss_before_kb: Option<u64>,
    rss_after_kb: Option<u64>,
    window_secs: f64,
    window_sent: u64,
    window_delivered: u64,
    bench_cpu_pct: Option<f64>,
    broker_cpu_pct: Option<f64>,
    expected: Option<u64>,
    drain_secs: f64,
    drained: bool,
    setup_done: bool,
    /// SO_SNDBUF the publishers asked for (see [`publisher_send_buffer`]).
    publisher_send_buffer: Option<u32>,
    /// Each publisher's (local, broker) addresses, to find its queues in `/proc/net/tcp`.
    publisher_addrs: Vec<Option<(SocketAddr, SocketAddr)>>,
    /// Messages the broker had not read when the drain ended (see [`unread_messages`]).
    unread: u64,
}

async fn traffic(args: &Args) -> anyhow::Result<Map<String, Value>> {
    let plan = plan(args);
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        window_from_ns: AtomicU64::new(u64::MAX),
        window_to_ns: AtomicU64::new(u64::MAX),
        samples: Mutex::new(Vec::new()),
        keepalive: args.keepalive,
    });
    let (phase_tx, phase_rx) = watch::channel(client::SETUP);
    let global = secs(args.connect_timeout + args.warmup + args.secs + args.drain + 10.0);
    let mut st = State::default();
    let outcome = tokio::time::timeout(
        global,
        traffic_body(args, &plan, &shared, &phase_tx, &phase_rx, &mut st),
    )
    .await;
    let timed_out = match outcome {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            for t in &st.tasks {
                t.abort();
            }
            return Err(e);
        }
        Err(_) => {
            if !st.setup_done {
                for t in &st.tasks {
                    t.abort();
                }
                return Err(anyhow!("set-up not finished by the global deadline"));
            }
            true
        }
    };
    // Close everything (bounded), then read the final counters.
    let _ = phase_tx.send(client::CLOSE);
    let close_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for t in st.tasks.iter_mut() {
        if tokio::time::timeout_at(close_deadline, &mut *t)
            .await
            .is_err()
        {
            t.abort();
        }
    }
    let mut bye = Vec::new();
    codec::disconnect(&mut bye);
    for mut c in st.held.drain(..) {
        c.stream.close_now(&bye).await;
    }
    let t = totals(&st.pubs, &st.subs);
    // What the broker never read cannot be delivered: not expected, not lost.
    let expected = st
        .expected
        .unwrap_or(t.sent * plan.fanout)
        .saturating_sub(st.unread * plan.fanout);
    let lost = expected.saturating_sub(t.delivered);
    let errors = t.errors + u64::from(timed_out);

    let window = st.window_secs.max(1e-9);
    let sent_per_sec = (st.window_sent as f64 / window).round();
    let delivered_per_sec = (st.window_delivered as f64 / window).round();
    let mut out = Map::new();
    out.insert("scenario".into(), args.scenario.name().into());
    out.insert("ok".into(), (!timed_out).into());
    out.insert("mqtt".into(), args.mqtt_number().into());
    out.insert("transport".into(), args.transport_name().into());
    out.insert("qos".into(), args.qos.into());
    out.insert("size".into(), args.size.into());
    out.insert("publishers".into(), plan.publishers.len().into());
    out.insert("subscribers".into(), plan.subscribers.len().into());
    out.insert("rate".into(), plan.rate.into());
    out.insert("secs".into(), round3(st.window_secs).into());
    out.insert("warmup".into(), args.warmup.into());
    out.insert("sent".into(), t.sent.into());
    out.insert("sent_per_sec".into(), sent_per_sec.into());
    out.insert("delivered".into(), t.delivered.into());
    out.insert("delivered_per_sec".into(), delivered_per_sec.into());
    out.insert("expected".into(), expected.into());
    out.insert("lost".into(), lost.into());
    out.insert("unread".into(), st.unread.into());
    out.insert("duplicates".into(), t.duplicates.into());
    out.insert("gaps".into(), t.gaps.into());
    out.insert("foreign".into(), t.foreign.into());
    out.insert("acked".into(), t.acked.into());
    out.insert("errors".into(), errors.into());
    out.insert("timed_out".into(), timed_out.into());
    out.insert("drained".into(), st.drained.into());
    out.insert("drain_secs".into(), round3(st.drain_secs).into());
    out.insert("setup_secs".into(), round3(st.setup_secs).into());
    out.insert(
        "mbytes_per_sec_in".into(),
        round1(sent_per_sec * args.size as f64 / 1e6).into(),
    );
    if args.qos > 0 {
        out.insert("inflight".into(), args.inflight.into());
    }
    if let Some(bytes) = st.publisher_send_buffer {
        out.insert("publisher_sndbuf".into(), bytes.into());
    }
    if let Some((receive, alias)) = st.broker_limits {
        out.insert("broker_receive_max".into(), receive.into());
        out.insert("broker_topic_alias_max".into(), alias.into());
        out.insert("topic_alias_max".into(), args.topic_alias_max.into());
    }
    out.insert("extra_subs".into(), args.extra_subs.into());
    out.insert("stalled".into(), args.stalled.into());
    if args.topics > 1 {
        out.insert("topics_per_publisher".into(), args.topics.into());
    }
    out.insert("threads".into(), args.threads.into());
    if args.scenario == Scenario::Latency {
        let mut samples =
            std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|e| e.into_inner()));
        out.insert("latency_us".into(), report::latency_json(&mut samples));
    }
    if let Some(v) = st.rss_before_kb {
        out.insert("rss_before_kb".into(), v.into());
    }
    if let Some(v) = st.rss_after_kb {
        out.insert("rss_after_kb".into(), v.into());
    }
    if let Some(v) = st.bench_cpu_pct {
        out.insert("bench_cpu_pct".into(), round1(v).into());
    }
    if let Some(v) = st.broker_cpu_pct {
        out.insert("broker_cpu_pct".into(), round1(v).into());
    }

    eprintln!(
        "{} mqtt{} qos{} size={} pubs={} subs={} rate={}: sent {:.0}/s, delivered {:.0}/s over \
         {:.1}s; sent={} delivered={} expected={} lost={}{} dup={} gaps={} errors={}{}{}",
        args.scenario.name(),
        args.mqtt_number(),
        args.qos,
        args.size,
        plan.publishers.len(),
        plan.subscribers.len(),
        plan.rate,
        sent_per_sec,
        delivered_per_sec,
        st.window_secs,
        t.sent,
        t.delivered,
        expected,
        lost,
        if st.unread > 0 {
            format!(" (not read by the broker: {})", st.unread)
        } else {
            String::new()
        },
        t.duplicates,
        t.gaps,
        errors,
        if timed_out { " TIMED OUT" } else { "" },
        if st.drained { "" } else { " (not drained)" },
    );
    if let Some(Value::Object(l)) = out.get("latency_us") {
        eprintln!(
            "latency us: p50={} p90={} p99={} p999={} max={} (n={})",
            l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["count"]
        );
    }
    if let (Some(b), Some(c)) = (st.bench_cpu_pct, st.broker_cpu_pct) {
        eprintln!("cpu over the window: bench {b:.0}%, broker {c:.0}% (of one core)");
    } else if let Some(b) = st.bench_cpu_pct {
        eprintln!("cpu over the window: bench {b:.0}% (of one core)");
    }
    if let (Some(b), Some(a)) = (st.rss_before_kb, st.rss_after_kb) {
        eprintln!("broker rss: {b} kB before, {a} kB after");
    }
    Ok(out)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn traffic_body(
    args: &Args,
    plan: &Plan,
    shared: &Arc<Shared>,
    phase_tx: &watch::Sender<u8>,
    phase_rx: &watch::Receiver<u8>,
    st: &mut State,
) -> anyhow::Result<()> {
    let transport = args.transport()?;
    let pub_addr = resolve(&args.host, args.port).await?;
    let sub_host = args.sub_host.as_deref().unwrap_or(&args.host);
    let sub_addr = resolve(sub_host, args.sub_port.unwrap_or(args.port)).await?;
    let mut pub_dialer = Dialer::new(&transport, &args.host, pub_addr)?;
    st.publisher_send_buffer = publisher_send_buffer(args, plan);
    pub_dialer.send_buffer = st.publisher_send_buffer;
    let pub_dialer = Arc::new(pub_dialer);
    let sub_dialer = Arc::new(Dialer::new(&transport, sub_host, sub_addr)?);
    let timeout = secs(args.connect_timeout);
    let conc = SETUP_CONCURRENCY;
    let login = args.login();
    let qos = args.qos;
    let prefix = &args.id_prefix;
    let setup_start = Instant::now();

    // Set-up, as a whole bounded by --connect-timeout.
    let setup = async {
        if args.extra_subs > 0 {
            let filters = extra_filters(args.extra_subs);
            let per = filters.len().div_ceil(10);
            let clients = filters
                .chunks(per)
                .enumerate()
                .map(|(i, f)| (format!("{prefix}-x{i}"), f.to_vec()))
                .collect();
            let idle = open_all(&sub_dialer, clients, qos, login, timeout, conc).await?;
            st.held.extend(idle);
        }
        let clients = plan
            .subscribers
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("{prefix}-s{i}"), f.clone()))
            .collect();
        let subs = open_all(&sub_dialer, clients, qos, login, timeout, conc).await?;
        if args.stalled > 0 {
            let clients = (0..args.stalled as usize)
                .map(|j| {
                    let filter = plan.stalled[j % plan.stalled.len()].clone();
                    (format!("{prefix}-st{j}"), vec![filter])
                })
                .collect();
            let stalled = open_all(&sub_dialer, clients, qos, login, timeout, conc).await?;
            st.held.extend(stalled);
        }
        let clients = (0..plan.publishers.len())
            .map(|i| (format!("{prefix}-p{i}"), Vec::new()))
            .collect();
        let pubs = open_all(
            &pub_dialer,
            clients,
            qos,
            args.publisher_login(),
            timeout,
            conc,
        )
        .await?;
        anyhow::Ok((subs, pubs))
    };
    let (subs, pubs) = tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| anyhow!("set-up took longer than --connect-timeout {timeout:?}"))??;
    st.setup_secs = setup_start.elapsed().as_secs_f64();
    if args.mqtt == codec::Version::V5 {
        st.broker_limits = pubs
            .first()
            .map(|c| (c.server_receive_maximum, c.server_topic_alias_maximum));
    }

    let latency = args.scenario == Scenario::Latency;
    for conn in subs {
        let ctr = Arc::new(Counters::default());
        st.subs.push(ctr.clone());
        let spec = SubSpec {
            publishers: plan.publishers.len(),
            latency,
        };
        st.tasks.push(tokio::spawn(client::subscriber(
            conn,
            spec,
            shared.clone(),
            ctr,
            phase_rx.clone(),
        )));
    }
    for (conn, spec) in pubs.into_iter().zip(plan.publishers.iter()) {
        st.publisher_addrs
            .push(conn.local_addr.map(|local| (local, pub_addr)));
        let ctr = Arc::new(Counters::default());
        st.pubs.push(ctr.clone());
        let spec = PubSpec {
            topic: spec.topic.clone(),
            ..*spec
        };
        st.tasks.push(tokio::spawn(client::publisher(
            conn,
            spec,
            shared.clone(),
            ctr,
            phase_rx.clone(),
        )));
    }
    st.setup_done = true;
    eprintln!(
        "set up {} publisher(s), {} subscriber(s), {} stalled, {} extra subscription(s) in {:.2}s{}",
        st.pubs.len(),
        st.subs.len(),
        args.stalled,
        args.extra_subs,
        st.setup_secs,
        match st.publisher_send_buffer {
            Some(bytes) => format!("; publishers' SO_SNDBUF {bytes}"),
            None => String::new(),
        }
    );
    if let Some((receive, alias)) = st.broker_limits {
        eprintln!(
            "broker's CONNACK: Receive Maximum {receive}, Topic Alias Maximum {alias} \
             (publishers {} topic aliases)",
            if alias > 0 && args.topic_alias_max > 0 {
                "use"
            } else {
                "do not use"
            }
        );
    }
    st.rss_before_kb = args.pid.and_then(report::rss_kb);
    // Subscribers on another node of a cluster need no wait here: a coolpy7 SUBACK comes once
    // the other nodes have the subscription.

    // Publish: warm-up, then the measured window.
    let _ = phase_tx.send(client::RUN);
    progress_sleep(args, st, secs(args.warmup)).await;
    let a = totals(&st.pubs, &st.subs);
    let cpu_a = (
        report::cpu_secs(None),
        args.pid.and_then(|p| report::cpu_secs(Some(p))),
    );
    let window_start = Instant::now();
    shared.window_from_ns.store(shared.now_ns(), Relaxed);
    progress_sleep(args, st, secs(args.secs)).await;
    shared.window_to_ns.store(shared.now_ns(), Relaxed);
    let b = totals(&st.pubs, &st.subs);
    let cpu_b = (
        report::cpu_secs(None),
        args.pid.and_then(|p| report::cpu_secs(Some(p))),
    );
    st.window_secs = window_start.elapsed().as_secs_f64();
    st.window_sent = b.sent - a.sent;
    st.window_delivered = b.delivered - a.delivered;
    let pct = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / st.window_secs.max(1e-9) * 100.0);
    st.bench_cpu_pct = pct(cpu_a.0, cpu_b.0);
    st.broker_cpu_pct = pct(cpu_a.1, cpu_b.1);

    // Stop publishing; wait for the publishers to flush and the deliveries to arrive.
    let _ = phase_tx.send(client::STOP);
    let drain_start = Instant::now();
    let drain_deadline = drain_start + secs(args.drain);
    loop {
        let all_done = st.pubs.iter().all(|c| c.done.load(Relaxed));
        if all_done {
            let t = totals(&st.pubs, &st.subs);
            let expected = t.sent * plan.fanout;
            st.expected = Some(expected);
            if t.delivered >= expected {
                st.drained = true;
                break;
            }
        }
        if Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !st.drained {
        st.unread = unread_messages(st);
    }
    st.drain_secs = drain_start.elapsed().as_secs_f64();
    st.rss_after_kb = args.pid.and_then(report::rss_kb);
    Ok(())
}

/// Deliveries that the publishers' kernel send queues may stand for, all together, before the
/// bench asks for a smaller SO_SNDBUF than the kernel's autotuning (up to 4 MiB a socket). A
/// publisher that outruns the broker fills its send queue, and what waits there was counted as
/// sent: 4 MiB for one publisher to 1,000 subscribers is 50 million deliveries, more than any
/// drain takes, and 1,000 publishers with 4 MiB each put the kernel's TCP memory under pressure.
const KERNEL_BACKLOG_DELIVERIES: u64 = 1_000_000;

/// The SO_SNDBUF publishers ask for: what keeps [`KERNEL_BACKLOG_DELIVERIES`], or `None` when
/// the kernel's own ceiling is below that anyway (a few publishers, a small fan-out: the
/// scenarios as they always ran).
fn publisher_send_buffer(args: &Args, plan: &Plan) -> Option<u32> {
    let publishers = plan.publishers.len().max(1) as u64;
    // A PUBLISH: fixed header, topic, packet id, payload.
    let topic = plan
        .publishers
        .iter()
        .map(|p| p.topic.len())
        .max()
        .unwrap_or(0) as u64;
    let publish_len = 5 + 2 + topic + 2 + u64::from(args.size);
    // The kernel doubles what is asked (for its own bookkeeping).
    let wanted = KERNEL_BACKLOG_DELIVERIES * publish_len / (publishers * plan.fanout.max(1)) / 2;
    let ceiling = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
        .unwrap_or(4 << 20);
    (wanted < ceiling).then(|| wanted.clamp(4096, u64::from(u32::MAX)) as u32)
}

/// Messages the broker had not read yet when the drain ended: bytes in each publisher's send
/// queue and in the broker's receive queue of that connection (when the broker runs here),
/// divided by the length of a PUBLISH. Not lost: the broker never had them.
fn unread_messages(st: &State) -> u64 {
    let pairs: Vec<_> = st.publisher_addrs.iter().flatten().copied().collect();
    if pairs.len() != st.pubs.len() {
        return 0;
    }
    let Some(bytes) = report::unread_bytes(&pairs) else {
        return 0;
    };
    bytes
        .iter()
        .zip(&st.pubs)
        .map(|(&b, c)| b / c.publish_len.load(Relaxed).max(1))
        .sum()
}

/// Sleeps `d`, printing a progress line every second with `--progress`.
async fn progress_sleep(args: &Args, st: &State, d: Duration) {
    if !args.progress {
        tokio::time::sleep(d).await;
        return;
    }
    let end = Instant::now() + d;
    let mut last = totals(&st.pubs, &st.subs);
    let mut last_at = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(1))).await;
        let t = totals(&st.pubs, &st.subs);
        let dt = last_at.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "  sent {:.0}/s delivered {:.0}/s (total sent {} delivered {} errors {})",
            (t.sent - last.sent) as f64 / dt,
            (t.delivered - last.delivered) as f64 / dt,
            t.sent,
            t.delivered,
            t.errors
        );
        last = t;
        last_at = Instant::now();
    }
}

/// The source address of connection `i` to a broker on IPv4 loopback: 127.0.0.2 for the first
/// `per_ip`, 127.0.0.3 for the next, ..., so that more connections than the ephemeral port range
/// (32768-60999) can be made, and TIME_WAIT of one address does not hold up the next. `None`
/// (the kernel's choice) for a broker elsewhere, and past 127.0.0.254.
pub(super) fn source_address(broker: SocketAddr, i: usize, per_ip: usize) -> Option<IpAddr> {
    match broker.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let n = 2 + i / per_ip.max(1);
            (n < 255).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n as u8)))
        }
        _ => None,
    }
}

/// The `conns` scenario: C idle connections, the broker's RSS before and after.
async fn conns(args: &Args, nofile: Option<u64>) -> anyhow::Result<Map<String, Value>> {
    let addr = resolve(&args.host, args.port).await?;
    let dialer = Arc::new(Dialer::new(&args.transport()?, &args.host, addr)?);
    let target = args.conns as usize;
    if let Some(limit) = nofile {
        if target as u64 + 64 > limit {
            eprintln!(
                "warning: --conns {target} is close to or above this process's open-file limit \
                 ({limit}); the broker needs one file descriptor per connection too"
            );
        }
    }
    let timeout = secs(args.connect_timeout);
    let per_ip = args.conns_per_ip.max(1) as usize;
    let global = secs(args.connect_timeout + args.warmup + args.secs + args.drain + 10.0);
    let rss_before_kb = args.pid.and_then(report::rss_kb);
    let streams: Arc<Mutex<Vec<Stream>>> = Arc::new(Mutex::new(Vec::with_capacity(target)));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut connect_secs = 0.0;
    let connecting = async {
        let mut set = JoinSet::new();
        let conc = args.conn_concurrency.max(1);
        let mut first_error: Option<String> = None;
        let mut handle = |joined: Result<anyhow::Result<Conn>, tokio::task::JoinError>| match joined
        {
            Ok(Ok(conn)) => streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn.stream),
            Ok(Err(e)) => {
                errors.fetch_add(1, Relaxed);
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                errors.fetch_add(1, Relaxed);
                first_error.get_or_insert_with(|| e.to_string());
            }
        };
        for i in 0..target {
            while set.len() >= conc {
                if let Some(j) = set.join_next().await {
                    handle(j);
                }
            }
            let id = format!("{}-c{i}", args.id_prefix);
            let bind = source_address(addr, i, per_ip);
            let login = args.login();
            let dialer = dialer.clone();
            set.spawn(async move { client::open(&dialer, bind, &id, &login, timeout).await });
        }
        while let Some(j) = set.join_next().await {
            handle(j);
        }
        first_error
    };
    let mut timed_out = false;
    let first_error = match tokio::time::timeout(global, connecting).await {
        Ok(first_error) => first_error,
        Err(_) => {
            timed_out = true;
            Some("global deadline passed while connecting".into())
        }
    };
    connect_secs += start.elapsed().as_secs_f64();
    let connected = streams.lock().unwrap_or_else(|e| e.into_inner()).len();
    if let Some(e) = &first_error {
        eprintln!("first connect error: {e}");
    }
    if connected == 0 && target > 0 {
        return Err(anyhow!(
            "no connection succeeded: {}",
            first_error.unwrap_or_default()
        ));
    }
    eprintln!(
        "{connected} connection(s) open after {connect_secs:.2}s; settling {:.1}s",
        args.settle
    );
    tokio::time::sleep(secs(args.settle)).await;
    let rss_after_kb = args.pid.and_then(report::rss_kb);
    // Were any closed by the broker meanwhile?
    let mut closed = 0u64;
    let mut open = std::mem::take(&mut *streams.lock().unwrap_or_else(|e| e.into_inner()));
    for s in open.iter_mut() {
        if s.closed_now().await {
            closed += 1;
        }
    }
    let mut bye = Vec::new();
    codec::disconnect(&mut bye);
    for s in open.iter_mut() {
        s.close_now(&bye).await;
    }
    drop(open);
    let errors = errors.load(Relaxed) + closed + u64::from(timed_out);

    let mut out = Map::new();
    out.insert("scenario".into(), "conns".into());
    out.insert("mqtt".into(), args.mqtt_number().into());
    out.insert("transport".into(), args.transport_name().into());
    out.insert("ok".into(), (!timed_out).into());
    out.insert("timed_out".into(), timed_out.into());
    out.insert("conns".into(), target.into());
    out.insert("connected".into(), connected.into());
    out.insert("closed_by_broker".into(), closed.into());
    out.insert("errors".into(), errors.into());
    out.insert("connect_secs".into(), round3(connect_secs).into());
    out.insert(
        "connects_per_sec".into(),
        (connected as f64 / connect_secs.max(1e-9)).round().into(),
    );
    out.insert("keepalive".into(), args.keepalive.into());
    if let Some(limit) = nofile {
        out.insert("nofile_limit".into(), limit.into());
    }
    if let Some(v) = rss_before_kb {
        out.insert("rss_before_kb".into(), v.into());
    }
    if let Some(v) = rss_after_kb {
        out.insert("rss_after_kb".into(), v.into());
    }
    if let (Some(b), Some(a)) = (rss_before_kb, rss_after_kb) {
        let per = (a.saturating_sub(b) * 1024) as f64 / connected.max(1) as f64;
        out.insert("rss_per_conn_bytes".into(), per.round().into());
        eprintln!(
            "conns: {connected}/{target} connected, {errors} error(s); broker rss {b} kB -> {a} kB \
             = {per:.0} bytes/conn"
        );
    } else {
        eprintln!("conns: {connected}/{target} connected, {errors} error(s) (no --pid: no rss)");
    }
    Ok(out)
}
