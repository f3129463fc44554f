//! MQTT 3.1 and 3.1.1: round trips, incremental input and buffer handling, and one test per
//! validation rule with handcrafted bytes. These are the tests from before MQTT 5 with the packet
//! types of the MQTT 5 codec; what they check is unchanged.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::encode::remaining_length_len;

// ---------------------------------------------------------------------------------------------
// Round trips

fn sample_packets() -> Vec<Packet> {
    vec![
        connect_packet(connect(Protocol::V311)),
        connect_packet(connect(Protocol::V31)),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::Success,
            properties: Properties::default(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
        Packet::Publish(publish(QoS::AtMostOnce, "a/b", b"hello")),
        Packet::Publish(publish(QoS::AtLeastOnce, "a/b", b"")),
        Packet::Publish(publish(QoS::ExactlyOnce, "", b"\x00\xff")),
        Packet::PubAck(Ack::new(1)),
        Packet::PubRec(Ack::new(0x1234)),
        Packet::PubRel(Ack::new(u16::MAX)),
        Packet::PubComp(Ack::new(42)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                (
                    "a/+/c".to_owned(),
                    SubscriptionOptions::qos(QoS::AtMostOnce),
                ),
                ("#".to_owned(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (
                    "sport/tennis/ü".to_owned(),
                    SubscriptionOptions::qos(QoS::ExactlyOnce),
                ),
                (
                    "bad/#/filter".to_owned(),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                ),
            ],
            properties: Properties::default(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![
                ReasonCode::granted(QoS::AtMostOnce),
                ReasonCode::UnspecifiedError,
                ReasonCode::granted(QoS::AtLeastOnce),
                ReasonCode::granted(QoS::ExactlyOnce),
                ReasonCode::UnspecifiedError,
            ],
            properties: Properties::default(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/+/c".to_owned(), "#".to_owned()],
            properties: Properties::default(),
        }),
        unsuback(11),
        Packet::PingReq,
        Packet::PingResp,
        disconnect(),
    ]
}

#[test]
fn every_packet_type_round_trips() {
    for packet in sample_packets() {
        assert_round_trip(&packet, Protocol::V311);
        if !matches!(packet, Packet::ConnAck(_)) {
            assert_round_trip(&packet, Protocol::V31);
        }
    }
}

#[test]
fn connect_round_trips_with_every_optional_field_combination() {
    for protocol in [Protocol::V31, Protocol::V311] {
        for with_will in [false, true] {
            for with_username in [false, true] {
                // A password requires a user name.
                for with_password in [false, with_username] {
                    for clean_session in [false, true] {
                        let packet = connect_packet(Connect {
                            clean_session,
                            keep_alive: 0xbeef,
                            client_id: if clean_session {
                                String::new()
                            } else {
                                "id".into()
                            },
                            will: with_will.then(|| LastWill {
                                topic: "will/topic".to_owned(),
                                payload: Bytes::from_static(b"gone\x00"),
                                qos: QoS::ExactlyOnce,
                                retain: true,
                                properties: Properties::default(),
                            }),
                            username: with_username.then(|| "user".to_owned()),
                            password: with_password.then(|| Bytes::from_static(b"\xffpass")),
                            ..connect(protocol)
                        });
                        assert_round_trip(&packet, protocol);
                    }
                }
            }
        }
    }
}

#[test]
fn connect_encodes_its_own_protocol_name_and_level() {
    let bytes = encode(&connect_packet(connect(Protocol::V31)), Protocol::V311);
    assert_eq!(&bytes[2..11], b"\x00\x06MQIsdp\x03");
    let bytes = encode(&connect_packet(connect(Protocol::V311)), Protocol::V31);
    assert_eq!(&bytes[2..9], b"\x00\x04MQTT\x04");
}

#[test]
fn will_qos_and_retain_round_trip() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for retain in [false, true] {
            let packet = connect_packet(Connect {
                will: Some(LastWill {
                    topic: "w".to_owned(),
                    payload: Bytes::new(),
                    qos,
                    retain,
                    properties: Properties::default(),
                }),
                ..connect(Protocol::V311)
            });
            assert_round_trip(&packet, Protocol::V311);
        }
    }
}

#[test]
fn publish_round_trips_at_every_qos_with_dup_and_retain() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for dup in [false, true] {
            if dup && qos == QoS::AtMostOnce {
                continue;
            }
            for retain in [false, true] {
                let packet = Packet::Publish(Publish {
                    dup,
                    retain,
                    ..publish(qos, "sensors/+/temp#", b"21.5")
                });
                assert_round_trip(&packet, Protocol::V311);
                assert_round_trip(&packet, Protocol::V31);
            }
        }
    }
}

