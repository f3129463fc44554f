//! MQTT 5 CONNECT / CONNACK (OASIS MQTT 5.0 §3.1, §3.2): the capabilities the broker announces
//! and how its flags change them, Assigned Client Identifier, Session Expiry capped by `-se`,
//! Server Keep Alive (`-mka`), Response Information, Authentication Method refused, and every
//! invalid CONNECT property answered with the right CONNACK reason code before the close.

use std::time::{Duration, Instant};

use coolpy7_tests::packets5::{reason, ConnAck, Connect, Packet, Property as P};
use coolpy7_tests::{unique_id, Broker, RawClient5, TIMEOUT};

/// Sends `connect`, expects a CONNACK with `code` and then the close; returns the CONNACK.
async fn refused(broker: &Broker, connect: &Connect, code: u8) -> ConnAck {
    let mut client = RawClient5::open(broker.mqtt_addr()).await;
    client.send(&connect.encode()).await;
    let before = client.expect_closed(TIMEOUT).await;
    match before.as_slice() {
        [Packet::ConnAck(connack)] => {
            assert_eq!(
                connack.code, code,
                "CONNACK reason: expected {code:#04x}, got {:#04x} ({connack:?}) for {connect:?}",
                connack.code
            );
            assert!(!connack.session_present, "a refusal has session present 0");
            connack.clone()
        }
        other => panic!(
            "expected exactly one CONNACK {code:#04x} before the close for {connect:?}, got \
             {other:?}"
        ),
    }
}

#[tokio::test]
async fn connack_announces_the_default_capabilities() {
    let broker = Broker::start(&[]);
    let (_client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("caps"))).await;
    assert!(!connack.session_present);
    let props = &connack.props;
    assert_eq!(props.topic_alias_maximum(), Some(64), "{props:?}");
    // -mri defaults to 65535, which is the protocol default: not announced.
    assert_eq!(props.receive_maximum(), None, "{props:?}");
    // -mqos 2: not announced.
    assert_eq!(props.maximum_qos(), None, "{props:?}");
    // -mpl defaults to 1 MiB, announced as Maximum Packet Size.
    assert_eq!(props.maximum_packet_size(), Some(1_048_576), "{props:?}");
    assert_eq!(
        props.retain_available(),
        None,
        "retained messages are supported"
    );
    assert_eq!(props.wildcard_subscription_available(), Some(1));
    assert_eq!(props.subscription_identifier_available(), Some(1));
    assert_eq!(props.shared_subscription_available(), Some(1));
    assert_eq!(
        props.assigned_client_identifier(),
        None,
        "the client gave an id"
    );
    assert_eq!(props.server_keep_alive(), None, "-mka 0 caps nothing");
    assert_eq!(
        props.session_expiry_interval(),
        None,
        "the client asked for 0 (absent), which the broker accepts as is"
    );
    assert_eq!(props.response_information(), None, "not requested");
    assert_eq!(props.authentication_method(), None);
}

#[tokio::test]
async fn connack_reflects_the_limit_flags() {
    let broker = Broker::start(&["-mri", "10", "-mta", "5", "-mqos", "1", "-mpl", "2048"]);
    let (_client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("flags"))).await;
    let props = &connack.props;
    assert_eq!(props.receive_maximum(), Some(10), "{props:?}");
    assert_eq!(props.topic_alias_maximum(), Some(5), "{props:?}");
    assert_eq!(props.maximum_qos(), Some(1), "{props:?}");
    assert_eq!(props.maximum_packet_size(), Some(2048), "{props:?}");
}

#[tokio::test]
async fn maximum_qos_0_is_announced() {
    let broker = Broker::start(&["-mqos", "0"]);
    let (_client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("q0"))).await;
    assert_eq!(connack.props.maximum_qos(), Some(0), "{connack:?}");
}

