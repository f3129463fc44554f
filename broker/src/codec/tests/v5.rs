//! MQTT 5 packets: every packet type round trips with every property it may carry, the short
//! forms of acknowledgements, DISCONNECT and AUTH decode as the standard says, reason codes and
//! subscription options survive, a few encodings match bytes written by hand from the
//! standard's layout (including the broker's PUBLISH hot path, [`encode_publish_v5`]), and
//! structural errors give the exact [`DecodeError`] and reason code.

use bytes::{Bytes, BytesMut};

use super::*;

fn user(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Round trips `packet` at MQTT 5 and returns its bytes.
fn round_trip(packet: &Packet) -> BytesMut {
    assert_round_trip(packet, Protocol::V5);
    encode(packet, Protocol::V5)
}

// ---------------------------------------------------------------------------------------------
// CONNECT and CONNACK

#[test]
fn connect_at_level_5_is_read_as_mqtt_5() {
    // The CONNECT the MQTT 3 tests refuse at other levels: Session Expiry Interval 10.
    let mut body = connect_body_with(b"MQTT", 5, 0x02, &[]);
    body.extend_from_slice(b"\x05\x11\x00\x00\x00\x0a");
    body.extend_from_slice(&prefixed(b"client"));
    let (result, rest) = decode_bytes(&frame(0x10, &body));
    assert!(rest.is_empty());
    let expected = Connect {
        keep_alive: 60,
        client_id: "client".to_owned(),
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(10),
            ..PropertyValues::default()
        }),
        ..connect(Protocol::V5)
    };
    assert_eq!(result, Ok(Some(connect_packet(expected))));
}

#[test]
fn connect_round_trips_with_every_connect_and_will_property() {
    let properties = Properties::from(PropertyValues {
        session_expiry_interval: Some(u32::MAX),
        receive_maximum: Some(20),
        maximum_packet_size: Some(1 << 20),
        topic_alias_maximum: Some(10),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        authentication_method: Some("SCRAM-SHA-1".into()),
        authentication_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: user(&[("a", "1"), ("b", "2"), ("a", "3")]),
        ..PropertyValues::default()
    });
    let will_properties = Properties::from(PropertyValues {
        will_delay_interval: Some(30),
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(3600),
        content_type: Some("text/plain".into()),
        response_topic: Some("replies/x".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02\x00")),
        user_properties: user(&[("w", "2"), ("w", "1")]),
        ..PropertyValues::default()
    });
    for with_will in [false, true] {
        for with_username in [false, true] {
            // MQTT 5 allows a password without a user name.
            for with_password in [false, true] {
                for clean_start in [false, true] {
                    let connect = Connect {
                        clean_session: clean_start,
                        keep_alive: 0xbeef,
                        will: with_will.then(|| LastWill {
                            topic: "will/topic".to_owned(),
                            payload: Bytes::from_static(b"gone\x00"),
                            qos: QoS::AtLeastOnce,
                            retain: true,
                            properties: will_properties.clone(),
                        }),
                        username: with_username.then(|| "user".to_owned()),
                        password: with_password.then(|| Bytes::from_static(b"\xffpass")),
                        properties: properties.clone(),
                        ..connect(Protocol::V5)
                    };
                    let packet = connect_packet(connect);
                    let bytes = round_trip(&packet);
                    // The first packet of a connection: read before the level is known.
                    let (result, rest) = decode_bytes(&bytes);
                    assert_eq!(result, Ok(Some(packet)));
                    assert!(rest.is_empty());
                }
            }
        }
    }
}

#[test]
fn connect_v5_with_a_password_but_no_user_name_is_accepted() {
    let body = [
        prefixed(b"MQTT"),
        vec![5, 0x42, 0, 60, 0],
        prefixed(b"id"),
        prefixed(b"pw"),
    ]
    .concat();
    let (result, _) = decode_bytes(&frame(0x10, &body));
    let Ok(Some(Packet::Connect(connect))) = result else {
        panic!("refused: {result:?}");
    };
    assert_eq!(connect.protocol, Protocol::V5);
    assert_eq!(connect.username, None);
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_v5_encodes_the_property_lengths_where_the_standard_puts_them() {
    let packet = connect_packet(Connect {
        keep_alive: 60,
        client_id: "abc".to_owned(),
        ..connect(Protocol::V5)
    });
    assert_eq!(
        &encode(&packet, Protocol::V311)[..],
        b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc"
    );
    // With a will: Will Delay 5 in the will properties between client id and will topic.
    let packet = connect_packet(Connect {
        keep_alive: 60,
        client_id: "abc".to_owned(),
        will: Some(LastWill {
            topic: "w".to_owned(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::from(PropertyValues {
                will_delay_interval: Some(5),
                ..PropertyValues::default()
            }),
        }),
        ..connect(Protocol::V5)
    });
    assert_eq!(
        &encode(&packet, Protocol::V5)[..],
        b"\x10\x1c\x00\x04MQTT\x05\x06\x00\x3c\x00\x00\x03abc\x05\x18\x00\x00\x00\x05\x00\x01w\x00\x01x"
    );
}

fn every_connack_property() -> Properties {
    Properties::from(PropertyValues {
        session_expiry_interval: Some(3600),
        assigned_client_identifier: Some("auto-1".into()),
        server_keep_alive: Some(30),
        authentication_method: Some("none".into()),
        authentication_data: Some(Bytes::from_static(b"\x00")),
        response_information: Some("coolpy7/response/auto-1/".into()),
        server_reference: Some("other:1883".into()),
        reason_string: Some("welcome".into()),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(64),
        maximum_qos: Some(1),
        retain_available: Some(true),
        user_properties: user(&[("node", "a"), ("node", "b")]),
        maximum_packet_size: Some(1 << 20),
        wildcard_subscription_available: Some(true),
        subscription_identifier_available: Some(true),
        shared_subscription_available: Some(false),
        ..PropertyValues::default()
    })
}

#[test]
fn connack_round_trips_with_every_server_property() {
    for session_present in [false, true] {
        for code in [
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::ServerBusy,
            ReasonCode::BadAuthenticationMethod,
        ] {
            round_trip(&Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties: every_connack_property(),
            }));
            round_trip(&Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties: Properties::default(),
            }));
        }
    }
}

