//! `DELETE /clients/<client id>?token=<-syst>` on the HTTP API closes a client's connection:
//! an MQTT 5 client is sent DISCONNECT 0x98 "Administrative action" (OASIS MQTT 5.0 §3.14.2.1)
//! with a Reason String, a 3.1.1 client is just closed; the will is published as on any close
//! but a client DISCONNECT, and the session is kept for its expiry. 204 when a connection was
//! asked to close, 404 when none holds the client id, 401 without the token. Client ids with
//! '/' (sent as is or as %2F) and any UTF-8 are found.

use coolpy7_tests::packets::Connect as Connect311;
use coolpy7_tests::packets5::{self, reason, Connect, Property as P, PublishPacket};
use coolpy7_tests::{unique_id, Broker, RawClient, RawClient5, QUIET, TIMEOUT};

/// The tests' brokers run with this `-syst` (the default one may not disconnect clients).
const TOKEN: &str = "adm1n-t0ken";
const SYST: &str = "-syst=adm1n-t0ken";

/// Percent-encodes `client_id` as one path segment: everything but unreserved ASCII.
fn encoded(client_id: &str) -> String {
    client_id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `DELETE /clients/<encoded id>?token=<TOKEN>`: (status, body).
async fn kick(broker: &Broker, client_id: &str) -> (u16, String) {
    broker
        .http_delete(&format!("/clients/{}?token={TOKEN}", encoded(client_id)))
        .await
}

/// A v5 watcher subscribed at QoS 1 to `filter`.
async fn watcher(broker: &Broker, filter: &str) -> RawClient5 {
    let mut watcher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("watch")).await;
    watcher.subscribe_ok(1, filter, 1).await;
    watcher
}

#[tokio::test]
async fn a_v5_client_gets_0x98_with_a_reason_string_and_its_will_is_published() {
    let broker = Broker::start(&[SYST]);
    let mut watch = watcher(&broker, "adm/#").await;
    let id = unique_id("adm");
    let connect = Connect::new(&id).will("adm/will", b"kicked", 1, false);
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(kick(&broker, &id).await, (204, String::new()));
    let disconnect = client
        .expect_disconnect(reason::ADMINISTRATIVE_ACTION)
        .await;
    let text = disconnect.props.reason_string();
    assert!(
        text.as_deref().is_some_and(|text| !text.is_empty()),
        "{disconnect:?}"
    );
    let will = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("adm/will", &b"kicked"[..])
    );
    assert_eq!(broker.metric("coolpy7_admin_disconnects_total").await, 1.0);
    // Gone: a second request finds nobody.
    broker.wait_connections(1).await;
    let (status, body) = kick(&broker, &id).await;
    assert_eq!(status, 404, "{body}");
    watch.ping().await;
}

#[tokio::test]
async fn a_v5_client_that_asked_for_no_problem_information_still_gets_0x98() {
    let broker = Broker::start(&[SYST]);
    let id = unique_id("adm-rpi0");
    let connect = Connect::new(&id).prop(P::RequestProblemInformation(0));
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(kick(&broker, &id).await.0, 204);
    client
        .expect_disconnect(reason::ADMINISTRATIVE_ACTION)
        .await;
}

#[tokio::test]
async fn a_v311_client_is_closed_and_its_will_published() {
    let broker = Broker::start(&[SYST]);
    let mut watch = watcher(&broker, "adm3/#").await;
    let id = unique_id("adm3");
    let connect = Connect311::v311(&id).will("adm3/will", b"kicked", 1, false);
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    assert_eq!(kick(&broker, &id).await.0, 204);
    client.expect_closed_silently(TIMEOUT).await;
    let will = watch.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("adm3/will", &b"kicked"[..])
    );
}

