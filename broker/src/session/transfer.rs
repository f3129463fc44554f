//! Moving an offline session out of the registry and into another one: what a session
//! hand-over between nodes (see [`crate::cluster::handover`]) and the data directory do with the
//! [`SessionSnapshot`] format.
//!
//! [`SessionRegistry::export`] takes an offline session out: its subscriptions with the
//! options the router holds, its in-flight and queued messages, its QoS 2 state and a delayed
//! will; the session is gone from this node afterwards (its subscriptions removed, its mailbox
//! closed). [`SessionRegistry::adopt`] puts one in as an offline session, subscribed and with
//! its messages queued, which the next CONNECT of its client id resumes as any offline session
//! (session present). The session gets a new [`super::SessionId`] here: ids are per node.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    AwaitingRelease, Entry, Idle, KickReason, Mailbox, Outgoing, SessionRegistry, SessionSnapshot,
    SessionState, SnapshotSubscription,
};
use crate::router::{Grant, Message, Router};
use crate::topic::Subscription;

/// A session taken out of its registry whose mailbox still takes what is published for it:
/// [`Moving::take`] hands those deliveries on, and [`Moving::finish`] ends it here.
pub struct Moving {
    mailbox: Arc<Mailbox>,
    filters: Vec<String>,
}

impl Moving {
    /// The deliveries that arrived since the last call.
    pub fn take(&self, metrics: &crate::metrics::Metrics) -> Vec<crate::router::Delivery> {
        let mut out = Vec::new();
        self.mailbox
            .take(usize::MAX, usize::MAX, usize::MAX, &mut out, metrics);
        out
    }

    /// Completes when something may have arrived.
    pub async fn ready(&self) {
        self.mailbox.ready().await
    }

    /// Ends the session here: no more deliveries; returns those that came last.
    pub fn finish(
        self,
        registry: &SessionRegistry,
        router: &Router,
    ) -> Vec<crate::router::Delivery> {
        let last = self.take(&registry.metrics);
        self.mailbox.close(&registry.metrics);
        router.remove_session(self.mailbox.id(), self.filters);
        registry.metrics.sessions.dec();
        last
    }
}

/// What [`SessionRegistry::adopt`] did with a snapshot.
pub enum Adopted {
    /// The session is here now, offline, with `mailbox` (where what still comes for it from
    /// the node it left goes). An offline copy of it that was here, which its client used
    /// before, ended; its messages joined this one's queue. An older session of another user
    /// (access control on) ended instead, its delayed will due now.
    Installed {
        mailbox: Arc<Mailbox>,
        will_due: Option<Arc<Message>>,
    },
    /// An offline copy here that its client used later is kept: the snapshot's messages joined
    /// its queue (`mailbox`), and its subscriptions and will were dropped with the rest of it.
    Merged { mailbox: Arc<Mailbox> },
    /// A connection holds a session of that client id here (its client was told it has a new
    /// session, or it resumed this one), or an offline one of another user that its client
    /// used later: that one is kept, and the snapshot's session ends, its delayed will due now.
    Refused { will_due: Option<Arc<Message>> },
}

/// The messages a copy of a session still owes its client, in flight first: what joins the
/// copy that is kept when two meet (see [`SessionRegistry::adopt`]). At least once, never
/// lost: its client may have had some of them already. Numbered anew by the journal of the
/// copy they join.
fn owed_messages(
    in_flight: Vec<(u16, super::InFlight)>,
    queued: Vec<crate::router::Delivery>,
) -> impl Iterator<Item = crate::router::Delivery> {
    in_flight
        .into_iter()
        .filter_map(|(_, state)| match state {
            super::InFlight::Published(delivery) | super::InFlight::Unsent(delivery) => {
                Some(delivery)
            }
            super::InFlight::Released(_) => None,
        })
        .chain(queued)
        .map(|mut delivery| {
            delivery.stored = None;
            delivery
        })
}

impl SessionRegistry {
    /// Takes the offline session of `client_id` out of the registry and ends it here; `None`
    /// when there is none (or a connection holds it).
    pub fn export(&self, client_id: &str, router: &Router) -> Option<SessionSnapshot> {
        let (snapshot, moving) = self.export_moving(client_id, router)?;
        moving.finish(self, router);
        Some(snapshot)
    }

