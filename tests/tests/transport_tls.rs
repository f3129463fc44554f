//! MQTT over TLS (`-tl`): the handshake with a CA made in the test, ALPN, client certificates
//! required / optional / refused, the certificate's identity as the username (`-tcn`),
//! certificate reload (SIGHUP and the `-tri` check) with established connections kept, and
//! handshakes that are garbage, too slow, or plain MQTT on the TLS port.
//!
//! The client is tokio-rustls with the test's own MQTT encoder ([`RawClient`]); nothing here
//! shares code with the broker's TLS.

use std::time::Duration;

use coolpy7_tests::broker::run_to_exit;
use coolpy7_tests::raw::{RecvError, V3};
use coolpy7_tests::transport::{
    boxed, certificate_has_cn, client_config, flood_until_write_timeout, server_certificate,
    try_connect_tls, TestCa, TlsFiles,
};
use coolpy7_tests::{packets, unique_id, Broker, Connect, Packet, RawClient, TIMEOUT};
use tokio::io::AsyncWriteExt;

fn start(files: &TlsFiles, extra: &[&str]) -> Broker {
    let mut args = vec!["-tl=127.0.0.1:0".to_string()];
    args.extend(files.server_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start(&args)
}

/// Whether an MQTT session over TLS with `config` is refused: by the TLS handshake, or by the
/// close that follows it when the server rejects the client's certificate (TLS 1.3 clients
/// learn that only after their handshake is done).
async fn refused(broker: &Broker, config: tokio_rustls::rustls::ClientConfig) -> bool {
    let addr = broker.listener_addr("tls");
    let Ok(stream) = try_connect_tls(addr, config).await else {
        return true;
    };
    let mut client = RawClient::<V3>::over(boxed(stream), addr);
    if client
        .try_send(&Connect::v311(&unique_id("tls")).encode())
        .await
        .is_err()
    {
        return true;
    }
    match client.try_recv(TIMEOUT).await {
        Ok(Packet::ConnAck { code: 0, .. }) => false,
        Ok(other) => panic!("expected CONNACK 0 or a close, got {other:?}"),
        Err(RecvError::Timeout) => panic!("neither CONNACK nor a close within {TIMEOUT:?}"),
        Err(RecvError::Closed(_) | RecvError::Invalid(_)) => true,
    }
}

#[tokio::test]
async fn tls_and_tcp_clients_exchange_messages() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let broker = start(&files, &[]);
    let tls_addr = broker.listener_addr("tls");

    let stream = try_connect_tls(tls_addr, client_config(&ca, None, &[b"mqtt"]))
        .await
        .expect("TLS handshake");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"mqtt"[..]),
        "ALPN mqtt is agreed when offered"
    );
    let mut over_tls = RawClient::connect_over(boxed(stream), tls_addr, "over-tls").await;
    over_tls.subscribe(1, &[("t/#", 1)]).await;
    let mut over_tcp = RawClient::connect_v311(broker.mqtt_addr(), "over-tcp").await;
    over_tcp.subscribe(1, &[("t/#", 0)]).await;

    over_tcp.publish_qos1("t/from-tcp", 1, b"plain").await;
    let got = over_tls.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("t/from-tcp", &b"plain"[..])
    );
    over_tls.send(&packets::puback(got.pkid)).await;

    // Larger than a TLS record (16 KiB): split into records, and back.
    let big = vec![0x5a; 100_000];
    over_tls.publish_qos1("t/from-tls", 7, &big).await;
    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(over_tcp.recv_publish(TIMEOUT).await);
    }
    assert!(received
        .iter()
        .any(|p| p.topic == "t/from-tls" && p.payload == big));
    let echo = over_tls.recv_publish(TIMEOUT).await;
    assert_eq!(
        echo.payload, big,
        "the TLS client gets its own message back"
    );

    // Clients offering no ALPN, or only protocols the broker does not speak, are served.
    for alpn in [&[][..], &[&b"h2"[..], b"x-amzn-mqtt-ca"]] {
        let stream = try_connect_tls(tls_addr, client_config(&ca, None, alpn))
            .await
            .expect("TLS handshake without ALPN mqtt");
        assert_eq!(stream.get_ref().1.alpn_protocol(), None);
        let mut client = RawClient::connect_over(boxed(stream), tls_addr, &unique_id("alpn")).await;
        client.ping().await;
    }
    assert_eq!(
        broker
            .metric("coolpy7_listener_connections_total{listener=\"tls\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn client_certificates_required_optional_and_refused() {
    let ca = TestCa::new("clients CA");
    let stranger = TestCa::new("another CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let good = ca.client("device-1", "device-1.example");
    let foreign = stranger.client("device-2", "device-2.example");

    let required = start(&files, &[&format!("-tca={}", files.client_ca.display())]);
    assert!(
        refused(&required, client_config(&ca, None, &[])).await,
        "no certificate"
    );
    assert!(
        refused(&required, client_config(&ca, Some(&foreign), &[])).await,
        "a certificate from another CA"
    );
    assert!(
        !refused(&required, client_config(&ca, Some(&good), &[])).await,
        "a certificate from the CA"
    );
    let failed = required
        .metric("coolpy7_handshake_failures_total{listener=\"tls\",reason=\"tls\"}")
        .await;
    assert!(failed >= 2.0, "TLS handshake failures counted: {failed}");

    let optional = start(
        &files,
        &[
            &format!("-tca={}", files.client_ca.display()),
            "-tv=optional",
        ],
    );
    assert!(
        !refused(&optional, client_config(&ca, None, &[])).await,
        "no certificate"
    );
    assert!(
        !refused(&optional, client_config(&ca, Some(&good), &[])).await,
        "a certificate from the CA"
    );
    assert!(
        refused(&optional, client_config(&ca, Some(&foreign), &[])).await,
        "a certificate that does not verify is refused even when optional"
    );
}

#[tokio::test]
async fn the_certificate_names_the_client() {
    let ca = TestCa::new("clients CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let ca_flag = format!("-tca={}", files.client_ca.display());
    for (field, expected) in [("cn", "device-7"), ("san", "device-7.example")] {
        let broker = start(
            &files,
            &[&ca_flag, "-tv=optional", &format!("-tcn={field}")],
        );
        let addr = broker.listener_addr("tls");
        let identity = ca.client("device-7", "device-7.example");
        let stream = try_connect_tls(addr, client_config(&ca, Some(&identity), &[]))
            .await
            .expect("TLS handshake");
        let mut client = RawClient::<V3>::over(boxed(stream), addr);
        let mut connect = Connect::v311("named-by-cert");
        connect.username = Some(b"claimed-name".to_vec());
        client.send(&connect.encode()).await;
        assert!(matches!(
            client.recv(TIMEOUT).await,
            Packet::ConnAck { code: 0, .. }
        ));
        // Without a certificate the client's own username is not believed either.
        let stream = try_connect_tls(addr, client_config(&ca, None, &[]))
            .await
            .expect("TLS handshake");
        let mut anonymous = RawClient::<V3>::over(boxed(stream), addr);
        let mut connect = Connect::v311("no-cert");
        connect.username = Some(b"claimed-name".to_vec());
        anonymous.send(&connect.encode()).await;
        assert!(matches!(
            anonymous.recv(TIMEOUT).await,
            Packet::ConnAck { code: 0, .. }
        ));
        let named = broker
            .wait_log_line(&["client connected", "named-by-cert"], TIMEOUT)
            .await;
        assert!(
            named.contains(&format!("username=Some(\"{expected}\")")),
            "-tcn={field}: {named}"
        );
        let anonymous = broker
            .wait_log_line(&["client connected", "no-cert"], TIMEOUT)
            .await;
        assert!(anonymous.contains("username=None"), "{anonymous}");
    }
}

/// Replaces `path` atomically, as a Kubernetes Secret update does.
fn replace(path: &std::path::Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).expect("write staged file");
    std::fs::rename(&staged, path).expect("rename over");
}

/// The CN-bearing certificate new handshakes get, polled until it is `cn` (bounded).
async fn wait_for_certificate(broker: &Broker, ca: &TestCa, cn: &str, within: Duration) {
    let addr = broker.listener_addr("tls");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stream = try_connect_tls(addr, client_config(ca, None, &[]))
            .await
            .expect("TLS handshake");
        if certificate_has_cn(&server_certificate(&stream), cn) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new handshakes did not get certificate {cn:?} within {within:?}; log:\n{}",
            broker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("first-cert"), &ca);
    // A long check interval: the first swap must be SIGHUP's doing.
    let mut broker = start(&files, &["-tri=3600"]);
    let addr = broker.listener_addr("tls");
    let stream = try_connect_tls(addr, client_config(&ca, None, &[]))
        .await
        .expect("TLS handshake");
    assert!(certificate_has_cn(
        &server_certificate(&stream),
        "first-cert"
    ));
    let mut established = RawClient::connect_over(boxed(stream), addr, "established").await;
    established.subscribe(1, &[("reload/#", 0)]).await;

    let second = ca.server("second-cert");
    replace(&files.key, &second.key_pem);
    replace(&files.cert, &second.cert_pem);
    broker.signal("HUP");
    wait_for_certificate(&broker, &ca, "second-cert", TIMEOUT).await;

    // A file that does not load is reported and the certificate in force kept.
    replace(
        &files.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    broker.signal("HUP");
    broker.wait_log_line(&["do not load"], TIMEOUT).await;
    wait_for_certificate(&broker, &ca, "second-cert", TIMEOUT).await;

    // The connection made before both swaps still works.
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "publisher").await;
    publisher.publish_qos0("reload/x", b"still here").await;
    let got = established.recv_publish(TIMEOUT).await;
    assert_eq!(got.payload, b"still here");
    broker.assert_running();
}

#[tokio::test]
async fn changed_files_are_picked_up_by_the_periodic_check() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("before-check"), &ca);
    let broker = start(&files, &["-tri=1"]);
    wait_for_certificate(&broker, &ca, "before-check", TIMEOUT).await;
    let renewed = ca.server("after-check");
    // Key first, then certificate, as a careless renewal script would: the pair loads once
    // both are there.
    replace(&files.key, &renewed.key_pem);
    replace(&files.cert, &renewed.cert_pem);
    wait_for_certificate(&broker, &ca, "after-check", Duration::from_secs(10)).await;
    broker
        .wait_log_line(&["TLS certificate reloaded"], TIMEOUT)
        .await;
}