#[test]
fn connack_encodings_match_the_standard_byte_for_byte() {
    // Topic Alias Maximum 10: flags, reason, property length 3, 0x22 and a two-byte integer.
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::Success,
        properties: Properties::from(PropertyValues {
            topic_alias_maximum: Some(10),
            ..PropertyValues::default()
        }),
    });
    assert_eq!(
        &round_trip(&connack)[..],
        b"\x20\x06\x00\x00\x03\x22\x00\x0a"
    );
    // Session present, Assigned Client Identifier "ab" and Receive Maximum 5.
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::Success,
        properties: Properties::from(PropertyValues {
            assigned_client_identifier: Some("ab".into()),
            receive_maximum: Some(5),
            ..PropertyValues::default()
        }),
    });
    assert_eq!(
        &round_trip(&connack)[..],
        b"\x20\x0b\x01\x00\x08\x12\x00\x02ab\x21\x00\x05"
    );
    // A refusal without properties still has the (empty) property list.
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::ServerBusy,
        properties: Properties::default(),
    });
    assert_eq!(&round_trip(&connack)[..], b"\x20\x03\x00\x89\x00");
    // To an MQTT 3.1.1 client the same refusal is return code 3 and no properties.
    assert_eq!(&encode(&connack, Protocol::V311)[..], b"\x20\x02\x00\x03");
    let connack = Packet::ConnAck(ConnAck {
        properties: every_connack_property(),
        ..ConnAck {
            session_present: true,
            code: ReasonCode::BadAuthenticationMethod,
            properties: Properties::default(),
        }
    });
    assert_eq!(&encode(&connack, Protocol::V311)[..], b"\x20\x02\x01\x04");
}

#[test]
fn connack_v5_validation() {
    // No property length, an unknown reason code, reserved flags.
    assert_v5_malformed(b"\x20\x02\x00\x00", "CONNACK");
    assert_v5_malformed(b"\x20\x03\x00\x03\x00", "CONNACK");
    assert_v5_malformed(b"\x20\x03\x02\x00\x00", "CONNACK");
    assert_eq!(
        decode_v5(b"\x20\x03\x01\x00\x00"),
        Ok(Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::Success,
            properties: Properties::default(),
        }))
    );
}

// ---------------------------------------------------------------------------------------------
// PUBLISH

fn every_publish_property() -> PropertyValues {
    PropertyValues {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(60),
        content_type: Some("application/json".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01\x02")),
        subscription_identifiers: vec![1, 128, 16_384, 268_435_455, 1],
        user_properties: user(&[("k", "1"), ("k", "2"), ("z", ""), ("k", "3")]),
        ..PropertyValues::default()
    }
}

#[test]
fn publish_round_trips_with_every_message_property() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for dup in [false, qos != QoS::AtMostOnce] {
            for retain in [false, true] {
                // An empty topic with an alias is how a known alias is used.
                for topic in ["sensors/1/temp", ""] {
                    let packet = Packet::Publish(Publish {
                        dup,
                        retain,
                        topic_alias: Some(3),
                        properties: Properties::from(every_publish_property()),
                        ..publish(qos, topic, b"{\"t\":21.5}")
                    });
                    let bytes = round_trip(&packet);
                    let Ok(Packet::Publish(decoded)) = decode_v5(&bytes) else {
                        panic!("not a PUBLISH");
                    };
                    assert_eq!(
                        decoded.properties.user_properties,
                        user(&[("k", "1"), ("k", "2"), ("z", ""), ("k", "3")])
                    );
                    assert_eq!(
                        decoded.properties.subscription_identifiers,
                        [1, 128, 16_384, 268_435_455, 1]
                    );
                }
            }
        }
    }
}

