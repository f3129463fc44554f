//! Authorization rules (`-acl`, `-acld`) through the real binary: denied SUBSCRIBE (0x80 in
//! 3.1.1, 0x87 in 5), denied PUBLISH (acknowledged and dropped in 3.1.1, 0x87 in 5), wills and
//! retained messages, `%c`/`%u` substitution, address qualifiers, filters granted with per-message
//! checks, and a reload that removes subscriptions without closing their connection.

use std::net::SocketAddr;
use std::time::Duration;

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::packets5::{PublishPacket, SubscribePacket};
use coolpy7_tests::raw::RawClient5;
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{unique_id, Broker, RawClient, QUIET, TIMEOUT};
use tokio::net::TcpSocket;

const RULES: &str = "\
# Coolpy7 rules for the tests
deny subscribe test/nosubscribe
deny publish readonly/#
allow publish devices/%c/#
allow subscribe users/%u/#
deny all devices/#
deny all users/#
deny subscribe secret/#
allow all local/# address 127.0.0.2
deny all local/#
allow all #
";

fn start(rules: &str, extra: &[&str]) -> (Broker, TempDir) {
    let dir = TempDir::new("acl");
    let path = dir.write("rules.acl", rules.as_bytes());
    let path = path.to_str().expect("utf-8 temp path").to_string();
    let mut args = vec!["-acl", &path];
    args.extend_from_slice(extra);
    (Broker::start(&args), dir)
}

/// A retained QoS 1 PUBLISH.
fn retained(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = packets::publish(topic, 1, pkid, payload);
    packet[0] |= 0x01;
    packet
}

/// A 3.1.1 client subscribed to `filter`, asserting the grant.
async fn subscriber(broker: &Broker, filter: &str) -> RawClient {
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("sub")).await;
    assert_eq!(
        client.subscribe(1, &[(filter, 1)]).await,
        vec![1],
        "{filter}"
    );
    client
}

/// The topics of the PUBLISHes that arrive until the line goes quiet.
async fn received_topics(client: &mut RawClient) -> Vec<String> {
    let mut topics = Vec::new();
    for _ in 0..100 {
        match client.try_recv(QUIET).await {
            Ok(Packet::Publish(publish)) => {
                if publish.qos > 0 {
                    client.send(&packets::puback(publish.pkid)).await;
                }
                topics.push(publish.topic);
            }
            Ok(other) => panic!("expected a PUBLISH, got {other:?}"),
            Err(_) => break,
        }
    }
    topics
}

#[tokio::test]
async fn denied_subscriptions_get_0x80_in_3_1_1_and_0x87_in_5() {
    let (broker, _dir) = start(RULES, &[]);
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), "v3").await;
    let codes = v3
        .subscribe(
            1,
            &[("test/nosubscribe", 1), ("public/x", 1), ("secret/a", 0)],
        )
        .await;
    assert_eq!(codes, vec![0x80, 1, 0x80]);

    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), "v5").await;
    let suback = v5
        .subscribe(
            &SubscribePacket::new(2)
                .filter("test/nosubscribe", 1)
                .filter("public/#", 1),
        )
        .await;
    assert_eq!(suback.codes, vec![0x87, 1]);
    assert!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"subscribe\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn denied_publishes_are_dropped_acknowledged_in_3_1_1_and_refused_in_5() {
    let (broker, _dir) = start(RULES, &[]);
    let mut watcher = subscriber(&broker, "readonly/#").await;
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), "p3").await;
    // Acknowledged as usual, so that the client does not send it again.
    v3.publish_qos1("readonly/a", 7, b"x").await;
    v3.publish_qos2("readonly/b", 8, b"x").await;
    v3.publish_qos0("readonly/c", b"x").await;

    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), "p5").await;
    let ack = v5
        .publish(&PublishPacket::new("readonly/d", 1, 9, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!((ack.pkid, ack.code), (9, 0x87));
    let rec = v5
        .publish(&PublishPacket::new("readonly/e", 2, 10, b"x"))
        .await
        .expect("PUBREC");
    assert_eq!((rec.pkid, rec.code), (10, 0x87));
    // The exchange ended with the failure: the same packet id is free again, and an allowed
    // message still goes through.
    v5.publish_qos1("public/ok", 10, b"y").await;

    assert!(received_topics(&mut watcher).await.is_empty());
    v3.assert_open_for(QUIET).await;
    assert_eq!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        5.0
    );
}

#[tokio::test]
async fn placeholders_give_each_client_its_own_topics() {
    let (broker, _dir) = start(RULES, &[]);
    // Nobody may read below devices/ (deny all devices/#): the denials are what tells.
    let mut c1 = RawClient::connect_v311(broker.mqtt_addr(), "c1").await;
    c1.publish_qos1("devices/c1/temp", 1, b"21").await;
    c1.publish_qos1("devices/c2/temp", 2, b"21").await;
    assert_eq!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        1.0,
        "devices/c2 is not c1's"
    );

    // %u: alice reads below users/alice only; a client without a username nothing there.
    let connect = Connect::v311("alice-phone").username("alice");
    let (mut alice, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    assert_eq!(
        alice
            .subscribe(1, &[("users/alice/inbox", 1), ("users/bob/inbox", 1)])
            .await,
        vec![1, 0x80]
    );
    let mut anonymous = RawClient::connect_v311(broker.mqtt_addr(), "anon").await;
    assert_eq!(
        anonymous.subscribe(1, &[("users/alice/inbox", 1)]).await,
        vec![0x80]
    );
}

