//! The HTTP API: `/healthz`, `/metrics` (Prometheus text) and `/sys` (JSON, token protected),
//! and `-hl nil`.

use coolpy7_tests::http::parse_prometheus;
use coolpy7_tests::packets::Connect;
use coolpy7_tests::{unique_id, Broker, QoS, RawClient, TIMEOUT};

#[tokio::test]
async fn healthz_returns_200() {
    let broker = Broker::start(&[]);
    let (status, body) = broker.http_get("/healthz").await;
    assert_eq!(status, 200, "body: {body}");
}

#[tokio::test]
async fn unknown_path_returns_404() {
    let broker = Broker::start(&[]);
    let (status, _) = broker.http_get("/no/such/thing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_expose_every_series() {
    let broker = Broker::start(&[]);
    let text = broker.metrics_text().await;
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert!(!samples.is_empty());
    let mut expected: Vec<String> = [
        "coolpy7_connections",
        "coolpy7_connections_accepted_total",
        "coolpy7_connections_refused_total",
        "coolpy7_sessions",
        "coolpy7_subscriptions",
        "coolpy7_retained_messages",
        "coolpy7_queued_messages",
        "coolpy7_bytes_received_total",
        "coolpy7_bytes_sent_total",
        "coolpy7_acks_too_large_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for family in [
        "coolpy7_messages_received_total",
        "coolpy7_messages_sent_total",
        "coolpy7_payload_bytes_received_total",
        "coolpy7_payload_bytes_sent_total",
    ] {
        for qos in 0..=2 {
            expected.push(format!("{family}{{qos=\"{qos}\"}}"));
        }
    }
    for reason in ["queue_full", "offline_qos0", "no_subscribers"] {
        expected.push(format!(
            "coolpy7_messages_dropped_total{{reason=\"{reason}\"}}"
        ));
    }
    for series in &expected {
        let value = broker.metric(series).await;
        assert_eq!(value, 0.0, "{series} on an idle, fresh broker");
    }
    let content_type = broker
        .http_get_full("/metrics")
        .await
        .header("content-type")
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") || content_type.contains("openmetrics"),
        "content-type {content_type:?}"
    );
}

#[tokio::test]
async fn metrics_count_messages_and_connections() {
    let broker = Broker::start(&[]);
    let mut sub = broker
        .subscriber(&unique_id("sub"), "m/t", QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    for _ in 0..3 {
        publisher
            .publish("m/t", QoS::AtLeastOnce, false, "12345")
            .await;
    }
    sub.recv_publishes(3, TIMEOUT).await;

    let received = broker
        .wait_metric(
            "coolpy7_messages_received_total{qos=\"1\"}",
            ">= 3",
            TIMEOUT,
            |v| v >= 3.0,
        )
        .await;
    assert_eq!(received, 3.0, "exactly the 3 QoS 1 PUBLISHes were received");
    broker
        .wait_metric(
            "coolpy7_messages_sent_total{qos=\"1\"}",
            "3 sent",
            TIMEOUT,
            |v| v == 3.0,
        )
        .await;
    broker
        .wait_metric(
            "coolpy7_payload_bytes_received_total{qos=\"1\"}",
            "15 payload bytes",
            TIMEOUT,
            |v| v == 15.0,
        )
        .await;
    broker
        .wait_metric(
            "coolpy7_payload_bytes_sent_total{qos=\"1\"}",
            "15 payload bytes",
            TIMEOUT,
            |v| v == 15.0,
        )
        .await;
    assert_eq!(
        broker
            .metric("coolpy7_messages_received_total{qos=\"0\"}")
            .await,
        0.0
    );
    assert_eq!(broker.metric("coolpy7_connections").await, 2.0);
    assert!(broker.metric("coolpy7_connections_accepted_total").await >= 2.0);
    assert_eq!(broker.metric("coolpy7_sessions").await, 2.0);
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 1.0);
    // 3 PUBLISHes of 12 bytes in at least, 3 of 12 bytes out at least.
    assert!(broker.metric("coolpy7_bytes_received_total").await >= 36.0);
    assert!(broker.metric("coolpy7_bytes_sent_total").await >= 36.0);

    // Everything was acknowledged: nothing is queued or in flight any more.
    broker
        .wait_metric("coolpy7_queued_messages", "0 queued", TIMEOUT, |v| v == 0.0)
        .await;
    publisher.disconnect().await;
    broker.wait_connections(1).await;
}