/// Sends `bytes` on a fresh TCP connection and reads (whatever comes) until the broker closes.
async fn expect_eof_after(addr: std::net::SocketAddr, bytes: &[u8]) {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(bytes).await;
    let closed = tokio::time::timeout(TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the broker kept a connection that sent {bytes:02x?}"
    );
}

#[tokio::test]
async fn garbage_slow_and_plain_handshakes_are_closed() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let broker = start(&files, &["-nt=1"]);
    let addr = broker.listener_addr("tls");

    // Not TLS at all, and plain MQTT on the TLS port: answered with a TLS alert at most.
    for bytes in [
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8],
        Connect::v311("plain").encode(),
    ] {
        expect_eof_after(addr, &bytes).await;
    }

    // A client that opens the socket and says nothing is closed at -nt.
    let mut silent = RawClient::connect(addr).await;
    silent.expect_closed(Duration::from_secs(4)).await;

    // A TLS handshake that completes, then no CONNECT: also -nt.
    let stream = try_connect_tls(addr, client_config(&ca, None, &[]))
        .await
        .expect("TLS handshake");
    let mut idle = RawClient::<V3>::over(boxed(stream), addr);
    idle.expect_closed(Duration::from_secs(4)).await;

    let tls = broker
        .metric("coolpy7_handshake_failures_total{listener=\"tls\",reason=\"tls\"}")
        .await;
    let timeouts = broker
        .metric("coolpy7_handshake_failures_total{listener=\"tls\",reason=\"timeout\"}")
        .await;
    assert!(
        tls >= 2.0,
        "garbage and plain MQTT fail the TLS handshake: {tls}"
    );
    assert!(timeouts >= 2.0, "silent clients time out: {timeouts}");
    // Nothing leaked: every socket of the test is gone.
    broker
        .wait_metric(
            "coolpy7_mqtt_sockets",
            "every test socket closed",
            TIMEOUT,
            |v| v == 0.0,
        )
        .await;

    // Still serving.
    let stream = try_connect_tls(addr, client_config(&ca, None, &[]))
        .await
        .expect("TLS handshake");
    let mut client = RawClient::connect_over(boxed(stream), addr, "after-garbage").await;
    client.ping().await;
}

