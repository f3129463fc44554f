//! One persistent session's records in the data directory. The session's mailbox numbers each
//! QoS 1/2 delivery it queues (its journal number, carried by the delivery as
//! [`Delivery::stored`]) and writes it here under that number; the connection that sends it
//! records its packet id and PUBREC, and removes it once acknowledged. The session's own record
//! (subscriptions, expiry, delayed will) is rewritten whenever one of them changes.

use std::num::NonZeroU32;
use std::sync::Arc;

use super::keys::{awaiting_key, delivery_key, session_key};
use super::writer::Space;
use super::Store;
use crate::router::Delivery;
use crate::session::SessionSnapshot;

/// `sent` record states.
pub(super) const PUBLISHED: u8 = 0;
pub(super) const RELEASED: u8 = 1;

pub struct Journal {
    store: Arc<Store>,
    client_id: Arc<str>,
    incarnation: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("client_id", &self.client_id)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl Journal {
    pub(super) fn new(store: Arc<Store>, client_id: Arc<str>, incarnation: u64) -> Journal {
        Journal {
            store,
            client_id,
            incarnation,
        }
    }

    fn key(&self, seq: NonZeroU32) -> Vec<u8> {
        delivery_key(&self.client_id, self.incarnation, seq)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Writes the session's own record: `meta` is the session without its deliveries;
    /// `offline_since` the wall clock (ms since the epoch) since when its client has been gone,
    /// `None` while it is connected: its expiry and will delay count from then, also across a
    /// restart.
    pub fn session(&self, meta: &SessionSnapshot, offline_since: Option<u64>) {
        let mut value = super::keys::wall_ms().to_be_bytes().to_vec();
        // 0: connected (a clock at the epoch is not one to count from anyway).
        value.extend_from_slice(&offline_since.unwrap_or(0).to_be_bytes());
        value.extend_from_slice(&meta.encode(std::time::Instant::now()));
        let key = session_key(&self.client_id, self.incarnation);
        self.store.put(Space::Sessions, key, value);
    }

    /// A delivery queued under journal number `seq`.
    pub fn queued(&self, seq: NonZeroU32, delivery: &Delivery) {
        let value = super::encode_delivery(delivery);
        self.store.put(Space::Deliveries, self.key(seq), value);
    }

    /// QoS 2 delivery `seq` was sent with `packet_id` (a QoS 1 one is not recorded: after a
    /// restart it is sent again with a new packet id, which QoS 1 allows for).
    pub fn sent(&self, seq: NonZeroU32, packet_id: u16) {
        self.mark(seq, packet_id, PUBLISHED);
    }

    /// Delivery `seq` (QoS 2) was received by the client (PUBREC): PUBREL is what is resent
    /// now, and the message itself is no longer needed.
    pub fn released(&self, seq: NonZeroU32, packet_id: u16) {
        self.mark(seq, packet_id, RELEASED);
        self.store.remove(Space::Deliveries, self.key(seq));
    }

    fn mark(&self, seq: NonZeroU32, packet_id: u16, state: u8) {
        let [high, low] = packet_id.to_be_bytes();
        self.store
            .put(Space::Sent, self.key(seq), vec![high, low, state]);
    }

    /// Delivery `seq` is done with: acknowledged, refused, expired or dropped; `sent` when a
    /// `sent` record of it may exist (QoS 2, sent).
    pub fn done(&self, seq: NonZeroU32, sent: bool) {
        let key = self.key(seq);
        if sent {
            self.store.remove(Space::Deliveries, key.clone());
            self.store.remove(Space::Sent, key);
        } else {
            self.store.remove(Space::Deliveries, key);
        }
    }

    /// An inbound QoS 2 packet id now awaits PUBREL.
    pub fn awaiting(&self, packet_id: u16) {
        self.store.put(
            Space::Awaiting,
            awaiting_key(&self.client_id, self.incarnation, packet_id),
            Vec::new(),
        );
    }

    /// An inbound QoS 2 packet id was released.
    pub fn released_awaiting(&self, packet_id: u16) {
        self.store.remove(
            Space::Awaiting,
            awaiting_key(&self.client_id, self.incarnation, packet_id),
        );
    }

    /// The session ended here (discarded, expired, or moved to another node): its records go.
    pub fn end(&self) {
        let prefix = session_key(&self.client_id, self.incarnation);
        self.store.remove(Space::Sessions, prefix.clone());
        self.store.remove_prefix(Space::Deliveries, prefix.clone());
        self.store.remove_prefix(Space::Sent, prefix.clone());
        self.store.remove_prefix(Space::Awaiting, prefix);
    }
}
