use super::*;

fn message(topic: &str, payload: &[u8], qos: QoS) -> Message {
    Message::new(
        Bytes::copy_from_slice(topic.as_bytes()),
        Bytes::copy_from_slice(payload),
        qos,
        false,
    )
}

fn delivery(topic: &str, payload: &[u8], qos: QoS) -> Delivery {
    Delivery {
        message: Arc::new(message(topic, payload, qos)),
        qos,
        retain: false,
        subscription_ids: SubscriptionIds::new(),
        stored: None,
    }
}

/// A session with something in every part.
fn full(now: Instant) -> SessionSnapshot {
    let mut with_properties = message("a/b", b"{\"x\":1}", QoS::ExactlyOnce);
    // Payload Format Indicator 1 (UTF-8), Content Type "application/json".
    let mut properties = vec![0x01, 0x01, 0x03, 0x00, 0x10];
    properties.extend_from_slice(b"application/json");
    with_properties.properties = Bytes::from(properties);
    with_properties.expires_at = Some(now + Duration::from_secs(90));
    let mut identified = delivery("a/c", b"two", QoS::AtLeastOnce);
    identified.subscription_ids.push(7);
    identified.subscription_ids.push(268_435_455);
    identified.retain = true;
    let mut will = message("wills/c", b"gone", QoS::AtLeastOnce);
    will.retain = true;
    SessionSnapshot {
        client_id: "client-ü".to_string(),
        owner: Some("alice".to_string()),
        expiry: Some(Duration::from_secs(3600)).into(),
        subscriptions: vec![
            SnapshotSubscription {
                filter: "a/#".to_string(),
                grant: Grant::qos(QoS::ExactlyOnce),
            },
            SnapshotSubscription {
                filter: "$share/g/a/+".to_string(),
                grant: Grant {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    identifier: 7,
                },
            },
        ],
        incoming_qos2: vec![3, 65_535],
        retained: vec![
            RetainedOwed {
                filter: "r/#".into(),
                qos: QoS::AtLeastOnce,
                identifier: 0,
                after: Some(Bytes::from_static(b"r/5")),
            },
            RetainedOwed {
                filter: "s/+".into(),
                qos: QoS::AtMostOnce,
                identifier: 9,
                after: None,
            },
        ],
        in_flight: vec![
            (
                10,
                InFlight::Published(Delivery {
                    message: Arc::new(with_properties),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: SubscriptionIds::new(),
                    stored: None,
                }),
            ),
            (11, InFlight::Released(None)),
            (12, InFlight::Unsent(delivery("a/d", b"", QoS::AtLeastOnce))),
        ],
        queued: vec![identified, delivery("a/e", &[0u8; 3000], QoS::AtMostOnce)],
        will: Some(DelayedWill {
            message: Box::new(will),
            expiry: Some(Duration::from_secs(30)),
            delay: Duration::from_secs(5),
        }),
        connected_ms: 1_764_000_000_123,
        offline_for: Some(Duration::from_millis(4_500)),
        version: crate::session::snapshot::VERSION,
    }
}

/// The parts that matter, comparable (messages by content).
fn summary(snapshot: &SessionSnapshot) -> String {
    let delivery = |d: &Delivery| {
        format!(
            "{:?}/{}/{:?}/{:?}/{:?}/{:?}/{:?}/{}",
            d.qos,
            d.retain,
            d.subscription_ids,
            d.message.topic,
            d.message.payload,
            d.message.properties,
            d.message.qos,
            d.message.retain
        )
    };
    let in_flight: Vec<String> = snapshot
        .in_flight
        .iter()
        .map(|(id, state)| match state {
            InFlight::Published(d) | InFlight::Unsent(d) => format!("{id} sent {}", delivery(d)),
            InFlight::Released(_) => format!("{id} released"),
        })
        .collect();
    let retained: Vec<String> = snapshot
        .retained
        .iter()
        .map(|o| format!("{}/{:?}/{}/{:?}", o.filter, o.qos, o.identifier, o.after))
        .collect();
    format!(
        "{} {:?} {:?} {:?} {:?} {retained:?} {in_flight:?} {:?} {:?} {} {:?}",
        snapshot.client_id,
        snapshot.owner,
        snapshot.expiry,
        snapshot.subscriptions,
        snapshot.incoming_qos2,
        snapshot.queued.iter().map(delivery).collect::<Vec<_>>(),
        snapshot.will.as_ref().map(|w| (
            &w.message.topic,
            &w.message.payload,
            w.message.retain,
            w.delay,
            w.expiry
        )),
        snapshot.connected_ms,
        snapshot.offline_for,
    )
}