#[test]
fn bad_tls_flags_and_files_stop_the_start_with_a_clear_error() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let missing = files.dir.path().join("missing.crt");
    let other = ca.server("other");
    let mismatched_key = files.dir.write("other.key", other.key_pem.as_bytes());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-tl=127.0.0.1:0".into()], "-tc"),
        (
            vec![
                "-tl=127.0.0.1:0".into(),
                format!("-tc={}", missing.display()),
                format!("-tk={}", files.key.display()),
            ],
            "missing.crt",
        ),
        (
            vec![
                "-tl=127.0.0.1:0".into(),
                format!("-tc={}", files.cert.display()),
                format!("-tk={}", mismatched_key.display()),
            ],
            "-tk",
        ),
        (
            vec![
                "-tl=127.0.0.1:0".into(),
                format!("-tc={}", files.cert.display()),
                format!("-tk={}", files.key.display()),
                "-tv=required".into(),
            ],
            "-tca",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["-l=127.0.0.1:0".to_string(), "-hl=nil".to_string()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, output) = run_to_exit(&all);
        assert_ne!(code, Some(0), "{all:?} started:\n{output}");
        assert!(
            output.contains(expected),
            "{all:?}: {expected:?} not in:\n{output}"
        );
    }
}

#[tokio::test]
async fn sighup_without_tls_does_not_stop_the_broker() {
    let mut broker = Broker::start(&[]);
    broker.signal("HUP");
    broker
        .wait_log_line(&["SIGHUP: nothing to reload"], TIMEOUT)
        .await;
    broker.assert_running();
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), "after-hup").await;
    client.ping().await;
}

