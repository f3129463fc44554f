//! MQTT 5 properties (§2.2.2): which property may appear on which packet, checked for every
//! property on every packet against the standard's table written out here independently of the
//! codec's; what a repeat, a forbidden value, an unknown identifier or a list that does not fit
//! its packet gives (0x81 malformed or 0x82 protocol error); and how property lists are encoded.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::properties::PropertyContext as C;

/// Every context a property list appears in.
const CONTEXTS: &[C] = &[
    C::Connect,
    C::Will,
    C::ConnAck,
    C::Publish,
    C::Ack,
    C::Subscribe,
    C::SubAck,
    C::Unsubscribe,
    C::UnsubAck,
    C::Disconnect,
    C::Auth,
];

/// A valid MQTT 5 packet whose property list in `context` is `list` (without its length).
fn packet_with(context: C, list: &[u8]) -> Vec<u8> {
    let list = property_list(list);
    let connect_header = |flags: u8| [prefixed(b"MQTT"), vec![5, flags, 0, 60]].concat();
    match context {
        C::Connect => frame(
            0x10,
            &[connect_header(0x02), list, prefixed(b"id")].concat(),
        ),
        C::Will => frame(
            0x10,
            &[
                connect_header(0x06),
                vec![0],
                prefixed(b"id"),
                list,
                prefixed(b"w"),
                prefixed(b"gone"),
            ]
            .concat(),
        ),
        C::ConnAck => frame(0x20, &[vec![0, 0], list].concat()),
        C::Publish => frame(
            0x32,
            &[prefixed(b"t"), vec![0, 1], list, b"payload".to_vec()].concat(),
        ),
        C::Ack => frame(0x40, &[vec![0, 1, 0x10], list].concat()),
        C::Subscribe => frame(
            0x82,
            &[vec![0, 1], list, prefixed(b"a/#"), vec![1]].concat(),
        ),
        C::SubAck => frame(0x90, &[vec![0, 1], list, vec![1]].concat()),
        C::Unsubscribe => frame(0xa2, &[vec![0, 1], list, prefixed(b"a")].concat()),
        C::UnsubAck => frame(0xb0, &[vec![0, 1], list, vec![0x11]].concat()),
        C::Disconnect => frame(0xe0, &[vec![0x04], list].concat()),
        C::Auth => frame(0xf0, &[vec![0x18], list].concat()),
    }
}

/// The packet name a decode error in `context` names.
fn packet_name(context: C) -> &'static str {
    match context {
        C::Connect | C::Will => "CONNECT",
        C::ConnAck => "CONNACK",
        C::Publish => "PUBLISH",
        C::Ack => "PUBACK",
        C::Subscribe => "SUBSCRIBE",
        C::SubAck => "SUBACK",
        C::Unsubscribe => "UNSUBSCRIBE",
        C::UnsubAck => "UNSUBACK",
        C::Disconnect => "DISCONNECT",
        C::Auth => "AUTH",
    }
}

/// Decodes [`packet_with`] and returns the properties of `context`, checking the rest of the
/// packet came through.
fn decoded_properties(context: C, list: &[u8]) -> Result<Properties, DecodeError> {
    let packet = decode_v5(&packet_with(context, list))?;
    Ok(match (context, packet) {
        (C::Connect, Packet::Connect(connect)) => {
            assert_eq!(connect.client_id, "id");
            connect.properties
        }
        (C::Will, Packet::Connect(connect)) => {
            assert!(connect.properties.is_empty());
            let will = connect.will.expect("the will");
            assert_eq!((&will.topic[..], &will.payload[..]), ("w", &b"gone"[..]));
            will.properties
        }
        (C::ConnAck, Packet::ConnAck(connack)) => connack.properties,
        (C::Publish, Packet::Publish(publish)) => {
            assert_eq!(&publish.payload[..], b"payload");
            publish.properties
        }
        (C::Ack, Packet::PubAck(ack)) => {
            assert_eq!(ack.reason, ReasonCode::NoMatchingSubscribers);
            ack.properties
        }
        (C::Subscribe, Packet::Subscribe(subscribe)) => {
            assert_eq!(subscribe.filters.len(), 1);
            subscribe.properties
        }
        (C::SubAck, Packet::SubAck(suback)) => {
            assert_eq!(suback.reason_codes, [ReasonCode::GrantedQoS1]);
            suback.properties
        }
        (C::Unsubscribe, Packet::Unsubscribe(unsubscribe)) => {
            assert_eq!(unsubscribe.filters, ["a"]);
            unsubscribe.properties
        }
        (C::UnsubAck, Packet::UnsubAck(unsuback)) => {
            assert_eq!(unsuback.reason_codes, [ReasonCode::NoSubscriptionExisted]);
            unsuback.properties
        }
        (C::Disconnect, Packet::Disconnect(disconnect)) => {
            assert_eq!(disconnect.reason, ReasonCode::DisconnectWithWill);
            disconnect.properties
        }
        (C::Auth, Packet::Auth(auth)) => {
            assert_eq!(auth.reason, ReasonCode::ContinueAuthentication);
            auth.properties
        }
        (context, packet) => panic!("{context:?} decoded as {packet:?}"),
    })
}

