//! MQTT 3.1.1 <-> 5.0 on one broker: a 3.1.1 subscriber gets a v5 PUBLISH as a plain 3.1.1
//! PUBLISH (no properties, which its strict decoder would reject as payload garbage otherwise);
//! a v5 subscriber gets a 3.1.1 PUBLISH with no properties; retained and offline-queued messages
//! keep their properties for v5 subscribers. Also end-to-end flows with an independent v5 client
//! (rumqttc's `v5` module).

use std::time::Duration;

use bytes::Bytes;
use coolpy7_tests::packets5::{self, Connect, Property as P, PublishPacket, SubscribePacket};
use coolpy7_tests::{unique_id, Broker, RawClient, RawClient5, QUIET, TIMEOUT};
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet as V5Packet, PublishProperties, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

fn props() -> Vec<P> {
    vec![
        P::UserProperty("trace".into(), "abc".into()),
        P::ContentType("text/plain".into()),
        P::PayloadFormatIndicator(1),
        P::ResponseTopic("interop/reply".into()),
        P::CorrelationData(b"req-1".to_vec()),
        P::MessageExpiryInterval(600),
        P::UserProperty("trace".into(), "def".into()),
    ]
}

fn with(mut publish: PublishPacket, props: &[P]) -> PublishPacket {
    for p in props {
        publish = publish.prop(p.clone());
    }
    publish
}

#[tokio::test]
async fn a_v311_subscriber_gets_a_v5_publish_without_properties() {
    let broker = Broker::start(&[]);
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v3")).await;
    assert_eq!(v3.subscribe(1, &[("io/#", 1)]).await, vec![1]);
    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5")).await;
    for qos in [0u8, 1, 2] {
        v5.publish(&with(
            PublishPacket::new("io/t", qos, 1 + u16::from(qos), b"payload").prop(P::TopicAlias(1)),
            &props(),
        ))
        .await;
        let got = v3.recv_publish(TIMEOUT).await;
        assert_eq!(got.topic, "io/t", "the alias is resolved for 3.1.1");
        assert_eq!(
            got.payload, b"payload",
            "no property bytes before the payload"
        );
        if got.qos == 1 {
            v3.send(&coolpy7_tests::packets::puback(got.pkid)).await;
        }
    }
    v3.expect_no_packet(QUIET).await;
}

#[tokio::test]
async fn a_v5_subscriber_gets_a_v311_publish_with_no_properties() {
    let broker = Broker::start(&[]);
    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5")).await;
    v5.subscribe_ok(1, "io3/#", 2).await;
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v3")).await;
    v3.publish_qos0("io3/q0", b"zero").await;
    v3.publish_qos1("io3/q1", 1, b"one").await;
    v3.publish_qos2("io3/q2", 2, b"two").await;
    for (topic, payload, qos) in [
        ("io3/q0", "zero", 0),
        ("io3/q1", "one", 1),
        ("io3/q2", "two", 2),
    ] {
        let got = v5.recv_publish_acked(TIMEOUT).await;
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice(), got.qos),
            (topic, payload.as_bytes(), qos)
        );
        assert!(got.props.is_empty(), "{got:?}");
    }
}

#[tokio::test]
async fn a_retained_v5_message_keeps_its_properties() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&with(
            PublishPacket::new("ior/t", 1, 1, b"retained").retain(true),
            &props(),
        ))
        .await;
    let mut v5 = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("v5")).await;
    v5.subscribe_ok(1, "ior/#", 1).await;
    let got = v5.recv_publish_acked(TIMEOUT).await;
    assert!(got.retain);
    packets5::assert_forwarded(&got, &props(), 3);
    // The same retained message to a 3.1.1 subscriber: payload only.
    let mut v3 = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("v3")).await;
    v3.subscribe(1, &[("ior/#", 0)]).await;
    let got = v3.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.payload.as_slice(), got.retain),
        (&b"retained"[..], true)
    );
}

#[tokio::test]
async fn an_offline_queued_v5_message_keeps_its_properties() {
    let broker = Broker::start(&[]);
    let id = unique_id("offline");
    let persistent = Connect::new(&id).clean_start(false).session_expiry(60);
    let (mut sub, _) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent).await;
    sub.subscribe(&SubscribePacket::new(1).id(42).filter("ioq/#", 1))
        .await;
    sub.disconnect().await;
    broker.wait_connections(0).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&with(
            PublishPacket::new("ioq/t", 1, 1, b"queued"),
            &props(),
        ))
        .await;
    let (mut sub, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &persistent).await;
    assert!(connack.session_present);
    let got = sub.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"queued");
    packets5::assert_forwarded(&got, &props(), 3);
    assert_eq!(got.props.subscription_identifiers(), vec![42], "{got:?}");
}

