use std::net::SocketAddr;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use proptest::prelude::*;

use super::*;
use crate::auth::AuthFailure;
use crate::coap::default_client_id;

/// A request as a client would encode it.
fn request(kind: MessageType, method: RequestType, path: &[&str], query: &[&str]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_version(1);
    packet.header.set_type(kind);
    packet.header.code = MessageClass::Request(method);
    packet.header.message_id = 0x1234;
    packet.set_token(vec![0xca, 0xfe, 0x01]);
    for segment in path {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    for item in query {
        packet.add_option(CoapOption::UriQuery, item.as_bytes().to_vec());
    }
    packet
}

fn post(path: &[&str], query: &[&str]) -> Packet {
    request(MessageType::Confirmable, RequestType::Post, path, query)
}

fn bytes(packet: &Packet) -> Vec<u8> {
    match packet.to_bytes_unlimited() {
        Ok(bytes) => bytes,
        Err(error) => panic!("cannot encode {packet:?}: {error:?}"),
    }
}

fn classify_packet(packet: &Packet) -> Request {
    match classify(&bytes(packet)) {
        Incoming::Request(request) => request,
        other => panic!("not a request: {other:?}"),
    }
}

fn publish(packet: &Packet) -> Publish {
    match classify_packet(packet).action {
        Ok(publish) => publish,
        Err(answer) => panic!("refused: {answer:?}"),
    }
}

fn refusal(packet: &Packet) -> Answer {
    match classify_packet(packet).action {
        Ok(publish) => panic!("accepted: {publish:?}"),
        Err(answer) => answer,
    }
}

fn decode(datagram: &[u8]) -> Packet {
    match Packet::from_bytes(datagram) {
        Ok(packet) => packet,
        Err(error) => panic!("answer does not parse: {error:?}"),
    }
}

#[test]
fn a_post_maps_path_query_and_payload() {
    let mut packet = post(
        &["sensors", "t1"],
        &["qos=1", "retain=true", "c=dev-7", "u=alice", "p=s3cr=t"],
    );
    packet.payload = b"21.5".to_vec();
    let request = classify_packet(&packet);
    assert_eq!(
        request.reply_to,
        ReplyTo {
            confirmable: true,
            message_id: 0x1234,
            token: vec![0xca, 0xfe, 0x01],
            size: bytes(&packet).len(),
        }
    );
    assert_eq!(
        request.action,
        Ok(Publish {
            topic: "sensors/t1".to_string(),
            qos: QoS::AtLeastOnce,
            retain: true,
            client_id: Some("dev-7".to_string()),
            username: Some("alice".to_string()),
            password: Some(b"s3cr=t".to_vec()),
            payload: Bytes::from_static(b"21.5"),
        })
    );
}

#[test]
fn defaults_without_a_query() {
    let bare = publish(&post(&["a"], &[]));
    assert_eq!(bare.topic, "a");
    assert_eq!(bare.qos, QoS::AtMostOnce);
    assert!(!bare.retain);
    assert_eq!(bare.client_id, None);
    assert_eq!(bare.username, None);
    assert_eq!(bare.password, None);
    assert!(bare.payload.is_empty());
    // Empty values are the defaults too; an empty c or u is none, an empty p is a password.
    let empty = publish(&post(&["a"], &["qos=", "retain", "c=", "u=", "p="]));
    assert_eq!(empty.qos, QoS::AtMostOnce);
    assert!(!empty.retain);
    assert_eq!(empty.client_id, None);
    assert_eq!(empty.username, None);
    assert_eq!(empty.password, Some(Vec::new()));
}

#[test]
fn every_qos_and_retain_spelling() {
    for (value, qos) in [
        ("0", QoS::AtMostOnce),
        ("1", QoS::AtLeastOnce),
        ("2", QoS::ExactlyOnce),
    ] {
        let query = format!("qos={value}");
        assert_eq!(publish(&post(&["t"], &[&query])).qos, qos);
    }
    for (value, retain) in [("true", true), ("1", true), ("false", false), ("0", false)] {
        let query = format!("retain={value}");
        assert_eq!(publish(&post(&["t"], &[&query])).retain, retain);
    }
}

#[test]
fn empty_segments_are_empty_levels() {
    assert_eq!(publish(&post(&["", "a"], &[])).topic, "/a");
    assert_eq!(publish(&post(&["a", ""], &[])).topic, "a/");
    assert_eq!(publish(&post(&["a", "", "b"], &[])).topic, "a//b");
    // Wildcards pass here; the gateway refuses them (4.00) like any topic MQTT forbids.
    assert_eq!(publish(&post(&["a", "+"], &[])).topic, "a/+");
}

#[test]
fn bad_paths_and_queries_are_bad_requests() {
    let mut not_utf8 = post(&[], &[]);
    not_utf8.add_option(CoapOption::UriPath, vec![0xff, 0xfe]);
    let mut user_not_utf8 = post(&["t"], &[]);
    user_not_utf8.add_option(CoapOption::UriQuery, b"u=\xff".to_vec());
    let cases = [
        ("no path", post(&[], &["qos=1"])),
        ("one empty segment", post(&[""], &[])),
        ("a slash in a segment", post(&["a/b"], &[])),
        ("a NUL", post(&["a\0b"], &[])),
        ("a path that is not UTF-8", not_utf8),
        ("qos 3", post(&["t"], &["qos=3"])),
        ("qos x", post(&["t"], &["qos=x"])),
        ("qos 01", post(&["t"], &["qos=01"])),
        ("retain yes", post(&["t"], &["retain=yes"])),
        ("an unknown name", post(&["t"], &["clientid=x"])),
        ("a misspelt name", post(&["t"], &["Qos=1"])),
        ("a repeated name", post(&["t"], &["qos=1", "qos=1"])),
        ("a repeated password", post(&["t"], &["p=a", "p=b"])),
        ("a user that is not UTF-8", user_not_utf8),
    ];
    for (what, packet) in cases {
        let answer = refusal(&packet);
        assert_eq!(answer.code, Code::BadRequest, "{what}");
        assert_eq!(answer.outcome, CoapOutcome::BadRequest, "{what}");
        assert!(!answer.diagnostic.is_empty(), "{what}");
    }
}

#[test]
fn methods_other_than_post_are_not_allowed() {
    for method in [
        RequestType::Get,
        RequestType::Put,
        RequestType::Delete,
        RequestType::Fetch,
        RequestType::Patch,
        RequestType::IPatch,
    ] {
        let answer = refusal(&request(MessageType::Confirmable, method, &["t"], &[]));
        assert_eq!(answer.code, Code::MethodNotAllowed, "{method:?}");
        assert_eq!(answer.outcome, CoapOutcome::MethodNotAllowed);
    }
    // An unassigned method code (0.31).
    let mut datagram = bytes(&post(&["t"], &[]));
    datagram[1] = 0x1f;
    match classify(&datagram) {
        Incoming::Request(request) => {
            assert_eq!(
                request.action.map_err(|a| a.code),
                Err(Code::MethodNotAllowed)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_critical_options_are_bad_options_and_elective_ones_are_ignored() {
    let with = |number: u16, values: &[&[u8]]| {
        let mut packet = post(&["t"], &[]);
        for value in values {
            packet.add_option(CoapOption::Unknown(number), value.to_vec());
        }
        packet
    };
    // If-Match, OSCORE, Q-Block1, an unassigned critical number.
    for number in [1, 9, 19, 2049] {
        let answer = refusal(&with(number, &[b"x"]));
        assert_eq!(answer.code, Code::BadOption, "option {number}");
        assert_eq!(answer.outcome, CoapOutcome::BadOption);
    }
    // Uri-Host, Uri-Port, Accept and Block2 are taken, once each.
    for number in [3, 7, 17, 23] {
        assert_eq!(publish(&with(number, &[b"\x01"])).topic, "t", "{number}");
        let answer = refusal(&with(number, &[b"\x01", b"\x02"]));
        assert_eq!(answer.code, Code::BadOption, "repeated {number}");
    }
    // Content-Format, Max-Age, Size1, No-Response, Request-Tag, an unassigned elective one.
    for number in [12, 14, 60, 258, 292, 2048] {
        assert_eq!(publish(&with(number, &[b"\x2a"])).topic, "t", "{number}");
    }
    for number in [35, 39] {
        let answer = refusal(&with(number, &[b"coap://elsewhere/"]));
        assert_eq!(answer.code, Code::ProxyingNotSupported, "{number}");
        assert_eq!(answer.outcome, CoapOutcome::ProxyingNotSupported);
    }
}

#[test]
fn block1_is_taken_only_as_a_single_block() {
    let with_block1 = |value: &[u8]| {
        let mut packet = post(&["t"], &[]);
        packet.add_option(CoapOption::Block1, value.to_vec());
        packet.payload = b"all of it".to_vec();
        packet
    };
    // Block 0, no more to follow, any size: the whole payload.
    for value in [&[][..], &[0x06], &[0x00, 0x06]] {
        assert_eq!(&publish(&with_block1(value)).payload[..], b"all of it");
    }
    // More to follow, or a later block: a block-wise transfer.
    for value in [&[0x0e][..], &[0x16], &[0x01, 0x06], &[0x00, 0x00, 0x16]] {
        let answer = refusal(&with_block1(value));
        assert_eq!(answer.code, Code::RequestEntityTooLarge, "{value:?}");
        assert_eq!(answer.outcome, CoapOutcome::TooLarge);
    }
    // Longer than 3 bytes, or repeated: not a Block1 this listener understands.
    assert_eq!(refusal(&with_block1(&[0, 0, 0, 6])).code, Code::BadOption);
    let mut twice = with_block1(&[0x06]);
    twice.add_option(CoapOption::Block1, vec![0x06]);
    assert_eq!(refusal(&twice).code, Code::BadOption);
}

#[test]
fn what_is_not_a_request() {
    let ignored = |datagram: &[u8]| match classify(datagram) {
        Incoming::Ignore(outcome) => outcome,
        other => panic!("{datagram:?}: {other:?}"),
    };
    let reset = |datagram: &[u8]| match classify(datagram) {
        Incoming::Reset {
            message_id,
            outcome,
        } => (message_id, outcome),
        other => panic!("{datagram:?}: {other:?}"),
    };
    // Too short, or another version.
    for datagram in [&[][..], &[0x40], &[0x40, 0x02, 0x00]] {
        assert_eq!(ignored(datagram), CoapOutcome::Malformed);
    }
    for first in [0x00, 0x80, 0xc0] {
        assert_eq!(
            ignored(&[first, 0x02, 0, 1, 0xb1, b't']),
            CoapOutcome::Malformed
        );
    }
    // ACK and RST, whatever they hold.
    assert_eq!(ignored(&[0x60, 0x00, 0, 1]), CoapOutcome::NotRequest);
    assert_eq!(ignored(&[0x70, 0x00, 0, 1]), CoapOutcome::NotRequest);
    assert_eq!(ignored(&[0x61, 0x44, 0, 1, 7]), CoapOutcome::NotRequest);
    // A ping: a confirmable empty message.
    assert_eq!(
        reset(&[0x40, 0x00, 0xab, 0xcd]),
        (0xabcd, CoapOutcome::NotRequest)
    );
    // Empty messages must be the header alone.
    assert_eq!(reset(&[0x41, 0x00, 0, 2, 9]), (2, CoapOutcome::Malformed));
    assert_eq!(
        reset(&[0x40, 0x00, 0, 3, 0xff]),
        (3, CoapOutcome::Malformed)
    );
    assert_eq!(ignored(&[0x50, 0x00, 0, 4]), CoapOutcome::NotRequest);
    // A response nobody asked for, and reserved classes.
    assert_eq!(reset(&[0x40, 0x44, 0, 5]), (5, CoapOutcome::NotRequest));
    assert_eq!(ignored(&[0x50, 0x84, 0, 5]), CoapOutcome::NotRequest);
    for code in [0x20, 0xc0, 0xe1] {
        assert_eq!(reset(&[0x40, code, 0, 6]), (6, CoapOutcome::Malformed));
    }
    // Format errors: token length 9, a token longer than the datagram, an option running past
    // the end, option delta 15 and length 15.
    for (datagram, id) in [
        (&[0x49, 0x02, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9][..], 7),
        (&[0x44, 0x02, 0, 8, 1, 2], 8),
        (&[0x40, 0x02, 0, 9, 0xb5, b'a'], 9),
        (&[0x40, 0x02, 0, 10, 0xf1, b'a'], 10),
        (&[0x40, 0x02, 0, 11, 0xbf, b'a'], 11),
    ] {
        assert_eq!(reset(datagram), (id, CoapOutcome::Malformed));
        let mut non = datagram.to_vec();
        non[0] |= 0x10;
        assert_eq!(ignored(&non), CoapOutcome::Malformed);
    }
}

#[test]
fn the_gateway_request_carries_every_field() {
    let mut packet = post(&["s", "t"], &["qos=2", "retain=1", "u=bob", "p=pw"]);
    packet.payload = b"x".to_vec();
    let publish = publish(&packet);
    let peer = SocketAddr::from(([10, 0, 0, 9], 5683));
    let request = publish.gateway("dev", peer);
    assert_eq!(request.client_id, "dev");
    assert_eq!(request.username, Some("bob"));
    assert_eq!(request.password, Some(&b"pw"[..]));
    assert_eq!(request.peer, peer);
    assert_eq!(request.via, "coap");
    assert_eq!(request.topic, "s/t");
    assert_eq!(request.qos, QoS::ExactlyOnce);
    assert!(request.retain);
    assert_eq!(&request.payload[..], b"x");
}

#[test]
fn the_default_client_id_names_the_peer() {
    assert_eq!(
        default_client_id(SocketAddr::from(([192, 0, 2, 1], 40000))),
        "coap-192.0.2.1"
    );
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:40000"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(default_client_id(mapped), "coap-192.0.2.1");
    let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(default_client_id(v6), "coap-2001:db8::1");
}

#[test]
fn gateway_refusals_map_to_codes() {
    let failure = |kind| {
        Err(GatewayRefusal::Unauthenticated(AuthFailure {
            kind,
            reason: String::new(),
        }))
    };
    let cases = [
        (Ok(()), Code::Changed, CoapOutcome::Published, None),
        (
            Err(GatewayRefusal::InvalidTopic),
            Code::BadRequest,
            CoapOutcome::BadRequest,
            None,
        ),
        (
            Err(GatewayRefusal::TooLarge),
            Code::RequestEntityTooLarge,
            CoapOutcome::TooLarge,
            None,
        ),
        (
            failure(AuthFailureKind::BadCredentials),
            Code::Unauthorized,
            CoapOutcome::Unauthorized,
            None,
        ),
        (
            failure(AuthFailureKind::NotAuthorized),
            Code::Unauthorized,
            CoapOutcome::Unauthorized,
            None,
        ),
        (
            failure(AuthFailureKind::Unavailable),
            Code::ServiceUnavailable,
            CoapOutcome::AuthUnavailable,
            Some(RETRY_AFTER_SECS),
        ),
        (
            Err(GatewayRefusal::Forbidden),
            Code::Forbidden,
            CoapOutcome::Forbidden,
            None,
        ),
    ];
    for (result, code, outcome, max_age) in cases {
        let answer = Answer::of(&result);
        assert_eq!(answer.code, code, "{result:?}");
        assert_eq!(answer.outcome, outcome, "{result:?}");
        assert_eq!(answer.max_age, max_age, "{result:?}");
    }
    assert_eq!(Answer::busy().code, Code::ServiceUnavailable);
    assert_eq!(Answer::busy().outcome, CoapOutcome::Busy);
}

#[test]
fn a_confirmable_request_gets_a_piggybacked_ack() {
    let request = classify_packet(&post(&["sensors", "kitchen"], &["qos=1"]));
    let datagram = request
        .reply_to
        .encode(&Answer::PUBLISHED, 0x9999)
        .unwrap_or_default();
    let answer = decode(&datagram);
    assert_eq!(answer.header.get_version(), 1);
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(
        answer.header.message_id, 0x1234,
        "the request's id, not a fresh one"
    );
    assert_eq!(answer.get_token(), &[0xca, 0xfe, 0x01]);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert!(answer.payload.is_empty());
    assert_eq!(datagram.len(), 4 + 3);
}

#[test]
fn a_non_confirmable_request_gets_a_non_response_with_its_own_id() {
    let request = classify_packet(&request(
        MessageType::NonConfirmable,
        RequestType::Post,
        &["t"],
        &[],
    ));
    assert!(!request.reply_to.confirmable);
    let datagram = request
        .reply_to
        .encode(&Answer::PUBLISHED, 0x9999)
        .unwrap_or_default();
    let answer = decode(&datagram);
    assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(answer.header.message_id, 0x9999);
    assert_eq!(answer.get_token(), &[0xca, 0xfe, 0x01]);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
}

#[test]
fn every_code_encodes_as_coap_writes_it() {
    let reply_to = ReplyTo {
        confirmable: true,
        message_id: 1,
        token: Vec::new(),
        size: 0,
    };
    for (code, byte) in [
        (Code::Changed, 0x44),
        (Code::BadRequest, 0x80),
        (Code::Unauthorized, 0x81),
        (Code::BadOption, 0x82),
        (Code::Forbidden, 0x83),
        (Code::MethodNotAllowed, 0x85),
        (Code::RequestEntityTooLarge, 0x8d),
        (Code::ServiceUnavailable, 0xa3),
        (Code::ProxyingNotSupported, 0xa5),
    ] {
        let answer = Answer::new(code, CoapOutcome::Published, "diagnostic");
        let datagram = reply_to.encode(&answer, 0).unwrap_or_default();
        assert_eq!(datagram, [0x60, byte, 0, 1], "{code:?}");
        let text = format!("{}.{:02}", byte >> 5, byte & 0x1f);
        assert_eq!(code.as_str(), text);
    }
}

#[test]
fn the_diagnostic_is_sent_only_when_the_answer_stays_smaller_than_the_request() {
    let answer = Answer::bad_request("qos must be 0, 1 or 2");
    let small = classify_packet(&post(&["t"], &["qos=9"]));
    let datagram = small.reply_to.encode(&answer, 0).unwrap_or_default();
    assert!(decode(&datagram).payload.is_empty());
    assert!(datagram.len() <= small.reply_to.size);

    let mut large = post(&["sensors", "kitchen", "temperature"], &["qos=9"]);
    large.payload = vec![b'x'; 64];
    let large = classify_packet(&large);
    let datagram = large.reply_to.encode(&answer, 0).unwrap_or_default();
    assert_eq!(decode(&datagram).payload, b"qos must be 0, 1 or 2");
    assert!(datagram.len() <= large.reply_to.size);
}

#[test]
fn service_unavailable_carries_max_age() {
    let request = classify_packet(&post(&["t"], &[]));
    let datagram = request
        .reply_to
        .encode(&Answer::busy(), 0)
        .unwrap_or_default();
    let answer = decode(&datagram);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::ServiceUnavailable)
    );
    assert_eq!(
        answer.get_first_option(CoapOption::MaxAge),
        Some(&vec![RETRY_AFTER_SECS as u8])
    );
    assert_eq!(minimal_uint(0), Vec::<u8>::new());
    assert_eq!(minimal_uint(0x0102), vec![1, 2]);
    assert_eq!(minimal_uint(u32::MAX), vec![0xff; 4]);
}

#[test]
fn a_reset_echoes_the_message_id() {
    assert_eq!(reset(0xbeef), Some(vec![0x70, 0x00, 0xbe, 0xef]));
}

proptest! {
    /// Whatever arrives: no panic, and every request's answer encodes, echoing the token and
    /// (for a confirmable request) the message id, never longer than the request by its
    /// diagnostic.
    #[test]
    fn any_datagram_is_classified_and_answered(datagram in proptest::collection::vec(any::<u8>(), 0..96)) {
        check_any(&datagram);
    }

    #[test]
    fn any_post_header_with_any_options(
        id in any::<u16>(),
        token in proptest::collection::vec(any::<u8>(), 0..=8),
        rest in proptest::collection::vec(any::<u8>(), 0..64),
        confirmable in any::<bool>(),
    ) {
        let first = 0x40 | if confirmable { 0 } else { 0x10 } | token.len() as u8;
        let mut datagram = vec![first, 0x02];
        datagram.extend_from_slice(&id.to_be_bytes());
        datagram.extend_from_slice(&token);
        datagram.extend_from_slice(&rest);
        check_any(&datagram);
    }
}

fn check_any(datagram: &[u8]) {
    match classify(datagram) {
        Incoming::Ignore(_) => {}
        Incoming::Reset { message_id, .. } => {
            assert!(datagram.len() >= 4);
            assert_eq!(message_id.to_be_bytes(), datagram[2..4]);
            assert_eq!(datagram[0] & 0x30, 0, "only a confirmable message is reset");
        }
        Incoming::Request(request) => {
            let answers = [
                request.action.clone().err().unwrap_or(Answer::PUBLISHED),
                Answer::busy(),
                Answer::bad_request("a diagnostic text of some length"),
            ];
            for answer in answers {
                let Some(bytes) = request.reply_to.encode(&answer, 7) else {
                    panic!("no answer encoded for {request:?}");
                };
                let answer = decode(&bytes);
                assert_eq!(answer.get_token(), &request.reply_to.token[..]);
                let id = if request.reply_to.confirmable {
                    request.reply_to.message_id
                } else {
                    7
                };
                assert_eq!(answer.header.message_id, id);
                if !answer.payload.is_empty() {
                    assert!(bytes.len() <= request.reply_to.size);
                }
            }
        }
    }
}
