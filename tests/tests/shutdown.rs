//! Graceful shutdown: SIGTERM makes the broker close its connections and exit with code 0.

use std::time::Duration;

use coolpy7_tests::{unique_id, Broker, QoS, RawClient, TIMEOUT};

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