#[tokio::test]
async fn client_ids_with_slashes_and_any_utf8_are_found() {
    let broker = Broker::start(&[SYST]);
    let ids = [
        format!("{}/a/b", unique_id("adm-slash")),
        format!("/{}/", unique_id("lead")),
        format!("{} 客户 ü?#&%+", unique_id("adm-utf8")),
    ];
    for id in &ids {
        // Fully encoded, '/' as %2F.
        let mut client = RawClient5::connect_simple(broker.mqtt_addr(), id).await;
        assert_eq!(kick(&broker, id).await.0, 204, "{id:?}");
        client
            .expect_disconnect(reason::ADMINISTRATIVE_ACTION)
            .await;
        // Encoded but for the '/'.
        let mut client = RawClient5::connect_simple(broker.mqtt_addr(), id).await;
        let path: Vec<String> = id.split('/').map(encoded).collect();
        let path = format!("/clients/{}?token={TOKEN}", path.join("/"));
        assert_eq!(broker.http_delete(&path).await.0, 204, "{path}");
        client
            .expect_disconnect(reason::ADMINISTRATIVE_ACTION)
            .await;
    }
}

#[tokio::test]
async fn unknown_ids_are_404_and_the_token_is_required() {
    let broker = Broker::start(&[SYST]);
    let id = unique_id("adm-auth");
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    let path = format!("/clients/{}", encoded(&id));
    for query in [
        "",
        "?token=",
        "?token=wrong",
        "?token=coolpy",
        "?tok=coolpy7",
    ] {
        let (status, body) = broker.http_delete(&format!("{path}{query}")).await;
        assert_eq!(status, 401, "{query}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(error["error"].is_string(), "{body}");
    }
    for other in [format!("{id}-other"), id.to_uppercase(), format!("{id}/")] {
        let (status, body) = kick(&broker, &other).await;
        assert_eq!(status, 404, "{other:?}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(error["error"].is_string(), "{body}");
    }
    // None of it touched the connection.
    client.ping().await;
    client.expect_no_packet(QUIET).await;
    assert_eq!(broker.metric("coolpy7_admin_disconnects_total").await, 0.0);
}

#[tokio::test]
async fn the_session_is_kept_for_its_expiry() {
    let broker = Broker::start(&[SYST]);
    let id = unique_id("adm-sess");
    let connect = Connect::new(&id).clean_start(false).session_expiry(600);
    let (mut client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(!connack.session_present);
    client.subscribe_ok(1, "adms/t", 1).await;
    assert_eq!(kick(&broker, &id).await.0, 204);
    client
        .expect_disconnect(reason::ADMINISTRATIVE_ACTION)
        .await;
    broker.wait_connections(0).await;
    // Offline: the session queues QoS 1, and the kick finds no connection.
    assert_eq!(kick(&broker, &id).await.0, 404);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&PublishPacket::new("adms/t", 1, 7, b"while away"))
        .await;
    let (mut client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert!(connack.session_present, "{connack:?}");
    let queued: packets5::Publish = client.recv_publish_acked(TIMEOUT).await;
    assert_eq!(
        (queued.topic.as_str(), &queued.payload[..]),
        ("adms/t", &b"while away"[..])
    );
}

/// `-syst` guarded only read-only figures before this endpoint, and its default (`coolpy7`) is
/// printed in the README: a broker started without flags (HTTP API on every interface) would
/// let anyone who can reach the port close any client. The default token opens no action.
#[tokio::test]
async fn the_documented_default_token_cannot_disconnect_clients() {
    let broker = Broker::start(&[]);
    let id = unique_id("adm-default");
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    let (status, body) = broker
        .http_delete(&format!("/clients/{}?token=coolpy7", encoded(&id)))
        .await;
    assert_eq!(status, 403, "the README's default token: {body}");
    assert!(body.contains("-syst"), "{body}");
    client.ping().await;
    client.expect_no_packet(QUIET).await;
    // The statistics stay readable with it.
    assert_eq!(broker.http_get("/sys?token=coolpy7").await.0, 200);
}