#[test]
fn a_session_reads_back_as_it_was_written() {
    let now = Instant::now();
    let snapshot = full(now);
    let bytes = snapshot.encode(now);
    let read = SessionSnapshot::decode(&bytes, now, Duration::ZERO).expect("decodes");
    assert_eq!(summary(&read), summary(&snapshot));
    // A PUBLISH sent and one waiting to be resent both come back as sent: the connection that
    // resumes the session resends them all.
    assert!(matches!(read.in_flight[2].1, InFlight::Published(_)));
    // The expiry left counts from the reader's clock.
    let InFlight::Published(first) = &read.in_flight[0].1 else {
        panic!("first in flight");
    };
    let left = first.message.expires_at.expect("expiry") - now;
    assert!(left <= Duration::from_secs(90) && left > Duration::from_secs(89));
    // And less what the bytes waited.
    let later = Instant::now();
    let aged = SessionSnapshot::decode(&bytes, later, Duration::from_secs(60)).expect("decodes");
    let InFlight::Published(first) = &aged.in_flight[0].1 else {
        panic!("first in flight");
    };
    let left = first.message.expires_at.expect("expiry") - later;
    assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
    // An empty session too.
    let empty = SessionSnapshot::empty("");
    let read = SessionSnapshot::decode(&empty.encode(now), now, Duration::ZERO).expect("empty");
    assert_eq!(summary(&read), summary(&empty));
}

/// A peer of sync version 5 reads version 1 only: the same bytes but for the version and the
/// connected and offline times at the end, which read back as not known.
#[test]
fn version_1_is_version_2_without_the_times_and_reads_back_without_them() {
    let now = Instant::now();
    let snapshot = full(now);
    let two = snapshot.encode(now);
    let one = snapshot.encode_as(now, VERSION_1);
    assert_eq!((two[0], one[0]), (2, 1));
    // [connected ms u64][1][offline ms u64]
    assert_eq!(two.len(), one.len() + 8 + 1 + 8);
    assert_eq!(two[1..one.len()], one[1..]);
    let read = SessionSnapshot::decode(&one, now, Duration::ZERO).expect("version 1 decodes");
    assert_eq!(
        (read.connected_ms, read.offline_for, read.version),
        (0, None, 1)
    );
    let mut expected = full(now);
    expected.connected_ms = 0;
    expected.offline_for = None;
    assert_eq!(summary(&read), summary(&expected));
    // A version beyond is clamped, not written as a number no reader knows.
    assert_eq!(snapshot.encode_as(now, 9)[0], VERSION);
}

