//! Delivery under load: more messages than the broker moves in one batch reach a subscriber in
//! full and in order, whether they arrive in one burst from a publisher or come out of the
//! retained store, and several connections taking over one client id at once are all served.

use coolpy7_tests::packets::{Connect, PublishPacket};
use coolpy7_tests::{unique_id, Broker, QoS, RawClient, TIMEOUT};

/// Well above the broker's per-pull batch (256), so a consumer that is not woken again for what
/// a pull leaves behind would stall.
const BURST: usize = 3000;

#[tokio::test]
async fn a_burst_larger_than_one_batch_reaches_the_subscriber_in_full_and_in_order() {
    let broker = Broker::start(&["-mq", "10000"]);
    let mut subscriber = broker
        .subscriber(&unique_id("burst-sub"), "burst/t", QoS::AtMostOnce)
        .await;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("burst-pub")).await;
    // One write: the broker decodes and routes the whole burst before the subscriber runs.
    let burst: Vec<u8> = (0..BURST)
        .flat_map(|i| PublishPacket::new("burst/t", 0, 0, i.to_string().as_bytes()).encode())
        .collect();
    publisher.send(&burst).await;

    let got = subscriber.recv_publishes(BURST, TIMEOUT * 2).await;
    for (i, publish) in got.iter().enumerate() {
        assert_eq!(
            publish.payload,
            i.to_string().as_bytes(),
            "message {i} out of order"
        );
    }
    assert_eq!(
        broker
            .metric("coolpy7_messages_dropped_total{reason=\"queue_full\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn more_retained_messages_than_one_batch_are_all_delivered_on_subscribe() {
    let broker = Broker::start(&[]);
    let count = 1000;
    let mut publisher = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("keeper")).await;
    let retained: Vec<u8> = (0..count)
        .flat_map(|i| {
            PublishPacket::new(&format!("many/{i}"), 0, 0, b"kept")
                .retain(true)
                .encode()
        })
        .collect();
    publisher.send(&retained).await;
    broker
        .wait_metric("coolpy7_retained_messages", "all retained", TIMEOUT, |v| {
            v == count as f64
        })
        .await;

    let mut subscriber = broker
        .subscriber(&unique_id("late"), "many/#", QoS::AtMostOnce)
        .await;
    let got = subscriber.recv_publishes(count, TIMEOUT).await;
    assert!(got.iter().all(|publish| publish.retain));
    let mut topics: Vec<&str> = got.iter().map(|publish| publish.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    assert_eq!(topics.len(), count, "each retained message exactly once");
}

#[tokio::test]
async fn simultaneous_takeovers_of_one_client_id_are_all_answered_promptly() {
    let broker = Broker::start(&[]);
    let addr = broker.mqtt_addr();
    let id = unique_id("contested");
    let (mut first, _) = RawClient::handshake(addr, &Connect::v311(&id).clean_session(false)).await;
    let rivals = (0..3).map(|_| {
        let id = id.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let connect = Connect::v311(&id).clean_session(false);
            let (client, session_present) = RawClient::handshake(addr, &connect).await;
            (client, session_present, started.elapsed())
        })
    });
    let mut answered = Vec::new();
    for rival in rivals {
        answered.push(rival.await.expect("rival task"));
    }
    for (_, session_present, waited) in &answered {
        assert!(*session_present, "each takeover resumes the session");
        // The broker gives a takeover 5 s before refusing; a prompt answer is far below that.
        assert!(
            *waited < TIMEOUT / 2,
            "a takeover waited {waited:?}: it was not woken when the session was released"
        );
    }
    first.expect_closed(TIMEOUT).await;
}
