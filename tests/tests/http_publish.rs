//! Coolpy7's HTTP publish, `POST /pub?clientid=..&topic=..&qos=..&retain=..` with the payload
//! as the body, through the real binary: without access control a message reaches MQTT
//! subscribers with its QoS and retain flag (a retained one reaches later subscribers too);
//! with JWT authentication (`-as 1`) the token comes as `Authorization: Basic <jwt>` or as the
//! password of base64 `user:<jwt>`, and no or a bad token is 401 with `WWW-Authenticate`; the
//! rules (`-acl`, or the token's `acl` claim) refuse a topic with 403; bad parameters are 400
//! and a payload over `-mpl` 413. Every error has a JSON body with an "error".
//!
//! Requests are raw HTTP/1.1 over a TcpStream ([`coolpy7_tests::http::request_with_body`]).

use coolpy7_tests::auth::{base64, hs256, now_secs};
use coolpy7_tests::http::{request_with_body, Response};
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{packets, Broker, Connect, Packet, RawClient, QUIET, TIMEOUT};
use serde_json::{json, Value};

const SECRET: &str = "http-pub-secret-e4b7";

/// `POST path` with `headers` and `body` on the broker's HTTP API.
async fn post(broker: &Broker, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request_with_body(broker.http_addr(), "POST", path, headers, body).await
}

/// The JSON body of `response`, asserting it is JSON.
fn json_body(response: &Response) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("not a JSON body ({e}): {response:?}"))
}

/// Asserts `response` has `status` and a JSON body with a string "error".
fn assert_error(response: &Response, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{what}: {response:?}"
    );
    assert!(
        json_body(response)["error"].is_string(),
        "{what}: no \"error\" in {response:?}"
    );
}

fn assert_published(response: &Response, what: &str) {
    assert_eq!(response.status, 200, "{what}: {response:?}");
    assert_eq!(json_body(response), json!({"published": true}), "{what}");
}

/// A 3.1.1 subscriber to `filter` at QoS 2 (granted), with `connect`'s credentials.
async fn subscriber(broker: &Broker, connect: &Connect, filter: &str) -> RawClient {
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), connect).await;
    assert_eq!(client.subscribe(1, &[(filter, 2)]).await, vec![2]);
    client
}

/// The PUBLISHes that arrive until the line goes quiet, acknowledged (QoS 2 to completion).
async fn received(client: &mut RawClient) -> Vec<packets::Publish> {
    let mut publishes = Vec::new();
    loop {
        match client.try_recv(QUIET).await {
            Ok(Packet::Publish(publish)) => {
                match publish.qos {
                    1 => client.send(&packets::puback(publish.pkid)).await,
                    2 => {
                        client.send(&packets::pubrec(publish.pkid)).await;
                        let pkid = publish.pkid;
                        client
                            .wait_for("PUBREL", TIMEOUT, |p| *p == Packet::PubRel(pkid))
                            .await;
                        client.send(&packets::pubcomp(pkid)).await;
                    }
                    _ => {}
                }
                publishes.push(publish);
            }
            Ok(other) => panic!("expected a PUBLISH, got {other:?}"),
            Err(_) => return publishes,
        }
    }
}

/// (topic, QoS, retain, payload) of each PUBLISH.
fn summary(publishes: &[packets::Publish]) -> Vec<(String, u8, bool, Vec<u8>)> {
    publishes
        .iter()
        .map(|p| (p.topic.clone(), p.qos, p.retain, p.payload.clone()))
        .collect()
}

