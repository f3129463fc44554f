//! Authentication by an HTTP service (`-as 2 -ha URL -ht TOKEN -hat SECS -hac SECS`) through
//! the real binary, against a small HTTP/1.1 service run by the test on 127.0.0.1 that gives
//! canned answers and records what it is asked: what the broker sends (the JSON body's client
//! id, credentials, peer address and port, protocol and listener, `Authorization: Bearer`), an
//! allow (CONNACK 0), a deny (0x05 in 3.1.1, 0x87 in MQTT 5), a service that never answers or
//! is down or answers nonsense (refused within `-hat` with 0x03 / MQTT 5 0x88 "server
//! unavailable", counted as unavailable), the answer's
//! `acl` as the client's rights, its `expire_at` closing the connection, the verdict cache
//! (`-hac`), and the token file (`-htf`) reloaded while running.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coolpy7_tests::auth::{
    assert_refused_v3, assert_refused_v5, base64, connack_code_v3, connack_code_v5, now_secs,
    wait_log_count,
};
use coolpy7_tests::http::request_with_body;
use coolpy7_tests::packets5::{self, PublishPacket, SubscribePacket};
use coolpy7_tests::raw::RawClient5;
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{packets, Broker, Connect, Packet, RawClient, QUIET, TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "svc-token-e2e-3c9a";
const NOT_AUTHORIZED: &str = "coolpy7_auth_failures_total{reason=\"not_authorized\"}";
const UNAVAILABLE: &str = "coolpy7_auth_failures_total{reason=\"unavailable\"}";

/// One request as the service received it.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn username(&self) -> Option<&str> {
        self.body["username"].as_str()
    }
}

/// What the service does with a request.
enum Reply {
    /// 200 with this JSON body.
    Json(Value),
    /// This status and body.
    Status(u16, String),
    /// Nothing: the connection is held open for 30 s.
    Silence,
}

fn allow() -> Reply {
    Reply::Json(json!({"result": "allow"}))
}

