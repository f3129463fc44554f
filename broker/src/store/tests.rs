use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::codec::QoS;
use crate::router::Grant;
use crate::session::{InFlight, SessionExpiry, SessionSnapshot, SnapshotSubscription};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempDir(
            std::env::temp_dir().join(format!("coolpy7-store-{name}-{}-{n}", std::process::id())),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (bounded) until the writer has done everything queued.
fn settle(store: &Store) {
    let ticket = store.written();
    for _ in 0..2_000 {
        if store.is_synced(ticket) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the writer did not catch up within 10 s");
}

fn delivery(payload: &'static str, qos: QoS) -> Delivery {
    let message = Message::new(
        Bytes::from_static(b"a/b"),
        Bytes::from_static(payload.as_bytes()),
        qos,
        false,
    );
    Delivery::new(Arc::new(message), qos, false)
}

fn record(client_id: &str) -> SessionSnapshot {
    SessionSnapshot {
        expiry: SessionExpiry::from(Some(Duration::from_secs(3600))),
        subscriptions: vec![SnapshotSubscription {
            filter: "a/+".into(),
            grant: Grant::qos(QoS::ExactlyOnce),
        }],
        connected_ms: 1_764_000_000_000,
        ..SessionSnapshot::empty(client_id)
    }
}

fn seq(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[test]
fn a_session_reads_back_as_it_was_left() {
    let dir = TempDir::new("session");
    {
        let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
        let journal = store.journal(Arc::from("c1")).unwrap();
        journal.session(&record("c1"), None);
        journal.queued(seq(1), &delivery("sent-1", QoS::ExactlyOnce));
        journal.sent(seq(1), 7);
        journal.queued(seq(2), &delivery("released-2", QoS::ExactlyOnce));
        journal.sent(seq(2), 8);
        journal.released(seq(2), 8);
        journal.queued(seq(3), &delivery("acked-3", QoS::AtLeastOnce));
        journal.sent(seq(3), 9);
        journal.done(seq(3), true);
        journal.queued(seq(4), &delivery("queued-4", QoS::AtLeastOnce));
        journal.awaiting(42);
        journal.awaiting(43);
        journal.released_awaiting(43);
        // A session that ended leaves nothing behind.
        let gone = store.journal(Arc::from("c2")).unwrap();
        gone.session(&record("c2"), Some(keys::wall_ms()));
        gone.queued(seq(1), &delivery("x", QoS::AtLeastOnce));
        gone.end();
        store.close();
    }
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.skipped, 0);
    assert_eq!(loaded.sessions.len(), 1);
    let session = &loaded.sessions[0];
    let snapshot = &session.snapshot;
    assert_eq!(snapshot.client_id, "c1");
    assert_eq!(
        session.offline_for, None,
        "written while its client was connected"
    );
    assert_eq!(snapshot.subscriptions.len(), 1);
    assert_eq!(snapshot.incoming_qos2, vec![42]);
    let in_flight: Vec<String> = snapshot
        .in_flight
        .iter()
        .map(|(id, state)| match state {
            InFlight::Published(d) => format!("{id} {:?}", d.message.payload),
            InFlight::Released(stored) => format!("{id} released {stored:?}"),
            InFlight::Unsent(_) => "unsent".into(),
        })
        .collect();
    assert_eq!(in_flight, ["7 b\"sent-1\"", "8 released Some(2)"]);
    assert_eq!(snapshot.queued.len(), 1);
    assert_eq!(&snapshot.queued[0].message.payload[..], b"queued-4");
    assert_eq!(snapshot.queued[0].stored, Some(seq(4)));
    assert_eq!(session.next_seq, seq(5));
}

#[test]
fn retained_messages_read_back_with_their_stamps_and_without_their_removals() {
    let dir = TempDir::new("retained");
    {
        let store = Store::open(&dir.0, SyncPolicy::Interval(Duration::from_millis(5))).unwrap();
        let kept = Message::new(
            Bytes::from_static(b"r/1"),
            Bytes::from_static(b"one"),
            QoS::AtLeastOnce,
            true,
        );
        let stamp = Stamp {
            ms: 12,
            count: 3,
            node: Bytes::from_static(b"n1"),
        };
        store.put_retained(&kept, Some(&stamp));
        let removed = Message::new(
            Bytes::from_static(b"r/2"),
            Bytes::from_static(b"two"),
            QoS::AtMostOnce,
            true,
        );
        store.put_retained(&removed, None);
        store.remove_retained(b"r/2");
        store.close();
    }
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.retained.len(), 1);
    let record = &loaded.retained[0];
    assert_eq!(&record.message.topic[..], b"r/1");
    assert_eq!(&record.message.payload[..], b"one");
    assert_eq!(
        record.stamp.as_ref().map(|s| (s.ms, s.count)),
        Some((12, 3))
    );
}

#[test]
fn a_client_id_too_long_to_key_has_no_journal() {
    let dir = TempDir::new("long");
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let long: Arc<str> = Arc::from("x".repeat(MAX_JOURNALED_CLIENT_ID + 1));
    assert!(store.journal(long).is_none());
    let longest: Arc<str> = Arc::from("x".repeat(MAX_JOURNALED_CLIENT_ID));
    let journal = store.journal(longest).unwrap();
    journal.session(
        &record(&"x".repeat(MAX_JOURNALED_CLIENT_ID)),
        Some(keys::wall_ms() - 5_000),
    );
    journal.queued(seq(u32::MAX), &delivery("p", QoS::ExactlyOnce));
    journal.sent(seq(u32::MAX), 1);
    journal.awaiting(9);
    store.close();
    // The engine's lock goes with the last handle.
    drop((journal, store));
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded.sessions.len(),
        1,
        "the longest id that is keyed reads back"
    );
    assert_eq!(loaded.sessions[0].snapshot.in_flight.len(), 1);
}