/// One property of the standard's table (§2.2.2.2): identifier, a valid value as bytes, the
/// packets it may appear on, and the value the decoder must report for those bytes.
struct Property {
    id: u8,
    value: &'static [u8],
    on: &'static [C],
    expect: fn(&mut PropertyValues),
}

const ALL: &[C] = CONTEXTS;

const TABLE: &[Property] = &[
    Property {
        id: 0x01,
        value: &[1],
        on: &[C::Publish, C::Will],
        expect: |v| v.payload_format_indicator = Some(true),
    },
    Property {
        id: 0x02,
        value: &[0, 0, 0, 60],
        on: &[C::Publish, C::Will],
        expect: |v| v.message_expiry_interval = Some(60),
    },
    Property {
        id: 0x03,
        value: b"\x00\x04text",
        on: &[C::Publish, C::Will],
        expect: |v| v.content_type = Some("text".into()),
    },
    Property {
        id: 0x08,
        value: b"\x00\x03r/t",
        on: &[C::Publish, C::Will],
        expect: |v| v.response_topic = Some("r/t".into()),
    },
    Property {
        id: 0x09,
        value: b"\x00\x02\x00\xff",
        on: &[C::Publish, C::Will],
        expect: |v| v.correlation_data = Some(Bytes::from_static(b"\x00\xff")),
    },
    Property {
        id: 0x0b,
        value: &[0x80, 0x01],
        on: &[C::Publish, C::Subscribe],
        expect: |v| v.subscription_identifiers = vec![128],
    },
    Property {
        id: 0x11,
        value: &[0, 0, 1, 0],
        on: &[C::Connect, C::ConnAck, C::Disconnect],
        expect: |v| v.session_expiry_interval = Some(256),
    },
    Property {
        id: 0x12,
        value: b"\x00\x02id",
        on: &[C::ConnAck],
        expect: |v| v.assigned_client_identifier = Some("id".into()),
    },
    Property {
        id: 0x13,
        value: &[0, 30],
        on: &[C::ConnAck],
        expect: |v| v.server_keep_alive = Some(30),
    },
    Property {
        id: 0x15,
        value: b"\x00\x05SCRAM",
        on: &[C::Connect, C::ConnAck, C::Auth],
        expect: |v| v.authentication_method = Some("SCRAM".into()),
    },
    Property {
        id: 0x16,
        value: b"\x00\x01\x07",
        on: &[C::Connect, C::ConnAck, C::Auth],
        expect: |v| v.authentication_data = Some(Bytes::from_static(b"\x07")),
    },
    Property {
        id: 0x17,
        value: &[0],
        on: &[C::Connect],
        expect: |v| v.request_problem_information = Some(false),
    },
    Property {
        id: 0x18,
        value: &[0, 0, 0, 5],
        on: &[C::Will],
        expect: |v| v.will_delay_interval = Some(5),
    },
    Property {
        id: 0x19,
        value: &[1],
        on: &[C::Connect],
        expect: |v| v.request_response_information = Some(true),
    },
    Property {
        id: 0x1a,
        value: b"\x00\x02r/",
        on: &[C::ConnAck],
        expect: |v| v.response_information = Some("r/".into()),
    },
    Property {
        id: 0x1c,
        value: b"\x00\x04host",
        on: &[C::ConnAck, C::Disconnect],
        expect: |v| v.server_reference = Some("host".into()),
    },
    Property {
        id: 0x1f,
        value: b"\x00\x02no",
        on: &[
            C::ConnAck,
            C::Ack,
            C::SubAck,
            C::UnsubAck,
            C::Disconnect,
            C::Auth,
        ],
        expect: |v| v.reason_string = Some("no".into()),
    },
    Property {
        id: 0x21,
        value: &[0, 10],
        on: &[C::Connect, C::ConnAck],
        expect: |v| v.receive_maximum = Some(10),
    },
    Property {
        id: 0x22,
        value: &[0, 5],
        on: &[C::Connect, C::ConnAck],
        expect: |v| v.topic_alias_maximum = Some(5),
    },
    Property {
        id: 0x23,
        value: &[0, 1],
        on: &[C::Publish],
        // Read into `Publish::topic_alias`, not the property set: see `publish_topic_alias`.
        expect: |_| {},
    },
    Property {
        id: 0x24,
        value: &[1],
        on: &[C::ConnAck],
        expect: |v| v.maximum_qos = Some(1),
    },
    Property {
        id: 0x25,
        value: &[0],
        on: &[C::ConnAck],
        expect: |v| v.retain_available = Some(false),
    },
    Property {
        id: 0x26,
        value: b"\x00\x01k\x00\x01v",
        on: ALL,
        expect: |v| v.user_properties = vec![("k".into(), "v".into())],
    },
    Property {
        id: 0x27,
        value: &[0, 0, 4, 0],
        on: &[C::Connect, C::ConnAck],
        expect: |v| v.maximum_packet_size = Some(1024),
    },
    Property {
        id: 0x28,
        value: &[1],
        on: &[C::ConnAck],
        expect: |v| v.wildcard_subscription_available = Some(true),
    },
    Property {
        id: 0x29,
        value: &[0],
        on: &[C::ConnAck],
        expect: |v| v.subscription_identifier_available = Some(false),
    },
    Property {
        id: 0x2a,
        value: &[1],
        on: &[C::ConnAck],
        expect: |v| v.shared_subscription_available = Some(true),
    },
];