#[test]
fn publish_v5_encodes_its_properties_after_the_packet_id() {
    let packet = Packet::Publish(Publish {
        packet_id: Some(10),
        topic_alias: Some(2),
        properties: Properties::from(PropertyValues {
            payload_format_indicator: Some(true),
            ..PropertyValues::default()
        }),
        ..publish(QoS::AtLeastOnce, "a/b", b"hi")
    });
    assert_eq!(
        &round_trip(&packet)[..],
        b"\x32\x0f\x00\x03a/b\x00\x0a\x05\x01\x01\x23\x00\x02hi"
    );
    // No properties: a zero property length; at 3.1.1 none at all.
    let packet = Packet::Publish(publish(QoS::AtMostOnce, "t", b"p"));
    assert_eq!(&round_trip(&packet)[..], b"\x30\x05\x00\x01t\x00p");
    let with_properties = Packet::Publish(Publish {
        properties: Properties::from(every_publish_property()),
        ..publish(QoS::AtMostOnce, "t", b"p")
    });
    assert_eq!(
        &encode(&with_properties, Protocol::V311)[..],
        b"\x30\x04\x00\x01tp"
    );
}

#[test]
fn publish_v5_with_a_property_list_past_the_packet_is_malformed() {
    // The payload is what follows the properties; a PUBLISH that ends before them is malformed.
    assert_v5_malformed(&frame(0x30, b"\x00\x01t"), "PUBLISH");
    assert_v5_malformed(&frame(0x32, b"\x00\x01t\x00\x01"), "PUBLISH");
    assert_eq!(
        decode_v5(&frame(0x30, b"\x00\x01t\x00")),
        Ok(Packet::Publish(publish(QoS::AtMostOnce, "t", b"")))
    );
}

/// Hand-written properties of a message (Payload Format Indicator 1, User Property k=v), as the
/// router keeps them.
const MESSAGE_PROPERTIES: &[u8] = b"\x01\x01\x26\x00\x01k\x00\x01v";

#[test]
fn encode_publish_v5_matches_the_standard_byte_for_byte() {
    let extras = PublishV5Extras {
        message_expiry: Some(100),
        topic_alias: Some(5),
        subscription_ids: &[1, 200],
        message_properties: MESSAGE_PROPERTIES,
    };
    let mut buf = BytesMut::new();
    encode_publish_v5(
        &mut buf,
        false,
        QoS::AtLeastOnce,
        false,
        b"t",
        0x0102,
        &extras,
        b"xyz",
    )
    .unwrap();
    // Remaining length 31: topic (3), packet id (2), property length (1), properties (22:
    // expiry 5, ids 2 + 3, alias 3, message properties 9), payload (3).
    let expected: &[u8] = b"\x32\x1f\x00\x01t\x01\x02\x16\
        \x02\x00\x00\x00\x64\
        \x0b\x01\x0b\xc8\x01\
        \x23\x00\x05\
        \x01\x01\x26\x00\x01k\x00\x01v\
        xyz";
    assert_eq!(&buf[..], expected);
    assert_eq!(publish_v5_size(QoS::AtLeastOnce, 1, &extras, 3), buf.len());
    assert_eq!(extras.properties_len(), 22);

    // It decodes back to the same fields.
    let expected = Publish {
        packet_id: Some(0x0102),
        topic_alias: Some(5),
        properties: Properties::from(PropertyValues {
            message_expiry_interval: Some(100),
            subscription_identifiers: vec![1, 200],
            payload_format_indicator: Some(true),
            user_properties: user(&[("k", "v")]),
            ..PropertyValues::default()
        }),
        ..publish(QoS::AtLeastOnce, "t", b"xyz")
    };
    assert_eq!(decode_v5(&buf), Ok(Packet::Publish(expected)));

    // Nothing extra: a zero property length, and no packet id at QoS 0.
    let mut buf = BytesMut::new();
    let none = PublishV5Extras::default();
    encode_publish_v5(&mut buf, false, QoS::AtMostOnce, true, b"t", 9, &none, b"").unwrap();
    assert_eq!(&buf[..], b"\x31\x04\x00\x01t\x00");
    assert_eq!(publish_v5_size(QoS::AtMostOnce, 1, &none, 0), buf.len());
}