#[tokio::test]
async fn a_v311_session_resumed_as_v5_gets_its_queue_and_back() {
    let broker = Broker::start(&[]);
    let id = unique_id("switch");
    let v3_persistent = coolpy7_tests::packets::Connect::v311(&id).clean_session(false);
    let (mut v3, _) = RawClient::handshake(broker.mqtt_addr(), &v3_persistent).await;
    v3.subscribe(1, &[("sw/#", 1)]).await;
    v3.disconnect().await;
    broker.wait_connections(0).await;
    let mut publisher = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&with(PublishPacket::new("sw/t", 1, 1, b"for v5"), &props()))
        .await;
    // Resumed by a v5 client: the subscription and the queued message are there, properties
    // included (they were kept even though the session was a 3.1.1 one).
    let v5_resume = Connect::new(&id).clean_start(false).session_expiry(60);
    let (mut v5, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &v5_resume).await;
    assert!(connack.session_present);
    let got = v5.recv_publish_acked(TIMEOUT).await;
    assert_eq!(got.payload, b"for v5");
    packets5::assert_forwarded(&got, &props(), 3);
}

/// A rumqttc v5 client connected to `broker`, with its event loop polled until CONNACK.
async fn rumqttc_v5(broker: &Broker, id: &str) -> (AsyncClient, EventLoop) {
    let addr = broker.mqtt_addr();
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(V5Packet::ConnAck(connack)))) => {
                assert_eq!(
                    connack.code,
                    rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
                    "{connack:?}"
                );
                return (client, eventloop);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("rumqttc v5 client {id:?} failed to connect: {e:?}"),
            Err(_) => panic!("rumqttc v5 client {id:?}: no CONNACK within {TIMEOUT:?}"),
        }
    }
}

/// Polls `eventloop` until `pick` returns something, within `TIMEOUT`.
async fn poll_until<T>(
    eventloop: &mut EventLoop,
    what: &str,
    mut pick: impl FnMut(&V5Packet) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(packet))) => {
                if let Some(found) = pick(&packet) {
                    return found;
                }
            }
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(e)) => panic!("rumqttc v5 event loop failed waiting for {what}: {e:?}"),
            Err(_) => panic!("no {what} within {TIMEOUT:?}"),
        }
    }
}

#[tokio::test]
async fn rumqttc_v5_clients_exchange_properties_through_the_broker() {
    let broker = Broker::start(&[]);
    let (sub, mut sub_loop) = rumqttc_v5(&broker, &unique_id("rq-sub")).await;
    sub.subscribe_with_properties(
        "rq/+/data",
        V5QoS::AtLeastOnce,
        SubscribeProperties {
            id: Some(77),
            user_properties: vec![],
        },
    )
    .await
    .expect("subscribe request");
    poll_until(&mut sub_loop, "SUBACK", |p| match p {
        V5Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;

    let (publisher, mut pub_loop) = rumqttc_v5(&broker, &unique_id("rq-pub")).await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(900),
        topic_alias: None,
        response_topic: Some("rq/replies".into()),
        correlation_data: Some(Bytes::from_static(b"corr-7")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        subscription_identifiers: vec![],
        content_type: Some("text/plain".into()),
    };
    publisher
        .publish_with_properties(
            "rq/dev1/data",
            V5QoS::AtLeastOnce,
            false,
            "21.5",
            properties.clone(),
        )
        .await
        .expect("publish request");
    let puback = poll_until(&mut pub_loop, "PUBACK", |p| match p {
        V5Packet::PubAck(ack) => Some(ack.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        puback.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        "{puback:?}"
    );

    let got = poll_until(&mut sub_loop, "PUBLISH", |p| match p {
        V5Packet::Publish(publish) => Some(publish.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got.topic[..], b"rq/dev1/data");
    assert_eq!(&got.payload[..], b"21.5");
    let got_props = got
        .properties
        .unwrap_or_else(|| panic!("the properties must arrive"));
    assert_eq!(got_props.user_properties, properties.user_properties);
    assert_eq!(got_props.payload_format_indicator, Some(1));
    assert_eq!(got_props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got_props.response_topic.as_deref(), Some("rq/replies"));
    assert_eq!(got_props.correlation_data.as_deref(), Some(&b"corr-7"[..]));
    let expiry = got_props.message_expiry_interval.expect("expiry");
    assert!((897..=900).contains(&expiry), "{expiry}");
    assert_eq!(got_props.subscription_identifiers, vec![77]);
}

#[tokio::test]
async fn rumqttc_v5_no_local_subscription_skips_its_own_messages() {
    let broker = Broker::start(&[]);
    let (client, mut eventloop) = rumqttc_v5(&broker, &unique_id("rq-nl")).await;
    let mut filter = Filter::new("rqnl/t", V5QoS::AtLeastOnce);
    filter.nolocal = true;
    client
        .subscribe_many(vec![filter])
        .await
        .expect("subscribe request");
    poll_until(&mut eventloop, "SUBACK", |p| match p {
        V5Packet::SubAck(_) => Some(()),
        _ => None,
    })
    .await;
    client
        .publish("rqnl/t", V5QoS::AtLeastOnce, false, "own")
        .await
        .expect("publish request");
    poll_until(&mut eventloop, "PUBACK", |p| match p {
        V5Packet::PubAck(_) => Some(()),
        _ => None,
    })
    .await;
    // Another client's message does arrive: poll until it, failing on our own.
    let mut other = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("other")).await;
    other.publish_qos1("rqnl/t", 1, b"other").await;
    let got = poll_until(&mut eventloop, "PUBLISH", |p| match p {
        V5Packet::Publish(publish) => Some(publish.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        &got[..],
        b"other",
        "the client's own message must not come back"
    );
}