#[test]
fn a_retained_topic_too_long_to_key_stays_in_memory_and_the_writer_goes_on() {
    let dir = TempDir::new("long-topic");
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let long = Message::new(
        Bytes::from(vec![b't'; 70_000]),
        Bytes::from_static(b"p"),
        QoS::AtMostOnce,
        true,
    );
    store.put_retained(&long, None);
    // Even past the store's own guard, the writer skips a key the engine would panic on.
    store.put(Space::Retained, vec![b'k'; 70_000], b"v".to_vec());
    let journal = store.journal(Arc::from("after")).unwrap();
    journal.session(&record("after"), None);
    settle(&store);
    assert!(!store.has_failed());
    store.close();
    drop((journal, store));
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.sessions.len(), 1, "what came after was written");
    assert!(loaded.retained.is_empty());
}

#[test]
fn records_that_do_not_decode_are_skipped_and_removed() {
    let dir = TempDir::new("garbage");
    {
        let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
        store.put(Space::Retained, b"r/x".to_vec(), b"not a record".to_vec());
        store.put(Space::Sessions, keys::session_key("c", 1), vec![0, 1, 2]);
        // A delivery of a session that has no record.
        store.put(
            Space::Deliveries,
            keys::delivery_key("orphan", 1, seq(1)),
            vec![0; 12],
        );
        store.close();
    }
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.skipped, 3);
    assert!(loaded.sessions.is_empty() && loaded.retained.is_empty());
    settle(&store);
    assert_eq!(store.load().unwrap().skipped, 0, "removed the first time");
}

#[tokio::test]
async fn acknowledgements_wait_for_the_writer() {
    let dir = TempDir::new("sync");
    let store = Store::open(&dir.0, SyncPolicy::EveryAcknowledgement).unwrap();
    store.put_retained(
        &Message::new(
            Bytes::from_static(b"t"),
            Bytes::from_static(b"p"),
            QoS::AtLeastOnce,
            true,
        ),
        None,
    );
    let ticket = store.written();
    assert!(ticket > 0);
    tokio::time::timeout(Duration::from_secs(10), store.synced(ticket))
        .await
        .expect("the writer writes and fsyncs what is queued");
    assert!(store.is_synced(ticket));
    store.close();
    assert!(
        store.is_synced(ticket),
        "closed after writing everything queued"
    );
    // Queued after the close: never written, so never acknowledged.
    store.remove_retained(b"t");
    assert!(!store.is_synced(store.written()));
    let dir = TempDir::new("interval");
    let store = Store::open(&dir.0, SyncPolicy::Interval(Duration::from_millis(50))).unwrap();
    store.remove_retained(b"t");
    let ticket = store.written();
    tokio::time::timeout(Duration::from_secs(10), store.synced(ticket))
        .await
        .expect("the writer writes what is queued (the fsync comes later)");
    store.close();
}
