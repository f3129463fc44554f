//! Coolpy7's CoAP publish (`-cl`, UDP) through the real binary, driven by an independent CoAP
//! client, libcoap's `coap-client` (Debian's `libcoap3-bin`, installed by `.ci/run`; these
//! tests fail, never skip, without it), and by raw datagrams built here for what that client
//! cannot send (retransmissions, pings, garbage).
//!
//! `POST coap://host/<topic>?qos=&retain=` publishes to MQTT subscribers with that QoS and
//! retain flag, Confirmable (piggybacked ACK) and Non-confirmable (NON response), with the
//! request's token echoed; `-as 1` takes the token as `p=` (4.01 when it is bad); `-acl` rules
//! refuse a topic with 4.03; GET/PUT/DELETE get 4.05; over `-mpl`, or a block-wise transfer,
//! 4.13; a retransmitted message id is answered again but not published twice; a ping gets a
//! Reset; garbage is ignored and the broker keeps answering.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use coolpy7_tests::auth::{hs256, now_secs};
use coolpy7_tests::broker::run_to_exit;
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{assert_healthy, packets, Broker, Connect, Packet, RawClient, QUIET, TIMEOUT};
use serde_json::json;
use tokio::net::UdpSocket;

const SECRET: &str = "coap-secret-5b1d";

/// How long `coap-client` waits for an answer (`-B`), and how long it may run in all.
const CLIENT_WAIT_SECS: &str = "5";
const CLIENT_RUN: Duration = Duration::from_secs(20);

/// The names libcoap's client goes by: upstream's, and Debian's (per TLS library).
const CLIENT_NAMES: [&str; 4] = [
    "coap-client",
    "coap-client-notls",
    "coap-client-gnutls",
    "coap-client-openssl",
];

/// libcoap's `coap-client` on `PATH`; panics, saying how to install it, when there is none.
fn coap_client() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in CLIENT_NAMES {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "libcoap's CoAP client ({}) is not on PATH: these tests need it. Install it with \
         `apt-get install -y libcoap3-bin` (Debian/Ubuntu; .ci/run does)",
        CLIENT_NAMES.join(" or ")
    );
}

/// One message as `coap-client -v 7` prints it: `v:1 t:CON c:POST i:6eb2 {01} [ ... ]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    /// CON, NON, ACK or RST.
    kind: String,
    /// A method (POST) or a response code (2.04).
    code: String,
    /// The message id, hex.
    id: String,
    /// The token, hex, in braces.
    token: String,
}

fn parse_shown(line: &str) -> Option<Shown> {
    let mut words = line.split_whitespace();
    if words.next()? != "v:1" {
        return None;
    }
    let kind = words.next()?.strip_prefix("t:")?.to_string();
    let code = words.next()?.strip_prefix("c:")?.to_string();
    let id = words.next()?.strip_prefix("i:")?.to_string();
    let token = words.next()?.to_string();
    if !token.starts_with('{') {
        return None;
    }
    Some(Shown {
        kind,
        code,
        id,
        token,
    })
}

/// What one `coap-client` run sent and received.
#[derive(Debug)]
struct Exchange {
    request: Shown,
    /// The last response received, if any.
    response: Option<Shown>,
    /// stdout and stderr together (the client logs to stdout, response codes go to stderr).
    output: String,
}

impl Exchange {
    /// Asserts a response with `code`, of the kind the request calls for (ACK with the
    /// request's message id for CON, NON for NON), with the request's token.
    fn assert_answer(&self, code: &str, what: &str) {
        let Some(response) = &self.response else {
            panic!("{what}: no response; coap-client said:\n{}", self.output);
        };
        assert_eq!(response.code, code, "{what}: {self:#?}");
        assert_eq!(response.token, self.request.token, "{what}: token echoed");
        match self.request.kind.as_str() {
            "CON" => {
                assert_eq!(response.kind, "ACK", "{what}: piggybacked");
                assert_eq!(response.id, self.request.id, "{what}: the request's id");
            }
            "NON" => assert_eq!(response.kind, "NON", "{what}: {self:#?}"),
            other => panic!("{what}: request sent as {other}"),
        }
    }
}