    /// Takes the offline session of `client_id` out of the registry, with the [`Moving`] rest
    /// of it: its mailbox stays subscribed here, so that what is published for it until the
    /// node it moves to has its subscriptions in place is not lost (see
    /// [`crate::cluster::handover`]).
    pub fn export_moving(
        &self,
        client_id: &str,
        router: &Router,
    ) -> Option<(SessionSnapshot, Moving)> {
        let idle = {
            let mut sessions = self.sessions.lock();
            match sessions.remove_entry(client_id) {
                Some((_, Entry::Idle(idle))) => idle,
                Some((key, held @ Entry::Held(_))) => {
                    sessions.entries.insert(key, held);
                    return None;
                }
                None => return None,
            }
        };
        let Idle {
            state,
            will,
            offline_since,
            ..
        } = *idle;
        let SessionState {
            mailbox,
            subscriptions,
            outgoing,
            incoming_qos2,
            retained,
            expiry,
            owner,
            connected_ms,
        } = *state;
        let id = mailbox.id();
        let subscriptions: Vec<SnapshotSubscription> = subscriptions
            .into_iter()
            .map(|(filter, qos)| {
                let grant = Subscription::parse(&filter)
                    .and_then(|subscription| router.grant(id, &subscription))
                    .unwrap_or(Grant::qos(qos));
                SnapshotSubscription { filter, grant }
            })
            .collect();
        let mut queued = Vec::new();
        mailbox.take(
            usize::MAX,
            usize::MAX,
            usize::MAX,
            &mut queued,
            &self.metrics,
        );
        let moving = Moving {
            filters: subscriptions.iter().map(|s| s.filter.clone()).collect(),
            mailbox,
        };
        let snapshot = SessionSnapshot {
            client_id: client_id.to_string(),
            owner: owner.map(|owner| *owner),
            expiry,
            subscriptions,
            incoming_qos2: incoming_qos2.ids().collect(),
            retained: retained.into(),
            in_flight: outgoing.into_entries(),
            queued,
            will: will.map(|(will, _)| will),
            connected_ms,
            offline_for: Some(Duration::from_millis(
                crate::store::wall_ms().saturating_sub(offline_since),
            )),
            version: super::snapshot::VERSION,
        };
        Some((snapshot, moving))
    }

    /// Puts `snapshot` in as an offline session, unless a connection holds a session of its
    /// client id here (see [`Adopted`]). Of it and an offline copy here, the one whose client
    /// connected last is kept ([`SessionState::connected_ms`]; the snapshot on a tie, or when
    /// it does not say), and the
    /// other's messages join it: two copies exist after a node that crashed comes back with
    /// its data directory, or after a partition, and neither's messages are lost.
    pub fn adopt(&self, snapshot: SessionSnapshot, router: &Router) -> Adopted {
        self.adopt_with(snapshot, router, None)
    }