/// The Topic Alias of a PUBLISH whose property list is `list`.
fn publish_topic_alias(list: &[u8]) -> Result<Option<u16>, DecodeError> {
    match decode_v5(&packet_with(C::Publish, list))? {
        Packet::Publish(publish) => Ok(publish.topic_alias),
        other => panic!("decoded as {other:?}"),
    }
}

fn encoded(property: &Property) -> Vec<u8> {
    [vec![property.id], property.value.to_vec()].concat()
}

#[test]
fn every_property_decodes_on_the_packets_the_standard_allows_and_is_malformed_elsewhere() {
    for property in TABLE {
        for &context in CONTEXTS {
            let result = decoded_properties(context, &encoded(property));
            if property.on.contains(&context) {
                if property.id == 0x23 {
                    assert_eq!(publish_topic_alias(&encoded(property)), Ok(Some(1)));
                }
                let mut expected = PropertyValues::default();
                (property.expect)(&mut expected);
                assert_eq!(
                    result.map(|properties| (*properties).clone()),
                    Ok(expected),
                    "property {:#04x} on {context:?}",
                    property.id
                );
            } else {
                assert_eq!(
                    result,
                    Err(DecodeError::Malformed {
                        packet: packet_name(context),
                        reason: "property not allowed on this packet"
                    }),
                    "property {:#04x} on {context:?}",
                    property.id
                );
                assert_eq!(
                    decode_v5(&packet_with(context, &encoded(property)))
                        .unwrap_err()
                        .reason_code(),
                    ReasonCode::MalformedPacket
                );
            }
        }
    }
}

