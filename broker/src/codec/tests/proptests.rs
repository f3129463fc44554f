//! Property tests: generated packets of every type round trip at every protocol level (MQTT 5
//! ones with random properties and reason codes), and arbitrary, hostile or corrupted bytes never
//! make the decoder panic, loop or lose its place in the stream.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::codec::properties::MAX_SUBSCRIPTION_IDENTIFIER;

// ---------------------------------------------------------------------------------------------
// MQTT 3.1 and 3.1.1

fn qos_strategy() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Strings the decoder accepts: any printable Unicode (no U+0000 or other controls).
fn text_strategy() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn binary_strategy() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn connect_strategy() -> impl Strategy<Value = Connect> {
    let will = (
        text_strategy(),
        binary_strategy(),
        qos_strategy(),
        any::<bool>(),
    )
        .prop_map(|(topic, payload, qos, retain)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: Properties::default(),
        });
    (
        prop_oneof![Just(Protocol::V31), Just(Protocol::V311)],
        any::<bool>(),
        any::<u16>(),
        text_strategy(),
        prop::option::of(will),
        prop::option::of(text_strategy()),
        prop::option::of(binary_strategy()),
    )
        .prop_map(
            |(protocol, clean_session, keep_alive, client_id, will, username, password)| {
                Connect {
                    protocol,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    // A password requires a user name.
                    password: password.filter(|_| username.is_some()),
                    username,
                    properties: Properties::default(),
                }
            },
        )
}

fn publish_strategy() -> impl Strategy<Value = Publish> {
    (
        qos_strategy(),
        any::<bool>(),
        any::<bool>(),
        text_strategy(),
        1..=u16::MAX,
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(qos, dup, retain, topic, packet_id, payload)| {
            let has_packet_id = qos != QoS::AtMostOnce;
            Publish {
                dup: dup && has_packet_id,
                qos,
                retain,
                topic: Bytes::from(topic),
                packet_id: has_packet_id.then_some(packet_id),
                payload: Bytes::from(payload),
                topic_alias: None,
                properties: Properties::default(),
            }
        })
}

fn packet_strategy() -> impl Strategy<Value = Packet> {
    let connack_code = prop::sample::select(vec![
        ReasonCode::Success,
        ReasonCode::UnsupportedProtocolVersion,
        ReasonCode::ClientIdentifierNotValid,
        ReasonCode::ServerUnavailable,
        ReasonCode::BadUserNameOrPassword,
        ReasonCode::NotAuthorized,
    ]);
    let return_code = prop_oneof![
        qos_strategy().prop_map(ReasonCode::granted),
        Just(ReasonCode::UnspecifiedError),
    ];
    prop_oneof![
        connect_strategy().prop_map(connect_packet),
        (any::<bool>(), connack_code).prop_map(|(session_present, code)| {
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties: Properties::default(),
            })
        }),
        publish_strategy().prop_map(Packet::Publish),
        any::<u16>().prop_map(|id| Packet::PubAck(Ack::new(id))),
        any::<u16>().prop_map(|id| Packet::PubRec(Ack::new(id))),
        any::<u16>().prop_map(|id| Packet::PubRel(Ack::new(id))),
        any::<u16>().prop_map(|id| Packet::PubComp(Ack::new(id))),
        (
            1..=u16::MAX,
            prop::collection::vec(
                (
                    text_strategy(),
                    qos_strategy().prop_map(SubscriptionOptions::qos)
                ),
                1..5
            )
        )
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: Properties::default(),
            })),
        (any::<u16>(), prop::collection::vec(return_code, 1..5)).prop_map(
            |(packet_id, reason_codes)| Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties: Properties::default(),
            })
        ),
        (1..=u16::MAX, prop::collection::vec(text_strategy(), 1..5)).prop_map(
            |(packet_id, filters)| Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: Properties::default(),
            })
        ),
        any::<u16>().prop_map(unsuback),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(disconnect()),
    ]
}

// ---------------------------------------------------------------------------------------------
// MQTT 5: random properties of exactly the kinds each packet may carry (§2.2.2.2)

/// Every reason code the standard defines; the decoder accepts any of them on any packet.
fn reason_code_strategy() -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(
        (0..=u8::MAX)
            .filter_map(ReasonCode::from_u8)
            .collect::<Vec<_>>(),
    )
}