    /// [`SessionRegistry::adopt`], with the journal a session read back from the data
    /// directory writes to and its next number; a persistent session from elsewhere gets a new
    /// journal (with a data directory), holding everything it brought.
    pub(super) fn adopt_with(
        &self,
        snapshot: SessionSnapshot,
        router: &Router,
        read_back: Option<super::durable::ReadBack>,
    ) -> Adopted {
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        let replaced = match sessions.entries.get(snapshot.client_id.as_str()) {
            Some(Entry::Held(_)) => {
                return Adopted::Refused {
                    will_due: snapshot.will.map(|will| will.publish_at(now)),
                }
            }
            // A snapshot that does not say when its client connected (version 1, from a node
            // of sync version 5) is taken for the newer, as such a node would take it.
            Some(Entry::Idle(idle))
                if snapshot.version >= 2 && idle.state.connected_ms > snapshot.connected_ms =>
            {
                // Another user's messages never join (access control on).
                if idle.state.owner.as_deref() != snapshot.owner.as_ref() {
                    return Adopted::Refused {
                        will_due: snapshot.will.map(|will| will.publish_at(now)),
                    };
                }
                // Under the registry's lock, as every change of an offline session: a sweep or
                // a claim cannot end it in between.
                let mailbox = idle.state.mailbox.clone();
                mailbox.merge(
                    owed_messages(snapshot.in_flight, snapshot.queued),
                    &self.metrics,
                );
                return Adopted::Merged { mailbox };
            }
            Some(Entry::Idle(_)) => match sessions.remove_entry(&snapshot.client_id) {
                Some((_, Entry::Idle(idle))) => Some(idle),
                _ => None,
            },
            None => None,
        };
        let key: Arc<str> = Arc::from(snapshot.client_id.as_str());
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::new(id, key.clone(), self.queue_capacity));
        // A record read back says it in its header; a snapshot from a peer of sync version 6
        // says it itself.
        let offline_for = match &read_back {
            Some(read_back) => read_back.offline_for,
            None => snapshot.offline_for,
        };
        let fresh = read_back.is_none();
        let journal = match read_back {
            Some(read_back) => Some((read_back.journal, read_back.next)),
            None => self
                .store
                .get()
                .filter(|_| snapshot.expiry != super::SessionExpiry::ZERO)
                .and_then(|store| store.journal(key.clone()))
                .map(|journal| (journal, NonZeroU32::MIN)),
        };
        // What of its expiry and will delay had passed before this node stopped. A session
        // whose client was connected when the node crashed is offline from now on.
        let counted_from = offline_for
            .and_then(|offline_for| now.checked_sub(offline_for))
            .unwrap_or(now);
        let wall_now = crate::store::wall_ms();
        let offline_since = offline_for.map_or(wall_now, |offline_for| {
            wall_now.saturating_sub(offline_for.as_millis() as u64)
        });
        if let Some((journal, next)) = &journal {
            mailbox.set_journal(Some((journal.clone(), *next)));
        }
        let mut subscriptions = BTreeMap::new();
        for subscription in &snapshot.subscriptions {
            // Checked by the decoder; one that does not parse is skipped rather than trusted.
            if let Some(parsed) = Subscription::parse(&subscription.filter) {
                router.subscribe(&mailbox, &parsed, subscription.grant);
                subscriptions.insert(subscription.filter.clone(), subscription.grant.qos);
            }
        }
        for delivery in snapshot.queued {
            mailbox.push(delivery, &self.metrics);
        }
        let mut incoming_qos2 = AwaitingRelease::default();
        for packet_id in snapshot.incoming_qos2 {
            incoming_qos2.insert(packet_id);
        }
        let mut outgoing = Outgoing::restore(snapshot.in_flight);
        if let Some((journal, _)) = &journal {
            outgoing.set_journal(Some(journal.clone()), || {
                mailbox.next_journal_number().unwrap_or(NonZeroU32::MIN)
            });
        }
        let state = Box::new(SessionState {
            mailbox: mailbox.clone(),
            subscriptions,
            outgoing,
            incoming_qos2,
            retained: snapshot.retained.into(),
            expiry: snapshot.expiry,
            owner: snapshot.owner.map(Box::new),
            connected_ms: snapshot.connected_ms,
        });
        if let Some((journal, _)) = &journal {
            if fresh {
                for packet_id in state.incoming_qos2.ids() {
                    journal.awaiting(packet_id);
                }
            }
            // Written for a session that came from elsewhere, and for one read back that was
            // connected at the crash: its offline clock starts now, also on disk.
            if fresh || offline_for.is_none() {
                journal.session(
                    &super::durable::record_of(&state, snapshot.will.as_ref(), router),
                    Some(offline_since),
                );
            }
        }
        let same_owner = replaced
            .as_ref()
            .is_none_or(|idle| idle.state.owner == state.owner);
        self.metrics.sessions.inc();
        let idle = Idle::gone_at(state, snapshot.will, counted_from, offline_since, now);
        sessions.insert_idle(key, idle);
        let Some(replaced) = replaced else {
            return Adopted::Installed {
                mailbox,
                will_due: None,
            };
        };
        let Idle {
            state: mut old,
            will,
            ..
        } = *replaced;
        // The copy its client used before: its messages join (after the new copy's own), and it
        // ends without its will (its client has connected since, to the copy kept). An older
        // session of another user ends as a clean start would end it.
        let will_due = if same_owner {
            let in_flight = std::mem::take(&mut old.outgoing).into_entries();
            let mut queued = Vec::new();
            old.mailbox.take(
                usize::MAX,
                usize::MAX,
                usize::MAX,
                &mut queued,
                &self.metrics,
            );
            mailbox.merge(owed_messages(in_flight, queued), &self.metrics);
            None
        } else {
            will.map(|(will, _)| will.publish_at(now))
        };
        drop(sessions);
        self.discard(*old, router);
        Adopted::Installed { mailbox, will_due }
    }

    /// The client ids of the offline sessions.
    pub fn offline(&self) -> Vec<String> {
        self.sessions
            .lock()
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Idle(_)))
            .map(|(client_id, _)| client_id.to_string())
            .collect()
    }

    /// The user the session of `client_id` belongs to: `None` when there is no session here,
    /// `Some(None)` for one started without access control or without a username.
    pub fn owner_of(&self, client_id: &str) -> Option<Option<String>> {
        let sessions = self.sessions.lock();
        match sessions.entries.get(client_id)? {
            Entry::Held(holder) => Some(holder.signals.owner.as_deref().cloned()),
            Entry::Idle(idle) => Some(idle.state.owner.as_deref().cloned()),
        }
    }

    /// Asks the connection holding the session of `client_id` to close, its session taken
    /// over (by a claim from another node), and waits until it has let go, at most `limit`;
    /// returns whether no connection holds it now.
    pub async fn kick_and_wait(&self, client_id: &str, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let holder = match self.sessions.lock().entries.get(client_id) {
                Some(Entry::Held(holder)) => holder.clone(),
                _ => return true,
            };
            let _ = holder.kick(KickReason::TakenOver);
            if self.released(&holder, deadline).await.is_err() {
                return false;
            }
        }
    }

    /// Ends the offline session of `client_id`, as a clean start elsewhere does: its
    /// subscriptions and messages go, and its delayed will is returned, due now.
    pub fn end(&self, client_id: &str, router: &Router) -> Option<Arc<Message>> {
        let idle = {
            let mut sessions = self.sessions.lock();
            match sessions.remove_entry(client_id) {
                Some((_, Entry::Idle(idle))) => idle,
                Some((key, held)) => {
                    sessions.entries.insert(key, held);
                    return None;
                }
                None => return None,
            }
        };
        let Idle { state, will, .. } = *idle;
        self.discard(*state, router);
        will.map(|(will, _)| will.publish_at(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::codec::QoS;
    use crate::metrics::Metrics;
    use crate::session::{Holder, InFlight, SessionExpiry};

    fn node() -> (Arc<Metrics>, Router, SessionRegistry) {
        node_with_queue(100)
    }

    /// A node whose sessions queue at most `capacity` messages (`-mq`).
    fn node_with_queue(capacity: usize) -> (Arc<Metrics>, Router, SessionRegistry) {
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(metrics.clone());
        let registry = SessionRegistry::new(capacity, metrics.clone());
        (metrics, router, registry)
    }

    fn publish(router: &Router, topic: &'static str, payload: &'static [u8], qos: QoS) {
        let message = Message::new(
            Bytes::from_static(topic.as_bytes()),
            Bytes::from_static(payload),
            qos,
            false,
        );
        router.publish(Arc::new(message));
    }

    /// A session is claimed, subscribes, sends a QoS 1 message it is not acknowledged for and
    /// goes offline; a message is queued while it is. Exported from one node and adopted by
    /// another, the next claim there resumes all of it.
    #[tokio::test]
    async fn an_offline_session_moves_to_another_registry_whole() {
        let (a_metrics, a_router, a) = node();
        let holder = Holder::new(1);
        let claimed = a
            .claim("c", false, &holder, &a_router)
            .await
            .expect("claim");
        let mut state = claimed.state;
        let grant = Grant {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: false,
            identifier: 5,
        };
        let subscription = Subscription::parse("t/#").expect("filter");
        a_router.subscribe(&state.mailbox, &subscription, grant);
        state
            .subscriptions
            .insert("t/#".to_string(), QoS::ExactlyOnce);
        publish(&a_router, "t/1", b"in flight", QoS::AtLeastOnce);
        let mut taken = Vec::new();
        state
            .mailbox
            .take(10, 10, usize::MAX, &mut taken, &a_metrics);
        let in_flight_id = state.outgoing.publish(taken.remove(0));
        state.incoming_qos2.insert(42);
        state.expiry = SessionExpiry::from(Some(Duration::from_secs(600)));
        assert!(a.release(&holder, state, None, &a_router).is_none());
        publish(&a_router, "t/2", b"queued", QoS::ExactlyOnce);

        let snapshot = a
            .export("c", &a_router)
            .expect("an offline session to export");
        assert!(a.is_empty(), "the session left the first node");
        assert_eq!(a_metrics.sessions.get(), 0);
        assert_eq!(a_metrics.subscriptions.get(), 0);
        assert!(a.export("c", &a_router).is_none());
        // Through its bytes, as between nodes.
        let now = Instant::now();
        let snapshot =
            SessionSnapshot::decode(&snapshot.encode(now), now, Duration::ZERO).expect("decodes");

        let (b_metrics, b_router, b) = node();
        assert!(matches!(
            b.adopt(snapshot, &b_router),
            Adopted::Installed { will_due: None, .. }
        ));
        assert_eq!(b_metrics.sessions.get(), 1);
        assert_eq!(b_metrics.subscriptions.get(), 1);
        // Subscribed with its options: a message published here now is queued too.
        publish(&b_router, "t/3", b"after the move", QoS::ExactlyOnce);
        let holder = Holder::new(7);
        let claimed = b
            .claim("c", false, &holder, &b_router)
            .await
            .expect("claim");
        assert!(claimed.session_present);
        let state = claimed.state;
        assert!(state.incoming_qos2.contains(&42));
        assert_eq!(state.expiry.get(), Some(Duration::from_secs(600)));
        let in_flight: Vec<_> = state.outgoing.iter().collect();
        assert!(matches!(
            in_flight.as_slice(),
            [(id, InFlight::Published(d))] if *id == in_flight_id && &d.message.payload[..] == b"in flight"
        ));
        let mut queued = Vec::new();
        state
            .mailbox
            .take(10, 10, usize::MAX, &mut queued, &b_metrics);
        let payloads: Vec<&[u8]> = queued.iter().map(|d| &d.message.payload[..]).collect();
        assert_eq!(payloads, [&b"queued"[..], b"after the move"]);
        let id = state.mailbox.id();
        assert_eq!(
            b_router.grant(id, &Subscription::parse("t/#").expect("filter")),
            Some(grant)
        );
    }

    #[tokio::test]
    async fn a_node_keeps_its_own_session_over_an_adopted_one_and_a_held_one_is_not_exported() {
        let (_, router, registry) = node();
        let holder = Holder::new(1);
        let _claimed = registry
            .claim("c", false, &holder, &router)
            .await
            .expect("claim");
        assert!(
            registry.export("c", &router).is_none(),
            "held: not exported"
        );
        assert!(registry.is_connected("c"));
        let will = crate::session::DelayedWill {
            message: Box::new(Message::new(
                Bytes::from_static(b"w"),
                Bytes::from_static(b"bye"),
                QoS::AtMostOnce,
                false,
            )),
            expiry: None,
            delay: Duration::from_secs(30),
        };
        let snapshot = SessionSnapshot {
            expiry: SessionExpiry::from(None),
            will: Some(will),
            ..SessionSnapshot::empty("c")
        };
        match registry.adopt(snapshot, &router) {
            Adopted::Refused {
                will_due: Some(will),
            } => assert_eq!(&will.payload[..], b"bye"),
            _ => panic!("expected the snapshot refused with its will due"),
        }
        assert_eq!(registry.len(), 1);
    }

    /// An offline session of client `c` started by `owner` (access control on; `None`: off)
    /// on its own node: subscribed to `t/#`, one QoS 1 message in flight and one queued, its
    /// client last connected at `connected_ms`.
    async fn offline_copy(
        owner: Option<&str>,
        metrics: &Metrics,
        router: &Router,
        registry: &SessionRegistry,
        connected_ms: u64,
        payloads: [&'static [u8]; 2],
    ) {
        let holder = Holder::owned_by(1, owner);
        let owner = match owner {
            Some(user) => crate::session::SessionOwner::User(Some(user)),
            None => crate::session::SessionOwner::Unchecked,
        };
        let mut state = registry
            .claim_as("c", false, owner, &holder, router)
            .await
            .expect("claim")
            .state;
        let subscription = Subscription::parse("t/#").expect("filter");
        router.subscribe(&state.mailbox, &subscription, Grant::qos(QoS::AtLeastOnce));
        state
            .subscriptions
            .insert("t/#".to_string(), QoS::AtLeastOnce);
        state.expiry = SessionExpiry::from(Some(Duration::from_secs(600)));
        state.connected_ms = connected_ms;
        publish(router, "t/1", payloads[0], QoS::AtLeastOnce);
        let mut taken = Vec::new();
        state.mailbox.take(10, 10, usize::MAX, &mut taken, metrics);
        state.outgoing.publish(taken.remove(0));
        assert!(registry.release(&holder, state, None, router).is_none());
        publish(router, "t/2", payloads[1], QoS::AtLeastOnce);
    }

    /// Copies of client `c` on two nodes, started by `owners` and last connected at `a_at` and
    /// `b_at` (a's messages a1, a2; b's b1, b2; b queues at most `b_queue`): node b with its
    /// copy in place, and a's copy exported.
    async fn two_copies(
        a_at: u64,
        b_at: u64,
        owners: [Option<&str>; 2],
        b_queue: usize,
    ) -> ((Arc<Metrics>, Router, SessionRegistry), SessionSnapshot) {
        let (a_metrics, a_router, a) = node();
        let (b_metrics, b_router, b) = node_with_queue(b_queue);
        offline_copy(owners[0], &a_metrics, &a_router, &a, a_at, [b"a1", b"a2"]).await;
        offline_copy(owners[1], &b_metrics, &b_router, &b, b_at, [b"b1", b"b2"]).await;
        let snapshot = a.export("c", &a_router).expect("a's copy");
        ((b_metrics, b_router, b), snapshot)
    }

    /// What the next claim of `c` resumes: session present, and the payloads it is owed
    /// (in flight, then queued).
    async fn resumed(
        registry: &SessionRegistry,
        router: &Router,
        metrics: &Metrics,
    ) -> Vec<Vec<u8>> {
        let claimed = registry
            .claim("c", false, &Holder::new(9), router)
            .await
            .expect("claim");
        assert!(claimed.session_present);
        let state = claimed.state;
        let mut payloads: Vec<Vec<u8>> = state
            .outgoing
            .iter()
            .filter_map(|(_, entry)| match entry {
                InFlight::Published(d) | InFlight::Unsent(d) => Some(d.message.payload.to_vec()),
                InFlight::Released(_) => None,
            })
            .collect();
        let mut queued = Vec::new();
        state
            .mailbox
            .take(100, 100, usize::MAX, &mut queued, metrics);
        payloads.extend(queued.iter().map(|d| d.message.payload.to_vec()));
        payloads
    }

    /// Two copies of one session (a node came back with its data directory, a partition): the
    /// one its client connected to last is kept, whichever side it is on, and the other's
    /// messages join it rather than being lost.
    #[tokio::test]
    async fn of_two_copies_the_one_used_last_is_kept_with_the_others_messages() {
        for local_is_newer in [true, false] {
            let a_at = if local_is_newer { 1_000 } else { 2_000 };
            let ((b_metrics, b_router, b), snapshot) =
                two_copies(a_at, 3_000 - a_at, [None, None], 100).await;
            assert_eq!(snapshot.connected_ms, a_at);
            let offline_for = snapshot
                .offline_for
                .expect("an exported copy says how long");
            assert!(offline_for < Duration::from_secs(5), "{offline_for:?}");
            let now = Instant::now();
            let snapshot = SessionSnapshot::decode(&snapshot.encode(now), now, Duration::ZERO)
                .expect("decodes");
            let adopted = b.adopt(snapshot, &b_router);
            assert_eq!(b.len(), 1, "one copy left");
            assert_eq!(b_metrics.sessions.get(), 1);
            let payloads = resumed(&b, &b_router, &b_metrics).await;
            if local_is_newer {
                assert!(matches!(adopted, Adopted::Merged { .. }));
                // b's own first (its in flight, its queue), then a's joined its queue.
                assert_eq!(payloads, [&b"b1"[..], b"b2", b"a1", b"a2"]);
            } else {
                assert!(matches!(adopted, Adopted::Installed { .. }));
                assert_eq!(payloads, [&b"a1"[..], b"a2", b"b1", b"b2"]);
            }
            // One subscription either way: a message published now reaches the copy kept once.
            assert_eq!(b_metrics.subscriptions.get(), 1);
        }
    }

    /// A session that moves keeps counting its expiry from when its client went, on the node
    /// it left: it does not start over.
    #[tokio::test]
    async fn a_session_that_moves_keeps_counting_its_expiry() {
        let (_, router, registry) = node();
        let snapshot = SessionSnapshot {
            expiry: SessionExpiry::from(Some(Duration::from_secs(10))),
            connected_ms: 1,
            offline_for: Some(Duration::from_secs(8)),
            ..SessionSnapshot::empty("c")
        };
        assert!(matches!(
            registry.adopt(snapshot, &router),
            Adopted::Installed { .. }
        ));
        let now = Instant::now();
        assert_eq!(registry.expire(now, &router).1, 0, "2 s are left");
        assert_eq!(
            registry.expire(now + Duration::from_secs(3), &router).1,
            1,
            "expired 10 s after its client went, 8 s of them on the node it left"
        );
    }

    /// Copies of one client id started by two users (access control on) never mix: the one
    /// used last is kept alone, and the other ends as a clean start would end it.
    #[tokio::test]
    async fn copies_of_two_users_do_not_mix() {
        for local_is_newer in [true, false] {
            let a_at = if local_is_newer { 1_000 } else { 2_000 };
            let ((b_metrics, b_router, b), snapshot) =
                two_copies(a_at, 3_000 - a_at, [Some("alice"), Some("bob")], 100).await;
            let adopted = b.adopt(snapshot, &b_router);
            let kept = if local_is_newer {
                assert!(matches!(adopted, Adopted::Refused { .. }));
                "bob"
            } else {
                assert!(matches!(adopted, Adopted::Installed { .. }));
                "alice"
            };
            assert_eq!(b.owner_of("c"), Some(Some(kept.to_string())));
            let payloads = resumed(&b, &b_router, &b_metrics).await;
            let prefix = &kept[..1];
            assert_eq!(
                payloads,
                [
                    format!("{prefix}1").into_bytes(),
                    format!("{prefix}2").into_bytes()
                ],
                "only {kept}'s messages"
            );
            assert_eq!(b_metrics.sessions.get(), 1);
        }
    }

    /// The copy kept has its own messages first; the other's fill only the room its queue has
    /// left (`-mq`), the rest dropped and counted rather than pushing its own out.
    #[tokio::test]
    async fn the_other_copys_messages_fill_only_the_room_left() {
        let ((b_metrics, b_router, b), snapshot) = two_copies(1_000, 2_000, [None, None], 2).await;
        assert!(matches!(
            b.adopt(snapshot, &b_router),
            Adopted::Merged { .. }
        ));
        let payloads = resumed(&b, &b_router, &b_metrics).await;
        assert_eq!(payloads, [&b"b1"[..], b"b2", b"a1"]);
        assert_eq!(
            b_metrics
                .dropped(crate::metrics::DropReason::QueueFull)
                .get(),
            1
        );
    }

    /// A snapshot of version 1 (from a node of sync version 5) does not say when its client
    /// connected: it replaces an offline copy here, as between nodes of that release, and the
    /// copy's messages join it.
    #[tokio::test]
    async fn a_version_1_snapshot_replaces_an_offline_copy() {
        let ((b_metrics, b_router, b), snapshot) =
            two_copies(1_000, 2_000, [None, None], 100).await;
        let now = Instant::now();
        let bytes = snapshot.encode_as(now, crate::session::snapshot::VERSION_1);
        let snapshot = SessionSnapshot::decode(&bytes, now, Duration::ZERO).expect("decodes");
        assert!(matches!(
            b.adopt(snapshot, &b_router),
            Adopted::Installed { .. }
        ));
        let payloads = resumed(&b, &b_router, &b_metrics).await;
        assert_eq!(payloads, [&b"a1"[..], b"a2", b"b1", b"b2"]);
    }
}