/// Runs `coap-client -v 7 -B 5 <args> <uri>` (bounded) and reads what it printed.
async fn coap(args: &[&str], uri: &str) -> Exchange {
    let mut command = tokio::process::Command::new(coap_client());
    command
        .args(["-v", "7", "-B", CLIENT_WAIT_SECS])
        .args(args)
        .arg(uri)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run coap-client: {e}"));
    let output = match tokio::time::timeout(CLIENT_RUN, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("coap-client {args:?} {uri}: {e}"),
        Err(_) => panic!("coap-client {args:?} {uri} still running after {CLIENT_RUN:?}"),
    };
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let shown: Vec<Shown> = text.lines().filter_map(parse_shown).collect();
    let Some(request) = shown
        .iter()
        .find(|m| m.kind == "CON" || m.kind == "NON")
        .cloned()
    else {
        panic!("coap-client {args:?} {uri} sent nothing it showed:\n{text}");
    };
    let response = shown
        .iter()
        .rev()
        .find(|m| m.code.starts_with(|c: char| c.is_ascii_digit()))
        .cloned();
    Exchange {
        request,
        response,
        output: text,
    }
}

/// `coap://<listener>/<path>`.
fn uri(broker: &Broker, path: &str) -> String {
    format!("coap://{}/{path}", broker.coap_addr())
}

/// A 3.1.1 subscriber to `filter` at QoS 2 (granted), with `connect`'s credentials.
async fn subscriber(broker: &Broker, connect: &Connect, filter: &str) -> RawClient {
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), connect).await;
    assert_eq!(client.subscribe(1, &[(filter, 2)]).await, vec![2]);
    client
}

/// The next PUBLISH, acknowledged when it asks for it (QoS 2 to completion).
async fn next_publish(client: &mut RawClient) -> packets::Publish {
    let publish = client.recv_publish(TIMEOUT).await;
    match publish.qos {
        1 => client.send(&packets::puback(publish.pkid)).await,
        2 => {
            client.send(&packets::pubrec(publish.pkid)).await;
            match client.recv(TIMEOUT).await {
                Packet::PubRel(pkid) if pkid == publish.pkid => {}
                other => panic!("expected PUBREL {}, got {other:?}", publish.pkid),
            }
            client.send(&packets::pubcomp(publish.pkid)).await;
        }
        _ => {}
    }
    publish
}

fn coap_metric(outcome: &str) -> String {
    format!("coolpy7_coap_requests_total{{outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn confirmable_and_non_confirmable_posts_publish_with_qos_and_retain() {
    let broker = Broker::start(&["-cl", "127.0.0.1:0"]);
    assert!(broker.coap_addr().ip().is_loopback());
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "sensors/#").await;

    let exchange = coap(
        &["-m", "post", "-e", "21.5"],
        &uri(&broker, "sensors/t1?qos=1&retain=true"),
    )
    .await;
    assert_eq!(exchange.request.kind, "CON");
    assert_eq!(exchange.request.code, "POST");
    exchange.assert_answer("2.04", "a confirmable POST");
    let got = next_publish(&mut watcher).await;
    assert_eq!(got.topic, "sensors/t1");
    assert_eq!(got.payload, b"21.5");
    assert_eq!(got.qos, 1, "published with qos=1");
    assert!(!got.retain, "a live delivery");

    let exchange = coap(
        &["-N", "-m", "post", "-e", "non"],
        &uri(&broker, "sensors/t2"),
    )
    .await;
    assert_eq!(exchange.request.kind, "NON");
    exchange.assert_answer("2.04", "a non-confirmable POST");
    let got = next_publish(&mut watcher).await;
    assert_eq!(got.topic, "sensors/t2");
    assert_eq!(got.payload, b"non");
    assert_eq!(got.qos, 0, "the default qos");

    let exchange = coap(
        &["-m", "post", "-e", "two"],
        &uri(&broker, "sensors/t3?qos=2&c=dev-3"),
    )
    .await;
    exchange.assert_answer("2.04", "qos=2 with a client id");
    let got = next_publish(&mut watcher).await;
    assert_eq!((got.topic.as_str(), got.qos), ("sensors/t3", 2));
    watcher.expect_no_packet(QUIET).await;

    // retain=true kept the first one for later subscribers, with its QoS.
    let mut later = subscriber(&broker, &Connect::v311("later"), "sensors/#").await;
    let retained = next_publish(&mut later).await;
    assert_eq!(retained.topic, "sensors/t1");
    assert_eq!(retained.payload, b"21.5");
    assert!(retained.retain);
    assert_eq!(retained.qos, 1);
    later.expect_no_packet(QUIET).await;

    assert_eq!(broker.metric(&coap_metric("published")).await, 3.0);
    assert_eq!(
        broker
            .metric("coolpy7_messages_received_total{qos=\"1\"}")
            .await,
        1.0
    );
    assert_eq!(broker.metric("coolpy7_coap_in_flight").await, 0.0);
}

