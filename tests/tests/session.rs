//! Sessions (MQTT 3.1.1 §3.1.2.4, §4.1, §4.4): session present, persistence of subscriptions
//! and of QoS 1/2 messages while offline, the bounded offline queue, clean session, and the
//! re-sending of unacknowledged messages on reconnect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coolpy7_tests::packets::{self, Connect, Packet};
use coolpy7_tests::raw::RecvError;
use coolpy7_tests::{unique_id, Broker, QoS, RawClient, QUIET, TIMEOUT};

#[tokio::test]
async fn session_present_is_zero_for_a_new_persistent_session() {
    let broker = Broker::start(&[]);
    let client = broker.persistent_client(&unique_id("new")).await;
    assert!(!client.session_present(), "no session existed yet");
}

#[tokio::test]
async fn session_present_is_one_when_resuming() {
    let broker = Broker::start(&[]);
    let id = unique_id("resume");
    let client = broker.persistent_client(&id).await;
    assert!(!client.session_present());
    client.disconnect().await;
    broker.wait_connections(0).await;
    let client = broker.persistent_client(&id).await;
    assert!(
        client.session_present(),
        "the persistent session must be resumed"
    );
    // Resumed after an abnormal close too.
    client.drop_connection().await;
    broker.wait_connections(0).await;
    let client = broker.persistent_client(&id).await;
    assert!(client.session_present());
}

