//! Graceful shutdown: SIGTERM makes the broker drain (stop taking clients, disconnect its own
//! at `-dr` per second within `-dg`), close its connections and exit with code 0.

use std::time::{Duration, Instant};

use coolpy7_tests::{unique_id, Broker, QoS, RawClient, RawClient5, TIMEOUT};

#[tokio::test]
async fn sigterm_exits_with_code_0() {
    let mut broker = Broker::start(&[]);
    broker.sigterm();
    let status = broker.wait_exit(Duration::from_secs(5)).await;
    let status = status
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", broker.logs()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        broker.logs()
    );
}

#[tokio::test]
async fn sigterm_with_clients_closes_them_and_exits_with_code_0() {
    let mut broker = Broker::start(&[]);
    let mut raw = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("raw")).await;
    let mut client = broker
        .subscriber(&unique_id("sub"), "bye/t", QoS::AtLeastOnce)
        .await;
    broker.sigterm();
    let status = broker.wait_exit(Duration::from_secs(5)).await;
    let status = status
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", broker.logs()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        broker.logs()
    );
    raw.expect_closed(TIMEOUT).await;
    client.wait_closed(TIMEOUT).await;
    // Nothing listens any more.
    let refused = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(broker.mqtt_addr()))
        .await
        .expect("connect attempt timed out");
    assert!(refused.is_err(), "the MQTT port still accepts connections");
}

#[tokio::test]
async fn sigint_exits_with_code_0() {
    let mut broker = Broker::start(&[]);
    let mut raw = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("raw")).await;
    broker.signal("INT");
    let status = broker.wait_exit(Duration::from_secs(5)).await;
    let status =
        status.unwrap_or_else(|| panic!("still running 5 s after SIGINT; log:\n{}", broker.logs()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        broker.logs()
    );
    raw.expect_closed(TIMEOUT).await;
}

/// Connects `n` MQTT 3.1.1 clients and returns, for each, a task that waits (bounded by
/// `within`) for the broker to close it and returns when it did.
async fn clients_timing_their_close(
    broker: &Broker,
    n: usize,
    within: Duration,
) -> Vec<tokio::task::JoinHandle<Instant>> {
    let mut closes = Vec::new();
    for _ in 0..n {
        let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("drained")).await;
        closes.push(tokio::spawn(async move {
            client.expect_closed(within).await;
            Instant::now()
        }));
    }
    broker.wait_connections(n as u64).await;
    closes
}

/// The drain: /readyz says 503 at once while /healthz stays 200 (a liveness probe must not
/// kill a draining pod), the MQTT port takes nobody new, and the clients are disconnected at
/// `-dr` per second rather than all at once; then the process exits 0.
#[tokio::test]
async fn sigterm_drains_clients_at_the_rate_while_readyz_says_503() {
    let mut broker = Broker::start(&["-dr", "10", "-dg", "60"]);
    assert_eq!(broker.http_get("/readyz").await.0, 200);
    let closes = clients_timing_their_close(&broker, 6, Duration::from_secs(20)).await;
    let signalled = Instant::now();
    broker.sigterm();

    // /readyz turns as soon as the signal is taken: well before the drain (0.5 s at 10 per
    // second) is over.
    let mut readyz = (0, String::new());
    for _ in 0..200 {
        readyz = broker.http_get("/readyz").await;
        if readyz.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (readyz.0, readyz.1.as_str()),
        (503, "draining"),
        "{}",
        broker.logs()
    );
    let open = closes.iter().filter(|close| !close.is_finished()).count();
    assert!(open >= 2, "/readyz turned only once the drain was over");
    assert_eq!(broker.http_get("/healthz").await.0, 200);
    // Nothing listens for MQTT any more, while clients are still being drained.
    let mut refused = false;
    for _ in 0..50 {
        match tokio::net::TcpStream::connect(broker.mqtt_addr()).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(
        refused,
        "the MQTT port still accepts connections while draining"
    );
    let (status, _) = broker.http_get("/readyz").await;
    assert_eq!(status, 503);

    let mut closed = Vec::new();
    for close in closes {
        closed.push(close.await.expect("client task") - signalled);
    }
    closed.sort();
    // Six clients at 10 per second: the last one goes 0.5 s after the first (a slow machine
    // only spreads them more); all at once would close them within a few milliseconds.
    let spread = closed[5] - closed[0];
    assert!(
        spread >= Duration::from_millis(400),
        "clients closed within {spread:?} of each other ({closed:?}): not paced"
    );
    let status = broker
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", broker.logs()));
    assert_eq!(status.code(), Some(0), "log:\n{}", broker.logs());
}

/// `-dg` bounds the drain: whoever the pace has not reached when it runs out goes at once.
#[tokio::test]
async fn the_drain_grace_bounds_a_slow_pace() {
    let mut broker = Broker::start(&["-dr", "1", "-dg", "1"]);
    // At one per second these would take 5 s; the grace lets the drain take 1.
    let closes = clients_timing_their_close(&broker, 6, Duration::from_secs(10)).await;
    let signalled = Instant::now();
    broker.sigterm();
    let mut closed = Vec::new();
    for close in closes {
        closed.push(close.await.expect("client task") - signalled);
    }
    closed.sort();
    assert!(
        closed[1] >= Duration::from_millis(800),
        "the second client went before the grace ran out ({closed:?}): not paced"
    );
    assert!(
        closed[5] < Duration::from_secs(4),
        "the last client went {:?} after SIGTERM; the grace is 1 s",
        closed[5]
    );
    let status = broker.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", broker.logs());
}

/// MQTT 5 clients are told why: 0x8B, or 0x9C "Use another server" with the `-dsr` Server
/// Reference; a client whose Maximum Packet Size the reference does not fit gets 0x8B.
#[tokio::test]
async fn mqtt5_clients_are_told_to_go_elsewhere_when_a_server_reference_is_set() {
    use coolpy7_tests::packets5::{self, Property as P};
    let reference = "mqtt.example.test:1883";
    let mut broker = Broker::start(&["-dr", "0", "-dsr", reference]);
    let mut redirected = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5")).await;
    let small = packets5::Connect::new(&unique_id("small")).prop(P::MaximumPacketSize(20));
    let (mut small, _) = RawClient5::connect_v5(broker.mqtt_addr(), &small).await;
    broker.sigterm();
    let reason = redirected.expect_disconnect(0x9C).await;
    assert_eq!(reason.props.server_reference(), Some(reference.to_string()));
    let reason = small.expect_disconnect(0x8B).await;
    assert_eq!(reason.props.server_reference(), None);
    let status = broker.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", broker.logs());

    let mut broker = Broker::start(&[]);
    let mut plain = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5")).await;
    broker.sigterm();
    let reason = plain.expect_disconnect(0x8B).await;
    assert_eq!(reason.props.server_reference(), None);
    let status = broker.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", broker.logs());
}