#[tokio::test]
async fn with_jwt_the_token_goes_in_the_query() {
    let broker = Broker::start(&["-as", "1", "-jsk", SECRET, "-cl", "127.0.0.1:0"]);
    let token = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "dev", "exp": now_secs() + 3600}),
    );
    let watcher = Connect::v311("watcher")
        .username("watcher")
        .password(token.as_bytes());
    let mut watcher = subscriber(&broker, &watcher, "coap/#").await;

    // A token is longer than coap-client's buffer for the options it makes from the URI (it
    // drops them with "buffer too small for option"), so it goes as an explicit Uri-Query
    // option (number 15), `p=<token>`, beside the URI's own.
    let p = |token: &str| format!("15,p={token}");
    let good = p(&token);
    coap(
        &["-m", "post", "-e", "a", "-O", &good],
        &uri(&broker, "coap/jwt?qos=1"),
    )
    .await
    .assert_answer("2.04", "the token alone");
    coap(
        &["-N", "-m", "post", "-e", "b", "-O", &good],
        &uri(&broker, "coap/user?u=dev"),
    )
    .await
    .assert_answer("2.04", "a user and the token");
    let got = next_publish(&mut watcher).await;
    assert_eq!((got.topic.as_str(), got.qos), ("coap/jwt", 1));
    assert_eq!(next_publish(&mut watcher).await.topic, "coap/user");

    let wrong = hs256(b"another-secret", &json!({"sub": "dev"}));
    let expired = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "dev", "exp": now_secs() - 10}),
    );
    let refused = [
        ("no token", None, "coap/refused?u=dev"),
        (
            "a token under another secret",
            Some(p(&wrong)),
            "coap/refused",
        ),
        ("an expired token", Some(p(&expired)), "coap/refused"),
        ("not a token", None, "coap/refused?u=dev&p=password"),
    ];
    for (what, option, path) in &refused {
        let mut args = vec!["-m", "post", "-e", "x"];
        if let Some(option) = option {
            args.extend(["-O", option]);
        }
        let exchange = coap(&args, &uri(&broker, path)).await;
        exchange.assert_answer("4.01", what);
        assert!(
            exchange.output.contains("4.01"),
            "{what}: {}",
            exchange.output
        );
    }
    // Non-confirmable too.
    coap(
        &["-N", "-m", "post", "-e", "x"],
        &uri(&broker, "coap/refused"),
    )
    .await
    .assert_answer("4.01", "no token, non-confirmable");
    watcher.expect_no_packet(QUIET).await;
    assert_eq!(
        broker.metric(&coap_metric("unauthorized")).await,
        refused.len() as f64 + 1.0
    );
    assert_eq!(broker.metric(&coap_metric("published")).await, 2.0);
}