#[tokio::test]
async fn session_present_is_zero_for_clean_session_even_if_one_existed() {
    let broker = Broker::start(&[]);
    let id = unique_id("clean-over");
    broker.persistent_client(&id).await.disconnect().await;
    broker.wait_connections(0).await;
    let clean = broker.client(&id).await;
    assert!(
        !clean.session_present(),
        "clean session 1 must report session present 0"
    );
    clean.disconnect().await;
    broker.wait_connections(0).await;
    // The clean session discarded the old one: nothing to resume now.
    let again = broker.persistent_client(&id).await;
    assert!(
        !again.session_present(),
        "the old session must have been discarded"
    );
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions() {
    let broker = Broker::start(&[]);
    let id = unique_id("keep-subs");
    let mut sub = broker.persistent_client(&id).await;
    sub.subscribe_ok("ps/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;

    let mut sub = broker.persistent_client(&id).await;
    assert!(sub.session_present());
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("ps/t", QoS::AtLeastOnce, false, "kept")
        .await;
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(got.topic, "ps/t");
    assert_eq!(&got.payload[..], b"kept");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn qos1_and_qos2_messages_are_queued_while_offline() {
    let broker = Broker::start(&[]);
    let id = unique_id("offline");
    let mut sub = broker.persistent_client(&id).await;
    sub.subscribe_ok("off/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;

    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("off/1", QoS::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish("off/2", QoS::ExactlyOnce, false, "two")
        .await;
    publisher
        .publish("off/1", QoS::AtLeastOnce, false, "three")
        .await;

    let mut sub = broker.persistent_client(&id).await;
    assert!(sub.session_present());
    let got = sub.recv_publishes(3, TIMEOUT).await;
    let summary: Vec<(String, QoS, Vec<u8>)> = got
        .iter()
        .map(|p| (p.topic.clone(), p.qos, p.payload.to_vec()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("off/1".to_string(), QoS::AtLeastOnce, b"one".to_vec()),
            ("off/2".to_string(), QoS::ExactlyOnce, b"two".to_vec()),
            ("off/1".to_string(), QoS::AtLeastOnce, b"three".to_vec()),
        ],
        "queued messages, in publish order, at their QoS"
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn qos0_messages_are_not_queued_while_offline() {
    let broker = Broker::start(&[]);
    let id = unique_id("offline-q0");
    let mut sub = broker.persistent_client(&id).await;
    sub.subscribe_ok("q0/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;

    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..3 {
        publisher
            .publish("q0/zero", QoS::AtMostOnce, false, format!("qos0-{i}"))
            .await;
    }
    publisher
        .publish("q0/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    broker
        .wait_metric(
            "coolpy7_messages_dropped_total{reason=\"offline_qos0\"}",
            ">= 3 QoS 0 messages dropped for the offline session",
            TIMEOUT,
            |v| v >= 3.0,
        )
        .await;

    let mut sub = broker.persistent_client(&id).await;
    assert!(sub.session_present());
    let got = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("q0/marker", &b"marker"[..]),
        "only the QoS 1 message may have been queued"
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drops_the_oldest() {
    let broker = Broker::start(&["-mq", "5"]);
    let id = unique_id("bounded");
    let mut sub = broker.persistent_client(&id).await;
    sub.subscribe_ok("mq/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;

    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..10 {
        publisher
            .publish("mq/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    broker
        .wait_metric(
            "coolpy7_messages_dropped_total{reason=\"queue_full\"}",
            "exactly 5 messages dropped for a full queue (10 published, 5 kept)",
            TIMEOUT,
            |v| v == 5.0,
        )
        .await;
    broker
        .wait_metric(
            "coolpy7_queued_messages",
            "5 queued messages",
            TIMEOUT,
            |v| v == 5.0,
        )
        .await;

    let mut sub = broker.persistent_client(&id).await;
    assert!(sub.session_present());
    let got = sub.recv_publishes(5, TIMEOUT).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        ["m5", "m6", "m7", "m8", "m9"],
        "the newest 5, in order"
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn clean_session_discards_subscriptions() {
    let broker = Broker::start(&[]);
    let id = unique_id("clean");
    let mut sub = broker.client(&id).await;
    sub.subscribe_ok("cs/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;

    let mut sub = broker.client(&id).await;
    assert!(!sub.session_present());
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("cs/t", QoS::AtLeastOnce, false, "x")
        .await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn clean_session_discards_queued_messages_of_a_persistent_session() {
    let broker = Broker::start(&[]);
    let id = unique_id("clean-queue");
    let mut sub = broker.persistent_client(&id).await;
    sub.subscribe_ok("cq/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("cq/t", QoS::AtLeastOnce, false, "queued")
        .await;

    let mut sub = broker.client(&id).await;
    assert!(!sub.session_present());
    sub.expect_no_publish(QUIET).await;
    publisher
        .publish("cq/t", QoS::AtLeastOnce, false, "later")
        .await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn takeover_of_a_persistent_session_keeps_its_subscriptions() {
    let broker = Broker::start(&[]);
    let id = unique_id("tk-persist");
    let mut first = broker.persistent_client(&id).await;
    first.subscribe_ok("tkp/t", QoS::AtLeastOnce).await;
    let mut second = broker.persistent_client(&id).await;
    assert!(second.session_present(), "takeover resumes the session");
    first.wait_closed(TIMEOUT).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("tkp/t", QoS::AtLeastOnce, false, "x")
        .await;
    let got = second.recv_publish(TIMEOUT).await;
    assert_eq!(got.topic, "tkp/t");
    second.expect_no_publish(QUIET).await;
}

/// A raw persistent subscriber: connects with clean session 0 and returns session present.
async fn raw_persistent(broker: &Broker, id: &str) -> (RawClient, bool) {
    RawClient::handshake(broker.mqtt_addr(), &Connect::v311(id).clean_session(false)).await
}

#[tokio::test]
async fn unacknowledged_qos1_is_resent_with_dup_and_the_same_packet_id() {
    let broker = Broker::start(&[]);
    let id = unique_id("resend1");
    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(!sp);
    assert_eq!(sub.subscribe(1, &[("re/q1", 1)]).await, vec![1]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("re/q1", QoS::AtLeastOnce, false, "hello")
        .await;
    let first = sub.recv_publish(TIMEOUT).await;
    assert_eq!((first.qos, first.dup), (1, false));
    assert_eq!(first.payload, b"hello");
    drop(sub); // no PUBACK, no DISCONNECT
    broker.wait_connections(1).await;

    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    let again = sub.recv_publish(TIMEOUT).await;
    assert_eq!(again.pkid, first.pkid, "same packet identifier");
    assert!(again.dup, "DUP must be set on re-delivery: {again:?}");
    assert_eq!((again.qos, again.topic.as_str()), (1, "re/q1"));
    assert_eq!(again.payload, b"hello");
    sub.send(&packets::puback(again.pkid)).await;
    sub.expect_no_packet(QUIET).await;
    drop(sub);
    broker.wait_connections(1).await;

    // Acknowledged now: nothing more to re-send.
    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn unacknowledged_qos2_publish_is_resent_with_dup() {
    let broker = Broker::start(&[]);
    let id = unique_id("resend2");
    let (mut sub, _) = raw_persistent(&broker, &id).await;
    assert_eq!(sub.subscribe(1, &[("re/q2", 2)]).await, vec![2]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("re/q2", QoS::ExactlyOnce, false, "twice?")
        .await;
    let first = sub.recv_publish(TIMEOUT).await;
    assert_eq!((first.qos, first.dup), (2, false));
    drop(sub); // no PUBREC
    broker.wait_connections(1).await;

    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    let again = sub.recv_publish(TIMEOUT).await;
    assert_eq!(again.pkid, first.pkid, "same packet identifier");
    assert!(again.dup, "DUP must be set on re-delivery: {again:?}");
    assert_eq!((again.qos, &again.payload[..]), (2, &b"twice?"[..]));
    sub.send(&packets::pubrec(again.pkid)).await;
    sub.expect(Packet::PubRel(again.pkid)).await;
    sub.send(&packets::pubcomp(again.pkid)).await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn pubrel_is_resent_after_reconnect() {
    let broker = Broker::start(&[]);
    let id = unique_id("resend-rel");
    let (mut sub, _) = raw_persistent(&broker, &id).await;
    assert_eq!(sub.subscribe(1, &[("re/rel", 2)]).await, vec![2]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("re/rel", QoS::ExactlyOnce, false, "once")
        .await;
    let first = sub.recv_publish(TIMEOUT).await;
    assert_eq!(first.qos, 2);
    sub.send(&packets::pubrec(first.pkid)).await;
    // The broker answered PUBREC: it has processed it.
    sub.expect(Packet::PubRel(first.pkid)).await;
    drop(sub); // no PUBCOMP
    broker.wait_connections(1).await;

    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    let packet = sub.recv(TIMEOUT).await;
    assert_eq!(
        packet,
        Packet::PubRel(first.pkid),
        "after PUBREC the broker must re-send PUBREL, not the PUBLISH (§4.4)"
    );
    sub.send(&packets::pubcomp(first.pkid)).await;
    sub.expect_no_packet(QUIET).await;
    drop(sub);
    broker.wait_connections(1).await;

    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn takeover_resends_unacknowledged_messages_to_the_new_connection() {
    let broker = Broker::start(&[]);
    let id = unique_id("tk-resend");
    let (mut first, _) = raw_persistent(&broker, &id).await;
    assert_eq!(first.subscribe(1, &[("tkr/t", 1)]).await, vec![1]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("tkr/t", QoS::AtLeastOnce, false, "m")
        .await;
    let original = first.recv_publish(TIMEOUT).await;
    assert!(!original.dup);

    let (mut second, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    first.expect_closed(TIMEOUT).await;
    let again = second.recv_publish(TIMEOUT).await;
    assert_eq!(
        (again.pkid, again.dup, &again.payload[..]),
        (original.pkid, true, &b"m"[..])
    );
    second.send(&packets::puback(again.pkid)).await;
    second.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn resent_messages_come_before_queued_ones() {
    let broker = Broker::start(&["-mif", "1"]);
    let id = unique_id("order");
    let (mut sub, _) = raw_persistent(&broker, &id).await;
    assert_eq!(sub.subscribe(1, &[("ord/t", 1)]).await, vec![1]);
    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..3 {
        publisher
            .publish("ord/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let m0 = sub.recv_publish(TIMEOUT).await;
    assert_eq!(m0.payload, b"m0");
    sub.expect_no_packet(QUIET).await; // the window of 1 is full
    drop(sub);
    broker.wait_connections(1).await;

    let (mut sub, sp) = raw_persistent(&broker, &id).await;
    assert!(sp);
    let again = sub.recv_publish(TIMEOUT).await;
    assert_eq!(
        (again.pkid, again.dup, &again.payload[..]),
        (m0.pkid, true, &b"m0"[..])
    );
    sub.expect_no_packet(QUIET).await;
    sub.send(&packets::puback(again.pkid)).await;
    let m1 = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&m1.payload[..], m1.dup), (&b"m1"[..], false));
    sub.send(&packets::puback(m1.pkid)).await;
    let m2 = sub.recv_publish(TIMEOUT).await;
    assert_eq!((&m2.payload[..], m2.dup), (&b"m2"[..], false));
    sub.send(&packets::puback(m2.pkid)).await;
    sub.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn offline_session_expires_after_se_seconds() {
    let broker = Broker::start(&["-se", "1"]);
    let id = unique_id("expiring");
    let mut sub = broker.persistent_client(&id).await;
    sub.subscribe_ok("exp/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.wait_connections(0).await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    publisher
        .publish("exp/t", QoS::AtLeastOnce, false, "lost")
        .await;
    publisher.disconnect().await;
    let start = std::time::Instant::now();
    broker
        .wait_metric(
            "coolpy7_sessions",
            "the offline session to expire",
            TIMEOUT,
            |v| v == 0.0,
        )
        .await;
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(500),
        "the session expired after {:?}, before its 1 s",
        start.elapsed()
    );
    let mut sub = broker.persistent_client(&id).await;
    assert!(!sub.session_present(), "the expired session is gone");
    sub.expect_no_publish(QUIET).await;
}

/// A clean-session client leaving with many subscriptions must not stall anyone else: the broker
/// runs on one worker thread here (as in a pod with one CPU), so a teardown that kept the worker
/// until done would stop an unrelated publisher/subscriber pair and new CONNECTs for all of its
/// duration (seconds for 100,000 filters on a debug build). The bound on the pair's longest gap
/// is generous; the figures for release builds are in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_with_many_subscriptions_does_not_stall_others() {
    const FILTERS: usize = 100_000;
    const PER_PACKET: usize = 100;
    const MAX_GAP: Duration = Duration::from_millis(500);
    let broker = Broker::start_with_env(&["-msc", "0"], &[("TOKIO_WORKER_THREADS", "1")]);
    let addr = broker.mqtt_addr();

    let mut holder = RawClient::connect_v311(addr, &unique_id("holder")).await;
    let filters: Vec<String> = (0..FILTERS)
        .map(|k| {
            if k.is_multiple_of(2) {
                format!("s/{k}/x")
            } else {
                format!("s/+/{k}")
            }
        })
        .collect();
    for (window, chunk) in filters.chunks(PER_PACKET * 20).enumerate() {
        let packets: Vec<(u16, usize)> = chunk
            .chunks(PER_PACKET)
            .enumerate()
            .map(|(i, part)| ((window * 20 + i + 1) as u16, part.len()))
            .collect();
        for ((pkid, _), part) in packets.iter().zip(chunk.chunks(PER_PACKET)) {
            let pairs: Vec<(&str, u8)> = part.iter().map(|f| (f.as_str(), 0)).collect();
            holder.send(&packets::subscribe(*pkid, &pairs)).await;
        }
        for (pkid, len) in packets {
            let codes = holder.wait_suback(pkid, len).await;
            assert!(codes.iter().all(|&c| c == 0), "refused: {codes:?}");
        }
    }
    assert_eq!(broker.metric("coolpy7_subscriptions").await, FILTERS as f64);

    // The unrelated pair: a QoS 0 message every millisecond; the subscriber notes arrivals.
    let mut subscriber = RawClient::connect_v311(addr, &unique_id("pair-sub")).await;
    assert_eq!(subscriber.subscribe(1, &[("pair/t", 0)]).await, vec![0]);
    let mut publisher = RawClient::connect_v311(addr, &unique_id("pair-pub")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            // Bounded: the test stops it well before this many.
            for _ in 0..120_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                publisher.publish_qos0("pair/t", b"tick").await;
            }
        })
    };
    let receiving = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match subscriber.try_recv(Duration::from_millis(100)).await {
                    Ok(Packet::Publish(_)) => arrivals.push(Instant::now()),
                    Ok(_) | Err(RecvError::Timeout) => {}
                    Err(e) => panic!("the pair's subscriber lost its connection: {e:?}"),
                }
            }
            arrivals
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let left = Instant::now();
    holder.disconnect().await;
    let connecting = Instant::now();
    let mut newcomer = RawClient::connect(addr).await;
    newcomer
        .send(&Connect::v311(&unique_id("newcomer")).encode())
        .await;
    let connack = newcomer.try_recv(Duration::from_secs(60)).await;
    let connect_took = connecting.elapsed();
    assert!(
        matches!(connack, Ok(Packet::ConnAck { code: 0, .. })),
        "CONNECT during the teardown: {connack:?} after {connect_took:?}"
    );
    newcomer.disconnect().await;
    broker
        .wait_metric(
            "coolpy7_subscriptions",
            "every subscription of the client that left removed",
            Duration::from_secs(60),
            |v| v == 1.0,
        )
        .await;
    let teardown = left.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    publishing.await.expect("publisher task");
    let arrivals = receiving.await.expect("subscriber task");

    let end = Instant::now();
    let mut last = left;
    let mut longest = Duration::ZERO;
    for &at in arrivals.iter().filter(|&&at| at > left) {
        longest = longest.max(at - last);
        last = at;
    }
    longest = longest.max(end - last);
    eprintln!(
        "teardown of {FILTERS} filters: {teardown:?}; pair's longest gap {longest:?} ({} \
         received); new CONNECT {connect_took:?}",
        arrivals.iter().filter(|&&at| at > left).count()
    );
    assert!(
        longest < MAX_GAP && connect_took < MAX_GAP,
        "while {FILTERS} subscriptions were removed (done after {teardown:?}) the pair's longest \
         gap was {longest:?} and a new CONNECT took {connect_took:?}; both must stay below \
         {MAX_GAP:?}"
    );
}