#[test]
fn the_same_property_list_decodes_on_all_four_acknowledgements() {
    let list = property_list(b"\x1f\x00\x02no\x26\x00\x01k\x00\x01v");
    for first_byte in [0x40, 0x50, 0x62, 0x70] {
        let packet = decode_v5(&frame(first_byte, &[&[0, 9, 0x80][..], &list].concat()));
        let ack = match packet {
            Ok(
                Packet::PubAck(ack)
                | Packet::PubRec(ack)
                | Packet::PubRel(ack)
                | Packet::PubComp(ack),
            ) => ack,
            other => panic!("{first_byte:#04x}: {other:?}"),
        };
        assert_eq!(ack.packet_id, 9);
        assert_eq!(ack.reason, ReasonCode::UnspecifiedError);
        assert_eq!(ack.properties.reason_string.as_deref(), Some("no"));
        assert_eq!(
            ack.properties.user_properties,
            [("k".to_owned(), "v".to_owned())]
        );
        // Topic Alias belongs on PUBLISH only.
        let wrong = property_list(b"\x23\x00\x01");
        assert_v5_malformed(
            &frame(first_byte, &[&[0, 9, 0x80][..], &wrong].concat()),
            ["PUBACK", "PUBREC", "PUBREL", "PUBCOMP"][usize::from(first_byte >> 4) - 4],
        );
    }
}

#[test]
fn a_property_given_twice_is_a_protocol_error() {
    for property in TABLE {
        if matches!(property.id, 0x0b | 0x26) {
            continue;
        }
        let context = property.on[0];
        let twice = [encoded(property), encoded(property)].concat();
        assert_v5_protocol_error(
            &packet_with(context, &twice),
            packet_name(context),
            "property given more than once",
        );
    }
    // Different values do not make a repeat acceptable.
    assert_v5_protocol_error(
        &packet_with(C::Publish, b"\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"),
        "PUBLISH",
        "property given more than once",
    );
}

#[test]
fn user_properties_repeat_in_order_with_repeated_names() {
    let list = b"\x26\x00\x01a\x00\x011\x26\x00\x01b\x00\x00\x26\x00\x01a\x00\x012";
    for &context in CONTEXTS {
        let properties = decoded_properties(context, list).expect("user properties anywhere");
        assert_eq!(
            properties.user_properties,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), String::new()),
                ("a".to_owned(), "2".to_owned())
            ],
            "{context:?}"
        );
    }
}

#[test]
fn a_publish_carries_many_subscription_identifiers_and_a_subscribe_one() {
    let ids = b"\x0b\x01\x0b\xff\xff\xff\x7f\x0b\x01";
    let properties = decoded_properties(C::Publish, ids).expect("PUBLISH takes several");
    assert_eq!(properties.subscription_identifiers, [1, 268_435_455, 1]);
    assert_v5_protocol_error(
        &packet_with(C::Subscribe, b"\x0b\x01\x0b\x02"),
        "SUBSCRIBE",
        "more than one subscription identifier",
    );
}

