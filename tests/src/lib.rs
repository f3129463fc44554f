//! End-to-end test harness for the `coolpy7` MQTT broker.
//!
//! The tests under `tests/tests/` start the real `coolpy7` binary ([`Broker::start`]), one per
//! test, and talk to it over loopback TCP with either
//! - [`RawClient`]: raw bytes built by [`packets`] (an MQTT 3.1/3.1.1 encoder and decoder written
//!   independently of the broker's codec), for protocol details and malformed input;
//! - [`RawClient5`]: the same for MQTT 5.0, with [`packets5`] (properties, reason codes); or
//! - [`TestClient`]: a rumqttc client whose event loop runs in a task, for ordinary traffic.
//!
//! Every wait is bounded: [`TIMEOUT`] for things that must happen, [`QUIET`] for asserting that
//! something does not.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod auth;
pub mod bench;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod http;
pub mod packets;
pub mod packets5;
pub mod raw;
pub mod transport;

pub use broker::Broker;
pub use client::{qos, TestClient};
pub use packets::{Connect, Packet, PublishPacket};
pub use raw::{RawClient, RawClient5};
pub use rumqttc::{QoS, SubscribeReasonCode};

/// The bound for anything that is expected to happen.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait when asserting that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(600);

/// A client id unique within this test process.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Asserts the broker survived whatever the test did: the process runs, `/healthz` answers 200
/// (when HTTP is on), and a fresh subscriber receives a message from a fresh publisher.
pub async fn assert_healthy(broker: &mut Broker) {
    broker.assert_running();
    if broker.http_enabled() {
        let (status, body) = broker.http_get("/healthz").await;
        assert_eq!(status, 200, "GET /healthz after the test; body: {body}");
    }
    let topic = unique_id("health/check");
    let mut subscriber = broker
        .subscriber(&unique_id("health-sub"), &topic, QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.client(&unique_id("health-pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"still alive".to_vec())
        .await;
    let got = subscriber.recv_publish(TIMEOUT).await;
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], b"still alive");
    publisher.disconnect().await;
    subscriber.disconnect().await;
    broker.assert_running();
}