#[test]
fn encodings_match_the_specification_byte_for_byte() {
    let connect = connect_packet(Connect {
        keep_alive: 60,
        client_id: "abc".to_owned(),
        ..connect(Protocol::V311)
    });
    assert_eq!(
        &encode(&connect, Protocol::V311)[..],
        b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc"
    );

    let publish = Packet::Publish(Publish {
        packet_id: Some(10),
        retain: true,
        ..publish(QoS::AtLeastOnce, "a/b", b"hi")
    });
    assert_eq!(
        &encode(&publish, Protocol::V311)[..],
        b"\x33\x09\x00\x03a/b\x00\x0ahi"
    );

    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("a/#".to_owned(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
        properties: Properties::default(),
    });
    assert_eq!(
        &encode(&subscribe, Protocol::V311)[..],
        b"\x82\x08\x00\x01\x00\x03a/#\x01"
    );

    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![
            ReasonCode::granted(QoS::AtLeastOnce),
            ReasonCode::UnspecifiedError,
        ],
        properties: Properties::default(),
    });
    assert_eq!(
        &encode(&suback, Protocol::V311)[..],
        b"\x90\x04\x00\x01\x01\x80"
    );

    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::ClientIdentifierNotValid,
        properties: Properties::default(),
    });
    assert_eq!(&encode(&connack, Protocol::V311)[..], b"\x20\x02\x01\x02");
    assert_eq!(
        &encode(&Packet::PubRel(Ack::new(0x0102)), Protocol::V311)[..],
        b"\x62\x02\x01\x02"
    );
    assert_eq!(
        &encode(
            &Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["x".to_owned()],
                properties: Properties::default(),
            }),
            Protocol::V311
        )[..],
        b"\xa2\x05\x00\x02\x00\x01x"
    );
    assert_eq!(&encode(&Packet::PingReq, Protocol::V311)[..], b"\xc0\x00");
    assert_eq!(&encode(&Packet::PingResp, Protocol::V311)[..], b"\xd0\x00");
    assert_eq!(&encode(&disconnect(), Protocol::V311)[..], b"\xe0\x00");
}

#[test]
fn connack_to_a_v31_client_has_no_session_present_flag() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(&encode(&connack, Protocol::V31)[..], b"\x20\x02\x00\x00");
}

#[test]
fn remaining_length_boundaries_round_trip() {
    // Remaining length of a QoS 0 PUBLISH with topic "t" is 3 + payload length.
    for remaining_length in [0x7f, 0x80, 0x3fff, 0x4000, 0x1f_ffff, 0x20_0000] {
        let packet = Packet::Publish(publish(
            QoS::AtMostOnce,
            "t",
            &vec![0xa5; remaining_length - 3],
        ));
        let bytes = encode(&packet, Protocol::V311);
        let header_len = 1 + remaining_length_len(remaining_length);
        assert_eq!(bytes.len(), header_len + remaining_length);
        assert_round_trip(&packet, Protocol::V311);
    }
    assert_eq!(remaining_length_len(0), 1);
    assert_eq!(remaining_length_len(MAX_REMAINING_LENGTH), 4);
}