/// A small HTTP/1.1 service on 127.0.0.1: one request per connection, answered by `reply`
/// with `Connection: close`; every request is recorded.
struct Service {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(reply: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(reply);
        let task = tokio::spawn({
            let received = received.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let received = received.clone();
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(30),
                            serve(stream, &received, &*reply),
                        )
                        .await;
                    });
                }
            }
        });
        Service {
            addr,
            received,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/auth`.
    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    received: &Mutex<Vec<Received>>,
    reply: &(dyn Fn(&Received) -> Reply + Send + Sync),
) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let request = Received {
        request_line,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let answer = reply(&request);
    received.lock().expect("lock").push(request);
    let (status, body) = match answer {
        Reply::Json(value) => (200, value.to_string()),
        Reply::Status(status, body) => (status, body),
        Reply::Silence => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn start(url: &str, extra: &[&str]) -> Broker {
    let mut args = vec!["-as", "2", "-ha", url, "-ht", TOKEN, "-hat", "1"];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

fn v3(client_id: &str, username: &str, password: &str) -> Connect {
    Connect::v311(client_id)
        .username(username)
        .password(password.as_bytes())
}

fn v5(client_id: &str, username: &str, password: &str) -> packets5::Connect {
    packets5::Connect::new(client_id)
        .username(username)
        .password(password.as_bytes())
}

#[tokio::test]
async fn an_allowed_client_connects_and_the_service_is_told_who_it_is() {
    let service = Service::start(|_| allow()).await;
    let broker = start(&service.url(), &["-hac", "0"]);
    let addr = broker.mqtt_addr();

    // A socket of our own, to know the client's port.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let local = stream.local_addr().expect("local address");
    let mut client: RawClient = RawClient::over(Box::new(stream), addr);
    client
        .send(&v3("c-311", "alice", "pw-alice-1").encode())
        .await;
    assert!(matches!(
        client.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    client.ping().await;

    let requests = service.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.request_line, "POST /auth HTTP/1.1");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        request
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{request:?}"
    );
    assert_eq!(
        request.body,
        json!({
            "clientid": "c-311",
            "username": "alice",
            "password": "pw-alice-1",
            "password_base64": false,
            "peerhost": "127.0.0.1",
            "peerport": local.port(),
            "protocol": 4,
            "listener": "tcp",
        })
    );

    // MQTT 5 without credentials: nulls; a password that is not UTF-8: base64.
    assert_eq!(
        connack_code_v5(addr, &packets5::Connect::new("c-5")).await,
        0
    );
    let binary = Connect::v311("c-bin")
        .username("bob")
        .password(&[0xff, 0xfe, 0x00]);
    assert_eq!(connack_code_v3(addr, &binary).await, 0);
    let requests = service.requests();
    assert_eq!(requests.len(), 3);
    let anonymous = &requests[1].body;
    assert_eq!(anonymous["clientid"], "c-5");
    assert_eq!(anonymous["username"], Value::Null);
    assert_eq!(anonymous["password"], Value::Null);
    assert_eq!(anonymous["protocol"], 5);
    let binary = &requests[2].body;
    assert_eq!(binary["password"], "//4A");
    assert_eq!(binary["password_base64"], true);

    let logs = broker.logs();
    assert!(!logs.contains(TOKEN), "the service token is in the log");
    assert!(!logs.contains("pw-alice-1"), "a password is in the log");
}

#[tokio::test]
async fn a_denying_service_refuses_with_0x05_in_3_1_1_and_0x87_in_5() {
    let service = Service::start(|request| match request.username() {
        Some("mallory") => Reply::Json(json!({"result": "deny"})),
        Some("eve") => Reply::Status(403, r#"{"error":"forbidden"}"#.into()),
        // An expire_at already past denies too.
        Some("late") => Reply::Json(json!({"result": "allow", "expire_at": now_secs() - 5})),
        _ => allow(),
    })
    .await;
    let broker = start(&service.url(), &["-hac", "0"]);
    let addr = broker.mqtt_addr();
    for user in ["mallory", "eve", "late"] {
        assert_refused_v3(addr, &v3(&format!("{user}-3"), user, "pw"), 0x05, user).await;
        assert_refused_v5(addr, &v5(&format!("{user}-5"), user, "pw"), 0x87, user).await;
    }
    assert_eq!(connack_code_v3(addr, &v3("alice", "alice", "pw")).await, 0);
    assert_eq!(broker.metric(NOT_AUTHORIZED).await, 6.0);
    assert_eq!(
        broker
            .metric("coolpy7_auth_failures_total{reason=\"bad_credentials\"}")
            .await,
        0.0
    );
    assert_eq!(service.count(), 7);
}

#[tokio::test]
async fn a_service_that_never_answers_refuses_within_the_timeout() {
    let service = Service::start(|_| Reply::Silence).await;
    let broker = start(&service.url(), &[]);
    let addr = broker.mqtt_addr();

    let started = Instant::now();
    assert_refused_v3(addr, &v3("silent-3", "alice", "pw"), 0x03, "no answer").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "refused after {waited:?}; -hat is 1 s"
    );
    let started = Instant::now();
    assert_refused_v5(addr, &v5("silent-5", "alice", "pw"), 0x88, "no answer").await;
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(broker.metric(UNAVAILABLE).await, 2.0);
    // An unavailable service is asked again each time (not cached).
    assert_eq!(service.count(), 2);
}

#[tokio::test]
async fn a_service_that_is_down_refuses() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    let broker = start(&format!("http://{closed}/auth"), &[]);
    let addr = broker.mqtt_addr();
    let started = Instant::now();
    assert_refused_v3(addr, &v3("down-3", "alice", "pw"), 0x03, "service down").await;
    assert_refused_v5(addr, &v5("down-5", "alice", "pw"), 0x88, "service down").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(broker.metric(UNAVAILABLE).await, 2.0);
    broker
        .wait_log_line(&["authentication failed", "unavailable"], TIMEOUT)
        .await;
}

#[tokio::test]
async fn answers_that_are_not_the_contract_refuse_as_unavailable() {
    let service = Service::start(|request| match request.username() {
        Some("e500") => Reply::Status(500, "{}".into()),
        Some("e429") => Reply::Status(429, "{}".into()),
        Some("garbage") => Reply::Status(200, "<html>ok</html>".into()),
        Some("maybe") => Reply::Json(json!({"result": "maybe"})),
        Some("badacl") => Reply::Json(json!({"result": "allow", "acl": {"pub": ["a/#/b"]}})),
        _ => allow(),
    })
    .await;
    let broker = start(&service.url(), &[]);
    let addr = broker.mqtt_addr();
    let users = ["e500", "e429", "garbage", "maybe", "badacl"];
    for user in users {
        assert_refused_v3(addr, &v3(user, user, "pw"), 0x03, user).await;
    }
    assert_eq!(broker.metric(UNAVAILABLE).await, users.len() as f64);
    assert_eq!(broker.metric(NOT_AUTHORIZED).await, 0.0);
}

/// The PUBLISHes `client` receives until the line goes quiet (acknowledged), as topics.
async fn received_topics(client: &mut RawClient) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        match client.try_recv(QUIET).await {
            Ok(Packet::Publish(publish)) => {
                if publish.qos > 0 {
                    client.send(&packets::puback(publish.pkid)).await;
                }
                topics.push(publish.topic);
            }
            Ok(other) => panic!("expected a PUBLISH, got {other:?}"),
            Err(_) => return topics,
        }
    }
}

#[tokio::test]
async fn the_answers_acl_gives_the_client_exactly_its_rights() {
    let service = Service::start(|request| match request.username() {
        Some("device") => Reply::Json(json!({
            "result": "allow",
            "acl": {"pub": ["up/%c"], "sub": ["down/#"], "all": ["both/%u"]},
        })),
        _ => allow(),
    })
    .await;
    let broker = start(&service.url(), &[]);
    let addr = broker.mqtt_addr();
    // No -acl: a client the service gives no acl may do anything.
    let (mut watcher, _) = RawClient::handshake(addr, &v3("watcher", "ops", "pw")).await;
    assert_eq!(watcher.subscribe(1, &[("#", 1)]).await, vec![1]);

    let (mut dev, _) = RawClient::handshake(addr, &v3("dev-1", "device", "pw")).await;
    assert_eq!(
        dev.subscribe(1, &[("down/#", 1), ("up/dev-1", 1), ("both/device", 1)])
            .await,
        vec![1, 0x80, 1]
    );
    dev.publish_qos1("up/dev-1", 2, b"mine").await;
    dev.publish_qos1("up/dev-2", 3, b"not mine").await;
    dev.publish_qos1("both/device", 4, b"mine too").await;
    dev.publish_qos1("down/x", 5, b"read only").await;

    let (mut dev5, _) = RawClient5::connect_v5(addr, &v5("dev-5", "device", "pw")).await;
    let suback = dev5
        .subscribe(&SubscribePacket::new(1).filter("elsewhere/#", 0))
        .await;
    assert_eq!(suback.codes, vec![0x87]);
    let ack = dev5
        .publish(&PublishPacket::new("elsewhere/x", 1, 2, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, 0x87, "{ack:?}");

    let mut topics = received_topics(&mut watcher).await;
    topics.sort();
    assert_eq!(topics, vec!["both/device", "up/dev-1"]);
    // Its own message on the topic it may read and write.
    assert_eq!(received_topics(&mut dev).await, vec!["both/device"]);
    watcher.publish_qos1("down/news", 9, b"for devices").await;
    assert_eq!(dev.recv_publish(TIMEOUT).await.topic, "down/news");
}

#[tokio::test]
async fn expire_at_closes_the_connection_then() {
    // Decided when asked: two seconds from then.
    let service =
        Service::start(|_| Reply::Json(json!({"result": "allow", "expire_at": now_secs() + 2})))
            .await;
    let broker = start(&service.url(), &["-hac", "0"]);
    let addr = broker.mqtt_addr();
    let (mut c5, _) = RawClient5::connect_v5(addr, &v5("exp-5", "alice", "pw")).await;
    let (mut c3, _) = RawClient::handshake(addr, &v3("exp-3", "alice", "pw")).await;
    let connected = Instant::now();
    let (reason, _) = c5.expect_disconnect_after(TIMEOUT).await;
    assert_eq!(reason.code, 0x87, "{reason:?}");
    let after = c3.expect_closed(TIMEOUT).await;
    assert!(after.is_empty(), "{after:?}");
    // expire_at is whole seconds: between one and two seconds after the CONNECTs.
    let held = connected.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_millis(3500),
        "closed {held:?} after connecting"
    );
    assert_eq!(service.count(), 2);
    // Asked again, the service gives a new expire_at: the same client comes back.
    assert_eq!(connack_code_v3(addr, &v3("exp-3", "alice", "pw")).await, 0);
}

#[tokio::test]
async fn verdicts_are_reused_for_hac_seconds() {
    let service = Service::start(|request| match request.username() {
        Some("mallory") => Reply::Json(json!({"result": "deny"})),
        _ => allow(),
    })
    .await;
    let cached = start(&service.url(), &["-hac", "60"]);
    let addr = cached.mqtt_addr();
    for round in 0..3 {
        let (client, _) = RawClient::handshake(addr, &v3("same", "alice", "pw-1")).await;
        client.disconnect().await;
        assert_eq!(service.count(), 1, "round {round}: asked once");
    }
    // Other credentials are asked about (and then cached too).
    assert_eq!(connack_code_v3(addr, &v3("same", "alice", "pw-2")).await, 0);
    assert_eq!(service.count(), 2);
    // A deny is cached as well.
    for _ in 0..2 {
        assert_refused_v3(addr, &v3("m", "mallory", "pw"), 0x05, "mallory").await;
    }
    assert_eq!(service.count(), 3);
    drop(cached);

    let uncached = start(&service.url(), &["-hac", "0"]);
    let addr = uncached.mqtt_addr();
    for round in 1..=2 {
        let (client, _) = RawClient::handshake(addr, &v3("same", "alice", "pw-1")).await;
        client.disconnect().await;
        assert_eq!(service.count(), 3 + round, "-hac 0 asks every time");
    }
}

#[tokio::test]
async fn a_rewritten_token_file_is_sent_without_a_restart() {
    let service = Service::start(|_| allow()).await;
    let dir = TempDir::new("hook-token");
    let path = dir.write("token", b"first-hook-token\n");
    let url = service.url();
    let broker = Broker::start(&[
        "-as",
        "2",
        "-ha",
        &url,
        "-htf",
        path.to_str().expect("utf-8 path"),
        "-hac",
        "0",
        "-ari",
        "1",
    ]);
    let addr = broker.mqtt_addr();
    assert_eq!(connack_code_v3(addr, &v3("a", "alice", "pw")).await, 0);
    dir.write("token", b"second-hook-token\n");
    wait_log_count(
        &broker,
        &["HTTP service token reloaded"],
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(connack_code_v3(addr, &v3("b", "alice", "pw")).await, 0);
    let bearers: Vec<String> = service
        .requests()
        .iter()
        .map(|request| request.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(
        bearers,
        vec!["Bearer first-hook-token", "Bearer second-hook-token"]
    );
    let logs = broker.logs();
    assert!(!logs.contains("first-hook-token") && !logs.contains("second-hook-token"));
}

/// `POST /pub` is authenticated by the same service, told it came by HTTP (protocol 0,
/// listener `http`), with the Basic credentials.
#[tokio::test]
async fn post_pub_asks_the_service_too() {
    let service = Service::start(|request| match request.username() {
        Some("web") => allow(),
        _ => Reply::Json(json!({"result": "deny"})),
    })
    .await;
    let broker = start(&service.url(), &["-hac", "0"]);
    let basic = |credentials: &str| format!("Basic {}", base64(credentials.as_bytes()));

    let allowed = request_with_body(
        broker.http_addr(),
        "POST",
        "/pub?clientid=web-client&topic=t/a",
        &[("Authorization", &basic("web:web-pw"))],
        b"x",
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let denied = request_with_body(
        broker.http_addr(),
        "POST",
        "/pub?clientid=other&topic=t/a",
        &[("Authorization", &basic("mallory:pw"))],
        b"x",
    )
    .await;
    assert_eq!(denied.status, 401, "{denied:?}");

    let requests = service.requests();
    assert_eq!(requests.len(), 2);
    let body = &requests[0].body;
    assert_eq!(body["clientid"], "web-client");
    assert_eq!(body["username"], "web");
    assert_eq!(body["password"], "web-pw");
    assert_eq!(body["protocol"], 0);
    assert_eq!(body["listener"], "http");
    assert_eq!(body["peerhost"], "127.0.0.1");
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(broker.metric(NOT_AUTHORIZED).await, 1.0);
}
