//! Keep alive (MQTT 3.1.1 §3.1.2.10): a client silent for 1.5 × its keep alive is disconnected;
//! any packet (PINGREQ included) resets the timer; keep alive 0 disables it.

use std::time::{Duration, Instant};

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::{unique_id, Broker, RawClient};

#[tokio::test]
async fn idle_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("ka")).keep_alive(1);
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    let start = Instant::now();
    // A client may legitimately be silent for up to 1.5 s (§3.1.2.10): still open after a full
    // keep alive period (checking at 1.0 s leaves 0.5 s of slack for a loaded machine).
    client.assert_open_for(Duration::from_millis(1000)).await;
    let before = client.expect_closed(Duration::from_millis(3000)).await;
    assert!(
        before.is_empty(),
        "unexpected packets before the close: {before:?}"
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "closed only after {elapsed:?}"
    );
}

#[tokio::test]
async fn pingreq_gets_pingresp() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("ping")).await;
    for _ in 0..3 {
        client.send(&packets::pingreq()).await;
    }
    for _ in 0..3 {
        client.expect(Packet::PingResp).await;
    }
}

#[tokio::test]
async fn pingreq_keeps_the_connection_alive() {
    let broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("ka-ping")).keep_alive(1);
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    // 3.5 s in total, far beyond 1.5 s, with a PINGREQ every 0.7 s.
    for _ in 0..5 {
        client.assert_open_for(Duration::from_millis(700)).await;
        client.ping().await;
    }
}

#[tokio::test]
async fn any_packet_keeps_the_connection_alive() {
    let broker = Broker::start(&[]);
    let connect = Connect::v311(&unique_id("ka-pub")).keep_alive(1);
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    for i in 0..5u16 {
        client.assert_open_for(Duration::from_millis(700)).await;
        client.publish_qos1("ka/any", i + 1, b"tick").await;
    }
}

#[tokio::test]
async fn keep_alive_zero_means_no_timeout() {
    let broker = Broker::start(&["-nt", "1"]);
    let connect = Connect::v311(&unique_id("ka0")).keep_alive(0);
    let (mut client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
    client.assert_open_for(Duration::from_secs(3)).await;
    client.ping().await;
}

#[tokio::test]
async fn rumqttc_client_with_short_keep_alive_stays_connected() {
    let broker = Broker::start(&[]);
    let mut options = broker.options(&unique_id("ka-rumqttc"));
    options.set_keep_alive(Duration::from_secs(1));
    let mut client = coolpy7_tests::TestClient::connect(options).await;
    client.expect_no_publish(Duration::from_secs(3)).await;
    assert!(!client.is_closed(), "a pinging client was disconnected");
    client
        .subscribe_ok("ka/r", coolpy7_tests::QoS::AtMostOnce)
        .await;
    client.disconnect().await;
}

/// A broker paused (SIGSTOP, a frozen VM) for longer than its clients' keep alive wakes up with
/// their PINGREQs waiting unread: it reads them before declaring anyone expired, so clients that
/// kept pinging stay connected.
#[tokio::test]
async fn a_paused_broker_reads_waiting_pings_before_expiring_keepalives() {
    let broker = Broker::start(&[]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let connect = Connect::v311(&unique_id(&format!("paused{i}"))).keep_alive(2);
        let (client, _) = RawClient::handshake(broker.mqtt_addr(), &connect).await;
        clients.push(client);
    }
    broker.signal("STOP");
    // 5 s stopped: beyond 1.5 × 2 s, with a PINGREQ from every client each 0.5 s meanwhile.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for client in &mut clients {
            client.send(&packets::pingreq()).await;
        }
    }
    broker.signal("CONT");
    for client in &mut clients {
        client.expect(Packet::PingResp).await;
    }
    // Still connected a keep alive later, while pinging on.
    for _ in 0..3 {
        for client in &mut clients {
            client.ping().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for client in &mut clients {
        client.assert_open_for(Duration::from_millis(100)).await;
    }
}
