//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/seed-*`, from the
//! broker's own encoders (and foca's, for gossip), so that the fuzzer starts from inputs that
//! get past the first checks. The seeds are checked in; rerun after a wire format changes:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::path::Path;

use bytes::{Bytes, BytesMut};
use coolpy7::cluster::membership::NodeIdentity;
use coolpy7::codec::{
    Ack, Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, PropertyValues,
    Protocol, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};
use coolpy7::fuzzing::{encode_gossip_envelope, encode_sync_batch, GossipEnvelope};
use coolpy7::router::Message;
use foca::{AccumulatingRuntime, Codec, Foca, Member, PostcardCodec};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)
    };

    // mqtt_decode: [config][small limit][stream]; config % 4 picks the level (none, 3.1,
    // 3.1.1, 5.0), config / 4 % 4 the limit (none, protocol max, small, small * 16).
    for (name, config, small, packets) in mqtt_seeds() {
        let mut stream = vec![config, small];
        for (packet, protocol) in packets {
            let mut buf = BytesMut::new();
            packet
                .encode(protocol, &mut buf)
                .expect("seed packets are encodable");
            stream.extend_from_slice(&buf);
        }
        write("mqtt_decode", name, &stream)?;
    }
    // A CONNECT and a PUBLISH announcing 256 MB (issue 10, item 1), under each limit.
    write(
        "mqtt_decode",
        "huge-connect",
        &[0, 0, 0x10, 0xff, 0xff, 0xff, 0x7f],
    )?;
    write(
        "mqtt_decode",
        "huge-publish-limit",
        &[8, 40, 0x30, 0xff, 0xff, 0xff, 0x7f],
    )?;

    // sync_datagram: [mode = 0][body] or [mode = 1][batch description].
    let records = [
        message("a/b", b"hello", QoS::AtMostOnce, false),
        message("sensors/1/t", b"21.5", QoS::AtLeastOnce, true),
        message("x", b"", QoS::ExactlyOnce, false),
    ];
    let now = std::time::Instant::now();
    let mut v5 = message("v5/t", b"{}", QoS::AtLeastOnce, false);
    v5.expires_at = Some(now + std::time::Duration::from_secs(30));
    let mut properties = BytesMut::new();
    coolpy7::codec::PropertyValues {
        payload_format_indicator: Some(true),
        content_type: Some("application/json".into()),
        response_topic: Some("v5/reply".into()),
        correlation_data: Some(Bytes::from_static(b"id-1")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    }
    .encode(&mut properties);
    v5.properties = properties.freeze();
    for (name, version, records) in [
        ("one", 1, &records[..1]),
        ("three", 1, &records[..]),
        ("none", 1, &[]),
        ("v2-plain", 2, &records[..]),
        ("v2-mqtt5", 2, std::slice::from_ref(&v5)),
    ] {
        let mut input = vec![0];
        input.extend(encode_sync_batch(
            version, now, "n1", 42, "n2", 7, 9, records,
        ));
        write("sync_datagram", name, &input)?;
    }
    // Version 2 (1 + 1), origin "n1", destination "n2", boots and seq, two records.
    let mut description = vec![1, 1, 2, b'n', b'1', 2, b'n', b'2'];
    description.extend([
        8, 0, 0, 0, 0, 0, 0, 0, 42, 8, 0, 0, 0, 0, 0, 0, 0, 7, 8, 0, 0, 0, 0,
    ]);
    description.extend([
        0, 0, 0, 9, 2, 1, 3, b'a', b'/', b'b', 2, b'h', b'i', 4, 1, b'$',
    ]);
    description.push(0);
    write("sync_datagram", "described", &description)?;

    // gossip_envelope: a join request and a foca announce, as the gossip task seals them.
    let local = identity("local");
    let joiner = identity("n1");
    let mut join = Vec::new();
    PostcardCodec
        .encode_member(&Member::alive(joiner.clone()), &mut join)
        .expect("a member encodes");
    write("gossip_envelope", "join", &envelope(2, &join))?;
    let mut foca = Foca::new(
        joiner,
        foca::Config::simple(),
        StdRng::seed_from_u64(1),
        PostcardCodec,
    );
    let mut runtime = AccumulatingRuntime::new();
    foca.announce(local, &mut runtime)
        .expect("foca can announce");
    let mut n = 0;
    while let Some((_, packet)) = runtime.to_send() {
        write(
            "gossip_envelope",
            &format!("foca-{n}"),
            &envelope(1, &packet),
        )?;
        n += 1;
    }

    // replay_window: operations (see the target): in order, reordered, a far jump, new boots.
    write("replay_window", "in-order", &[2, 2, 2, 2, 2, 2])?;
    write(
        "replay_window",
        "reorder",
        &[0, 5, 0, 3, 0, 0xfe, 0, 0xff, 2, 4, 4],
    )?;
    let mut jump = vec![
        2, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 1,
    ];
    jump.extend([1, 0, 0, 0, 0, 0, 0, 0, 200, 2, 9]);
    write("replay_window", "jump", &jump)?;
    write(
        "replay_window",
        "boots",
        &[2, 2, 3, 1, 2, 2, 8, 3, 0, 2, 0, 0xff],
    )?;
    Ok(())
}