#[tokio::test]
async fn metrics_count_drops_without_subscribers() {
    let broker = Broker::start(&[]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("nobody/here", QoS::AtLeastOnce, false, "x")
        .await;
    publisher
        .publish("nobody/here", QoS::AtMostOnce, false, "y")
        .await;
    broker
        .wait_metric(
            "coolpy7_messages_dropped_total{reason=\"no_subscribers\"}",
            "2 messages dropped for lack of subscribers",
            TIMEOUT,
            |v| v == 2.0,
        )
        .await;
}

#[tokio::test]
async fn metrics_count_refused_connections_and_track_gauges() {
    let broker = Broker::start(&[]);
    let mut refused = RawClient::connect(broker.mqtt_addr()).await;
    refused
        .send(&Connect::v311("x").protocol("MQTT", 6).encode())
        .await;
    refused.expect_closed(TIMEOUT).await;
    broker
        .wait_metric("coolpy7_connections_refused_total", ">= 1", TIMEOUT, |v| {
            v >= 1.0
        })
        .await;

    let mut client = broker.client(&unique_id("gauges")).await;
    client.subscribe_ok("g/1", QoS::AtMostOnce).await;
    client.subscribe_ok("g/2", QoS::AtMostOnce).await;
    client.publish("g/r", QoS::AtLeastOnce, true, "kept").await;
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 2.0);
    assert_eq!(broker.metric("coolpy7_retained_messages").await, 1.0);
    client.unsubscribe("g/1").await;
    assert_eq!(broker.metric("coolpy7_subscriptions").await, 1.0);
    client.disconnect().await;
    broker.wait_connections(0).await;
    broker
        .wait_metric("coolpy7_sessions", "0 sessions", TIMEOUT, |v| v == 0.0)
        .await;
    broker
        .wait_metric("coolpy7_subscriptions", "0 subscriptions", TIMEOUT, |v| {
            v == 0.0
        })
        .await;
}

#[tokio::test]
async fn sys_requires_the_token() {
    let broker = Broker::start(&["-syst", "secret"]);
    for path in [
        "/sys",
        "/sys?token=wrong",
        "/sys?token=coolpy7",
        "/sys?token=",
    ] {
        let (status, _) = broker.http_get(path).await;
        assert_eq!(status, 401, "GET {path}");
    }
    let (status, body) = broker.http_get("/sys?token=secret").await;
    assert_eq!(status, 200, "body: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/sys is not JSON ({e}): {body}"));
    let object = json.as_object().expect("/sys returns a JSON object");
    assert!(!object.is_empty(), "/sys returned an empty object");
    // "the same figures as JSON, with version and uptime"
    for key in ["version", "uptime"] {
        assert!(
            has_key_containing(&json, key),
            "/sys has no field named like {key:?}: {body}"
        );
    }
}

/// Whether any object key in `value` (at any depth) contains `needle`.
fn has_key_containing(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(needle) || has_key_containing(v, needle)),
        serde_json::Value::Array(items) => items.iter().any(|v| has_key_containing(v, needle)),
        _ => false,
    }
}

#[tokio::test]
async fn sys_default_token_is_coolpy7() {
    let broker = Broker::start(&[]);
    let (status, _) = broker.http_get("/sys").await;
    assert_eq!(status, 401);
    let (status, body) = broker.http_get("/sys?token=coolpy7").await;
    assert_eq!(status, 200, "body: {body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap_or_else(|e| panic!("/sys is not JSON ({e}): {body}"));
}

#[tokio::test]
async fn http_can_be_disabled() {
    let broker = Broker::start(&["-hl", "nil"]);
    assert!(
        !broker.logs().contains("HTTP listener on"),
        "HTTP must be off:\n{}",
        broker.logs()
    );
    let mut sub = broker
        .subscriber(&unique_id("sub"), "nohttp/t", QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("nohttp/t", QoS::AtLeastOnce, false, "x")
        .await;
    sub.recv_publish(TIMEOUT).await;
}

#[test]
fn healthz_is_200_as_soon_as_the_listeners_are_logged() {
    // The README: "200 once the MQTT listener is up". A start-up race (readiness set after the
    // listener lines are logged) shows up as an occasional 503 right after start, so try often.
    for attempt in 0..40 {
        let broker = Broker::start_without_readiness_wait(&[]);
        let response = coolpy7_tests::http::get_blocking(broker.http_addr(), "/healthz")
            .unwrap_or_else(|e| panic!("GET /healthz right after start: {e}"));
        assert_eq!(
            response.status, 200,
            "attempt {attempt}: GET /healthz right after both listeners were logged answered \
             {} {:?}",
            response.status, response.body
        );
    }
}