#[tokio::test]
async fn a_topic_the_rules_deny_is_forbidden() {
    let dir = TempDir::new("coap-acl");
    let rules = dir.write(
        "rules.acl",
        b"deny publish coap/closed/#\nallow publish coap/#\nallow subscribe #\n",
    );
    let broker = Broker::start(&[
        "-cl",
        "127.0.0.1:0",
        "-acl",
        rules.to_str().expect("utf-8 path"),
    ]);
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "#").await;
    coap(
        &["-m", "post", "-e", "no"],
        &uri(&broker, "coap/closed/door"),
    )
    .await
    .assert_answer("4.03", "deny publish coap/closed/#");
    coap(
        &["-N", "-m", "post", "-e", "no"],
        &uri(&broker, "elsewhere"),
    )
    .await
    .assert_answer("4.03", "no rule allows it");
    coap(&["-m", "post", "-e", "yes"], &uri(&broker, "coap/open"))
        .await
        .assert_answer("2.04", "allow publish coap/#");
    assert_eq!(next_publish(&mut watcher).await.topic, "coap/open");
    watcher.expect_no_packet(QUIET).await;
    assert_eq!(broker.metric(&coap_metric("forbidden")).await, 2.0);
    assert_eq!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn other_methods_bad_requests_and_large_payloads_are_refused() {
    let broker = Broker::start(&["-cl", "127.0.0.1:0", "-mpl", "256"]);
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "#").await;

    for method in ["get", "put", "delete"] {
        coap(&["-m", method, "-e", "x"], &uri(&broker, "coap/t"))
            .await
            .assert_answer("4.05", method);
    }
    coap(&["-N", "-m", "get"], &uri(&broker, "coap/t"))
        .await
        .assert_answer("4.05", "a non-confirmable GET");
    for (what, path) in [
        ("no topic", ""),
        ("qos 5", "coap/t?qos=5"),
        ("retain maybe", "coap/t?retain=maybe"),
        ("an unknown parameter", "coap/t?topic=x"),
        ("a wildcard", "coap/+"),
    ] {
        coap(&["-m", "post", "-e", "x"], &uri(&broker, path))
            .await
            .assert_answer("4.00", what);
    }

    // Over -mpl (256 bytes for the whole PUBLISH), in one datagram.
    let large = "x".repeat(600);
    let exchange = coap(&["-m", "post", "-e", &large], &uri(&broker, "coap/large")).await;
    exchange.assert_answer("4.13", "over -mpl");
    assert!(exchange.output.contains("-mpl"), "{}", exchange.output);
    // Larger than one block: libcoap sends it block-wise (Block1), which is not supported.
    let huge = "y".repeat(3000);
    let exchange = coap(&["-m", "post", "-e", &huge], &uri(&broker, "coap/huge")).await;
    exchange.assert_answer("4.13", "a block-wise transfer");
    assert!(
        exchange.output.contains("block-wise"),
        "{}",
        exchange.output
    );
    // Under the limit is fine.
    let fits = "z".repeat(200);
    coap(&["-m", "post", "-e", &fits], &uri(&broker, "coap/fits"))
        .await
        .assert_answer("2.04", "under -mpl");
    let got = next_publish(&mut watcher).await;
    assert_eq!((got.topic.as_str(), got.payload.len()), ("coap/fits", 200));
    watcher.expect_no_packet(QUIET).await;

    assert_eq!(broker.metric(&coap_metric("method_not_allowed")).await, 4.0);
    assert_eq!(broker.metric(&coap_metric("bad_request")).await, 5.0);
    assert_eq!(broker.metric(&coap_metric("too_large")).await, 2.0);
}

/// A request as RFC 7252 §3 lays it out: Uri-Path and Uri-Query options (each shorter than 13
/// bytes), then the payload.
fn request(
    confirmable: bool,
    code: u8,
    id: u16,
    token: &[u8],
    path: &[&str],
    query: &[&str],
    payload: &[u8],
) -> Vec<u8> {
    assert!(token.len() <= 8);
    let kind = if confirmable { 0x00 } else { 0x10 };
    let mut out = vec![0x40 | kind | token.len() as u8, code];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(token);
    let mut last = 0;
    let options = path
        .iter()
        .map(|p| (11, p))
        .chain(query.iter().map(|q| (15, q)));
    for (number, value) in options {
        assert!(value.len() < 13, "keep option values short: {value}");
        out.push(((number - last) << 4) | value.len() as u8);
        out.extend_from_slice(value.as_bytes());
        last = number;
    }
    if !payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(payload);
    }
    out
}