/// User properties drawn from few names, so that repeated names (whose order must be kept) are
/// common.
fn user_properties_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(vec!["k", "region", ""]).prop_map(str::to_owned),
        text_strategy(),
    ];
    prop::collection::vec((name, text_strategy()), 0..4)
}

fn opt<S: Strategy>(strategy: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::of(strategy)
}

fn subscription_id_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(1),
        Just(MAX_SUBSCRIPTION_IDENTIFIER),
        1..=MAX_SUBSCRIPTION_IDENTIFIER
    ]
}

fn connect_properties() -> impl Strategy<Value = Properties> {
    (
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(1..=u32::MAX),
        opt(any::<u16>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(text_strategy()),
        opt(binary_strategy()),
        user_properties_strategy(),
    )
        .prop_map(
            |(expiry, receive, size, aliases, response, problem, method, data, user)| {
                props(PropertyValues {
                    session_expiry_interval: expiry,
                    receive_maximum: receive,
                    maximum_packet_size: size,
                    topic_alias_maximum: aliases,
                    request_response_information: response,
                    request_problem_information: problem,
                    authentication_method: method,
                    authentication_data: data,
                    user_properties: user,
                    ..PropertyValues::default()
                })
            },
        )
}

/// The properties of a message: on a will, and (with subscription ids and an alias) a PUBLISH.
fn message_property_values() -> impl Strategy<Value = PropertyValues> {
    (
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(text_strategy()),
        opt(text_strategy()),
        opt(binary_strategy()),
        user_properties_strategy(),
    )
        .prop_map(
            |(utf8, expiry, content_type, response_topic, correlation, user)| PropertyValues {
                payload_format_indicator: utf8,
                message_expiry_interval: expiry,
                content_type,
                response_topic,
                correlation_data: correlation,
                user_properties: user,
                ..PropertyValues::default()
            },
        )
}

fn will_properties() -> impl Strategy<Value = Properties> {
    (message_property_values(), opt(any::<u32>())).prop_map(|(values, delay)| {
        props(PropertyValues {
            will_delay_interval: delay,
            ..values
        })
    })
}

fn publish_properties() -> impl Strategy<Value = Properties> {
    (
        message_property_values(),
        prop::collection::vec(subscription_id_strategy(), 0..4),
    )
        .prop_map(|(values, ids)| {
            props(PropertyValues {
                subscription_identifiers: ids,
                ..values
            })
        })
}

fn connack_properties() -> impl Strategy<Value = Properties> {
    let session = (
        opt(any::<u32>()),
        opt(text_strategy()),
        opt(any::<u16>()),
        opt(text_strategy()),
        opt(binary_strategy()),
        opt(text_strategy()),
        opt(text_strategy()),
        opt(text_strategy()),
    );
    let limits = (
        opt(1..=u16::MAX),
        opt(any::<u16>()),
        opt(0..=1u8),
        opt(any::<bool>()),
        user_properties_strategy(),
        opt(1..=u32::MAX),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
    );
    (session, limits).prop_map(
        |(
            (expiry, assigned, keep_alive, method, data, response, reference, reason),
            (receive, aliases, qos, retain, user, size, wildcard, ids, shared),
        )| {
            props(PropertyValues {
                session_expiry_interval: expiry,
                assigned_client_identifier: assigned,
                server_keep_alive: keep_alive,
                authentication_method: method,
                authentication_data: data,
                response_information: response,
                server_reference: reference,
                reason_string: reason,
                receive_maximum: receive,
                topic_alias_maximum: aliases,
                maximum_qos: qos,
                retain_available: retain,
                user_properties: user,
                maximum_packet_size: size,
                wildcard_subscription_available: wildcard,
                subscription_identifier_available: ids,
                shared_subscription_available: shared,
                ..PropertyValues::default()
            })
        },
    )
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK carry a reason string and user properties.
fn reason_properties() -> impl Strategy<Value = Properties> {
    (opt(text_strategy()), user_properties_strategy()).prop_map(|(reason, user)| {
        props(PropertyValues {
            reason_string: reason,
            user_properties: user,
            ..PropertyValues::default()
        })
    })
}

fn subscribe_properties() -> impl Strategy<Value = Properties> {
    (opt(subscription_id_strategy()), user_properties_strategy()).prop_map(|(id, user)| {
        props(PropertyValues {
            subscription_identifiers: id.into_iter().collect(),
            user_properties: user,
            ..PropertyValues::default()
        })
    })
}

fn disconnect_properties() -> impl Strategy<Value = Properties> {
    (
        opt(any::<u32>()),
        opt(text_strategy()),
        opt(text_strategy()),
        user_properties_strategy(),
    )
        .prop_map(|(expiry, reason, reference, user)| {
            props(PropertyValues {
                session_expiry_interval: expiry,
                reason_string: reason,
                server_reference: reference,
                user_properties: user,
                ..PropertyValues::default()
            })
        })
}

fn auth_properties() -> impl Strategy<Value = Properties> {
    (
        opt(text_strategy()),
        opt(binary_strategy()),
        opt(text_strategy()),
        user_properties_strategy(),
    )
        .prop_map(|(method, data, reason, user)| {
            props(PropertyValues {
                authentication_method: method,
                authentication_data: data,
                reason_string: reason,
                user_properties: user,
                ..PropertyValues::default()
            })
        })
}

fn subscription_options_strategy() -> impl Strategy<Value = SubscriptionOptions> {
    let retain_handling = prop::sample::select(vec![
        RetainHandling::OnSubscribe,
        RetainHandling::OnNewSubscription,
        RetainHandling::Never,
    ]);
    (
        qos_strategy(),
        any::<bool>(),
        any::<bool>(),
        retain_handling,
    )
        .prop_map(|(qos, no_local, retain_as_published, retain_handling)| {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            }
        })
}

fn v5_connect_strategy() -> impl Strategy<Value = Connect> {
    let will = (
        text_strategy(),
        binary_strategy(),
        qos_strategy(),
        any::<bool>(),
        will_properties(),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        text_strategy(),
        opt(will),
        opt(text_strategy()),
        // MQTT 5 allows a password without a user name.
        opt(binary_strategy()),
        connect_properties(),
    )
        .prop_map(
            |(clean_session, keep_alive, client_id, will, username, password, properties)| {
                Connect {
                    protocol: Protocol::V5,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn v5_ack_strategy() -> impl Strategy<Value = Ack> {
    (any::<u16>(), reason_code_strategy(), reason_properties()).prop_map(
        |(packet_id, reason, properties)| Ack {
            packet_id,
            reason,
            properties,
        },
    )
}

/// Every MQTT 5 packet type with random fields, reason codes and properties.
fn v5_packet_strategy() -> impl Strategy<Value = Packet> {
    let reasons = || prop::collection::vec(reason_code_strategy(), 1..5);
    prop_oneof![
        v5_connect_strategy().prop_map(connect_packet),
        (any::<bool>(), reason_code_strategy(), connack_properties()).prop_map(
            |(session_present, code, properties)| Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties,
            })
        ),
        (publish_strategy(), publish_properties(), opt(any::<u16>())).prop_map(
            |(publish, properties, topic_alias)| {
                Packet::Publish(Publish {
                    topic_alias,
                    properties,
                    ..publish
                })
            }
        ),
        v5_ack_strategy().prop_map(Packet::PubAck),
        v5_ack_strategy().prop_map(Packet::PubRec),
        v5_ack_strategy().prop_map(Packet::PubRel),
        v5_ack_strategy().prop_map(Packet::PubComp),
        (
            1..=u16::MAX,
            prop::collection::vec((text_strategy(), subscription_options_strategy()), 1..5),
            subscribe_properties(),
        )
            .prop_map(
                |(packet_id, filters, properties)| Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties,
                })
            ),
        (any::<u16>(), reasons(), reason_properties()).prop_map(
            |(packet_id, reason_codes, properties)| Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        ),
        (
            1..=u16::MAX,
            prop::collection::vec(text_strategy(), 1..5),
            user_properties_strategy(),
        )
            .prop_map(
                |(packet_id, filters, user)| Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties: props(PropertyValues {
                        user_properties: user,
                        ..PropertyValues::default()
                    }),
                })
            ),
        (any::<u16>(), reasons(), reason_properties()).prop_map(
            |(packet_id, reason_codes, properties)| Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        ),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (reason_code_strategy(), disconnect_properties())
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties })),
        (reason_code_strategy(), auth_properties())
            .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties })),
    ]
}