#[test]
fn publish_v5_size_is_what_encode_publish_v5_writes_across_length_boundaries() {
    let ids = [
        1,
        127,
        128,
        16_383,
        16_384,
        2_097_151,
        2_097_152,
        268_435_455,
    ];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for topic in [&b""[..], b"a/b"] {
            for id_count in [0, 1, ids.len()] {
                // Payloads that put the remaining length on each side of 127 and 16383.
                for payload_len in [0, 90, 100, 120, 130, 16_300, 16_350, 16_400] {
                    let extras = PublishV5Extras {
                        message_expiry: (payload_len % 20 == 0).then_some(7),
                        topic_alias: topic.is_empty().then_some(1),
                        subscription_ids: &ids[..id_count],
                        message_properties: MESSAGE_PROPERTIES,
                    };
                    let payload = vec![0x5a; payload_len];
                    let mut buf = BytesMut::new();
                    encode_publish_v5(&mut buf, false, qos, false, topic, 3, &extras, &payload)
                        .unwrap();
                    assert_eq!(
                        publish_v5_size(qos, topic.len(), &extras, payload_len),
                        buf.len(),
                        "{qos:?} topic {topic:?} {id_count} ids payload {payload_len}"
                    );
                    let Ok(Packet::Publish(decoded)) = decode_v5(&buf) else {
                        panic!("not decoded");
                    };
                    assert_eq!(decoded.payload.len(), payload_len);
                    assert_eq!(decoded.properties.subscription_identifiers, ids[..id_count]);
                    assert_eq!(decoded.topic_alias, extras.topic_alias);
                    assert_eq!(
                        decoded.properties.message_expiry_interval,
                        extras.message_expiry
                    );
                    assert_eq!(decoded.properties.user_properties, user(&[("k", "v")]));
                }
            }
        }
    }
}

#[test]
fn encode_publish_v5_refuses_what_cannot_be_represented_and_writes_nothing() {
    let mut buf = BytesMut::from(&b"kept"[..]);
    let extras = PublishV5Extras::default();
    let long = vec![b't'; 65_536];
    assert_eq!(
        encode_publish_v5(
            &mut buf,
            false,
            QoS::AtMostOnce,
            false,
            &long,
            0,
            &extras,
            b""
        ),
        Err(EncodeError::TooLong {
            field: "PUBLISH topic",
            len: 65_536
        })
    );
    // One byte more than the largest remaining length: topic (3), property length (1), payload.
    let huge = vec![0; MAX_REMAINING_LENGTH - 3];
    assert!(matches!(
        encode_publish_v5(
            &mut buf,
            false,
            QoS::AtMostOnce,
            false,
            b"t",
            0,
            &extras,
            &huge
        ),
        Err(EncodeError::PacketTooLarge { .. })
    ));
    assert_eq!(&buf[..], b"kept");
    // The largest packet fits.
    let mut buf = BytesMut::new();
    encode_publish_v5(
        &mut buf,
        false,
        QoS::AtMostOnce,
        false,
        b"t",
        0,
        &extras,
        &huge[1..],
    )
    .unwrap();
    assert_eq!(buf.len(), 1 + 4 + MAX_REMAINING_LENGTH);
}

// ---------------------------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP

fn ack_packets(ack: Ack) -> [(u8, Packet); 4] {
    [
        (0x40, Packet::PubAck(ack.clone())),
        (0x50, Packet::PubRec(ack.clone())),
        (0x62, Packet::PubRel(ack.clone())),
        (0x70, Packet::PubComp(ack)),
    ]
}

#[test]
fn acks_round_trip_with_reason_and_properties_and_in_their_short_forms() {
    let full = Ack {
        packet_id: 7,
        reason: ReasonCode::UnspecifiedError,
        properties: Properties::from(PropertyValues {
            reason_string: Some("no".into()),
            user_properties: user(&[("a", "b"), ("a", "c")]),
            ..PropertyValues::default()
        }),
    };
    for (first_byte, packet) in ack_packets(full) {
        let expected = [
            &[first_byte, 0x17, 0x00, 0x07, 0x80, 0x13][..],
            b"\x1f\x00\x02no\x26\x00\x01a\x00\x01b\x26\x00\x01a\x00\x01c",
        ]
        .concat();
        assert_eq!(&round_trip(&packet)[..], expected);
        // Below MQTT 5 the reason and properties are not sent.
        assert_eq!(
            &encode(&packet, Protocol::V311)[..],
            [first_byte, 0x02, 0x00, 0x07]
        );
    }
    // Success without properties: remaining length 2.
    for (first_byte, packet) in ack_packets(Ack::new(7)) {
        assert_eq!(&round_trip(&packet)[..], [first_byte, 0x02, 0x00, 0x07]);
    }
    // A reason without properties: remaining length 3.
    for (first_byte, packet) in ack_packets(Ack::with_reason(7, ReasonCode::NoMatchingSubscribers))
    {
        assert_eq!(
            &round_trip(&packet)[..],
            [first_byte, 0x03, 0x00, 0x07, 0x10]
        );
    }
    // Success with properties keeps the reason byte.
    let success_with_properties = Ack {
        properties: Properties::from(PropertyValues {
            reason_string: Some("ok".into()),
            ..PropertyValues::default()
        }),
        ..Ack::new(7)
    };
    for (first_byte, packet) in ack_packets(success_with_properties) {
        assert_eq!(
            &round_trip(&packet)[..],
            [
                &[first_byte, 0x09, 0x00, 0x07, 0x00, 0x05][..],
                b"\x1f\x00\x02ok"
            ]
            .concat()
        );
    }
}