#[test]
fn forbidden_values_are_protocol_errors() {
    let cases: &[(C, &[u8], &str)] = &[
        (C::Connect, b"\x21\x00\x00", "receive maximum 0"),
        (C::ConnAck, b"\x21\x00\x00", "receive maximum 0"),
        (C::Connect, b"\x27\x00\x00\x00\x00", "maximum packet size 0"),
        (C::ConnAck, b"\x27\x00\x00\x00\x00", "maximum packet size 0"),
        (C::Publish, b"\x0b\x00", "subscription identifier 0"),
        (C::Subscribe, b"\x0b\x00", "subscription identifier 0"),
        // A non-minimal 0 is still 0.
        (C::Subscribe, b"\x0b\x80\x00", "subscription identifier 0"),
        (C::Publish, b"\x01\x02", "flag property is neither 0 nor 1"),
        (C::Will, b"\x01\xff", "flag property is neither 0 nor 1"),
        (C::Connect, b"\x17\x02", "flag property is neither 0 nor 1"),
        (C::Connect, b"\x19\x02", "flag property is neither 0 nor 1"),
        (C::ConnAck, b"\x25\x02", "flag property is neither 0 nor 1"),
        (C::ConnAck, b"\x28\x02", "flag property is neither 0 nor 1"),
        (C::ConnAck, b"\x29\x02", "flag property is neither 0 nor 1"),
        (C::ConnAck, b"\x2a\x02", "flag property is neither 0 nor 1"),
        (C::ConnAck, b"\x24\x02", "maximum QoS is neither 0 nor 1"),
    ];
    for &(context, list, reason) in cases {
        assert_v5_protocol_error(&packet_with(context, list), packet_name(context), reason);
    }
    // The boundaries next to them are fine.
    let properties = decoded_properties(C::Connect, b"\x21\x00\x01\x27\x00\x00\x00\x01")
        .expect("receive maximum 1, maximum packet size 1");
    assert_eq!(properties.receive_maximum, Some(1));
    assert_eq!(properties.maximum_packet_size, Some(1));
    let properties = decoded_properties(C::ConnAck, b"\x24\x00").expect("maximum QoS 0");
    assert_eq!(properties.maximum_qos, Some(0));
    let properties = decoded_properties(C::Publish, b"\x01\x00").expect("PFI 0");
    assert_eq!(properties.payload_format_indicator, Some(false));
}

#[test]
fn topic_alias_on_connect_is_malformed() {
    assert_v5_malformed(&packet_with(C::Connect, b"\x23\x00\x01"), "CONNECT");
    assert_v5_malformed(&packet_with(C::Will, b"\x23\x00\x01"), "CONNECT");
}

#[test]
fn will_delay_belongs_in_the_will_properties_not_the_connect_properties() {
    assert_eq!(
        decode_v5_err(
            &packet_with(C::Connect, b"\x18\x00\x00\x00\x05"),
            ReasonCode::MalformedPacket
        ),
        DecodeError::Malformed {
            packet: "CONNECT",
            reason: "property not allowed on this packet"
        }
    );
    let will = decoded_properties(C::Will, b"\x18\x00\x00\x00\x05").expect("on the will");
    assert_eq!(will.will_delay_interval, Some(5));
}

#[test]
fn unknown_property_identifiers_are_malformed() {
    // 0x00 and the gaps of the table; 0x80 0x01 is the identifier 128 as a variable byte
    // integer.
    for list in [
        &b"\x00\x00"[..],
        b"\x04\x00",
        b"\x0a\x00",
        b"\x14\x00",
        b"\x1b\x00",
        b"\x20\x00",
        b"\x2b\x00",
        b"\x7f\x00",
        b"\x80\x01\x00",
        b"\x81\x00\x01",
    ] {
        for context in [C::Connect, C::Publish, C::Disconnect] {
            let bytes = packet_with(context, list);
            if list == b"\x81\x00\x01" {
                // A non-minimal 1 is Payload Format Indicator, which CONNECT cannot carry.
                if context == C::Publish {
                    let properties = decoded_properties(context, list).expect("identifier 1");
                    assert_eq!(properties.payload_format_indicator, Some(true));
                    continue;
                }
                assert_v5_malformed(&bytes, packet_name(context));
                continue;
            }
            assert_eq!(
                decode_v5_err(&bytes, ReasonCode::MalformedPacket),
                DecodeError::Malformed {
                    packet: packet_name(context),
                    reason: "unknown property identifier"
                },
                "{list:02x?} on {context:?}"
            );
        }
    }
}

#[test]
fn a_truncated_property_value_is_malformed() {
    // The list length covers only part of each value: the value runs past the list even though
    // the packet has more bytes after it.
    for list in [
        &b"\x02\x00\x00"[..],
        b"\x23\x00",
        b"\x01",
        b"\x03\x00\x05ab",
        b"\x09\x00",
        b"\x26\x00\x01k\x00\x05v",
        b"\x26\x00\x01k",
        b"\x0b\x80",
    ] {
        let bytes = packet_with(C::Publish, list);
        assert_v5_malformed(&bytes, "PUBLISH");
    }
    // A value cut at the end of the packet itself.
    assert_v5_malformed(&frame(0xe0, b"\x04\x03\x11\x00\x00"), "DISCONNECT");
}