#[tokio::test]
async fn a_partly_denied_filter_delivers_only_what_may_be_read_live_and_retained() {
    let (broker, _dir) = start(RULES, &[]);
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "pub").await;
    // Retained before anyone subscribes: publishing to secret/ is allowed, reading is not.
    publisher.send(&retained("secret/r", 1, b"hidden")).await;
    publisher
        .wait_for("PUBACK", TIMEOUT, |p| matches!(p, Packet::PubAck(1)))
        .await;
    publisher.send(&retained("public/r", 2, b"shown")).await;
    publisher
        .wait_for("PUBACK", TIMEOUT, |p| matches!(p, Packet::PubAck(2)))
        .await;

    let mut everything = subscriber(&broker, "#").await;
    assert_eq!(received_topics(&mut everything).await, vec!["public/r"]);
    publisher.publish_qos1("secret/live", 3, b"x").await;
    publisher.publish_qos1("public/live", 4, b"x").await;
    assert_eq!(received_topics(&mut everything).await, vec!["public/live"]);
    assert!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"delivery\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_will_to_a_denied_topic_is_not_published() {
    let (broker, _dir) = start(RULES, &[]);
    let mut watcher = subscriber(&broker, "#").await;
    let mut watch_readonly = RawClient::connect_v311(broker.mqtt_addr(), "w2").await;
    // readonly/ may be read, not written.
    assert_eq!(
        watch_readonly.subscribe(1, &[("readonly/#", 1)]).await,
        vec![1]
    );
    let denied = Connect::v311("will-denied").will("readonly/gone", b"x", 1, false);
    let (client, _) = RawClient::handshake(broker.mqtt_addr(), &denied).await;
    drop(client);
    let allowed = Connect::v311("will-allowed").will("public/gone", b"x", 1, false);
    let (client, _) = RawClient::handshake(broker.mqtt_addr(), &allowed).await;
    drop(client);
    assert_eq!(received_topics(&mut watcher).await, vec!["public/gone"]);
    assert!(received_topics(&mut watch_readonly).await.is_empty());
    broker
        .wait_metric(
            "coolpy7_authorization_denied_total{action=\"will\"}",
            "one denied will",
            TIMEOUT,
            |v| v == 1.0,
        )
        .await;
}

/// A 3.1.1 connection from `source` (a loopback address).
async fn connect_from(source: &str, broker: SocketAddr, client_id: &str) -> RawClient {
    let socket = TcpSocket::new_v4().expect("socket");
    let source: SocketAddr = format!("{source}:0").parse().expect("address");
    socket.bind(source).expect("bind the client's address");
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(broker))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut client = RawClient::over(Box::new(stream), broker);
    client.send(&Connect::v311(client_id).encode()).await;
    match client.recv(TIMEOUT).await {
        Packet::ConnAck { code: 0, .. } => client,
        other => panic!("expected CONNACK 0, got {other:?}"),
    }
}

#[tokio::test]
async fn address_qualifiers_match_the_clients_address() {
    let (broker, _dir) = start(RULES, &["-l", "127.0.0.1:0"]);
    let mut near = connect_from("127.0.0.2", broker.mqtt_addr(), "near").await;
    let mut far = connect_from("127.0.0.3", broker.mqtt_addr(), "far").await;
    assert_eq!(near.subscribe(1, &[("local/x", 1)]).await, vec![1]);
    assert_eq!(far.subscribe(1, &[("local/x", 1)]).await, vec![0x80]);
}

#[tokio::test]
async fn default_deny_refuses_what_no_rule_allows() {
    let (broker, _dir) = start("allow subscribe open/#\n", &["-acld", "deny"]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), "d").await;
    assert_eq!(
        client.subscribe(1, &[("open/a", 1), ("closed/a", 1)]).await,
        vec![1, 0x80]
    );
    let mut watcher = subscriber(&broker, "open/#").await;
    client.publish_qos1("open/a", 2, b"x").await;
    assert!(
        received_topics(&mut watcher).await.is_empty(),
        "publishing is not allowed"
    );

    let (open, _dir) = start("deny subscribe closed/#\n", &["-acld", "allow"]);
    let mut client = RawClient::connect_v311(open.mqtt_addr(), "d").await;
    assert_eq!(
        client.subscribe(1, &[("open/a", 1), ("closed/a", 1)]).await,
        vec![1, 0x80]
    );
}

