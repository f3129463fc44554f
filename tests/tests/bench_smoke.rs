//! Smoke test of the `coolpy7-bench` load generator: every scenario, with tiny settings, against
//! a real coolpy7. Checks that each run completes and that the report is consistent; never
//! asserts a speed.

use std::net::SocketAddr;
use std::process::Command;

use coolpy7_tests::transport::{TestCa, TlsFiles};
use coolpy7_tests::{Broker, TIMEOUT};
use serde_json::Value;

/// Runs the bench binary against `broker` and returns its JSON report.
fn bench(broker: &Broker, args: &[&str]) -> Value {
    bench_at(broker, broker.mqtt_addr(), args)
}

/// Runs the bench binary against `broker`'s listener at `addr` and returns its JSON report.
fn bench_at(broker: &Broker, addr: SocketAddr, args: &[&str]) -> Value {
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    let pid = broker.pid().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--host", &host, "--port", &port, "--pid", &pid, "--secs", "1", "--warmup", "0", "--drain",
        "5",
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_coolpy7-bench"))
        .args(&all)
        .output()
        .expect("run coolpy7-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "coolpy7-bench {all:?} exited with {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    assert_eq!(report["ok"], true, "{report}\nstderr: {stderr}");
    assert_eq!(report["timed_out"].as_bool(), Some(false), "{report}");
    report
}

fn u(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not an integer in {report}"))
}

/// A QoS 1 traffic run delivers everything exactly once.
fn assert_complete(report: &Value, deliveries_per_message: u64) {
    assert_eq!(u(report, "errors"), 0, "{report}");
    assert!(u(report, "sent") > 0, "{report}");
    assert!(u(report, "delivered") > 0, "{report}");
    assert_eq!(
        u(report, "expected"),
        u(report, "sent") * deliveries_per_message,
        "{report}"
    );
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(u(report, "duplicates"), 0, "{report}");
    assert_eq!(u(report, "delivered"), u(report, "expected"), "{report}");
    assert!(report["sent_per_sec"].as_f64().is_some(), "{report}");
    assert!(report["delivered_per_sec"].as_f64().is_some(), "{report}");
    assert!(u(report, "rss_before_kb") > 0, "{report}");
    assert!(u(report, "rss_after_kb") > 0, "{report}");
}

#[test]
fn fanin_qos1() {
    let broker = Broker::start(&[]);
    // Rate-limited: the broker may drop beyond its queue limit at full speed, which is a
    // finding for a benchmark but not what this test checks.
    let report = bench(
        &broker,
        &["fanin", "--qos", "1", "--publishers", "3", "--rate", "3000"],
    );
    assert_eq!(report["scenario"], "fanin");
    assert_eq!(u(&report, "publishers"), 3);
    assert_eq!(u(&report, "subscribers"), 1);
    assert_complete(&report, 1);
}

#[test]
fn fanout_qos1() {
    let broker = Broker::start(&[]);
    let report = bench(
        &broker,
        &[
            "fanout",
            "--qos",
            "1",
            "--subscribers",
            "3",
            "--rate",
            "1000",
        ],
    );
    assert_eq!(u(&report, "subscribers"), 3);
    assert_complete(&report, 3);
}

#[test]
fn p2p_qos1() {
    let broker = Broker::start(&[]);
    let report = bench(
        &broker,
        &["p2p", "--qos", "1", "--pairs", "3", "--rate", "3000"],
    );
    assert_eq!(u(&report, "publishers"), 3);
    assert_eq!(u(&report, "subscribers"), 3);
    assert_complete(&report, 1);
}

#[test]
fn latency_percentiles() {
    let broker = Broker::start(&[]);
    let report = bench(&broker, &["latency", "--rate", "200"]);
    assert_eq!(u(&report, "errors"), 0, "{report}");
    assert!(u(&report, "delivered") > 0, "{report}");
    let lat = &report["latency_us"];
    let p = |k: &str| {
        lat[k]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_us.{k} missing in {report}"))
    };
    assert!(u(lat, "count") > 0, "{report}");
    assert!(p("p50") > 0.0, "{report}");
    assert!(p("p50") <= p("p90"), "{report}");
    assert!(p("p90") <= p("p99"), "{report}");
    assert!(p("p99") <= p("p999"), "{report}");
    assert!(p("p999") <= p("max"), "{report}");
}

#[test]
fn latency_qos1_with_extra_and_stalled_subscribers() {
    let broker = Broker::start(&[]);
    let report = bench(
        &broker,
        &[
            "latency",
            "--qos",
            "1",
            "--rate",
            "200",
            "--extra-subs",
            "40",
            "--stalled",
            "2",
        ],
    );
    assert_eq!(u(&report, "stalled"), 2);
    assert_eq!(u(&report, "extra_subs"), 40);
    assert_complete(&report, 1);
    assert!(report["latency_us"]["p50"].as_f64().is_some(), "{report}");
}

#[test]
fn conns() {
    let broker = Broker::start(&[]);
    let report = bench(&broker, &["conns", "--conns", "200"]);
    assert_eq!(report["scenario"], "conns");
    assert_eq!(u(&report, "connected"), 200, "{report}");
    assert_eq!(u(&report, "errors"), 0, "{report}");
    assert!(u(&report, "rss_after_kb") > 0, "{report}");
    assert!(report["rss_per_conn_bytes"].as_f64().is_some(), "{report}");
}

#[test]
fn subs() {
    let broker = Broker::start(&["-msc", "0"]);
    let report = bench(&broker, &["subs", "--filters", "3000", "--clients", "3"]);
    assert_eq!(report["scenario"], "subs");
    assert_eq!(u(&report, "filters"), 3000, "{report}");
    assert_eq!(u(&report, "clients"), 3, "{report}");
    assert!(
        report["rss_per_filter_bytes"].as_f64().is_some(),
        "{report}"
    );
    // The pair ran, before and after the holders left, and new clients got in.
    assert!(u(&report, "pair_received_after") > 0, "{report}");
    assert!(report["pair_gap_after_ms"].as_f64().is_some(), "{report}");
    assert!(u(&report, "connect_probes") > 0, "{report}");
    // Once the bench has gone, so have all its subscriptions.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        broker
            .wait_metric("coolpy7_subscriptions", "none left", TIMEOUT, |v| v == 0.0)
            .await
    });
}

