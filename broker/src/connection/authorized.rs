//! What the connection's [`Authorizer`](crate::auth::Authorizer) decides, applied to the
//! session: subscriptions judged again when the rules or the client behind the session change,
//! and deliveries the client may not read dropped before they are sent.

use tracing::info;

use super::Connection;
use crate::metrics::Denied;
use crate::router::Delivery;
use crate::topic::Subscription;

impl Connection {
    /// Judges the session's subscriptions again (a stored session taken by a new connection,
    /// or reloaded rules) and removes those no longer allowed. Messages queued through them
    /// meanwhile are then checked as they go out.
    pub(super) fn rejudge_subscriptions(&mut self) {
        let Some(access) = self.access.as_mut() else {
            return;
        };
        if self.state.subscriptions.is_empty() {
            return;
        }
        let filters: Vec<String> = self.state.subscriptions.keys().cloned().collect();
        let mut revoked = 0;
        for raw in filters {
            let Some(subscription) = Subscription::parse(&raw) else {
                continue;
            };
            if access.may_subscribe(&subscription) {
                continue;
            }
            self.state.subscriptions.remove(&raw);
            self.state.forgive_retained(subscription.filter());
            self.broker
                .router
                .unsubscribe(self.state.mailbox.id(), &subscription);
            revoked += 1;
            info!(
                client_id = self.state.client_id(),
                filter = %raw,
                "subscription removed: the authorization rules no longer allow it"
            );
        }
        if revoked > 0 {
            access.check_every_delivery();
            self.broker.metrics.denied(Denied::Revoked).inc_by(revoked);
        }
    }

    /// The rules file was reloaded: takes the new rules, and judges the subscriptions again
    /// if they changed for this client.
    pub(super) fn apply_reloaded_rules(&mut self) {
        let (Some(control), Some(access)) = (&self.broker.access, self.access.as_mut()) else {
            return;
        };
        if control.refresh(access) {
            self.rejudge_subscriptions();
        }
    }

    /// Drops from `deliveries` what the client may not read.
    pub(super) fn drop_unreadable(&mut self, deliveries: &mut Vec<Delivery>) {
        let Some(access) = self.access.as_mut() else {
            return;
        };
        let before = deliveries.len();
        let outgoing = &self.state.outgoing;
        deliveries.retain(|delivery| {
            let may = access.may_deliver(&delivery.message.topic);
            if !may {
                outgoing.forget_unsent(delivery);
            }
            may
        });
        let dropped = before - deliveries.len();
        if dropped > 0 {
            self.broker
                .metrics
                .denied(Denied::Delivery)
                .inc_by(dropped as u64);
        }
    }
}
