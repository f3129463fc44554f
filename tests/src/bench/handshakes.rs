//! The `handshakes` scenario: how many connections per second the broker sets up and tears down,
//! the cost that dominates with TLS.
//!
//! `--connectors` tasks each run cycles back to back: TCP connect, the TLS handshake (`--tls`,
//! a full one unless `--tls-resume`), the WebSocket upgrade (`--ws`), CONNECT, CONNACK,
//! DISCONNECT, then wait for the broker to close. One cycle is made first (a broker that
//! refuses is a set-up failure), then after `--warmup` s the cycles completed in the next
//! `--secs` s give the rate; the set-up time (connect to CONNACK) of each of them gives the
//! percentiles.
//!
//! Waiting for the broker's close, rather than closing first, keeps the whole teardown inside
//! the cycle and leaves the TIME_WAIT sockets on the broker's side, so that a long run does not
//! use up this side's ephemeral ports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::client::{self, Login};
use super::codec;
use super::report::{self, round1};
use super::run::{resolve, secs};
use super::stream::Dialer;
use super::Args;

/// What the connectors share.
struct Tally {
    /// Cycles completed (closed by the broker, or not within the timeout).
    done: AtomicU64,
    /// Cycles that failed (connect, handshake, CONNACK).
    errors: AtomicU64,
    /// Cycles whose connection the broker did not close within `--connect-timeout` of the
    /// DISCONNECT.
    not_closed: AtomicU64,
    /// Set-up times (ns) of the cycles that completed inside the window.
    samples: Mutex<Vec<u64>>,
    /// The window, as ns since `t0`: a cycle completing in [from, to) is sampled.
    window_from_ns: AtomicU64,
    window_to_ns: AtomicU64,
    t0: Instant,
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

/// One cycle: returns the set-up time and whether the broker closed after DISCONNECT.
async fn cycle(
    dialer: &Dialer,
    id: &str,
    login: &Login,
    timeout: Duration,
) -> anyhow::Result<(Duration, bool)> {
    let start = Instant::now();
    let mut conn = client::open(dialer, None, id, login, timeout).await?;
    let setup = start.elapsed();
    let mut bye = Vec::with_capacity(2);
    codec::disconnect(&mut bye);
    conn.stream.send(&bye).await.context("send DISCONNECT")?;
    let closed = tokio::time::timeout(timeout, async {
        let mut sink = [0u8; 512];
        // The end of the stream, or an error (a TLS peer that closes without close_notify).
        while let Ok(n) = conn.stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok();
    Ok((setup, closed))
}

async fn connector(
    index: u32,
    dialer: Arc<Dialer>,
    login: Login,
    timeout: Duration,
    prefix: String,
    tally: Arc<Tally>,
) {
    let mut samples = Vec::new();
    let mut n = 0u64;
    while !tally.stop.load(Relaxed) {
        let id = format!("{prefix}-k{index}-{n}");
        n += 1;
        match cycle(&dialer, &id, &login, timeout).await {
            Ok((setup, closed)) => {
                tally.done.fetch_add(1, Relaxed);
                if !closed {
                    tally.not_closed.fetch_add(1, Relaxed);
                }
                let now = tally.now_ns();
                if now >= tally.window_from_ns.load(Relaxed)
                    && now < tally.window_to_ns.load(Relaxed)
                {
                    samples.push(setup.as_nanos() as u64);
                }
            }
            Err(e) => {
                tally.errors.fetch_add(1, Relaxed);
                tally
                    .first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| format!("{e:#}"));
                // A broker refusing everything must not turn this into a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend_from_slice(&samples);
}

pub async fn handshakes(args: &Args) -> anyhow::Result<Map<String, Value>> {
    let addr = resolve(&args.host, args.port).await?;
    let dialer = Arc::new(Dialer::new(&args.transport()?, &args.host, addr)?);
    let timeout = secs(args.connect_timeout);
    let login = args.login();
    let prefix = args.id_prefix.clone();

    // One cycle first: a broker that cannot be reached or refuses is a set-up failure.
    let (first, _) = cycle(&dialer, &format!("{prefix}-first"), &login, timeout)
        .await
        .context("the first handshake")?;
    eprintln!(
        "handshakes: first cycle set up in {:.2} ms over {}; {} connector(s)",
        first.as_secs_f64() * 1000.0,
        args.transport_name(),
        args.connectors
    );

    let tally = Arc::new(Tally {
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        not_closed: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
        window_from_ns: AtomicU64::new(u64::MAX),
        window_to_ns: AtomicU64::new(u64::MAX),
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        first_error: Mutex::new(None),
    });
    let tasks: Vec<_> = (0..args.connectors)
        .map(|i| {
            tokio::spawn(connector(
                i,
                dialer.clone(),
                login,
                timeout,
                prefix.clone(),
                tally.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(secs(args.warmup)).await;
    let rss_before_kb = args.pid.and_then(report::rss_kb);
    let (done_a, errors_a) = (tally.done.load(Relaxed), tally.errors.load(Relaxed));
    let cpu_a = (
        report::cpu_secs(None),
        args.pid.and_then(|p| report::cpu_secs(Some(p))),
    );
    let window_start = Instant::now();
    tally.window_from_ns.store(tally.now_ns(), Relaxed);
    tokio::time::sleep(secs(args.secs)).await;
    tally.window_to_ns.store(tally.now_ns(), Relaxed);
    let window = window_start.elapsed().as_secs_f64();
    let (done_b, errors_b) = (tally.done.load(Relaxed), tally.errors.load(Relaxed));
    let cpu_b = (
        report::cpu_secs(None),
        args.pid.and_then(|p| report::cpu_secs(Some(p))),
    );
    let rss_after_kb = args.pid.and_then(report::rss_kb);

    // Let the cycles under way finish (bounded), so that none is cut in the middle.
    tally.stop.store(true, Relaxed);
    let deadline = tokio::time::Instant::now() + timeout * 2 + Duration::from_secs(1);
    let mut timed_out = false;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            timed_out = true;
        }
    }

    let cycles = done_b - done_a;
    let errors = errors_b - errors_a;
    let per_sec = (cycles as f64 / window.max(1e-9)).round();
    let pct = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / window.max(1e-9) * 100.0);
    let bench_cpu = pct(cpu_a.0, cpu_b.0);
    let broker_cpu = pct(cpu_a.1, cpu_b.1);
    let mut samples = std::mem::take(&mut *tally.samples.lock().unwrap_or_else(|e| e.into_inner()));
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if cycles == 0 {
        return Err(anyhow!(
            "no handshake completed in the window: {}",
            first_error.unwrap_or_else(|| "(no error either)".into())
        ));
    }

    let mut out = Map::new();
    out.insert("scenario".into(), "handshakes".into());
    out.insert("ok".into(), (!timed_out).into());
    out.insert("timed_out".into(), timed_out.into());
    out.insert("mqtt".into(), args.mqtt_number().into());
    out.insert("transport".into(), args.transport_name().into());
    out.insert("tls_resume".into(), args.tls_resume.into());
    out.insert("connectors".into(), args.connectors.into());
    out.insert("secs".into(), ((window * 1000.0).round() / 1000.0).into());
    out.insert("warmup".into(), args.warmup.into());
    out.insert("handshakes".into(), cycles.into());
    out.insert("handshakes_per_sec".into(), per_sec.into());
    out.insert("errors".into(), errors.into());
    out.insert(
        "not_closed_by_broker".into(),
        tally.not_closed.load(Relaxed).into(),
    );
    out.insert("setup_us".into(), report::latency_json(&mut samples));
    if let Some(e) = &first_error {
        out.insert("first_error".into(), e.clone().into());
    }
    if let Some(v) = rss_before_kb {
        out.insert("rss_before_kb".into(), v.into());
    }
    if let Some(v) = rss_after_kb {
        out.insert("rss_after_kb".into(), v.into());
    }
    if let Some(v) = bench_cpu {
        out.insert("bench_cpu_pct".into(), round1(v).into());
    }
    if let Some(v) = broker_cpu {
        out.insert("broker_cpu_pct".into(), round1(v).into());
        // What one handshake costs the broker, whoever of the two was the bottleneck.
        let per = v / 100.0 * window / cycles as f64 * 1e6;
        out.insert("broker_cpu_us_per_handshake".into(), round1(per).into());
    }

    eprintln!(
        "handshakes over {} with {} connector(s): {cycles} in {window:.1}s = {per_sec:.0}/s, \
         {errors} error(s){}",
        args.transport_name(),
        args.connectors,
        if timed_out { " TIMED OUT" } else { "" },
    );
    if let Some(Value::Object(l)) = out.get("setup_us") {
        eprintln!(
            "set-up us (connect to CONNACK): p50={} p90={} p99={} max={}",
            l["p50"], l["p90"], l["p99"], l["max"]
        );
    }
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    if let (Some(b), Some(c)) = (bench_cpu, broker_cpu) {
        eprintln!("cpu over the window: bench {b:.0}%, broker {c:.0}% (of one core)");
    }
    Ok(out)
}