/// The next datagram on `socket`, within `wait`.
async fn receive(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buffer = vec![0; 2048];
    match tokio::time::timeout(wait, socket.recv(&mut buffer)).await {
        Ok(Ok(len)) => Some(buffer[..len].to_vec()),
        Ok(Err(e)) => panic!("receive: {e}"),
        Err(_) => None,
    }
}

async fn send_and_receive(socket: &UdpSocket, datagram: &[u8]) -> Vec<u8> {
    socket.send(datagram).await.expect("send");
    match receive(socket, TIMEOUT).await {
        Some(answer) => answer,
        None => panic!("no answer within {TIMEOUT:?} to {datagram:02x?}"),
    }
}

async fn socket_to(addr: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(addr).await.expect("connect");
    socket
}

#[tokio::test]
async fn retransmissions_are_answered_again_but_published_once() {
    let mut broker = Broker::start(&["-cl", "127.0.0.1:0"]);
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "coap/#").await;
    let socket = socket_to(broker.coap_addr()).await;

    let post = request(
        true,
        0x02,
        0x4242,
        &[7, 7],
        &["coap", "dup"],
        &["qos=1"],
        b"once",
    );
    let first = send_and_receive(&socket, &post).await;
    // ACK, token length 2, 2.04, the message id, the token.
    assert_eq!(first, [0x62, 0x44, 0x42, 0x42, 7, 7]);
    let again = send_and_receive(&socket, &post).await;
    assert_eq!(again, first, "the same ACK again");
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("coap/dup", &b"once"[..])
    );

    // A Non-confirmable duplicate is ignored: one answer, one message.
    let non = request(false, 0x02, 0x4343, &[9], &["coap", "non"], &[], b"n");
    let answer = send_and_receive(&socket, &non).await;
    assert_eq!(answer[0], 0x51, "NON, token length 1: {answer:02x?}");
    assert_eq!(answer[1], 0x44);
    assert_eq!(answer[4], 9, "the token");
    socket.send(&non).await.expect("send");
    assert_eq!(receive(&socket, QUIET).await, None);
    assert_eq!(next_publish(&mut watcher).await.topic, "coap/non");

    // Another message id from the same client is another message.
    let next = request(true, 0x02, 0x4244, &[], &["coap", "dup"], &[], b"twice");
    assert_eq!(
        send_and_receive(&socket, &next).await,
        [0x60, 0x44, 0x42, 0x44]
    );
    assert_eq!(next_publish(&mut watcher).await.payload, b"twice");
    watcher.expect_no_packet(QUIET).await;
    assert_eq!(broker.metric(&coap_metric("duplicate")).await, 2.0);
    assert_eq!(broker.metric(&coap_metric("published")).await, 3.0);
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn pings_are_reset_and_garbage_does_not_stop_the_listener() {
    let mut broker = Broker::start(&["-cl", "127.0.0.1:0"]);
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "coap/#").await;
    let socket = socket_to(broker.coap_addr()).await;

    // A ping (an empty Confirmable message) gets a Reset with its message id.
    assert_eq!(
        send_and_receive(&socket, &[0x40, 0x00, 0x55, 0x66]).await,
        [0x70, 0x00, 0x55, 0x66]
    );
    // A Confirmable message that does not parse (an option past the end) is reset too.
    assert_eq!(
        send_and_receive(&socket, &[0x40, 0x02, 0x12, 0x34, 0xb5, b'a']).await,
        [0x70, 0x00, 0x12, 0x34]
    );
    // An unknown critical option is 4.02.
    let mut oscore = request(true, 0x02, 0x0101, &[], &[], &[], b"");
    oscore.extend_from_slice(&[0x90]);
    assert_eq!(
        send_and_receive(&socket, &oscore).await,
        [0x60, 0x82, 0x01, 0x01]
    );

    // Garbage: nothing comes back, nothing breaks.
    let mut garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0x40],
        vec![0xff; 64],
        // Version 1, but an acknowledgement: nothing to answer.
        b"hello, world".to_vec(),
        vec![0x50, 0x02, 0x00, 0x01, 0xbf, 0xff],
        vec![0x60, 0x44, 0x00, 0x02],
        vec![0x70, 0x00, 0x00, 0x03],
    ];
    // Pseudo-random bytes, the same on every run.
    let mut state = 0x2545_f491_u32;
    for len in [3, 17, 200, 1400] {
        garbage.push(
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    // Never version 1 + Confirmable, which would be reset.
                    ((state >> 24) as u8) | 0x80
                })
                .collect(),
        );
    }
    for datagram in &garbage {
        socket.send(datagram).await.expect("send");
    }
    if let Some(answer) = receive(&socket, QUIET).await {
        panic!("an answer to garbage: {answer:02x?}");
    }
    assert!(broker.metric(&coap_metric("malformed")).await >= 8.0);

    // Still answering, and publishing.
    coap(&["-m", "post", "-e", "after"], &uri(&broker, "coap/after"))
        .await
        .assert_answer("2.04", "after the garbage");
    assert_eq!(next_publish(&mut watcher).await.payload, b"after");
    broker.assert_running();
    assert_healthy(&mut broker).await;
}

