//! Idle plain-TCP connections sleep in the broker's parker, without a task, once they have had
//! nothing to do for a second or two (`coolpy7_connections_sleeping` counts them). Asleep, a
//! connection is still the same connection to its client: it is woken for its input (a
//! PINGREQ, a PUBLISH), for a delivery, for a takeover or an administrator's close, and closed
//! when its keepalive expires, with its will published.

use std::time::Duration;

use coolpy7_tests::packets::{self, Connect};
use coolpy7_tests::packets5::{reason, Connect as Connect5};
use coolpy7_tests::{unique_id, Broker, RawClient, RawClient5, TIMEOUT};

const SLEEPING: &str = "coolpy7_connections_sleeping";

/// Waits until at least `n` connections sleep.
async fn wait_sleeping(broker: &Broker, n: u64) {
    broker
        .wait_metric(
            SLEEPING,
            &format!("at least {n} asleep"),
            Duration::from_secs(10),
            |v| v >= n as f64,
        )
        .await;
}

#[tokio::test]
async fn a_sleeping_subscriber_gets_its_deliveries_answers_pings_and_sleeps_again() {
    let broker = Broker::start(&[]);
    let id = unique_id("sleeper");
    let mut subscriber = RawClient::connect_v311(broker.mqtt_addr(), &id).await;
    subscriber
        .subscribe(1, &[("sleep/q0", 0), ("sleep/q1", 1)])
        .await;
    wait_sleeping(&broker, 1).await;
    assert_eq!(broker.metric("coolpy7_connections").await, 1.0);

    // Woken by a delivery, at both QoS, in order.
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("sleep/q1", 7, b"one").await;
    publisher.publish_qos0("sleep/q0", b"two").await;
    let first = subscriber.recv_publish(TIMEOUT).await;
    assert_eq!((first.topic.as_str(), first.qos), ("sleep/q1", 1));
    assert_eq!(first.payload, b"one");
    subscriber.send(&packets::puback(first.pkid)).await;
    let second = subscriber.recv_publish(TIMEOUT).await;
    assert_eq!(
        (second.topic.as_str(), &second.payload[..]),
        ("sleep/q0", &b"two"[..])
    );

    // Both fall asleep again; the subscriber is woken by its own PINGREQ.
    wait_sleeping(&broker, 2).await;
    subscriber.ping().await;
    // And the publisher by its PUBLISH: the message still reaches the subscriber.
    wait_sleeping(&broker, 2).await;
    publisher.publish_qos1("sleep/q1", 8, b"three").await;
    let third = subscriber.recv_publish(TIMEOUT).await;
    assert_eq!(third.payload, b"three");
    subscriber.send(&packets::puback(third.pkid)).await;
    assert_eq!(broker.metric("coolpy7_connections").await, 2.0);
    subscriber.disconnect().await;
    publisher.disconnect().await;
    broker.wait_connections(0).await;
    assert_eq!(broker.metric(SLEEPING).await, 0.0);
}

#[tokio::test]
async fn a_sleeping_client_whose_keepalive_expires_is_closed_and_its_will_published() {
    let broker = Broker::start(&[]);
    let mut watcher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("watch")).await;
    watcher.subscribe(1, &[("sleep/will", 0)]).await;
    // Keepalive 2: the limit is 3 s, and the connection is asleep by then.
    let connect =
        Connect::v311(&unique_id("silent"))
            .keep_alive(2)
            .will("sleep/will", b"gone", 0, false);
    let (mut silent, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    wait_sleeping(&broker, 2).await;
    silent.expect_closed(Duration::from_secs(6)).await;
    let will = watcher.recv_publish(TIMEOUT).await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("sleep/will", &b"gone"[..])
    );
    broker.wait_connections(1).await;
}

#[tokio::test]
async fn a_sleeping_client_that_closes_its_socket_has_its_will_published() {
    let broker = Broker::start(&[]);
    let mut watcher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("watch")).await;
    watcher.subscribe(1, &[("sleep/will", 0)]).await;
    let connect = Connect::v311(&unique_id("leaver")).will("sleep/will", b"closed", 0, false);
    let (leaver, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    wait_sleeping(&broker, 2).await;
    drop(leaver);
    let will = watcher.recv_publish(TIMEOUT).await;
    assert_eq!(will.payload, b"closed");
    broker.wait_connections(1).await;
}

#[tokio::test]
async fn a_sleeping_session_is_taken_over_with_what_it_was_owed() {
    let broker = Broker::start(&[]);
    let id = unique_id("taken");
    let connect = Connect::v311(&id).clean_session(false);
    let (mut first, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    first.subscribe(1, &[("sleep/take", 1)]).await;
    wait_sleeping(&broker, 1).await;
    let (mut second, present) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    assert!(present, "the sleeping connection's session is taken over");
    first.expect_closed(TIMEOUT).await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher.publish_qos1("sleep/take", 1, b"after").await;
    let message = second.recv_publish(TIMEOUT).await;
    assert_eq!(message.payload, b"after");
    // The new connection is served as any other.
    second.ping().await;
}

#[tokio::test]
async fn an_administrator_closes_a_sleeping_v5_client_with_its_reason() {
    let broker = Broker::start(&["-syst=adm1n-t0ken"]);
    let id = unique_id("adm-sleeper");
    let mut client = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    wait_sleeping(&broker, 1).await;
    let (status, body) = broker
        .http_delete(&format!("/clients/{id}?token=adm1n-t0ken"))
        .await;
    assert_eq!(status, 204, "{body}");
    client
        .expect_disconnect(reason::ADMINISTRATIVE_ACTION)
        .await;
    broker.wait_connections(0).await;
}

/// Review finding: a connection just woken has a runtime registration that reports its socket
/// as full until polled, and the DISCONNECT it owed its client was dropped. Each close reason
/// a sleeper can get from outside, with its DISCONNECT.
#[tokio::test]
async fn a_sleeping_v5_client_gets_its_disconnect_on_takeover_and_keepalive_expiry() {
    let broker = Broker::start(&[]);
    let id = unique_id("v5-taken");
    let mut first = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    wait_sleeping(&broker, 1).await;
    let _second = RawClient5::connect_simple(broker.mqtt_addr(), &id).await;
    first.expect_disconnect(reason::SESSION_TAKEN_OVER).await;

    let connect = Connect5::new(&unique_id("v5-silent")).keep_alive(2);
    let (mut silent, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    wait_sleeping(&broker, 2).await;
    silent.expect_disconnect(reason::KEEP_ALIVE_TIMEOUT).await;
}

#[tokio::test]
async fn sleeping_v5_clients_are_told_the_server_shuts_down() {
    let mut broker = Broker::start(&[]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5-down")).await);
    }
    wait_sleeping(&broker, 3).await;
    broker.sigterm();
    for client in &mut clients {
        client.expect_disconnect(reason::SERVER_SHUTTING_DOWN).await;
    }
    assert!(
        broker.wait_exit(TIMEOUT).await.is_some(),
        "the broker exits once its sleeping connections are closed"
    );
}