#[test]
fn acks_decode_every_short_form() {
    for (first_byte, packet) in ack_packets(Ack::new(7)) {
        // Remaining length 2, 3 (reason 0) and 4 (reason 0, empty property list).
        for body in [&b"\x00\x07"[..], b"\x00\x07\x00", b"\x00\x07\x00\x00"] {
            assert_eq!(decode_v5(&frame(first_byte, body)), Ok(packet.clone()));
        }
    }
    for (first_byte, packet) in
        ack_packets(Ack::with_reason(7, ReasonCode::PacketIdentifierNotFound))
    {
        for body in [&b"\x00\x07\x92"[..], b"\x00\x07\x92\x00"] {
            assert_eq!(decode_v5(&frame(first_byte, body)), Ok(packet.clone()));
        }
        // Too short for a packet id, an unknown reason code, bytes after the properties.
        let name = packet.name();
        assert_v5_malformed(&[first_byte, 0x00], name);
        assert_v5_malformed(&[first_byte, 0x01, 0x00], name);
        assert_v5_malformed(&frame(first_byte, b"\x00\x07\x03"), name);
        assert_v5_malformed(&frame(first_byte, b"\x00\x07\x00\x00\x00"), name);
    }
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK

#[test]
fn subscribe_options_round_trip_in_their_bits() {
    let retain_handlings = [
        (RetainHandling::OnSubscribe, 0),
        (RetainHandling::OnNewSubscription, 1),
        (RetainHandling::Never, 2),
    ];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for no_local in [false, true] {
            for retain_as_published in [false, true] {
                for (retain_handling, rh_bits) in retain_handlings {
                    let options = SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling,
                    };
                    let packet = Packet::Subscribe(Subscribe {
                        packet_id: 1,
                        filters: vec![("a/#".to_owned(), options)],
                        properties: Properties::default(),
                    });
                    let byte = qos.as_u8()
                        | u8::from(no_local) << 2
                        | u8::from(retain_as_published) << 3
                        | rh_bits << 4;
                    assert_eq!(
                        &round_trip(&packet)[..],
                        [&b"\x82\x09\x00\x01\x00\x00\x03a/#"[..], &[byte]].concat()
                    );
                    // MQTT 3.1.1 has only the QoS.
                    assert_eq!(encode(&packet, Protocol::V311).last(), Some(&qos.as_u8()));
                }
            }
        }
    }
}

#[test]
fn subscribe_round_trips_with_its_properties() {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::Never,
    };
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("a/#".to_owned(), options)],
        properties: Properties::from(PropertyValues {
            subscription_identifiers: vec![42],
            ..PropertyValues::default()
        }),
    });
    assert_eq!(
        &round_trip(&packet)[..],
        b"\x82\x0b\x00\x01\x02\x0b\x2a\x00\x03a/#\x2d"
    );
    round_trip(&Packet::Subscribe(Subscribe {
        packet_id: 0xffff,
        filters: vec![
            ("a/#".to_owned(), options),
            (
                "$share/g/b".to_owned(),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            ),
        ],
        properties: Properties::from(PropertyValues {
            subscription_identifiers: vec![268_435_455],
            user_properties: user(&[("x", "1"), ("x", "1")]),
            ..PropertyValues::default()
        }),
    }));
}

#[test]
fn subscribe_v5_reserved_option_bits_are_malformed_and_retain_handling_3_and_qos_3_protocol_errors()
{
    let subscribe =
        |options: u8| frame(0x82, &[&b"\x00\x01\x00\x00\x01a"[..], &[options]].concat());
    for options in [0x40, 0x80, 0xc0, 0x41] {
        assert_v5_malformed(&subscribe(options), "SUBSCRIBE");
    }
    // §3.8.3.1: QoS 3 and Retain Handling 3 are Protocol Errors.
    for options in [0x30, 0x31, 0x3f, 0x03, 0x2f] {
        decode_v5_err(&subscribe(options), ReasonCode::ProtocolError);
    }
    let err = decode_v5_err(&subscribe(0x30), ReasonCode::ProtocolError);
    assert_eq!(
        err,
        DecodeError::Protocol {
            packet: "SUBSCRIBE",
            reason: "retain handling 3 is reserved"
        }
    );
    // Every other combination of the six option bits decodes.
    for options in 0..0x30u8 {
        if options & 0b11 == 3 {
            continue;
        }
        assert!(decode_v5(&subscribe(options)).is_ok(), "{options:#04x}");
    }
    // At MQTT 3.1.1 the same bits are reserved.
    for options in [0x04, 0x08, 0x10, 0x20] {
        let (result, _) = decode_bytes_as(&subscribe(options)[..], Some(Protocol::V311));
        // The 3.1.1 body has no property length: the 0x00 byte is read as the filter length.
        assert!(result.is_err(), "{options:#04x}");
    }
}