#[test]
fn every_truncation_is_an_error() {
    let now = Instant::now();
    let bytes = full(now).encode(now);
    for len in 0..bytes.len() {
        let error = SessionSnapshot::decode(&bytes[..len], now, Duration::ZERO)
            .expect_err("a truncated snapshot must not decode");
        assert!(
            matches!(
                error,
                SnapshotError::Truncated(_) | SnapshotError::Invalid(_)
            ),
            "{len}: {error}"
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert_eq!(
        SessionSnapshot::decode(&longer, now, Duration::ZERO).expect_err("trailing"),
        SnapshotError::Trailing(1)
    );
    for version in [0, 3] {
        let mut other = bytes.to_vec();
        other[0] = version;
        assert_eq!(
            SessionSnapshot::decode(&other, now, Duration::ZERO).expect_err("version"),
            SnapshotError::Version(version)
        );
    }
    let mut unknown_offline = bytes.to_vec();
    let flag = unknown_offline.len() - 9;
    unknown_offline[flag] = 2;
    assert_eq!(
        SessionSnapshot::decode(&unknown_offline, now, Duration::ZERO).expect_err("flag"),
        SnapshotError::Invalid("offline time")
    );
}

#[test]
fn what_a_client_could_not_have_sent_is_refused() {
    let now = Instant::now();
    let base = full(now);
    let check = |edit: &dyn Fn(&mut SessionSnapshot), says: &str| {
        let mut snapshot = full(now);
        edit(&mut snapshot);
        let error =
            SessionSnapshot::decode(&snapshot.encode(now), now, Duration::ZERO).expect_err(says);
        assert!(error.to_string().contains(says), "{error} / {says}");
    };
    check(
        &|s| s.subscriptions[0].filter = "a/#/b".to_string(),
        "subscription filter",
    );
    check(
        &|s| s.subscriptions[1].filter = "a/#".to_string(),
        "a filter twice",
    );
    check(
        &|s| s.queued[0] = delivery("a/+", b"x", QoS::AtLeastOnce),
        "message topic",
    );
    check(&|s| s.incoming_qos2.push(0), "packet id");
    check(
        &|s| s.in_flight.push((10, InFlight::Released(None))),
        "in-flight packet id",
    );
    check(
        &|s| {
            s.in_flight
                .push((20, InFlight::Published(delivery("a", b"", QoS::AtMostOnce))))
        },
        "in-flight QoS 0",
    );
    check(
        &|s| {
            let mut bad = message("a", b"\xff", QoS::AtLeastOnce);
            // Payload Format Indicator 1 with a payload that is not UTF-8.
            bad.properties = Bytes::from_static(&[0x01, 0x01]);
            s.queued.push(Delivery {
                message: Arc::new(bad),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: SubscriptionIds::new(),
                stored: None,
            });
        },
        "message properties",
    );
    check(
        &|s| {
            let mut upgraded = delivery("a", b"", QoS::AtLeastOnce);
            upgraded.qos = QoS::ExactlyOnce;
            s.queued.push(upgraded);
        },
        "above the message's",
    );
    drop(base);
}

proptest::proptest! {
    /// Whatever the bytes, decoding returns (an error or a snapshot) and never panics: a peer
    /// or a damaged file cannot bring a node down.
    #[test]
    fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = SessionSnapshot::decode(&bytes, Instant::now(), Duration::ZERO);
    }

    /// Nor does a real snapshot with one byte changed.
    #[test]
    fn a_damaged_snapshot_decodes_without_panicking(at in 0usize..4096, value in proptest::num::u8::ANY) {
        let now = Instant::now();
        let mut bytes = full(now).encode(now).to_vec();
        let at = at % bytes.len();
        bytes[at] = value;
        let _ = SessionSnapshot::decode(&bytes, now, Duration::ZERO);
    }
}

#[test]
fn deliveries_read_back_as_written() {
    let now = Instant::now();
    let snapshot = full(now);
    let bytes = encode_deliveries(&snapshot.queued, now);
    let read = decode_deliveries(&bytes, now).expect("decodes");
    let payloads: Vec<&[u8]> = read.iter().map(|d| &d.message.payload[..]).collect();
    assert_eq!(payloads, [&b"two"[..], &[0u8; 3000][..]]);
    assert_eq!(
        read[0].subscription_ids,
        snapshot.queued[0].subscription_ids
    );
    for len in 0..bytes.len() {
        assert!(decode_deliveries(&bytes[..len], now).is_err(), "{len}");
    }
}