// ---------------------------------------------------------------------------------------------
// Hostile input

/// A valid first byte of every packet type (and every valid PUBLISH flag combination); AUTH
/// (0xf0) is valid at MQTT 5 only.
const VALID_FIRST_BYTES: &[u8] = &[
    0x10, 0x20, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x3a, 0x3b, 0x3c, 0x3d, 0x40, 0x50, 0x62, 0x70,
    0x82, 0x90, 0xa2, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
];

/// Byte strings that reach every part of the decoder: pure noise, noise behind a valid first
/// byte, a correctly framed random body, a random CONNECT behind a supported protocol name, and
/// (for MQTT 5) a correctly framed body whose random properties sit behind a plausible start.
fn hostile_bytes_strategy() -> impl Strategy<Value = Vec<u8>> {
    let first_byte = prop::sample::select(VALID_FIRST_BYTES);
    let connect_prefix = prop::sample::select(vec![
        &b"\x00\x04MQTT\x04"[..],
        b"\x00\x06MQIsdp\x03",
        b"\x00\x04MQTT\x05",
    ]);
    // Packet id or topic (or reason code) before the property list of each kind of packet.
    let property_prefix = prop::sample::select(vec![
        (0x20, &b"\x00\x00"[..]),
        (0x30, b"\x00\x01t"),
        (0x32, b"\x00\x01t\x00\x01"),
        (0x40, b"\x00\x01\x00"),
        (0x82, b"\x00\x01"),
        (0x90, b"\x00\x01"),
        (0xa2, b"\x00\x01"),
        (0xb0, b"\x00\x01"),
        (0xe0, b"\x00"),
        (0xf0, b"\x18"),
    ]);
    let property = (
        prop::sample::select(vec![
            0x01u8, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19,
            0x1a, 0x1c, 0x1f, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a,
        ]),
        prop::collection::vec(any::<u8>(), 0..6),
    )
        .prop_map(|(id, value)| [vec![id], value].concat());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (
            first_byte.clone(),
            prop::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(first, rest)| [vec![first], rest].concat()),
        (first_byte, prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(first, body)| frame(first, &body)),
        (connect_prefix, prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(prefix, rest)| frame(0x10, &[prefix, &rest].concat())),
        (
            property_prefix,
            prop::collection::vec(property, 0..4),
            prop::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|((first, prefix), properties, rest)| {
                let properties = property_list(&properties.concat());
                frame(first, &[prefix, &properties[..], &rest].concat())
            }),
    ]
}