#[test]
fn subscribe_with_two_subscription_identifiers_is_a_protocol_error() {
    assert_v5_protocol_error(
        &frame(0x82, b"\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00"),
        "SUBSCRIBE",
        "more than one subscription identifier",
    );
    assert_v5_protocol_error(
        &frame(0x82, b"\x00\x01\x02\x0b\x00\x00\x01a\x00"),
        "SUBSCRIBE",
        "subscription identifier 0",
    );
}

#[test]
fn suback_and_unsuback_carry_reason_codes() {
    let codes = vec![
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::GrantedQoS2,
        ReasonCode::UnspecifiedError,
        ReasonCode::ImplementationSpecificError,
        ReasonCode::NotAuthorized,
        ReasonCode::TopicFilterInvalid,
        ReasonCode::PacketIdentifierInUse,
        ReasonCode::QuotaExceeded,
        ReasonCode::SharedSubscriptionsNotSupported,
        ReasonCode::SubscriptionIdentifiersNotSupported,
        ReasonCode::WildcardSubscriptionsNotSupported,
    ];
    let properties = Properties::from(PropertyValues {
        reason_string: Some("partly".into()),
        user_properties: user(&[("a", "1")]),
        ..PropertyValues::default()
    });
    round_trip(&Packet::SubAck(SubAck {
        packet_id: 5,
        reason_codes: codes.clone(),
        properties: properties.clone(),
    }));
    round_trip(&Packet::UnsubAck(UnsubAck {
        packet_id: 5,
        reason_codes: vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::NotAuthorized,
        ],
        properties,
    }));

    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::QuotaExceeded],
        properties: Properties::default(),
    });
    assert_eq!(&round_trip(&suback)[..], b"\x90\x05\x00\x01\x00\x01\x97");
    // To an MQTT 3.1.1 client every failure is 0x80.
    assert_eq!(
        &encode(&suback, Protocol::V311)[..],
        b"\x90\x04\x00\x01\x01\x80"
    );
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 2,
        reason_codes: vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::TopicFilterInvalid,
        ],
        properties: Properties::default(),
    });
    assert_eq!(
        &round_trip(&unsuback)[..],
        b"\xb0\x06\x00\x02\x00\x00\x11\x8f"
    );
    // MQTT 3.1.1 UNSUBACK has no reason codes.
    assert_eq!(&encode(&unsuback, Protocol::V311)[..], b"\xb0\x02\x00\x02");
}

#[test]
fn suback_and_unsuback_v5_validation() {
    // Unknown reason codes, no reason codes.
    for code in [0x03, 0x7f, 0xa3, 0xff] {
        assert_v5_malformed(&frame(0x90, &[0, 1, 0, code]), "SUBACK");
        assert_v5_malformed(&frame(0xb0, &[0, 1, 0, code]), "UNSUBACK");
    }
    assert_v5_malformed(b"\x90\x03\x00\x01\x00", "SUBACK");
    assert_v5_malformed(b"\xb0\x03\x00\x01\x00", "UNSUBACK");
    assert_v5_malformed(b"\xb0\x02\x00\x01", "UNSUBACK");
}

#[test]
fn unsubscribe_v5_round_trips_with_user_properties() {
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["x".to_owned()],
        properties: Properties::default(),
    });
    assert_eq!(&round_trip(&packet)[..], b"\xa2\x06\x00\x02\x00\x00\x01x");
    round_trip(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        filters: vec!["a/+".to_owned(), "#".to_owned()],
        properties: Properties::from(PropertyValues {
            user_properties: user(&[("why", "done"), ("why", "bye")]),
            ..PropertyValues::default()
        }),
    }));
    // No filters after the properties.
    assert_v5_malformed(b"\xa2\x03\x00\x02\x00", "UNSUBSCRIBE");
}

// ---------------------------------------------------------------------------------------------
// DISCONNECT and AUTH

#[test]
fn disconnect_v5_round_trips_and_uses_its_short_forms() {
    assert_eq!(&round_trip(&disconnect())[..], b"\xe0\x00");
    let with_will = Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill));
    assert_eq!(&round_trip(&with_will)[..], b"\xe0\x01\x04");
    let full = Packet::Disconnect(Disconnect {
        reason: ReasonCode::SessionTakenOver,
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(0),
            reason_string: Some("taken over".into()),
            server_reference: Some("node-2".into()),
            user_properties: user(&[("a", "1"), ("a", "0")]),
            ..PropertyValues::default()
        }),
    });
    round_trip(&full);
    let expiry = Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(60),
            ..PropertyValues::default()
        }),
    });
    assert_eq!(
        &round_trip(&expiry)[..],
        b"\xe0\x07\x00\x05\x11\x00\x00\x00\x3c"
    );
    // MQTT 3.1.1 DISCONNECT is empty whatever the reason.
    for packet in [with_will, full, expiry] {
        assert_eq!(&encode(&packet, Protocol::V311)[..], b"\xe0\x00");
    }
}