#[test]
fn a_property_length_running_past_the_packet_is_malformed() {
    for bytes in [
        frame(0xe0, b"\x04\x05\x1f\x00\x01x"),
        frame(0x40, b"\x00\x01\x80\x7f"),
        frame(0x20, b"\x00\x00\x03\x22\x00"),
        frame(0x30, b"\x00\x01t\xff\xff\xff\x7f"),
    ] {
        let err = decode_v5_err(&bytes, ReasonCode::MalformedPacket);
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    reason: "property length runs past the end of the packet",
                    ..
                }
            ),
            "{bytes:02x?}: {err:?}"
        );
    }
}

#[test]
fn a_variable_byte_integer_of_five_bytes_is_malformed() {
    let five = b"\x80\x80\x80\x80\x01";
    // As a property list length, a property identifier and a subscription identifier.
    for bytes in [
        frame(0xe0, &[&b"\x00"[..], five].concat()),
        frame(0xe0, &[&b"\x00\x06"[..], five, b"\x00"].concat()),
        packet_with(C::Publish, &[&b"\x0b"[..], five].concat()),
    ] {
        let err = decode_v5_err(&bytes, ReasonCode::MalformedPacket);
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    reason: "variable byte integer longer than four bytes",
                    ..
                }
            ),
            "{bytes:02x?}: {err:?}"
        );
    }
    // Four bytes are fine: the largest subscription identifier.
    let properties = decoded_properties(C::Publish, b"\x0b\xff\xff\xff\x7f").expect("4 bytes");
    assert_eq!(properties.subscription_identifiers, [268_435_455]);
    // And as the remaining length.
    assert_eq!(
        decode_v5_err(b"\xe0\x80\x80\x80\x80\x01", ReasonCode::MalformedPacket),
        DecodeError::MalformedLength
    );
}

#[test]
fn string_properties_must_be_utf8_without_nul() {
    let cases: &[(C, &[u8], &str)] = &[
        (C::Publish, b"\x03\x00\x01\xff", "content type"),
        (C::Will, b"\x08\x00\x02a\x00", "response topic"),
        (
            C::ConnAck,
            b"\x12\x00\x01\xc3",
            "assigned client identifier",
        ),
        (C::Auth, b"\x15\x00\x01\xff", "authentication method"),
        (C::ConnAck, b"\x1a\x00\x01\xff", "response information"),
        (C::Disconnect, b"\x1c\x00\x01\x00", "server reference"),
        (C::Ack, b"\x1f\x00\x01\xff", "reason string"),
        (
            C::Subscribe,
            b"\x26\x00\x01\xff\x00\x00",
            "user property name",
        ),
        (
            C::Unsubscribe,
            b"\x26\x00\x00\x00\x01\x00",
            "user property value",
        ),
    ];
    for &(context, list, field) in cases {
        assert_eq!(
            decode_v5_err(&packet_with(context, list), ReasonCode::MalformedPacket),
            DecodeError::InvalidUtf8(field)
        );
    }
    // Correlation and authentication data are binary.
    let properties = decoded_properties(C::Publish, b"\x09\x00\x02\x00\xff").expect("binary");
    assert_eq!(
        properties.correlation_data.as_deref(),
        Some(&b"\x00\xff"[..])
    );
}