#[test]
fn encode_reserves_exactly_once() {
    let packet = Packet::Publish(publish(QoS::AtLeastOnce, "a/b", &[1; 300]));
    let mut buf = BytesMut::new();
    packet.encode(Protocol::V311, &mut buf).unwrap();
    assert_eq!(buf.len(), 1 + 2 + 2 + 3 + 2 + 300);
    // Appending keeps what is already there.
    packet.encode(Protocol::V311, &mut buf).unwrap();
    assert_eq!(buf.len(), 2 * 310);
    let (packets, end) = drain(&buf, None, NO_LIMIT);
    assert_eq!(packets, vec![packet.clone(), packet]);
    assert_eq!(end, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Incremental input and buffer handling

#[test]
fn decodes_a_packet_fed_byte_by_byte() {
    for packet in sample_packets() {
        let bytes = encode(&packet, Protocol::V311);
        let mut buf = BytesMut::new();
        for (index, &byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            let result = decode(&mut buf, None, NO_LIMIT);
            if index + 1 < bytes.len() {
                assert_eq!(
                    result,
                    Ok(None),
                    "{} after {} bytes",
                    packet.name(),
                    index + 1
                );
                assert_eq!(&buf[..], &bytes[..=index], "buffer touched");
            } else {
                assert_eq!(result, Ok(Some(packet.clone())));
                assert!(buf.is_empty());
            }
        }
    }
}

#[test]
fn empty_buffer_needs_more() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf, None, NO_LIMIT), Ok(None));
    assert_eq!(decode(&mut buf, Some(Protocol::V31), 0), Ok(None));
}

#[test]
fn two_packets_in_one_buffer_decode_one_after_the_other() {
    let first = Packet::Publish(publish(QoS::AtLeastOnce, "a", b"1"));
    let second = Packet::PingReq;
    let mut buf = encode(&first, Protocol::V311);
    buf.extend_from_slice(&encode(&second, Protocol::V311));
    buf.extend_from_slice(&[0x30]); // the start of a third packet

    assert_eq!(decode(&mut buf, None, NO_LIMIT), Ok(Some(first)));
    assert_eq!(decode(&mut buf, None, NO_LIMIT), Ok(Some(second)));
    assert_eq!(decode(&mut buf, None, NO_LIMIT), Ok(None));
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn publish_topic_and_payload_are_slices_of_the_read_buffer() {
    let bytes = encode(
        &Packet::Publish(publish(QoS::AtMostOnce, "topic", b"payload")),
        Protocol::V311,
    );
    let mut buf = bytes.clone();
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Packet::Publish(decoded))) = decode(&mut buf, None, NO_LIMIT) else {
        panic!("not a PUBLISH");
    };
    for slice in [&decoded.topic, &decoded.payload] {
        let pointer = slice.as_ptr() as usize;
        assert!(pointer >= start && pointer + slice.len() <= end, "copied");
    }
}

#[test]
fn non_minimal_remaining_length_is_accepted() {
    let (result, rest) = decode_bytes(&[0xc0, 0x80, 0x00]);
    assert_eq!(result, Ok(Some(Packet::PingReq)));
    assert!(rest.is_empty());
    let (result, _) = decode_bytes(&[0x40, 0x82, 0x80, 0x80, 0x00, 0x00, 0x05]);
    assert_eq!(result, Ok(Some(Packet::PubAck(Ack::new(5)))));
}

#[test]
fn the_largest_remaining_length_is_accepted_from_the_header() {
    let bytes = [0x30, 0xff, 0xff, 0xff, 0x7f];
    let (result, rest) = decode_bytes(&bytes);
    assert_eq!(result, Ok(None));
    assert_eq!(&rest[..], &bytes);
}

// ---------------------------------------------------------------------------------------------
// Fixed header rejections

#[test]
fn reserved_packet_types_are_rejected_from_the_first_byte() {
    for (byte, packet_type) in [(0x00, 0), (0x0f, 0), (0xf0, 15), (0xff, 15)] {
        let (result, rest) = decode_bytes(&[byte]);
        assert_eq!(result, Err(DecodeError::ReservedPacketType(packet_type)));
        assert_eq!(rest.len(), 1, "header errors leave the buffer alone");
    }
}