#[tokio::test]
async fn off_unless_given_and_a_port_in_use_stops_the_start() {
    let broker = Broker::start(&[]);
    assert!(
        !broker.logs().contains("CoAP listener"),
        "no -cl, no listener:\n{}",
        broker.logs()
    );
    drop(broker);

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("local_addr").port();
    let address = format!("127.0.0.1:{port}");
    let (code, output) = run_to_exit(&["-l", "127.0.0.1:0", "-hl", "nil", "-cl", &address]);
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("cannot listen for CoAP on udp {address}")),
        "{output}"
    );
}

/// The binary the tests use must be on PATH: a clear failure, not a skip.
#[test]
fn the_coap_client_is_installed() {
    let client = coap_client();
    assert!(Path::new(&client).is_file());
}

/// A UDP source address is whatever the sender wrote: `address` rules neither allow nor deny a
/// CoAP request (an MQTT client from the same address is judged by them).
#[tokio::test]
async fn address_rules_do_not_apply_to_coap() {
    let dir = TempDir::new("coap-address");
    let rules = dir.write(
        "rules.acl",
        b"allow publish local/# address 127.0.0.0/8\nallow subscribe #\n",
    );
    let broker = Broker::start(&[
        "-cl",
        "127.0.0.1:0",
        "-acl",
        rules.to_str().expect("utf-8 path"),
    ]);
    coap(&["-m", "post", "-e", "x"], &uri(&broker, "local/a"))
        .await
        .assert_answer("4.03", "the address rule does not apply to CoAP");
    let mut mqtt = RawClient::connect_v311(broker.mqtt_addr(), "near").await;
    let mut watcher = subscriber(&broker, &Connect::v311("watcher"), "#").await;
    mqtt.publish_qos1("local/a", 1, b"x").await;
    assert_eq!(next_publish(&mut watcher).await.topic, "local/a");
}

/// `-cr` bounds the requests the CoAP listener takes per second, as it bounds a TCP
/// listener's connections: beyond its burst, 5.03 with Max-Age.
#[tokio::test]
async fn requests_over_the_connection_rate_are_refused_busy() {
    let broker = Broker::start(&["-cl", "127.0.0.1:0", "-cr", "3"]);
    let socket = socket_to(broker.coap_addr()).await;
    let mut codes = Vec::new();
    for id in 0..10u16 {
        let answer = send_and_receive(
            &socket,
            &request(true, 0x02, 100 + id, &[1], &["rate"], &[], b"x"),
        )
        .await;
        codes.push(answer[1]);
    }
    // 2.04 is 0x44, 5.03 is 0xA3.
    let published = codes.iter().filter(|&&code| code == 0x44).count();
    let busy = codes.iter().filter(|&&code| code == 0xA3).count();
    assert!((3..10).contains(&published), "{codes:02x?}");
    assert_eq!(published + busy, 10, "{codes:02x?}");
}