type Seed = (&'static str, u8, u8, Vec<(Packet, Protocol)>);

fn mqtt_seeds() -> Vec<Seed> {
    use Protocol::{V31, V311, V5};
    let connect = |protocol| Connect {
        protocol,
        clean_session: true,
        keep_alive: 30,
        client_id: "client-1".into(),
        will: Some(LastWill {
            topic: "wills/client-1".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret")),
        properties: Properties::default(),
    };
    let publish = |qos, packet_id| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: qos == QoS::AtMostOnce,
            topic: Bytes::from_static(b"a/b/c"),
            packet_id,
            payload: Bytes::from_static(b"payload"),
            topic_alias: None,
            properties: Properties::default(),
        })
    };
    let qos = SubscriptionOptions::qos;
    let session = vec![
        (Packet::Connect(Box::new(connect(V311))), V311),
        (publish(QoS::AtMostOnce, None), V311),
        (publish(QoS::AtLeastOnce, Some(1)), V311),
        (publish(QoS::ExactlyOnce, Some(2)), V311),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 3,
                filters: vec![
                    ("a/+/c".into(), qos(QoS::AtLeastOnce)),
                    ("#".into(), qos(QoS::AtMostOnce)),
                ],
                properties: Properties::default(),
            }),
            V311,
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 4,
                filters: vec!["a/+/c".into()],
                properties: Properties::default(),
            }),
            V311,
        ),
        (Packet::PubAck(Ack::new(1)), V311),
        (Packet::PubRec(Ack::new(2)), V311),
        (Packet::PubRel(Ack::new(2)), V311),
        (Packet::PubComp(Ack::new(2)), V311),
        (Packet::PingReq, V311),
        (
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            V311,
        ),
    ];
    let from_server = vec![
        (
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ReasonCode::Success,
                properties: Properties::default(),
            }),
            V311,
        ),
        (
            Packet::SubAck(SubAck {
                packet_id: 3,
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
                properties: Properties::default(),
            }),
            V311,
        ),
        (
            Packet::UnsubAck(UnsubAck {
                packet_id: 4,
                reason_codes: Vec::new(),
                properties: Properties::default(),
            }),
            V311,
        ),
        (Packet::PingResp, V311),
    ];
    vec![
        ("session-no-limit", 0, 0, session.clone()),
        ("session-v311-small-limit", 2 + 4 * 2, 40, session.clone()),
        ("session-v311-limit-x16", 2 + 4 * 3, 3, session),
        (
            "connect-v31",
            1,
            0,
            vec![(Packet::Connect(Box::new(connect(V31))), V31)],
        ),
        ("server-packets-v31-max", 1 + 4, 0, from_server),
        ("session-v5-no-limit", 3, 0, v5_session(connect(V5))),
        (
            "session-v5-small-limit",
            3 + 4 * 2,
            60,
            v5_session(connect(V5)),
        ),
        ("server-packets-v5-max", 3 + 4, 0, v5_from_server()),
    ]
}

/// The properties of a message, as PUBLISH and the will carry them.
fn message_properties() -> PropertyValues {
    PropertyValues {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
        ..PropertyValues::default()
    }
}

fn reason(reason_string: &str) -> Properties {
    Properties::from(PropertyValues {
        reason_string: Some(reason_string.into()),
        user_properties: vec![("why".into(), "test".into())],
        ..PropertyValues::default()
    })
}