#[tokio::test]
async fn without_access_control_a_post_is_published_with_its_qos_and_retain() {
    let broker = Broker::start(&[]);
    let mut live = subscriber(&broker, &Connect::v311("live"), "http/#").await;

    let binary: Vec<u8> = (0..=255u8).collect();
    assert_published(
        &post(&broker, "/pub?clientid=web&topic=http/q0", &[], b"zero").await,
        "no qos: 0",
    );
    assert_published(
        &post(
            &broker,
            "/pub?clientid=web&topic=http/q1&qos=1&retain=false",
            &[("Content-Type", "application/octet-stream")],
            &binary,
        )
        .await,
        "qos 1",
    );
    assert_published(
        &post(
            &broker,
            "/pub?topic=http/kept&qos=2&retain=true",
            &[],
            b"kept",
        )
        .await,
        "qos 2 retained",
    );
    assert_eq!(
        summary(&received(&mut live).await),
        vec![
            ("http/q0".to_string(), 0, false, b"zero".to_vec()),
            ("http/q1".to_string(), 1, false, binary),
            // A live delivery is not marked retained (3.1.1 [MQTT-3.3.1-9]).
            ("http/kept".to_string(), 2, false, b"kept".to_vec()),
        ]
    );

    // Retained: a later subscriber gets it, marked so.
    let mut later = subscriber(&broker, &Connect::v311("later"), "http/#").await;
    assert_eq!(
        summary(&received(&mut later).await),
        vec![("http/kept".to_string(), 2, true, b"kept".to_vec())]
    );
    // An empty retained body clears it.
    assert_published(
        &post(&broker, "/pub?topic=http/kept&retain=true", &[], b"").await,
        "clear",
    );
    let mut last = subscriber(&broker, &Connect::v311("last"), "http/#").await;
    assert!(received(&mut last).await.is_empty());
    assert_eq!(
        broker
            .metric("coolpy7_messages_received_total{qos=\"2\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn with_jwt_the_token_is_the_basic_credential() {
    let broker = Broker::start(&["-as", "1", "-jsk", SECRET]);
    let token = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "web", "exp": now_secs() + 3600}),
    );
    let watcher = Connect::v311("watcher")
        .username("watcher")
        .password(token.as_bytes());
    let mut watcher = subscriber(&broker, &watcher, "http/#").await;

    // Coolpy7's form: the token itself after Basic.
    let raw = format!("Basic {token}");
    assert_published(
        &post(
            &broker,
            "/pub?topic=http/raw&qos=1",
            &[("Authorization", &raw)],
            b"a",
        )
        .await,
        "Basic <jwt>",
    );
    // Standard Basic: base64 of user:password, the token as the password.
    let encoded = format!("Basic {}", base64(format!("web:{token}").as_bytes()));
    assert_published(
        &post(
            &broker,
            "/pub?topic=http/encoded&qos=1",
            &[("Authorization", &encoded)],
            b"b",
        )
        .await,
        "Basic base64(user:jwt)",
    );

    let wrong = hs256(b"another-secret", &json!({"sub": "web"}));
    let expired = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "web", "exp": now_secs() - 10}),
    );
    let refused = [
        ("no Authorization", None),
        (
            "a token under another secret",
            Some(format!("Basic {wrong}")),
        ),
        ("an expired token", Some(format!("Basic {expired}"))),
        ("not a token", Some("Basic bm90OmEtdG9rZW4=".to_string())),
    ];
    for (what, header) in &refused {
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let response = post(&broker, "/pub?topic=http/refused&qos=1", &headers, b"x").await;
        assert_error(&response, 401, what);
        assert!(
            response
                .header("www-authenticate")
                .is_some_and(|value| value.starts_with("Basic")),
            "{what}: {response:?}"
        );
    }
    assert_eq!(
        broker
            .metric("coolpy7_auth_failures_total{reason=\"bad_credentials\"}")
            .await,
        refused.len() as f64
    );

    // The token's acl claim is the publisher's rights.
    let limited = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "web", "acl": {"pub": ["http/allowed"]}}),
    );
    let limited = format!("Basic {limited}");
    assert_published(
        &post(
            &broker,
            "/pub?topic=http/allowed",
            &[("Authorization", &limited)],
            b"c",
        )
        .await,
        "a topic the acl claim allows",
    );
    assert_error(
        &post(
            &broker,
            "/pub?topic=http/other",
            &[("Authorization", &limited)],
            b"d",
        )
        .await,
        403,
        "a topic the acl claim does not allow",
    );

    let topics: Vec<String> = received(&mut watcher)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(topics, vec!["http/raw", "http/encoded", "http/allowed"]);
}

#[tokio::test]
async fn a_topic_the_rules_deny_is_403() {
    let dir = TempDir::new("http-pub-acl");
    let rules = dir.write(
        "rules.acl",
        b"deny publish http/closed/#\nallow publish http/%u/#\nallow subscribe #\n",
    );
    let broker = Broker::start(&[
        "-as",
        "1",
        "-jsk",
        SECRET,
        "-acl",
        rules.to_str().expect("utf-8 path"),
    ]);
    let token = hs256(SECRET.as_bytes(), &json!({"sub": "web"}));
    let watcher = Connect::v311("watcher")
        .username("watcher")
        .password(token.as_bytes());
    let mut watcher = subscriber(&broker, &watcher, "http/#").await;
    let as_web = format!("Basic {}", base64(format!("web:{token}").as_bytes()));
    let headers = [("Authorization", as_web.as_str())];

    assert_error(
        &post(&broker, "/pub?topic=http/closed/x", &headers, b"x").await,
        403,
        "deny publish http/closed/#",
    );
    assert_error(
        &post(&broker, "/pub?topic=http/other/x", &headers, b"x").await,
        403,
        "another user's topic (default deny)",
    );
    // %u is the Basic user.
    assert_published(
        &post(&broker, "/pub?topic=http/web/x&qos=1", &headers, b"ok").await,
        "the user's own topic",
    );
    // The raw token carries no user: %u rules do not apply to it.
    let raw = format!("Basic {token}");
    assert_error(
        &post(
            &broker,
            "/pub?topic=http/web/y",
            &[("Authorization", &raw)],
            b"x",
        )
        .await,
        403,
        "no username for %u",
    );
    let topics: Vec<String> = received(&mut watcher)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(topics, vec!["http/web/x"]);
    assert_eq!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn bad_parameters_are_400_and_large_payloads_413() {
    let broker = Broker::start(&["-mpl", "1024"]);
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "#").await;

    for (what, path) in [
        ("no topic", "/pub?clientid=web&qos=1"),
        ("an empty topic", "/pub?topic=&qos=1"),
        ("qos 3", "/pub?topic=t/a&qos=3"),
        ("qos x", "/pub?topic=t/a&qos=x"),
        ("qos -1", "/pub?topic=t/a&qos=-1"),
        ("retain maybe", "/pub?topic=t/a&retain=maybe"),
        ("a + wildcard", "/pub?topic=t/%2B/a"),
        ("a # wildcard", "/pub?topic=t/%23"),
        ("a + level", "/pub?topic=%2B"),
    ] {
        let response = post(&broker, path, &[], b"x").await;
        assert_error(&response, 400, what);
    }

    assert_error(
        &post(&broker, "/pub?topic=t/big", &[], &[b'x'; 2000]).await,
        413,
        "a body over -mpl",
    );
    // The body fits, the PUBLISH it makes (header, topic, packet id) does not.
    assert_error(
        &post(&broker, "/pub?topic=t/edge", &[], &[b'x'; 1024]).await,
        413,
        "a PUBLISH over -mpl",
    );
    assert_published(
        &post(&broker, "/pub?topic=t/fits&qos=1", &[], &[b'x'; 900]).await,
        "a payload that fits",
    );
    let got = received(&mut watcher).await;
    assert_eq!(
        got.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(),
        vec!["t/fits"]
    );
    assert_eq!(got[0].payload.len(), 900);
}