#[test]
fn disconnect_v5_decodes_every_short_form() {
    let cases: &[(&[u8], ReasonCode)] = &[
        (b"\xe0\x00", ReasonCode::Success),
        (b"\xe0\x01\x00", ReasonCode::Success),
        (b"\xe0\x02\x00\x00", ReasonCode::Success),
        (b"\xe0\x01\x04", ReasonCode::DisconnectWithWill),
        (b"\xe0\x02\x8e\x00", ReasonCode::SessionTakenOver),
    ];
    for &(bytes, reason) in cases {
        assert_eq!(
            decode_v5(bytes),
            Ok(Packet::Disconnect(Disconnect::new(reason)))
        );
    }
    // An unknown reason code; bytes after the properties.
    assert_v5_malformed(b"\xe0\x01\x03", "DISCONNECT");
    assert_v5_malformed(b"\xe0\x03\x00\x00\x00", "DISCONNECT");
    // At MQTT 3.1.1 a DISCONNECT has no body, refused from the header.
    assert!(matches!(
        decode_bytes_as(b"\xe0\x01\x04", Some(Protocol::V311)).0,
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn auth_round_trips_at_v5() {
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties::from(PropertyValues {
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"\x00\x01\xfe")),
            reason_string: Some("step 2".into()),
            user_properties: user(&[("u", "1"), ("u", "2")]),
            ..PropertyValues::default()
        }),
    });
    round_trip(&auth);
    let reauthenticate = Packet::Auth(Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: Properties::default(),
    });
    assert_eq!(&round_trip(&reauthenticate)[..], b"\xf0\x01\x19");
    let success = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(&round_trip(&success)[..], b"\xf0\x00");
    assert_eq!(decode_v5(b"\xf0\x02\x00\x00"), Ok(success));
    assert_v5_malformed(b"\xf0\x01\x05", "AUTH");
    assert!(matches!(
        decode_v5(b"\xf1\x00"),
        Err(DecodeError::InvalidFlags {
            packet: "AUTH",
            flags: 1
        })
    ));
}

#[test]
fn auth_is_a_reserved_packet_type_below_v5() {
    for protocol in [None, Some(Protocol::V31), Some(Protocol::V311)] {
        let (result, rest) = decode_bytes_as(b"\xf0\x00", protocol);
        assert_eq!(
            result,
            Err(DecodeError::ReservedPacketType(15)),
            "{protocol:?}"
        );
        assert_eq!(
            result.unwrap_err().reason_code(),
            ReasonCode::MalformedPacket
        );
        assert_eq!(
            &rest[..],
            b"\xf0\x00",
            "header errors leave the buffer alone"
        );
        assert_eq!(
            peek_fixed_header(b"\xf0\x00", protocol),
            Err(DecodeError::ReservedPacketType(15))
        );
    }
    let header = peek_fixed_header(b"\xf0\x00", Some(Protocol::V5))
        .expect("AUTH at MQTT 5")
        .expect("complete");
    assert_eq!((header.name(), header.packet_size), ("AUTH", Some(2)));
    // And the encoder refuses to write one for an older client.
    let mut buf = BytesMut::from(&b"kept"[..]);
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert!(matches!(
        auth.encode(Protocol::V311, &mut buf),
        Err(EncodeError::Inconsistent { packet: "AUTH", .. })
    ));
    assert_eq!(&buf[..], b"kept");
}

// ---------------------------------------------------------------------------------------------
// Fixed header, streams, reason codes

#[test]
fn only_pingreq_and_pingresp_have_a_fixed_size_at_v5() {
    for first_byte in [0x20, 0x40, 0x50, 0x62, 0x70, 0xb0, 0xe0] {
        let header = peek_fixed_header(&[first_byte, 0x7f], Some(Protocol::V5))
            .expect("a variable size at MQTT 5")
            .expect("complete");
        assert_eq!(header.packet_size, Some(129));
        assert!(peek_fixed_header(&[first_byte, 0x7f], Some(Protocol::V311)).is_err());
    }
    for bytes in [&b"\xc0\x01\x00"[..], b"\xd0\x01\x00"] {
        assert_v5_malformed(
            bytes,
            ["PINGREQ", "PINGRESP"][usize::from(bytes[0] == 0xd0)],
        );
    }
    assert_eq!(decode_v5(b"\xc0\x00"), Ok(Packet::PingReq));
    assert_eq!(decode_v5(b"\xd0\x00"), Ok(Packet::PingResp));
}