#[test]
fn subs_refused_by_a_cap_is_a_setup_failure() {
    let broker = Broker::start(&["-msc", "10"]);
    let addr = broker.mqtt_addr();
    let out = Command::new(env!("CARGO_BIN_EXE_coolpy7-bench"))
        .args(["subs", "--filters", "20", "--host", "127.0.0.1"])
        .args(["--port", &addr.port().to_string(), "--secs", "1"])
        .output()
        .expect("run coolpy7-bench");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
}

#[test]
fn unreachable_broker_is_a_setup_failure() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_coolpy7-bench"))
        .args([
            "fanin",
            "--port",
            &port,
            "--secs",
            "1",
            "--warmup",
            "0",
            "--connect-timeout",
            "2",
        ])
        .output()
        .expect("run coolpy7-bench");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// MQTT 5: publishers use topic aliases, subscribers take the broker's aliases (a Topic Alias
/// Maximum of 64) and Receive Maximum; every message still arrives exactly once.
#[test]
fn mqtt5_fanin_fanout_and_p2p_qos1() {
    let broker = Broker::start(&[]);
    for (scenario, extra, per_message) in [
        ("fanin", ["--publishers", "3"], 1),
        ("fanout", ["--subscribers", "3"], 3),
        ("p2p", ["--pairs", "3"], 1),
    ] {
        let mut args = vec![scenario, "--mqtt", "5", "--qos", "1", "--rate", "1000"];
        args.extend(extra);
        let report = bench(&broker, &args);
        assert_eq!(u(&report, "mqtt"), 5, "{report}");
        assert_eq!(u(&report, "broker_topic_alias_max"), 64, "{report}");
        assert_complete(&report, per_message);
    }
}