/// The protocol to encode a decoded packet at, and to decode it again with, so that it reads
/// back identically: 3.1.1 (read as before CONNECT) for MQTT 3, and MQTT 5 for MQTT 5.
fn round_trip_protocol(protocol: Option<Protocol>) -> (Protocol, Option<Protocol>) {
    match protocol {
        Some(Protocol::V5) => (Protocol::V5, Some(Protocol::V5)),
        _ => (Protocol::V311, None),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_bytes_never_panic_and_always_progress(
        bytes in hostile_bytes_strategy(),
        limit in prop_oneof![Just(NO_LIMIT), 0..512usize],
        protocol in prop_oneof![
            Just(None),
            Just(Some(Protocol::V31)),
            Just(Some(Protocol::V311)),
            Just(Some(Protocol::V5)),
        ],
    ) {
        let (packets, _) = drain(&bytes, protocol, limit);
        // Whatever was accepted is a packet we can encode and read back identically.
        let (encode_as, decode_as) = round_trip_protocol(protocol);
        for packet in packets {
            let mut buf = BytesMut::new();
            packet.encode(encode_as, &mut buf).unwrap();
            prop_assert_eq!(decode(&mut buf, decode_as, NO_LIMIT), Ok(Some(packet)));
        }
    }

    #[test]
    fn valid_packets_round_trip(packet in packet_strategy()) {
        let bytes = encode(&packet, Protocol::V311);
        let mut buf = bytes.clone();
        prop_assert_eq!(decode(&mut buf, Some(Protocol::V311), bytes.len()), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn valid_v5_packets_round_trip(packet in v5_packet_strategy()) {
        let bytes = encode(&packet, Protocol::V5);
        let mut buf = bytes.clone();
        prop_assert_eq!(decode(&mut buf, Some(Protocol::V5), bytes.len()), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn concatenated_packets_decode_in_order(
        packets in prop::collection::vec(packet_strategy(), 1..5),
        tail_len in 0..3usize,
    ) {
        let mut bytes = BytesMut::new();
        for packet in &packets {
            packet.encode(Protocol::V311, &mut bytes).unwrap();
        }
        // A strict prefix of one more packet is left waiting.
        let extra = encode(&packets[0], Protocol::V311);
        bytes.extend_from_slice(&extra[..tail_len.min(extra.len() - 1)]);
        let (decoded, end) = drain(&bytes, None, NO_LIMIT);
        prop_assert_eq!(decoded, packets);
        prop_assert_eq!(end, Ok(()));
    }

    #[test]
    fn concatenated_v5_packets_decode_in_order(
        packets in prop::collection::vec(v5_packet_strategy(), 1..5),
        tail_len in 0..3usize,
    ) {
        let mut bytes = BytesMut::new();
        for packet in &packets {
            packet.encode(Protocol::V5, &mut bytes).unwrap();
        }
        let extra = encode(&packets[0], Protocol::V5);
        bytes.extend_from_slice(&extra[..tail_len.min(extra.len() - 1)]);
        let (decoded, end) = drain(&bytes, Some(Protocol::V5), NO_LIMIT);
        prop_assert_eq!(decoded, packets);
        prop_assert_eq!(end, Ok(()));
    }

    #[test]
    fn every_strict_prefix_needs_more(packet in packet_strategy()) {
        let bytes = encode(&packet, Protocol::V311);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            prop_assert_eq!(decode(&mut buf, None, NO_LIMIT), Ok(None), "prefix of {}", len);
            prop_assert_eq!(&buf[..], &bytes[..len]);
        }
    }

    #[test]
    fn every_strict_prefix_of_a_v5_packet_needs_more(packet in v5_packet_strategy()) {
        let bytes = encode(&packet, Protocol::V5);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            prop_assert_eq!(
                decode(&mut buf, Some(Protocol::V5), NO_LIMIT),
                Ok(None),
                "prefix of {}",
                len
            );
            prop_assert_eq!(&buf[..], &bytes[..len]);
        }
    }

    #[test]
    fn corrupted_encodings_never_panic(
        packet in packet_strategy(),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = encode(&packet, Protocol::V311).to_vec();
        let index = position.index(bytes.len());
        bytes[index] = value;
        let _ = drain(&bytes, None, NO_LIMIT);
        let _ = drain(&bytes, Some(Protocol::V31), 64);
    }

    #[test]
    fn corrupted_v5_encodings_never_panic_and_what_decodes_round_trips(
        packet in v5_packet_strategy(),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = encode(&packet, Protocol::V5).to_vec();
        let index = position.index(bytes.len());
        bytes[index] = value;
        let _ = drain(&bytes, Some(Protocol::V5), 64);
        let (packets, _) = drain(&bytes, Some(Protocol::V5), NO_LIMIT);
        for packet in packets {
            let bytes = encode(&packet, Protocol::V5);
            prop_assert_eq!(decode_v5(&bytes), Ok(packet));
        }
    }

    #[test]
    fn encode_publish_v5_decodes_to_what_it_was_given(
        publish in publish_strategy(),
        message in message_property_values(),
        message_expiry in opt(any::<u32>()),
        topic_alias in opt(any::<u16>()),
        subscription_ids in prop::collection::vec(subscription_id_strategy(), 0..4),
    ) {
        // The expiry is given apart: the broker counts it down per delivery.
        let message = PropertyValues { message_expiry_interval: None, ..message };
        let mut message_properties = BytesMut::new();
        message.encode(&mut message_properties);
        let extras = PublishV5Extras {
            message_expiry,
            topic_alias,
            subscription_ids: &subscription_ids,
            message_properties: &message_properties,
        };
        let mut buf = BytesMut::from(&b"kept"[..]);
        encode_publish_v5(
            &mut buf,
            publish.dup,
            publish.qos,
            publish.retain,
            &publish.topic,
            publish.packet_id.unwrap_or(0),
            &extras,
            &publish.payload,
        )
        .unwrap();
        prop_assert_eq!(&buf[..4], b"kept");
        let written = &buf[4..];
        prop_assert_eq!(
            publish_v5_size(publish.qos, publish.topic.len(), &extras, publish.payload.len()),
            written.len()
        );
        let expected = Publish {
            topic_alias,
            properties: props(PropertyValues {
                message_expiry_interval: message_expiry,
                subscription_identifiers: subscription_ids.clone(),
                ..message
            }),
            ..publish
        };
        prop_assert_eq!(decode_v5(written), Ok(Packet::Publish(expected)));
    }
}