#[test]
fn invalid_fixed_header_flags_are_rejected() {
    let cases: &[(u8, &str)] = &[
        (0x11, "CONNECT"),
        (0x28, "CONNACK"),
        (0x42, "PUBACK"),
        (0x51, "PUBREC"),
        (0x60, "PUBREL"),
        (0x63, "PUBREL"),
        (0x72, "PUBCOMP"),
        (0x80, "SUBSCRIBE"),
        (0x83, "SUBSCRIBE"),
        (0x92, "SUBACK"),
        (0xa0, "UNSUBSCRIBE"),
        (0xa6, "UNSUBSCRIBE"),
        (0xb2, "UNSUBACK"),
        (0xc1, "PINGREQ"),
        (0xd2, "PINGRESP"),
        (0xe4, "DISCONNECT"),
    ];
    for &(byte, name) in cases {
        for protocol in [None, Some(Protocol::V31), Some(Protocol::V311)] {
            let (result, _) = decode_bytes_as(&[byte, 0x02, 0x00, 0x01], protocol);
            assert_eq!(
                result,
                Err(DecodeError::InvalidFlags {
                    packet: name,
                    flags: byte & 0x0f
                }),
                "{byte:#04x} as {protocol:?}"
            );
        }
    }
}

#[test]
fn malformed_remaining_length_is_rejected() {
    // A continuation bit on the fourth length byte, with and without a fifth byte present.
    assert_eq!(
        decode_err(&[0x30, 0xff, 0xff, 0xff, 0xff]),
        DecodeError::MalformedLength
    );
    assert_eq!(
        decode_err(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
        DecodeError::MalformedLength
    );
    assert_eq!(
        decode_err(&[0xc0, 0x80, 0x80, 0x80, 0x80, 0x00]),
        DecodeError::MalformedLength
    );
    // Three continuation bytes are just an incomplete header.
    assert_eq!(decode_bytes(&[0x30, 0xff, 0xff, 0xff]).0, Ok(None));
}

#[test]
fn oversize_packet_is_refused_from_its_header_alone() {
    // Headers of 2 to 5 bytes with nothing of the body present.
    let cases: &[(&[u8], usize)] = &[
        (&[0x30, 0x7f], 2 + 127),
        (&[0x30, 0x80, 0x01], 3 + 128),
        (&[0x82, 0xff, 0xff, 0x03], 4 + 65_535),
        (&[0x10, 0xff, 0xff, 0xff, 0x7f], 5 + MAX_REMAINING_LENGTH),
    ];
    for &(header, size) in cases {
        let limit = 100;
        let mut buf = BytesMut::from(header);
        assert_eq!(
            decode(&mut buf, None, limit),
            Err(DecodeError::PacketTooLarge { size, limit })
        );
        assert_eq!(&buf[..], header);
    }
}

#[test]
fn size_limit_includes_the_fixed_header_and_is_inclusive() {
    let bytes = encode(
        &Packet::Publish(publish(QoS::AtMostOnce, "t", b"12345")),
        Protocol::V311,
    );
    let size = bytes.len();
    let mut buf = bytes.clone();
    assert!(matches!(decode(&mut buf, None, size), Ok(Some(_))));
    let mut buf = bytes.clone();
    assert_eq!(
        decode(&mut buf, None, size - 1),
        Err(DecodeError::PacketTooLarge {
            size,
            limit: size - 1
        })
    );
}

#[test]
fn fixed_size_packets_with_a_wrong_length_are_refused_from_the_header() {
    for header in [
        &[0x40, 0x03][..],
        &[0x50, 0x01],
        &[0x62, 0x00],
        &[0x70, 0x04],
        &[0xb0, 0x7f],
        &[0x20, 0x03],
        &[0xc0, 0x01],
        &[0xd0, 0x02],
        &[0xe0, 0x80, 0x80, 0x01],
    ] {
        assert!(
            matches!(decode_err(header), DecodeError::Malformed { .. }),
            "{header:02x?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PUBLISH rejections

#[test]
fn publish_with_qos_3_is_malformed() {
    for byte in [0x36, 0x37, 0x3e, 0x3f] {
        assert_malformed(&frame(byte, b"\x00\x01a\x00\x01"), "PUBLISH");
        assert_malformed(&[byte], "PUBLISH");
    }
}

#[test]
fn publish_with_dup_at_qos_0_is_malformed() {
    assert_malformed(&frame(0x38, b"\x00\x01a"), "PUBLISH");
    assert_malformed(&frame(0x39, b"\x00\x01a"), "PUBLISH");
}

#[test]
fn publish_with_packet_id_0_is_malformed() {
    assert_malformed(&frame(0x32, b"\x00\x01a\x00\x00payload"), "PUBLISH");
    assert_malformed(&frame(0x34, b"\x00\x01a\x00\x00"), "PUBLISH");
}

#[test]
fn publish_missing_its_packet_id_is_malformed() {
    assert_malformed(&frame(0x32, b"\x00\x01a"), "PUBLISH");
    assert_malformed(&frame(0x32, b"\x00\x01a\x01"), "PUBLISH");
}

#[test]
fn publish_topic_must_be_utf8_without_nul() {
    for topic in [&b"\xff"[..], b"a\xc3", b"\xed\xa0\x80", b"a\x00b", b"\x00"] {
        let body = [prefixed(topic), b"payload".to_vec()].concat();
        assert_eq!(
            decode_err(&frame(0x30, &body)),
            DecodeError::InvalidUtf8("PUBLISH topic"),
            "{topic:02x?}"
        );
    }
}

#[test]
fn publish_topic_running_past_the_packet_is_malformed() {
    assert_malformed(&frame(0x30, b"\x00\x0aabc"), "PUBLISH");
    assert_malformed(&frame(0x30, b"\x00"), "PUBLISH");
    assert_malformed(&frame(0x30, b""), "PUBLISH");
}

#[test]
fn publish_wildcards_and_empty_topic_are_left_to_the_broker() {
    for topic in ["a/+/b", "#", "", "+"] {
        let bytes = frame(0x30, &prefixed(topic.as_bytes()));
        let Ok(Some(Packet::Publish(decoded))) = decode_bytes(&bytes).0 else {
            panic!("{topic:?} not decoded");
        };
        assert_eq!(&decoded.topic[..], topic.as_bytes());
        assert!(decoded.payload.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// CONNECT rejections

#[test]
fn connect_reserved_flag_is_malformed() {
    assert_malformed(&frame(0x10, &connect_body(0x03, &[b"id"])), "CONNECT");
}

#[test]
fn connect_will_flags_must_be_consistent() {
    // Will QoS 1 or 2 without the will flag.
    assert_malformed(&frame(0x10, &connect_body(0x0a, &[b"id"])), "CONNECT");
    assert_malformed(&frame(0x10, &connect_body(0x12, &[b"id"])), "CONNECT");
    // Will retain without the will flag.
    assert_malformed(&frame(0x10, &connect_body(0x22, &[b"id"])), "CONNECT");
    // Will QoS 3.
    assert_malformed(
        &frame(0x10, &connect_body(0x1e, &[b"id", b"topic", b"msg"])),
        "CONNECT",
    );
}

#[test]
fn connect_password_without_user_name_is_malformed_for_both_protocols() {
    assert_malformed(
        &frame(0x10, &connect_body(0x42, &[b"id", b"pw"])),
        "CONNECT",
    );
    assert_malformed(
        &frame(
            0x10,
            &connect_body_with(b"MQIsdp", 3, 0x42, &[b"id", b"pw"]),
        ),
        "CONNECT",
    );
}

#[test]
fn connect_strings_must_be_utf8_without_nul() {
    let cases: &[(u8, &[&[u8]], &str)] = &[
        (0x02, &[b"\xff"], "CONNECT client id"),
        (0x02, &[b"a\x00"], "CONNECT client id"),
        (0x06, &[b"id", b"\xc3(", b"msg"], "CONNECT will topic"),
        (0x06, &[b"id", b"w\x00", b"msg"], "CONNECT will topic"),
        (0x82, &[b"id", b"\xfe"], "CONNECT user name"),
    ];
    for &(flags, payload, field) in cases {
        assert_eq!(
            decode_err(&frame(0x10, &connect_body(flags, payload))),
            DecodeError::InvalidUtf8(field)
        );
    }
    // Will payload and password are binary.
    let bytes = frame(
        0x10,
        &connect_body(0xc6, &[b"id", b"w", b"\x00\xff", b"u", b"\x00\xff"]),
    );
    let Ok(Some(Packet::Connect(decoded))) = decode_bytes(&bytes).0 else {
        panic!("binary fields rejected");
    };
    assert_eq!(decoded.password.as_deref(), Some(&b"\x00\xff"[..]));
    assert_eq!(
        decoded.will.map(|will| will.payload),
        Some(Bytes::from_static(b"\x00\xff"))
    );
}

#[test]
fn connect_with_trailing_bytes_is_malformed() {
    let mut body = connect_body(0x02, &[b"id"]);
    body.push(0);
    assert_malformed(&frame(0x10, &body), "CONNECT");
}

#[test]
fn connect_fields_running_past_the_packet_are_malformed() {
    let full = connect_body(0xc6, &[b"id", b"w", b"msg", b"user", b"pw"]);
    // Every truncation of the body (with the remaining length matching) is malformed, not a
    // panic; the header and protocol name are kept so the protocol check passes.
    for len in 7..full.len() {
        assert_malformed(&frame(0x10, &full[..len]), "CONNECT");
    }
    // Empty CONNECT.
    assert_malformed(&frame(0x10, b""), "CONNECT");
}

#[test]
fn connect_with_non_utf8_protocol_name_is_malformed() {
    assert_malformed(
        &frame(0x10, &connect_body_with(b"MQ\xffT", 4, 0x02, &[b"id"])),
        "CONNECT",
    );
}

#[test]
fn unsupported_protocol_is_reported_once_the_packet_is_complete_and_consumed() {
    // MQTT 5 used to be in this list; it is supported now (see v5::connect_at_level_5_is_read_
    // as_mqtt_5), and a level after it takes its place.
    let cases: &[(&[u8], u8)] = &[
        (b"MQTT", 6),
        (b"FOO", 4),
        (b"MQTT", 3),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
    ];
    for &(name, level) in cases {
        // A CONNECT of another level may lay out what follows the keepalive differently (here as
        // MQTT 5 properties): the rest must not be parsed.
        let mut body = connect_body_with(name, level, 0x02, &[]);
        body.extend_from_slice(b"\x05\x11\x00\x00\x00\x0a");
        body.extend_from_slice(&prefixed(b"client"));
        let packet = frame(0x10, &body);

        let mut buf = BytesMut::new();
        for &byte in &packet[..packet.len() - 1] {
            buf.extend_from_slice(&[byte]);
            assert_eq!(decode(&mut buf, None, NO_LIMIT), Ok(None));
        }
        buf.extend_from_slice(&packet[packet.len() - 1..]);
        buf.extend_from_slice(b"\xe0\x00");
        assert_eq!(
            decode(&mut buf, None, NO_LIMIT),
            Err(DecodeError::UnsupportedProtocol {
                name: String::from_utf8(name.to_vec()).unwrap(),
                level
            })
        );
        assert_eq!(&buf[..], b"\xe0\x00", "the CONNECT must be consumed");
    }
}

// ---------------------------------------------------------------------------------------------
// CONNACK, SUBSCRIBE, SUBACK, UNSUBSCRIBE rejections

#[test]
fn connack_validation() {
    assert_malformed(&[0x20, 0x02, 0x02, 0x00], "CONNACK");
    assert_malformed(&[0x20, 0x02, 0x80, 0x00], "CONNACK");
    assert_malformed(&[0x20, 0x02, 0x00, 0x06], "CONNACK");
    assert_malformed(&[0x20, 0x01, 0x00], "CONNACK");
    for code in 0..=5 {
        assert!(matches!(
            decode_bytes(&[0x20, 0x02, 0x01, code]).0,
            Ok(Some(Packet::ConnAck(_)))
        ));
    }
}

#[test]
fn subscribe_validation() {
    let entry = |filter: &[u8], options: u8| [prefixed(filter), vec![options]].concat();
    let body = |packet_id: u16, entries: &[Vec<u8>]| {
        [packet_id.to_be_bytes().to_vec(), entries.concat()].concat()
    };
    // Reserved option bits and QoS 3.
    for options in [0x04, 0x80, 0xfc, 0x03] {
        assert_malformed(&frame(0x82, &body(1, &[entry(b"a", options)])), "SUBSCRIBE");
    }
    // No filters, packet id 0, a filter missing its options byte, a filter running past the end.
    assert_malformed(&frame(0x82, &body(1, &[])), "SUBSCRIBE");
    assert_malformed(&frame(0x82, &body(0, &[entry(b"a", 0)])), "SUBSCRIBE");
    assert_malformed(&frame(0x82, &body(1, &[prefixed(b"a")])), "SUBSCRIBE");
    assert_malformed(&frame(0x82, b"\x00\x01\x00\x05ab"), "SUBSCRIBE");
    assert_malformed(&frame(0x82, b"\x00"), "SUBSCRIBE");
    // Invalid UTF-8 and U+0000 in a filter.
    for filter in [&b"\xff"[..], b"a/\x00"] {
        assert_eq!(
            decode_err(&frame(0x82, &body(1, &[entry(b"ok", 0), entry(filter, 1)]))),
            DecodeError::InvalidUtf8("SUBSCRIBE topic filter")
        );
    }
    // Filter syntax is the broker's business.
    let bytes = frame(0x82, &body(1, &[entry(b"a/#/b", 2), entry(b"", 0)]));
    assert_eq!(
        decode_bytes(&bytes).0,
        Ok(Some(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![
                (
                    "a/#/b".to_owned(),
                    SubscriptionOptions::qos(QoS::ExactlyOnce)
                ),
                (String::new(), SubscriptionOptions::qos(QoS::AtMostOnce))
            ],
            properties: Properties::default(),
        })))
    );
}

#[test]
fn suback_validation() {
    for code in [0x03, 0x7f, 0x81, 0xff] {
        assert_malformed(&[0x90, 0x04, 0x00, 0x01, 0x00, code], "SUBACK");
    }
    assert_malformed(&[0x90, 0x02, 0x00, 0x01], "SUBACK");
    assert_malformed(&[0x90, 0x01, 0x00], "SUBACK");
}

#[test]
fn unsubscribe_validation() {
    assert_malformed(&[0xa2, 0x02, 0x00, 0x01], "UNSUBSCRIBE");
    assert_malformed(&frame(0xa2, b"\x00\x00\x00\x01a"), "UNSUBSCRIBE");
    assert_malformed(&frame(0xa2, b"\x00\x01\x00\x02a"), "UNSUBSCRIBE");
    assert_malformed(&frame(0xa2, b"\x00\x01\x00\x01a\x00"), "UNSUBSCRIBE");
    assert_eq!(
        decode_err(&frame(0xa2, b"\x00\x01\x00\x01\xff")),
        DecodeError::InvalidUtf8("UNSUBSCRIBE topic filter")
    );
}

// ---------------------------------------------------------------------------------------------
// Encoding errors and the PUBLISH hot path

#[test]
fn unencodable_values_are_errors_and_write_nothing() {
    let long = "x".repeat(65_536);
    let mut buf = BytesMut::from(&b"kept"[..]);

    let result = encode_publish(
        &mut buf,
        false,
        QoS::AtMostOnce,
        false,
        long.as_bytes(),
        0,
        b"",
    );
    assert_eq!(
        result,
        Err(EncodeError::TooLong {
            field: "PUBLISH topic",
            len: 65_536
        })
    );

    let huge = vec![0; MAX_REMAINING_LENGTH - 2];
    let result = encode_publish(&mut buf, false, QoS::AtLeastOnce, false, b"t", 1, &huge);
    assert!(matches!(result, Err(EncodeError::PacketTooLarge { .. })));

    let connect = connect_packet(Connect {
        username: Some(long.clone()),
        ..connect(Protocol::V311)
    });
    assert!(matches!(
        connect.encode(Protocol::V311, &mut buf),
        Err(EncodeError::TooLong { .. })
    ));

    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![
            ("a".to_owned(), SubscriptionOptions::qos(QoS::AtMostOnce)),
            (long, SubscriptionOptions::qos(QoS::AtMostOnce)),
        ],
        properties: Properties::default(),
    });
    assert!(subscribe.encode(Protocol::V311, &mut buf).is_err());

    for (qos, packet_id) in [(QoS::AtMostOnce, Some(1)), (QoS::ExactlyOnce, None)] {
        let publish = Packet::Publish(Publish {
            packet_id,
            ..publish(qos, "t", b"")
        });
        assert!(matches!(
            publish.encode(Protocol::V311, &mut buf),
            Err(EncodeError::Inconsistent { .. })
        ));
    }

    assert_eq!(&buf[..], b"kept");
}

#[test]
fn the_longest_topic_is_encodable() {
    let topic = "t".repeat(65_535);
    assert_round_trip(
        &Packet::Publish(publish(QoS::AtLeastOnce, &topic, b"x")),
        Protocol::V311,
    );
}

#[test]
fn encode_publish_writes_the_packet_id_only_above_qos_0() {
    let mut qos0 = BytesMut::new();
    encode_publish(&mut qos0, false, QoS::AtMostOnce, true, b"a", 99, b"p").unwrap();
    assert_eq!(&qos0[..], b"\x31\x04\x00\x01ap");
    let mut qos2 = BytesMut::new();
    encode_publish(&mut qos2, true, QoS::ExactlyOnce, false, b"a", 99, b"p").unwrap();
    assert_eq!(&qos2[..], b"\x3c\x06\x00\x01a\x00\x63p");
}

// ---------------------------------------------------------------------------------------------
// peek_fixed_header: what a handshake judges before buffering a body

#[test]
fn peek_reads_type_and_size_without_consuming() {
    let bytes = encode(&connect_packet(connect(Protocol::V311)), Protocol::V311);
    for cut in 0..=bytes.len() {
        let header = peek_fixed_header(&bytes[..cut], None).expect("valid prefix");
        match cut {
            0 => assert_eq!(header, None),
            1 => {
                let header = header.expect("first byte");
                assert!(header.is_connect());
                assert_eq!(header.packet_size, None);
            }
            _ => {
                let header = header.expect("whole fixed header");
                assert!(header.is_connect());
                assert_eq!(header.packet_size, Some(bytes.len()));
            }
        }
    }
}

#[test]
fn peek_announces_the_largest_sizes_from_five_bytes() {
    let header = peek_fixed_header(&[0x30, 0xff, 0xff, 0xff, 0x7f], None)
        .expect("a valid PUBLISH header")
        .expect("complete");
    assert!(!header.is_connect());
    assert_eq!(header.name(), "PUBLISH");
    assert_eq!(header.packet_size, Some(MAX_REMAINING_LENGTH + 5));
    let header = peek_fixed_header(&[0x10, 0xff, 0xff], None)
        .expect("a valid CONNECT prefix")
        .expect("first byte");
    assert!(header.is_connect());
    assert_eq!(header.packet_size, None, "length still incomplete");
}

#[test]
fn peek_rejects_what_decode_rejects_from_the_header() {
    for bytes in [
        &[0x00][..],
        &[0xf0],
        &[0x11],
        &[0x36, 0x00],
        &[0xc0, 0x01],
        &[0x10, 0xff, 0xff, 0xff, 0xff],
    ] {
        let peeked = peek_fixed_header(bytes, None);
        let (decoded, _) = decode_bytes(bytes);
        assert!(peeked.is_err(), "{bytes:02x?} peeked as {peeked:?}");
        assert_eq!(peeked.err(), decoded.err(), "{bytes:02x?}");
    }
}

#[test]
fn mqtt_31_clients_may_set_dup_on_retried_pubrel_subscribe_and_unsubscribe() {
    let pubrel_with_dup = [0x6a, 0x02, 0x00, 0x07];
    let mut buf = BytesMut::from(&pubrel_with_dup[..]);
    assert_eq!(
        decode(&mut buf, Some(Protocol::V31), usize::MAX),
        Ok(Some(Packet::PubRel(Ack::new(7))))
    );
    let mut buf = BytesMut::from(&pubrel_with_dup[..]);
    assert!(matches!(
        decode(&mut buf, Some(Protocol::V311), usize::MAX),
        Err(DecodeError::InvalidFlags { .. })
    ));
    let subscribe_with_dup = [0x8a, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x01];
    let mut buf = BytesMut::from(&subscribe_with_dup[..]);
    assert!(matches!(
        decode(&mut buf, Some(Protocol::V31), usize::MAX),
        Ok(Some(Packet::Subscribe(_)))
    ));
}