/// An MQTT 5 client session: CONNECT with connect and will properties, PUBLISHes with
/// properties, subscription options, acknowledgements with reasons, AUTH and DISCONNECT.
fn v5_session(mut connect: Connect) -> Vec<(Packet, Protocol)> {
    use Protocol::V5;
    connect.username = None;
    connect.properties = Properties::from(PropertyValues {
        session_expiry_interval: Some(300),
        receive_maximum: Some(10),
        maximum_packet_size: Some(4096),
        topic_alias_maximum: Some(8),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        user_properties: vec![("client".into(), "seed".into())],
        ..PropertyValues::default()
    });
    if let Some(will) = &mut connect.will {
        will.properties = Properties::from(PropertyValues {
            will_delay_interval: Some(5),
            ..message_properties()
        });
    }
    let publish = |qos, packet_id, topic: &'static [u8], topic_alias: Option<u16>| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(topic),
            packet_id,
            payload: Bytes::from_static(b"{\"t\":21.5}"),
            topic_alias,
            properties: Properties::from(message_properties()),
        })
    };
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::OnNewSubscription,
    };
    vec![
        (Packet::Connect(Box::new(connect)), V5),
        (publish(QoS::AtMostOnce, None, b"a/b", Some(1)), V5),
        (publish(QoS::AtLeastOnce, Some(1), b"", Some(1)), V5),
        (publish(QoS::ExactlyOnce, Some(2), b"a/c", None), V5),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 3,
                filters: vec![
                    ("a/+/c".into(), options),
                    (
                        "$share/g/#".into(),
                        SubscriptionOptions::qos(QoS::ExactlyOnce),
                    ),
                ],
                properties: Properties::from(PropertyValues {
                    subscription_identifiers: vec![42],
                    ..PropertyValues::default()
                }),
            }),
            V5,
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 4,
                filters: vec!["a/+/c".into()],
                properties: reason_free_user_properties(),
            }),
            V5,
        ),
        (Packet::PubAck(Ack::new(1)), V5),
        (
            Packet::PubRec(Ack::with_reason(2, ReasonCode::NoMatchingSubscribers)),
            V5,
        ),
        (
            Packet::PubRel(Ack {
                packet_id: 2,
                reason: ReasonCode::PacketIdentifierNotFound,
                properties: reason("lost"),
            }),
            V5,
        ),
        (Packet::PubComp(Ack::new(2)), V5),
        (Packet::PingReq, V5),
        (
            Packet::Auth(Auth {
                reason: ReasonCode::ReAuthenticate,
                properties: Properties::from(PropertyValues {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"\x01\x02")),
                    ..PropertyValues::default()
                }),
            }),
            V5,
        ),
        (
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DisconnectWithWill,
                properties: Properties::from(PropertyValues {
                    session_expiry_interval: Some(0),
                    ..PropertyValues::default()
                }),
            }),
            V5,
        ),
    ]
}

fn reason_free_user_properties() -> Properties {
    Properties::from(PropertyValues {
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..PropertyValues::default()
    })
}

/// What an MQTT 5 server sends: CONNACK with server properties, SUBACK and UNSUBACK reason
/// codes, a PUBLISH with subscription identifiers, a DISCONNECT with a reason.
fn v5_from_server() -> Vec<(Packet, Protocol)> {
    use Protocol::V5;
    vec![
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::Success,
                properties: Properties::from(PropertyValues {
                    session_expiry_interval: Some(60),
                    assigned_client_identifier: Some("auto-1".into()),
                    server_keep_alive: Some(30),
                    response_information: Some("coolpy7/response/auto-1/".into()),
                    receive_maximum: Some(100),
                    topic_alias_maximum: Some(64),
                    maximum_qos: Some(1),
                    maximum_packet_size: Some(1 << 20),
                    wildcard_subscription_available: Some(true),
                    subscription_identifier_available: Some(true),
                    shared_subscription_available: Some(true),
                    ..PropertyValues::default()
                }),
            }),
            V5,
        ),
        (
            Packet::SubAck(SubAck {
                packet_id: 3,
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::QuotaExceeded],
                properties: reason("quota"),
            }),
            V5,
        ),
        (
            Packet::UnsubAck(UnsubAck {
                packet_id: 4,
                reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
                properties: Properties::default(),
            }),
            V5,
        ),
        (
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: Bytes::from_static(b"a/b/c"),
                packet_id: Some(9),
                payload: Bytes::from_static(b"payload"),
                topic_alias: Some(2),
                properties: Properties::from(PropertyValues {
                    subscription_identifiers: vec![1, 300, 268_435_455],
                    ..message_properties()
                }),
            }),
            V5,
        ),
        (Packet::PingResp, V5),
        (
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::SessionTakenOver,
                properties: Properties::from(PropertyValues {
                    reason_string: Some("taken over".into()),
                    server_reference: Some("node-2".into()),
                    ..PropertyValues::default()
                }),
            }),
            V5,
        ),
    ]
}

fn message(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Message {
    Message::new(
        Bytes::copy_from_slice(topic.as_bytes()),
        Bytes::copy_from_slice(payload),
        qos,
        retain,
    )
}

fn envelope(kind: u8, body: &[u8]) -> Vec<u8> {
    encode_gossip_envelope(&GossipEnvelope {
        kind,
        sender: b"n1",
        boot_ms: 1,
        seq: 1,
        body,
    })
}

/// As the fuzzing wrapper's local node is, so that foca's packets are addressed to it.
fn identity(node_id: &str) -> NodeIdentity {
    NodeIdentity {
        node_id: node_id.into(),
        gossip: ([127, 0, 0, 1], 7946).into(),
        sync_port: 7947,
        mqtt_port: 1883,
        version: coolpy7::VERSION.into(),
        boot_ms: 1,
        renewal: 0,
    }
}
