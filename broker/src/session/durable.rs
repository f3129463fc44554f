//! Persistent sessions in the data directory (`-dd`): which sessions have a [`Journal`], their
//! own record (subscriptions, expiry, owner, delayed will) written as it changes, and the
//! sessions read back at start-up put in as offline ones.
//!
//! A session has a journal while its expiry is not zero. Its mailbox and its in-flight state
//! write their deliveries to it (see [`Mailbox::set_journal`], [`Outgoing::set_journal`]); the
//! registry writes the session's own record through [`SessionRegistry::keep_journal`] when a
//! connection claims it, subscribes, unsubscribes or leaves. A session that ends removes its
//! records when its mailbox closes.

use std::sync::Arc;

use super::snapshot::{SessionSnapshot, SnapshotSubscription};
use super::transfer::Adopted;
use super::{DelayedWill, SessionExpiry, SessionRegistry, SessionState};
use crate::router::{Grant, Message, Router};
use crate::store::{Journal, LoadedSession, Store};

/// A session read back from the data directory, as [`SessionRegistry::adopt_with`] puts it in.
pub(super) struct ReadBack {
    pub journal: Arc<Journal>,
    /// The journal number its next delivery takes.
    pub next: std::num::NonZeroU32,
    /// How long its client had been gone when its record was last written (offline then), to
    /// count against its expiry and will delay; `None` when its client was connected (the
    /// crash's time is not known: they count from the restart).
    pub offline_for: Option<std::time::Duration>,
}
use crate::topic::Subscription;

impl SessionRegistry {
    /// Writes persistent sessions to `store` from now on.
    pub fn set_store(&self, store: Arc<Store>) {
        let _ = self.store.set(store);
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.get()
    }

    /// Brings `state`'s journal in line with its expiry, and writes its record: a session whose
    /// expiry is not zero gets a journal (if it has none yet) holding everything it has queued
    /// and in flight; one whose expiry became zero loses its journal and its records. `will`
    /// is the delayed will waiting with it, and `offline_since` when its client went (wall
    /// clock ms; `None` while connected). Does nothing without a data directory.
    pub fn keep_journal(
        &self,
        state: &mut SessionState,
        will: Option<&DelayedWill>,
        offline_since: Option<u64>,
        router: &Router,
    ) {
        let Some(store) = self.store.get() else {
            return;
        };
        let persistent = state.expiry != SessionExpiry::ZERO;
        // A journal made now holds what the session had before (its QoS 2 ids among it).
        let fresh = state.outgoing.journal().is_none();
        let journal = match (state.outgoing.journal().cloned(), persistent) {
            (Some(journal), true) => journal,
            (None, true) => {
                let Some(journal) = store.journal(state.mailbox.client_id_shared()) else {
                    return;
                };
                state
                    .mailbox
                    .set_journal(Some((journal.clone(), std::num::NonZeroU32::MIN)));
                let mailbox = state.mailbox.clone();
                state.outgoing.set_journal(Some(journal.clone()), || {
                    mailbox
                        .next_journal_number()
                        .unwrap_or(std::num::NonZeroU32::MIN)
                });
                journal
            }
            (Some(journal), false) => {
                state.mailbox.set_journal(None);
                state
                    .outgoing
                    .set_journal(None, || std::num::NonZeroU32::MIN);
                journal.end();
                return;
            }
            (None, false) => return,
        };
        if fresh {
            for packet_id in state.incoming_qos2.ids() {
                journal.awaiting(packet_id);
            }
        }
        journal.session(&record_of(state, will, router), offline_since);
    }

    /// Puts a session read back from the data directory in as an offline session, writing to
    /// the journal it was read from. Sessions come back before any client connects, so none is
    /// refused.
    pub fn install_loaded(&self, loaded: LoadedSession, store: &Arc<Store>, router: &Router) {
        let LoadedSession {
            snapshot,
            incarnation,
            next_seq,
            offline_for,
        } = loaded;
        let client_id: Arc<str> = Arc::from(snapshot.client_id.as_str());
        let journal = store.journal_of(client_id, incarnation);
        let read_back = ReadBack {
            journal,
            next: next_seq,
            offline_for,
        };
        // Sessions come back before any client connects: none is refused.
        if let Adopted::Refused { .. } = self.adopt_with(snapshot, router, Some(read_back)) {
            tracing::warn!("a session read back from the data directory was refused");
        }
    }
}

/// The session's own record: everything but its deliveries and QoS 2 ids (written apart).
pub(super) fn record_of(
    state: &SessionState,
    will: Option<&DelayedWill>,
    router: &Router,
) -> SessionSnapshot {
    let id = state.mailbox.id();
    let subscriptions = state
        .subscriptions
        .iter()
        .map(|(filter, qos)| {
            let grant = Subscription::parse(filter)
                .and_then(|subscription| router.grant(id, &subscription))
                .unwrap_or(Grant::qos(*qos));
            SnapshotSubscription {
                filter: filter.clone(),
                grant,
            }
        })
        .collect();
    SessionSnapshot {
        client_id: state.client_id().to_string(),
        owner: state.owner.as_deref().cloned(),
        expiry: state.expiry,
        subscriptions,
        incoming_qos2: Vec::new(),
        retained: Vec::new(),
        in_flight: Vec::new(),
        queued: Vec::new(),
        will: will.map(|will| DelayedWill {
            message: Box::new(copy_message(&will.message)),
            expiry: will.expiry,
            delay: will.delay,
        }),
        connected_ms: state.connected_ms,
        // The record's header says since when its client has been gone.
        offline_for: None,
        version: super::snapshot::VERSION,
    }
}

fn copy_message(message: &Message) -> Message {
    let mut copy = Message::new(
        message.topic.clone(),
        message.payload.clone(),
        message.qos,
        message.retain,
    );
    copy.properties = message.properties.clone();
    copy.expires_at = message.expires_at;
    copy
}