#[tokio::test]
async fn tls_1_2_clients_are_served() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let broker = start(&files, &[]);
    let addr = broker.listener_addr("tls");
    let stream = try_connect_tls(addr, coolpy7_tests::transport::client_config_tls12(&ca))
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2)
    );
    let mut client = RawClient::connect_over(boxed(stream), addr, "tls12").await;
    client.subscribe(1, &[("t12/#", 1)]).await;
    let payload = vec![3u8; 50_000];
    client.publish_qos1("t12/x", 2, &payload).await;
    assert_eq!(client.recv_publish(TIMEOUT).await.payload, payload);
}

#[tokio::test]
async fn keepalive_and_write_timeouts_apply_over_tls() {
    let ca = TestCa::new("test CA");
    let files = TlsFiles::write(&ca.server("broker"), &ca);
    let broker = start(&files, &["-t=1", "-mq=100000"]);
    let addr = broker.listener_addr("tls");

    // Keepalive 1 s and then silence: closed at 1.5 s.
    let stream = try_connect_tls(addr, client_config(&ca, None, &[]))
        .await
        .expect("TLS handshake");
    let mut silent = RawClient::<V3>::over(boxed(stream), addr);
    let mut connect = Connect::v311("silent-tls");
    connect.keep_alive = 1;
    silent.send(&connect.encode()).await;
    assert!(matches!(
        silent.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    silent.expect_closed(Duration::from_secs(4)).await;

    // A subscriber that stops reading: its TLS output backs up (pending in rustls and in the
    // socket) and -t closes it.
    let stream = try_connect_tls(addr, client_config(&ca, None, &[]))
        .await
        .expect("TLS handshake");
    let mut stalled = RawClient::connect_over(boxed(stream), addr, "stalled-tls").await;
    stalled.subscribe(1, &[("flood/#", 0)]).await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "flooder").await;
    flood_until_write_timeout(&broker, &mut publisher, "stalled-tls").await;
    publisher.ping().await;
}