#[test]
fn a_v5_session_decodes_packet_after_packet_fed_byte_by_byte() {
    let packets = vec![
        Packet::Publish(Publish {
            properties: Properties::from(every_publish_property()),
            ..publish(QoS::ExactlyOnce, "a", b"1")
        }),
        Packet::PubRel(Ack::with_reason(7, ReasonCode::PacketIdentifierNotFound)),
        Packet::PubAck(Ack::new(8)),
        Packet::Auth(Auth {
            reason: ReasonCode::ReAuthenticate,
            properties: Properties::default(),
        }),
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
    ];
    let mut bytes = BytesMut::new();
    for packet in &packets {
        packet.encode(Protocol::V5, &mut bytes).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in &bytes[..] {
        buf.extend_from_slice(&[byte]);
        if let Some(packet) = decode(&mut buf, Some(Protocol::V5), NO_LIMIT).unwrap() {
            decoded.push(packet);
        }
    }
    assert_eq!(decoded, packets);
    assert!(buf.is_empty());
}

#[test]
fn unsupported_levels_are_reason_0x84_and_limits_0x95() {
    let body = connect_body_with(b"MQTT", 6, 0x02, &[b"id"]);
    let err = decode_err(&frame(0x10, &body));
    assert_eq!(
        err,
        DecodeError::UnsupportedProtocol {
            name: "MQTT".into(),
            level: 6
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    let mut buf = BytesMut::from(&b"\xe0\x7f"[..]);
    let err = decode(&mut buf, Some(Protocol::V5), 100).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 129,
            limit: 100
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn every_decode_error_maps_to_the_reason_code_the_standard_gives_it() {
    let cases = [
        (
            DecodeError::PacketTooLarge { size: 2, limit: 1 },
            ReasonCode::PacketTooLarge,
        ),
        (DecodeError::MalformedLength, ReasonCode::MalformedPacket),
        (
            DecodeError::ReservedPacketType(0),
            ReasonCode::MalformedPacket,
        ),
        (
            DecodeError::InvalidFlags {
                packet: "PUBREL",
                flags: 0,
            },
            ReasonCode::MalformedPacket,
        ),
        (
            DecodeError::UnsupportedProtocol {
                name: "MQTT".into(),
                level: 6,
            },
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            DecodeError::Malformed {
                packet: "PUBLISH",
                reason: "x",
            },
            ReasonCode::MalformedPacket,
        ),
        (
            DecodeError::InvalidUtf8("topic"),
            ReasonCode::MalformedPacket,
        ),
        (
            DecodeError::Protocol {
                packet: "CONNECT",
                reason: "x",
            },
            ReasonCode::ProtocolError,
        ),
    ];
    for (err, reason) in cases {
        assert_eq!(err.reason_code(), reason, "{err}");
    }
}

#[test]
fn reason_codes_are_exactly_the_standards_values() {
    // §2.4: the values MQTT 5 defines.
    let defined: &[u8] = &[
        0x00, 0x01, 0x02, 0x04, 0x10, 0x11, 0x18, 0x19, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
        0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
        0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2,
    ];
    for byte in 0..=u8::MAX {
        match ReasonCode::from_u8(byte) {
            Some(code) => {
                assert!(defined.contains(&byte), "{byte:#04x} is not defined");
                assert_eq!(code.as_u8(), byte);
                assert_eq!(code.is_failure(), byte >= 0x80);
            }
            None => assert!(!defined.contains(&byte), "{byte:#04x} is defined"),
        }
    }
    // MQTT 3.1.1 CONNACK return codes (§3.2.2.3 of 3.1.1) both ways.
    for value in 0..=5u8 {
        let code = ReasonCode::from_v3_connack(value).expect("defined in 3.1.1");
        assert_eq!(code.v3_connack(), value);
    }
    assert_eq!(ReasonCode::from_v3_connack(6), None);
    assert_eq!(ReasonCode::ServerBusy.v3_connack(), 0x03);
    assert_eq!(ReasonCode::BadAuthenticationMethod.v3_connack(), 0x04);
    assert_eq!(ReasonCode::Banned.v3_connack(), 0x05);
    assert_eq!(ReasonCode::GrantedQoS2.v3_suback(), 0x02);
    assert_eq!(ReasonCode::QuotaExceeded.v3_suback(), 0x80);
}

#[test]
fn a_publish_with_only_a_topic_alias_decodes_like_any_other() {
    // PUBLISH QoS 0, empty topic, properties [Topic Alias 5], payload "hi": the fast path.
    let alone = decode_v5(b"\x30\x08\x00\x00\x03\x23\x00\x05hi");
    let Ok(Packet::Publish(publish)) = alone else {
        panic!("{alone:?}");
    };
    assert_eq!(publish.topic_alias, Some(5));
    assert!(publish.properties.is_empty());
    assert_eq!(&publish.payload[..], b"hi");
    // With another property after it: the general loop, same alias.
    let mixed = decode_v5(b"\x30\x0a\x00\x00\x05\x23\x00\x05\x01\x01hi");
    let Ok(Packet::Publish(publish)) = mixed else {
        panic!("{mixed:?}");
    };
    assert_eq!(publish.topic_alias, Some(5));
    assert_eq!(publish.properties.payload_format_indicator, Some(true));
    assert_eq!(&publish.payload[..], b"hi");
    // Twice is still refused.
    assert!(decode_v5(b"\x30\x0b\x00\x00\x06\x23\x00\x05\x23\x00\x06hi").is_err());
}