/// A broker with TLS, WebSocket and WebSocket-over-TLS listeners, its certificate signed by a test
/// CA; returns the broker, the certificate files and the CA's PEM file for `--ca`.
fn tls_broker() -> (Broker, TlsFiles, String) {
    let ca = TestCa::new("bench CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let ca_file = files.dir.write("bench-ca.crt", ca.cert_pem.as_bytes());
    let mut args = vec![
        "-tl=127.0.0.1:0".to_string(),
        "-wl=127.0.0.1:0".to_string(),
        "-wsl=127.0.0.1:0".to_string(),
    ];
    args.extend(files.server_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&args);
    (broker, files, ca_file.display().to_string())
}

/// QoS 1 traffic over TLS, WebSocket and WebSocket over TLS: everything arrives exactly once,
/// with the bench checking the broker's certificate against the CA (and offering ALPN mqtt).
#[test]
fn tls_ws_and_wss_traffic_qos1() {
    let (broker, _files, ca) = tls_broker();
    for (kind, transport, scenario, extra, per_message) in [
        (
            "tls",
            vec!["--tls", "--ca", &ca],
            "p2p",
            ["--pairs", "3"],
            1,
        ),
        ("ws", vec!["--ws"], "fanout", ["--subscribers", "3"], 3),
        (
            "wss",
            vec!["--ws", "--tls", "--ca", &ca],
            "fanin",
            ["--publishers", "3"],
            1,
        ),
        (
            "tls",
            vec!["--tls", "--ca", &ca, "--alpn", "mqtt", "--mqtt", "5"],
            "p2p",
            ["--pairs", "2"],
            1,
        ),
    ] {
        let mut args = vec![scenario, "--qos", "1", "--rate", "1000"];
        args.extend(extra);
        args.extend(transport);
        let report = bench_at(&broker, broker.listener_addr(kind), &args);
        assert_eq!(report["transport"], kind, "{report}");
        assert_complete(&report, per_message);
        // What the handshake agreed is reported (rustls and the broker both do TLS 1.3).
        let tls = report["tls"].as_str();
        if kind == "ws" {
            assert_eq!(tls, None, "{report}");
        } else {
            assert!(tls.is_some_and(|t| t.starts_with("TLSv1_3 ")), "{report}");
        }
    }
}

/// QoS 0 at full speed over TLS and WebSocket: the publishers' write path that does not wait for
/// acknowledgements; the run completes and messages arrive.
#[test]
fn tls_and_ws_unthrottled_qos0() {
    let (broker, _files, ca) = tls_broker();
    for (kind, transport) in [
        ("tls", vec!["--tls", "--ca", ca.as_str()]),
        ("ws", vec!["--ws"]),
    ] {
        let mut args = vec!["p2p", "--qos", "0", "--pairs", "2"];
        args.extend(transport);
        let report = bench_at(&broker, broker.listener_addr(kind), &args);
        assert_eq!(u(&report, "errors"), 0, "{report}");
        assert!(u(&report, "delivered") > 0, "{report}");
    }
}

/// `handshakes` over TLS (verifying, and with --tls-no-verify) and over WSS, and `conns` over
/// TLS: cycles complete, the broker closes after each DISCONNECT, idle connections stay open.
#[test]
fn tls_handshakes_and_conns() {
    let (broker, _files, ca) = tls_broker();
    for (kind, transport) in [
        ("tls", vec!["--tls", "--ca", ca.as_str()]),
        ("tls", vec!["--tls", "--tls-no-verify"]),
        ("wss", vec!["--ws", "--tls", "--ca", ca.as_str()]),
    ] {
        let mut args = vec!["handshakes", "--connectors", "2"];
        args.extend(transport);
        let report = bench_at(&broker, broker.listener_addr(kind), &args);
        assert_eq!(report["scenario"], "handshakes", "{report}");
        assert_eq!(report["transport"], kind, "{report}");
        assert!(u(&report, "handshakes") > 0, "{report}");
        assert!(
            report["handshakes_per_sec"].as_f64() > Some(0.0),
            "{report}"
        );
        assert_eq!(u(&report, "errors"), 0, "{report}");
        assert_eq!(u(&report, "not_closed_by_broker"), 0, "{report}");
        assert!(report["setup_us"]["p50"].as_f64().is_some(), "{report}");
        assert!(
            report["broker_cpu_us_per_handshake"].as_f64().is_some(),
            "{report}"
        );
    }
    let report = bench_at(
        &broker,
        broker.listener_addr("tls"),
        &["conns", "--conns", "100", "--tls", "--ca", &ca],
    );
    assert_eq!(u(&report, "connected"), 100, "{report}");
    assert_eq!(u(&report, "errors"), 0, "{report}");
    assert!(report["rss_per_conn_bytes"].as_f64().is_some(), "{report}");
}

/// A broker whose certificate the given CA did not sign is a set-up failure (exit 1), and
/// `--tls` without a way to trust the broker is a usage error (exit 2).
#[test]
fn tls_untrusted_broker_and_missing_ca() {
    let (broker, files, _ca) = tls_broker();
    let stranger = files
        .dir
        .write("stranger.crt", TestCa::new("stranger").cert_pem.as_bytes());
    let port = broker.listener_addr("tls").port().to_string();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_coolpy7-bench"))
            .args(["p2p", "--pairs", "1", "--port", &port, "--secs", "1"])
            .args(["--warmup", "0", "--connect-timeout", "3"])
            .args(extra)
            .output()
            .expect("run coolpy7-bench")
    };
    let out = run(&["--tls", "--ca", &stranger.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS handshake"),
        "{out:?}"
    );
    let out = run(&["--tls"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