#[test]
fn an_empty_property_list_is_no_properties() {
    for &context in CONTEXTS {
        let properties = decoded_properties(context, b"").expect("empty list");
        assert!(properties.is_empty(), "{context:?}");
        assert_eq!(properties, Properties::default());
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn every_property() -> PropertyValues {
    let mut values = PropertyValues::default();
    for property in TABLE {
        (property.expect)(&mut values);
    }
    values.subscription_identifiers = vec![1, 128, 16_384, 2_097_152];
    values.user_properties = vec![
        ("k".into(), "1".into()),
        ("j".into(), "2".into()),
        ("k".into(), "3".into()),
    ];
    values
}

#[test]
fn encoded_len_is_what_encode_writes_and_identifiers_come_in_order() {
    let values = every_property();
    let mut buf = BytesMut::new();
    values.encode(&mut buf);
    assert_eq!(values.encoded_len(), Ok(buf.len()));
    // Walk the list with the standard's value types: identifiers ascend, user properties stay
    // in the order given.
    let expected_ids: Vec<u8> = {
        // Topic Alias is the PUBLISH's, not the set's.
        let mut ids: Vec<u8> = TABLE
            .iter()
            .map(|property| property.id)
            .filter(|&id| id != 0x23)
            .collect();
        // Four subscription identifiers and three user properties.
        ids.extend([0x0b; 3]);
        ids.extend([0x26; 2]);
        ids.sort_unstable();
        ids
    };
    let mut ids = Vec::new();
    let mut rest = &buf[..];
    while let Some((&id, after)) = rest.split_first() {
        ids.push(id);
        let value_len = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0b => after.iter().take_while(|&&b| b & 0x80 != 0).count() + 1,
            0x26 => {
                let name = usize::from(u16::from_be_bytes([after[0], after[1]]));
                let value = usize::from(u16::from_be_bytes([after[2 + name], after[3 + name]]));
                4 + name + value
            }
            _ => 2 + usize::from(u16::from_be_bytes([after[0], after[1]])),
        };
        rest = &after[value_len..];
    }
    assert_eq!(ids, expected_ids);
    let user: Vec<&[u8]> = buf
        .windows(4)
        .filter(|window| window[0] == 0x26 && window[1..3] == [0, 1])
        .map(|window| &window[3..4])
        .collect();
    assert_eq!(user, [b"k", b"j", b"k"]);
}

#[test]
fn wire_len_includes_the_length_prefix() {
    assert_eq!(Properties::default().wire_len(), Ok(1));
    let mut buf = BytesMut::new();
    Properties::default().put(&mut buf);
    assert_eq!(&buf[..], b"\x00");

    let long = Properties::from(PropertyValues {
        reason_string: Some("r".repeat(200)),
        ..PropertyValues::default()
    });
    // 1 + 2 + 200 bytes of properties take a two-byte length.
    assert_eq!(long.wire_len(), Ok(2 + 203));
    let mut buf = BytesMut::new();
    long.put(&mut buf);
    assert_eq!(buf.len(), 205);
    assert_eq!(&buf[..3], b"\xcb\x01\x1f");
}

#[test]
fn a_value_too_long_for_its_prefix_is_an_encode_error_that_writes_nothing() {
    let mut buf = BytesMut::from(&b"kept"[..]);
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::Success,
        properties: Properties::from(PropertyValues {
            reason_string: Some("x".repeat(65_536)),
            ..PropertyValues::default()
        }),
    });
    assert!(matches!(
        connack.encode(Protocol::V5, &mut buf),
        Err(EncodeError::TooLong { len: 65_536, .. })
    ));
    let disconnect = Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::from(PropertyValues {
            user_properties: vec![("k".into(), "v".repeat(65_536))],
            ..PropertyValues::default()
        }),
    });
    assert!(disconnect.encode(Protocol::V5, &mut buf).is_err());
    assert_eq!(&buf[..], b"kept");
}

#[test]
fn properties_that_set_nothing_are_empty_and_equal_to_none() {
    let nothing = Properties::from(PropertyValues::default());
    assert!(nothing.is_empty());
    assert_eq!(nothing, Properties::default());
    // So a packet built with them reads back as itself.
    let packet = Packet::Disconnect(Disconnect {
        reason: ReasonCode::ServerShuttingDown,
        properties: nothing,
    });
    assert_eq!(&encode(&packet, Protocol::V5)[..], b"\xe0\x01\x8b");
    assert_eq!(decode_v5(&encode(&packet, Protocol::V5)), Ok(packet));
    assert_ne!(
        Properties::from(every_property()),
        Properties::default(),
        "equality still sees the values"
    );
}

#[test]
fn strip_problem_information_drops_reason_string_and_user_properties_only() {
    let mut values = every_property();
    values.strip_problem_information();
    let mut expected = every_property();
    expected.reason_string = None;
    expected.user_properties.clear();
    assert_eq!(values, expected);
}