#[tokio::test]
async fn topic_alias_maximum_0_is_not_announced() {
    let broker = Broker::start(&["-mta", "0"]);
    let (_client, connack) =
        RawClient5::connect_v5(broker.mqtt_addr(), &Connect::new(&unique_id("ta0"))).await;
    assert_eq!(connack.props.topic_alias_maximum(), None, "{connack:?}");
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_client_identifier() {
    let broker = Broker::start(&[]);
    let mut assigned = Vec::new();
    for clean_start in [true, false] {
        let connect = Connect::new("").clean_start(clean_start).session_expiry(60);
        let (client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
        let id = connack
            .props
            .assigned_client_identifier()
            .unwrap_or_else(|| panic!("no Assigned Client Identifier: {connack:?}"));
        assert!(!id.is_empty(), "an empty Assigned Client Identifier");
        assert!(!connack.session_present, "a new id has no session");
        assigned.push((id, client));
    }
    assert_ne!(assigned[0].0, assigned[1].0, "two connections, one id");

    // The assigned id names a real session: resuming it finds it.
    let (id, mut client) = assigned.pop().expect("two");
    client.subscribe_ok(1, "assigned/t", 1).await;
    client.disconnect().await;
    broker.wait_connections(1).await;
    let resume = Connect::new(&id).clean_start(false).session_expiry(60);
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &resume).await;
    assert!(
        connack.session_present,
        "the session of assigned id {id:?} must be resumable: {connack:?}"
    );
    assert_eq!(
        connack.props.assigned_client_identifier(),
        None,
        "the client gave its id this time"
    );
}

#[tokio::test]
async fn session_expiry_interval_is_capped_by_the_se_flag() {
    let broker = Broker::start(&["-se", "10"]);
    for (asked, announced) in [(100, Some(10)), (u32::MAX, Some(10)), (10, None), (5, None)] {
        let connect = Connect::new(&unique_id("se")).session_expiry(asked);
        let (client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
        assert_eq!(
            connack.props.session_expiry_interval(),
            announced,
            "asked {asked}: {connack:?}"
        );
        client.disconnect().await;
    }
}

#[tokio::test]
async fn se_zero_does_not_cap_the_session_expiry_interval() {
    let broker = Broker::start(&["-se", "0"]);
    let connect = Connect::new(&unique_id("se0")).session_expiry(u32::MAX);
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(connack.props.session_expiry_interval(), None, "{connack:?}");
}

#[tokio::test]
async fn server_keep_alive_is_announced_when_the_client_asks_for_more_or_none() {
    let broker = Broker::start(&["-mka", "20"]);
    for (asked, announced) in [
        (0, Some(20)),
        (100, Some(20)),
        (21, Some(20)),
        (20, None),
        (5, None),
    ] {
        let connect = Connect::new(&unique_id("mka")).keep_alive(asked);
        let (client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
        assert_eq!(
            connack.props.server_keep_alive(),
            announced,
            "keep alive {asked}: {connack:?}"
        );
        client.disconnect().await;
    }
}

#[tokio::test]
async fn server_keep_alive_is_enforced_with_disconnect_0x8d() {
    let broker = Broker::start(&["-mka", "1"]);
    // The client asks for no keep alive at all; the broker imposes 1 s.
    let connect = Connect::new(&unique_id("mka-enforced")).keep_alive(0);
    let (mut client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(connack.props.server_keep_alive(), Some(1));
    let start = Instant::now();
    client.assert_open_for(Duration::from_millis(900)).await;
    let (disconnect, before) = client.expect_disconnect_after(Duration::from_secs(4)).await;
    assert_eq!(
        disconnect.code,
        reason::KEEP_ALIVE_TIMEOUT,
        "{disconnect:?}"
    );
    assert!(before.is_empty(), "{before:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn v3_client_keep_alive_above_mka_is_enforced_as_mka() {
    let broker = Broker::start(&["-mka", "1"]);
    let connect = coolpy7_tests::packets::Connect::v311(&unique_id("mka-v3")).keep_alive(0);
    let (mut client, _) = coolpy7_tests::RawClient::handshake(broker.mqtt_addr(), &connect).await;
    client.assert_open_for(Duration::from_millis(900)).await;
    // A 3.1.1 client cannot be told: no DISCONNECT, just the close.
    client.expect_closed_silently(Duration::from_secs(4)).await;
}

#[tokio::test]
async fn response_information_is_sent_only_when_requested() {
    let broker = Broker::start(&[]);
    let id = unique_id("rri");
    let connect = Connect::new(&id).prop(P::RequestResponseInformation(1));
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(
        connack.props.response_information(),
        Some(format!("coolpy7/response/{id}/")),
        "{connack:?}"
    );
    let connect = Connect::new(&unique_id("rri0")).prop(P::RequestResponseInformation(0));
    let (_client, connack) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    assert_eq!(connack.props.response_information(), None, "{connack:?}");
}

#[tokio::test]
async fn authentication_method_is_refused_with_0x8c() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("auth"))
        .prop(P::AuthenticationMethod("SCRAM-SHA-256".into()))
        .prop(P::AuthenticationData(b"client-first".to_vec()));
    let connack = refused(&broker, &connect, reason::BAD_AUTHENTICATION_METHOD).await;
    assert_eq!(
        connack.props.authentication_method(),
        None,
        "no method is in use, so none may be echoed"
    );
}

#[tokio::test]
async fn user_properties_on_connect_are_accepted() {
    let broker = Broker::start(&[]);
    let connect = Connect::new(&unique_id("up"))
        .prop(P::UserProperty("a".into(), "1".into()))
        .prop(P::UserProperty("a".into(), "2".into()));
    let (mut client, _) = RawClient5::connect_v5(broker.mqtt_addr(), &connect).await;
    client.ping().await;
}

#[tokio::test]
async fn v5_client_beyond_max_connections_gets_0x89() {
    let broker = Broker::start(&["-mc", "1"]);
    let _first = RawClient5::connect_simple(broker.mqtt_addr(), &unique_id("first")).await;
    refused(
        &broker,
        &Connect::new(&unique_id("second")),
        reason::SERVER_BUSY,
    )
    .await;
}

/// Properties that make a CONNECT a Protocol Error (§3.1.2.11): CONNACK 0x82, then the close.
#[tokio::test]
async fn invalid_connect_properties_are_refused_with_0x82() {
    let mut broker = Broker::start(&[]);
    let cases: Vec<(&str, Connect)> = vec![
        (
            "duplicate Session Expiry Interval",
            Connect::new("c").session_expiry(10).session_expiry(20),
        ),
        (
            "duplicate Receive Maximum",
            Connect::new("c")
                .prop(P::ReceiveMaximum(5))
                .prop(P::ReceiveMaximum(5)),
        ),
        (
            "duplicate Maximum Packet Size",
            Connect::new("c")
                .prop(P::MaximumPacketSize(500))
                .prop(P::MaximumPacketSize(600)),
        ),
        (
            "duplicate Topic Alias Maximum",
            Connect::new("c")
                .prop(P::TopicAliasMaximum(5))
                .prop(P::TopicAliasMaximum(5)),
        ),
        (
            "duplicate Request Problem Information",
            Connect::new("c")
                .prop(P::RequestProblemInformation(1))
                .prop(P::RequestProblemInformation(1)),
        ),
        (
            "Receive Maximum 0",
            Connect::new("c").prop(P::ReceiveMaximum(0)),
        ),
        (
            "Maximum Packet Size 0",
            Connect::new("c").prop(P::MaximumPacketSize(0)),
        ),
        (
            "Request Problem Information 2",
            Connect::new("c").prop(P::RequestProblemInformation(2)),
        ),
        (
            "Request Response Information 2",
            Connect::new("c").prop(P::RequestResponseInformation(2)),
        ),
        (
            "duplicate Will Delay Interval",
            Connect::new("c")
                .will("w/t", b"x", 0, false)
                .will_prop(P::WillDelayInterval(1))
                .will_prop(P::WillDelayInterval(2)),
        ),
    ];
    for (what, connect) in cases {
        let connect = Connect {
            client_id: unique_id("bad-prop").into_bytes(),
            ..connect
        };
        eprintln!("case: {what}");
        refused(&broker, &connect, reason::PROTOCOL_ERROR).await;
    }
    coolpy7_tests::assert_healthy(&mut broker).await;
}

/// Properties that make a CONNECT malformed (§2.2.2.2: an identifier not valid for the packet,
/// a value not of its type, a length that does not fit): CONNACK 0x81, then the close.
#[tokio::test]
async fn malformed_connect_properties_are_refused_with_0x81() {
    let mut broker = Broker::start(&[]);
    let cases: Vec<(&str, Connect)> = vec![
        (
            "Topic Alias (a PUBLISH property) on CONNECT",
            Connect::new("c").prop(P::TopicAlias(1)),
        ),
        (
            "Assigned Client Identifier (a CONNACK property) on CONNECT",
            Connect::new("c").prop(P::AssignedClientIdentifier("x".into())),
        ),
        (
            "Session Expiry Interval among the will properties",
            Connect::new("c")
                .will("w/t", b"x", 0, false)
                .will_prop(P::SessionExpiryInterval(5)),
        ),
        (
            "unknown property identifier 0x7F",
            Connect::new("c").prop(P::Raw(vec![0x7F, 0, 0])),
        ),
        (
            "Session Expiry Interval cut short (2 of 4 bytes)",
            Connect::new("c").props_raw(&[3, 0x11, 0, 0]),
        ),
        (
            "property length beyond the packet",
            Connect::new("c").props_raw(&[0x7F, 0x11, 0, 0, 0, 1]),
        ),
        (
            "User Property value that is not UTF-8",
            Connect::new("c").prop(P::Raw(vec![0x26, 0, 1, b'k', 0, 2, 0xC3, 0x28])),
        ),
    ];
    for (what, connect) in cases {
        let connect = Connect {
            client_id: unique_id("malformed-prop").into_bytes(),
            ..connect
        };
        eprintln!("case: {what}");
        refused(&broker, &connect, reason::MALFORMED_PACKET).await;
    }
    coolpy7_tests::assert_healthy(&mut broker).await;
}