#[tokio::test]
async fn reloaded_rules_remove_subscriptions_they_no_longer_allow_without_a_close() {
    // A long check interval: the reload must be SIGHUP's doing.
    let (broker, dir) = start("allow all #\n", &["-ari", "3600"]);
    let mut news = subscriber(&broker, "news/#").await;
    let mut sport = subscriber(&broker, "sport/#").await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "pub").await;
    publisher.publish_qos1("news/a", 1, b"x").await;
    assert_eq!(received_topics(&mut news).await, vec!["news/a"]);

    dir.write("rules.acl", b"deny subscribe news/#\nallow all #\n");
    broker.signal("HUP");
    broker
        .wait_log_line(&["authorization rules reloaded"], TIMEOUT)
        .await;
    broker
        .wait_metric(
            "coolpy7_authorization_denied_total{action=\"revoked\"}",
            "one revoked subscription",
            TIMEOUT,
            |v| v == 1.0,
        )
        .await;
    publisher.publish_qos1("news/b", 2, b"x").await;
    publisher.publish_qos1("sport/b", 3, b"x").await;
    assert!(received_topics(&mut news).await.is_empty());
    assert_eq!(received_topics(&mut sport).await, vec!["sport/b"]);
    news.assert_open_for(QUIET).await;
    // And a new SUBSCRIBE is judged by the new rules.
    assert_eq!(news.subscribe(2, &[("news/#", 1)]).await, vec![0x80]);

    // A file that does not load keeps the rules in force.
    dir.write("rules.acl", b"allow everything\n");
    broker.signal("HUP");
    broker
        .wait_log_line(&["does not load", "line 1"], TIMEOUT)
        .await;
    assert_eq!(news.subscribe(3, &[("news/#", 1)]).await, vec![0x80]);
    assert_eq!(news.subscribe(4, &[("sport/#", 1)]).await, vec![1]);
}

#[tokio::test]
async fn rules_files_are_checked_for_changes_every_interval() {
    let (broker, dir) = start("allow all #\n", &["-ari", "1"]);
    let mut client = subscriber(&broker, "a/#").await;
    dir.write("rules.acl", b"deny subscribe a/#\nallow all #\n");
    broker
        .wait_log_line(&["authorization rules reloaded"], Duration::from_secs(5))
        .await;
    assert_eq!(client.subscribe(2, &[("a/#", 1)]).await, vec![0x80]);
}

#[tokio::test]
async fn a_bad_rules_file_stops_the_start_with_its_line() {
    let dir = TempDir::new("acl-bad");
    let path = dir.write("rules.acl", b"allow all #\npermit all x\n");
    let (code, output) =
        coolpy7_tests::broker::run_to_exit(&["-acl", path.to_str().expect("utf-8")]);
    assert_ne!(code, Some(0));
    assert!(output.contains("line 2"), "{output}");
}

/// The 3.1.1 CONNACK code `connect` gets.
async fn connack_code(broker: &Broker, connect: &Connect) -> u8 {
    let mut client = RawClient::connect(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    match client.recv(TIMEOUT).await {
        Packet::ConnAck { code, .. } => code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_id_belongs_to_the_user_whose_session_it_names() {
    let rules = "allow subscribe private/%u/# \ndeny subscribe private/#\nallow all #\n";
    let (broker, _dir) = start(rules, &[]);
    let alice = Connect::v311("shared-id")
        .username("alice")
        .clean_session(false)
        .will("status/shared-id", b"offline", 1, false);
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), &alice).await;
    assert_eq!(
        client.subscribe(1, &[("private/alice/#", 1)]).await,
        vec![1]
    );
    let mut status = subscriber(&broker, "status/#").await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), "pub").await;

    // While alice is online, bob may neither take her client id over (which would close her
    // connection and fire her will) nor start clean over it.
    let bob = Connect::v311("shared-id")
        .username("bob")
        .clean_session(false);
    assert_eq!(connack_code(&broker, &bob).await, 0x05);
    let bob_clean = Connect::v311("shared-id").username("bob");
    assert_eq!(connack_code(&broker, &bob_clean).await, 0x05);
    client.assert_open_for(QUIET).await;
    assert!(
        received_topics(&mut status).await.is_empty(),
        "no will fired"
    );

    // One message in flight to alice (not acknowledged), one queued while she is away.
    publisher
        .publish_qos1("private/alice/in-flight", 1, b"x")
        .await;
    let publish = client.recv_publish(TIMEOUT).await;
    assert_eq!(publish.topic, "private/alice/in-flight");
    client.disconnect().await;
    broker.wait_connections(2).await;
    publisher
        .publish_qos1("private/alice/queued", 2, b"x")
        .await;

    // Offline, her session is still hers: bob is refused and discards nothing.
    assert_eq!(connack_code(&broker, &bob).await, 0x05);
    assert_eq!(connack_code(&broker, &bob_clean).await, 0x05);
    let (mut client, present) = RawClient::handshake(broker.mqtt_addr(), &alice).await;
    assert!(present, "alice continues her own session");
    let topics = received_topics(&mut client).await;
    assert!(
        topics.contains(&"private/alice/queued".to_string()),
        "{topics:?}"
    );
}