/// Made by `mosquitto_passwd -b -c FILE alice 'correct horse'` (Mosquitto 2.0.11).
const ALICE: &str = "alice:$7$101$RU9JcjmTSD/BW0BH$Yauq7ivTMzP/Xiuvl16R3XeaCYzfUE1MS4VBZ87q4nGng87qadpoNtYHFlWdzpl+GM0YXGgzla4OZJZ17cYaKg==";

#[tokio::test]
async fn with_a_password_file_basic_credentials_are_user_and_password() {
    let dir = TempDir::new("http-pub-pwf");
    let file = dir.write("passwords", format!("{ALICE}\n").as_bytes());
    let broker = Broker::start(&["-as", "3", "-pwf", file.to_str().expect("utf-8 path")]);
    let alice = Connect::v311("watcher")
        .username("alice")
        .password(b"correct horse");
    let mut watcher = subscriber(&broker, &alice, "http/#").await;
    let basic = |credentials: &str| format!("Basic {}", base64(credentials.as_bytes()));

    assert_published(
        &post(
            &broker,
            "/pub?topic=http/pw",
            &[("Authorization", &basic("alice:correct horse"))],
            b"ok",
        )
        .await,
        "alice's password",
    );
    for (what, credentials) in [
        ("a wrong password", "alice:correct"),
        ("an unknown user", "bob:correct horse"),
        ("no password", "alice"),
    ] {
        let response = post(
            &broker,
            "/pub?topic=http/pw",
            &[("Authorization", &basic(credentials))],
            b"x",
        )
        .await;
        assert_error(&response, 401, what);
    }
    let topics: Vec<String> = received(&mut watcher)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(topics, vec!["http/pw"]);
}

/// [MQTT-4.7.3-2] / [MQTT-1.5.3-2]: a topic name never contains U+0000. The MQTT decoder
/// refuses it, but the gateway only checks `topic::is_valid_topic_name`, which does not.
#[tokio::test]
async fn a_topic_with_u0000_is_400_and_reaches_no_subscriber() {
    let broker = Broker::start(&[]);
    let (mut watcher, _) = RawClient::handshake(broker.mqtt_addr(), &Connect::v311("w")).await;
    assert_eq!(watcher.subscribe(1, &[("#", 0)]).await, vec![0]);
    let response = request_with_body(
        broker.http_addr(),
        "POST",
        "/pub?topic=t/%00&retain=true",
        &[],
        b"x",
    )
    .await;
    let delivered = watcher.try_recv(QUIET).await;
    assert_eq!(
        response.status, 400,
        "{response:?}; the subscriber got {delivered:?}"
    );
    assert!(delivered.is_err(), "delivered: {delivered:?}");
}

/// Every error of `POST /pub` is documented to carry a JSON body with "error"; a query string
/// axum cannot deserialize gets axum's own plain-text rejection instead.
#[tokio::test]
async fn a_query_that_does_not_deserialize_is_a_json_400() {
    let broker = Broker::start(&[]);
    let response = request_with_body(
        broker.http_addr(),
        "POST",
        "/pub?topic=t/a&qos=1&qos=2",
        &[],
        b"x",
    )
    .await;
    assert_eq!(response.status, 400, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"));
    assert!(body["error"].is_string(), "{response:?}");
}
