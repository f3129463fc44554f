//! What the client sends: reading the socket, decoding packets and acting on each (PUBLISH to
//! the router, acknowledgements to the session's in-flight state, SUBSCRIBE and UNSUBSCRIBE to
//! the subscription tree), with answers appended to the write buffer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;
use tracing::debug;

use super::{handshake, Close, Connection, Waiting, READ_CHUNK};
use crate::cluster::sync::ForwardBatch;
use crate::codec::{
    self, Ack, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use crate::metrics::Denied;
use crate::router::{Congested, Grant, Message};
use crate::topic::{self, Subscription};

/// Payloads up to this size are copied out of the read buffer into their own allocation, so
/// that the read buffer can be reused and queued messages do not pin it. As large as a read
/// chunk: a retained or queued 5 KiB payload sliced out of a 16 KiB buffer would keep all of it
/// alive, while a payload larger than a chunk has a buffer that is mostly its own.
const COPY_PAYLOAD_MAX: usize = READ_CHUNK;

impl Connection {
    /// Whether input not yet handled holds a DISCONNECT (it can when reading was paused, or a
    /// takeover or network error won the race): the close it asked for. Best effort, bounded,
    /// and without handling anything else it finds.
    pub(super) fn sent_disconnect(&mut self) -> Option<Close> {
        let max = self.broker.config.max_packet_size;
        for _ in 0..16 {
            loop {
                match codec::decode(&mut self.rbuf, Some(self.protocol), max) {
                    Ok(Some(Packet::Disconnect(disconnect))) => {
                        return Some(disconnect_close(disconnect.reason))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return None,
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
        None
    }

    /// Writes the session's record to the data directory (if there is one) after a change to
    /// it, and holds what is answered until it is durable.
    pub(super) fn keep_journal(&mut self) {
        let broker = self.broker.clone();
        if broker.sessions.store().is_some() {
            let mark = crate::store::queued_here();
            broker
                .sessions
                .keep_journal(&mut self.state, None, None, &broker.router);
            self.hold_if_written(mark);
        }
    }

    /// With a data directory, holds the output until what this thread queued for it since
    /// `mark` (see [`crate::store::queued_here`]) is durable: what was just handled is
    /// acknowledged only then. Handling that wrote nothing (no persistent session took the
    /// message) holds nothing.
    pub(super) fn hold_if_written(&mut self, mark: u64) {
        if crate::store::queued_here() != mark {
            self.hold_for_durable = true;
        }
    }

    /// Whether the client has sent bytes not read yet, asking the socket itself rather than the
    /// runtime's readiness flags, which lag after the process was paused.
    pub(super) fn input_waiting(&self) -> bool {
        self.stream.input_waiting()
    }

    /// Reads what the socket has and handles every complete packet in it.
    pub(super) fn read(&mut self) -> Result<(), Close> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Err(Close::PeerClosed),
            Ok(n) => {
                self.broker.metrics.bytes_received.inc_by(n as u64);
                self.last_packet = Instant::now();
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // Readiness can be stale (the handshake read up to the CONNECT without draining
                // the socket): an idle connection must not keep the buffer reserved for it.
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                return Ok(());
            }
            Err(error) => return Err(Close::Io(error)),
        }
        self.handle_buffered(true)
    }

    /// Handles every complete packet in the read buffer; with `hold_on_congestion`, those after
    /// a PUBLISH that congested a subscriber stay there (see `Connection::input_held`).
    pub(super) fn handle_buffered(&mut self, hold_on_congestion: bool) -> Result<(), Close> {
        let mut forwards = ForwardBatch::default();
        let handled = self.handle_packets(hold_on_congestion, &mut forwards);
        // What the packets staged for the other cluster members goes before the connection
        // waits for anything, or closes: it was accepted (and maybe acknowledged).
        if let Some(peer) = self.broker.flush_forwards(&mut forwards) {
            if self.waiting.is_none() {
                self.waiting = Some(Waiting::Congested(Congested::Peer(peer)));
            }
        }
        if self.rbuf.is_empty() {
            // Idle connections keep no read buffer.
            self.rbuf = BytesMut::new();
        }
        handled
    }

    fn handle_packets(
        &mut self,
        hold_on_congestion: bool,
        forwards: &mut ForwardBatch,
    ) -> Result<(), Close> {
        let max = self.broker.config.max_packet_size;
        loop {
            // Over its publish rate, the client's next packets wait in the buffer (the loop
            // comes back to them when the pause ends).
            if self.rate_paused() {
                if let Some(limits) = self.limits.as_mut() {
                    limits.input_held = !self.rbuf.is_empty();
                }
                break;
            }
            // A subscriber this client filled is congested: the rest waits until it drains.
            // After a SUBSCRIBE whose SUBACK waits for the cluster, the rest waits for it.
            let hold = match self.waiting {
                Some(Waiting::Congested(_)) => hold_on_congestion,
                Some(Waiting::Suback(_)) => true,
                None => false,
            };
            if hold {
                self.input_held = !self.rbuf.is_empty();
                break;
            }
            match codec::decode(&mut self.rbuf, Some(self.protocol), max) {
                Ok(Some(packet)) => self.handle(packet, forwards)?,
                Ok(None) => break,
                Err(error) => return Err(Close::decode_error(&error)),
            }
        }
        Ok(())
    }

    fn handle(&mut self, packet: Packet, forwards: &mut ForwardBatch) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish, forwards)?,
            // An acknowledgement is progress: a client that keeps acknowledging, however
            // slowly, is not stalled (the loop times a new stall from its next full window).
            Packet::PubAck(ack) => {
                if self.state.outgoing.acknowledge(ack.packet_id) {
                    self.unacknowledged_since = None;
                }
            }
            Packet::PubRec(ack) => {
                if ack.reason.is_failure() {
                    // MQTT 5: the client refused the message; the exchange ends here.
                    if self.state.outgoing.refused(ack.packet_id) {
                        self.unacknowledged_since = None;
                    }
                } else if self.state.outgoing.received(ack.packet_id) {
                    self.unacknowledged_since = None;
                    self.send(&Packet::PubRel(Ack::new(ack.packet_id)));
                } else if self.v5.is_some() {
                    let reason = ReasonCode::PacketIdentifierNotFound;
                    self.send(&Packet::PubRel(Ack::with_reason(ack.packet_id, reason)));
                }
            }
            Packet::PubRel(ack) => {
                let known = self.state.incoming_qos2.remove(&ack.packet_id);
                if known {
                    if let Some(journal) = self.state.outgoing.journal() {
                        // PUBCOMP waits for it: an id still awaiting release after a restart
                        // would take the client's next message with that id for a resend.
                        let mark = crate::store::queued_here();
                        journal.released_awaiting(ack.packet_id);
                        self.hold_if_written(mark);
                    }
                }
                let reason = if known || self.v5.is_none() {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.send(&Packet::PubComp(Ack::with_reason(ack.packet_id, reason)));
            }
            Packet::PubComp(ack) => {
                if self.state.outgoing.complete(ack.packet_id) {
                    self.unacknowledged_since = None;
                }
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe)?,
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe),
            Packet::PingReq => {
                if let Some(limits) = self.limits.as_mut() {
                    limits.ping(Instant::now()).map_err(Close::TooFast)?;
                }
                self.send(&Packet::PingResp)
            }
            Packet::Disconnect(disconnect) => return Err(self.handle_disconnect(disconnect)),
            // No authentication method was agreed at CONNECT (none is supported yet), so there
            // is nothing to re-authenticate with: a Protocol Error (§4.12; 0x8C "bad
            // authentication method" is not a reason DISCONNECT may carry).
            Packet::Auth(_) => {
                return Err(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "AUTH without an authentication method".into(),
                ))
            }
            other => {
                return Err(Close::Protocol(
                    ReasonCode::ProtocolError,
                    format!("unexpected {} from a client", other.name()),
                ))
            }
        }
        Ok(())
    }

    /// The close a DISCONNECT asks for; an MQTT 5 one may change the session's expiry first.
    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Close {
        if let (Some(v5), Some(asked)) = (&self.v5, disconnect.properties.session_expiry_interval) {
            // [MQTT-3.14.2-2]: a session that was to end with its connection stays so.
            if v5.connect_session_expiry == 0 && asked != 0 {
                return Close::Protocol(
                    ReasonCode::ProtocolError,
                    "DISCONNECT sets a session expiry after CONNECT set 0".into(),
                );
            }
            let asked = (asked != u32::MAX).then(|| Duration::from_secs(u64::from(asked)));
            self.state.expiry = match (asked, self.broker.config.session_expiry) {
                (Some(asked), Some(cap)) => Some(asked.min(cap)),
                (None, cap) => cap,
                (asked, None) => asked,
            }
            .into();
        }
        disconnect_close(disconnect.reason)
    }

    fn handle_publish(
        &mut self,
        mut publish: Publish,
        forwards: &mut ForwardBatch,
    ) -> Result<(), Close> {
        if let Some(limits) = self.limits.as_mut() {
            limits
                .publish(publish.payload.len(), Instant::now())
                .map_err(Close::TooFast)?;
        }
        if let Some(v5) = self.v5.as_mut() {
            // Applied first: a PUBLISH that uses an alias has an empty topic, and keeps it: the
            // alias's topic (checked when it was defined, on this connection) is read where
            // the message is made, in `route`.
            if let Some(alias) = publish.topic_alias {
                let topic = std::mem::take(&mut publish.topic);
                let budget = self.broker.config.max_packet_size;
                let maximum = v5.topic_alias_maximum;
                publish.topic = v5
                    .inbound_aliases()
                    .apply(alias, topic, maximum, budget)
                    .map_err(|code| {
                        Close::Protocol(code, format!("topic alias {alias} cannot be used"))
                    })?
                    .unwrap_or_default();
            } else if publish.topic.is_empty() {
                return Err(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "empty topic without a topic alias".into(),
                ));
            }
            if !publish.properties.subscription_identifiers.is_empty() {
                return Err(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "subscription identifier in a PUBLISH from a client".into(),
                ));
            }
            if !handshake::valid_response_topic(&publish.properties) {
                return Err(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "response topic is not a topic name".into(),
                ));
            }
            if publish.qos > self.broker.config.max_qos {
                return Err(Close::Protocol(
                    ReasonCode::QoSNotSupported,
                    format!("PUBLISH at QoS {} above the maximum", publish.qos.as_u8()),
                ));
            }
        }
        // An alias's topic was checked when the alias was defined.
        let uses_alias = publish.topic.is_empty() && publish.topic_alias.is_some();
        if !uses_alias && !topic::is_valid_topic_name(&publish.topic) {
            return Err(Close::Protocol(
                ReasonCode::TopicNameInvalid,
                "invalid topic name in PUBLISH".into(),
            ));
        }
        self.broker
            .metrics
            .record_received(publish.qos, publish.payload.len());
        let qos = publish.qos;
        let packet_id = publish.packet_id.unwrap_or(0);
        // MQTT 5 lets the receiver check a payload that claims to be UTF-8 (§3.3.2.3.2).
        let bad_payload = publish.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&publish.payload).is_err();
        match qos {
            QoS::AtMostOnce if bad_payload => {
                return Err(Close::Protocol(
                    ReasonCode::PayloadFormatInvalid,
                    "payload is not the UTF-8 its format indicator says".into(),
                ))
            }
            QoS::AtMostOnce => {
                let mark = crate::store::queued_here();
                self.route(publish, forwards);
                // Nothing to acknowledge, but a disk behind on what such messages queue (a
                // retained flood) makes their publisher wait for it: the writer's queue stays
                // bounded.
                if self
                    .broker
                    .sessions
                    .store()
                    .is_some_and(|store| store.is_congested())
                {
                    self.hold_if_written(mark);
                }
            }
            QoS::AtLeastOnce => {
                let mark = crate::store::queued_here();
                let reason = if bad_payload {
                    ReasonCode::PayloadFormatInvalid
                } else {
                    self.route(publish, forwards)
                };
                self.hold_if_written(mark);
                self.send(&Packet::PubAck(Ack::with_reason(packet_id, reason)));
            }
            QoS::ExactlyOnce => {
                let mark = crate::store::queued_here();
                // Delivered on first receipt; a resend of the same id before PUBREL is only
                // acknowledged again, so it is delivered exactly once.
                let reason = if bad_payload {
                    ReasonCode::PayloadFormatInvalid
                } else if self.state.incoming_qos2.contains(&packet_id) {
                    ReasonCode::Success
                } else {
                    // MQTT 5: the client may have at most our Receive Maximum awaiting PUBREL.
                    if self.v5.is_some()
                        && self.state.incoming_qos2.len()
                            >= usize::from(self.broker.config.max_receive)
                    {
                        return Err(Close::Protocol(
                            ReasonCode::ReceiveMaximumExceeded,
                            "more QoS 2 messages awaiting PUBREL than Receive Maximum".into(),
                        ));
                    }
                    self.state.incoming_qos2.insert(packet_id);
                    let reason = self.route(publish, forwards);
                    // An MQTT 5 PUBREC with a failure ends the exchange: no PUBREL follows.
                    // A 3.1.1 client is acknowledged as if delivered, and releases it.
                    if reason.is_failure() && self.v5.is_some() {
                        self.state.incoming_qos2.remove(&packet_id);
                    } else if let Some(journal) = self.state.outgoing.journal() {
                        journal.awaiting(packet_id);
                    }
                    reason
                };
                self.hold_if_written(mark);
                self.send(&Packet::PubRec(Ack::with_reason(packet_id, reason)));
            }
        }
        Ok(())
    }

    /// Routes a client's PUBLISH; returns the reason its acknowledgement carries (MQTT 5 "no
    /// matching subscribers" only outside a cluster, where no other node may have some).
    fn route(&mut self, mut publish: Publish, forwards: &mut ForwardBatch) -> ReasonCode {
        // An empty topic here stands for the one its alias was defined with (see
        // `handle_publish`), read in place.
        let alias_topic = match (publish.topic.is_empty(), publish.topic_alias, &self.v5) {
            (true, Some(alias), Some(v5)) => v5.inbound_alias_topic(alias),
            _ => None,
        };
        let topic = alias_topic.unwrap_or(&publish.topic);
        if let Some(access) = self.access.as_mut() {
            if !access.may_publish(topic) {
                self.broker.metrics.denied(Denied::Publish).inc();
                debug!(
                    client_id = self.state.client_id(),
                    topic = %String::from_utf8_lossy(topic),
                    "PUBLISH denied by the authorization rules; dropped"
                );
                return ReasonCode::NotAuthorized;
            }
        }
        let (topic, payload) = if publish.payload.len() <= COPY_PAYLOAD_MAX {
            // One allocation for both, and the read buffer stays ours to reuse.
            let mut owned = BytesMut::with_capacity(topic.len() + publish.payload.len());
            owned.extend_from_slice(topic);
            owned.extend_from_slice(&publish.payload);
            let mut owned = owned.freeze();
            let topic = owned.split_to(topic.len());
            (topic, owned)
        } else {
            (topic.clone(), publish.payload)
        };
        let mut message = Message::new(topic, payload, publish.qos, publish.retain);
        message.origin = self.state.mailbox.id();
        let properties = &mut publish.properties;
        if let Some(secs) = properties.message_expiry_interval {
            message.expires_at =
                std::time::Instant::now().checked_add(Duration::from_secs(u64::from(secs)));
        }
        if properties.has_message_properties() {
            // Decoded properties always encode again.
            message.properties = properties
                .set()
                .take_message_properties()
                .unwrap_or_default();
        }
        let routed = self.broker.publish_batched(Arc::new(message), forwards);
        let queued = u8::try_from(routed.deliveries).unwrap_or(u8::MAX);
        self.woke_subscribers = self.woke_subscribers.saturating_add(queued);
        if self.waiting.is_none() {
            self.waiting = routed.congested.map(Waiting::Congested);
        }
        if routed.matched || self.broker.is_clustered() {
            ReasonCode::Success
        } else {
            ReasonCode::NoMatchingSubscribers
        }
    }

    /// The protocol errors of a SUBSCRIBE as a whole, checked before any of its filters takes
    /// effect, so that a refused SUBSCRIBE leaves nothing in the session: No Local on a shared
    /// subscription, and (MQTT 5) using what CONNACK announced as not available (`-sia false`,
    /// `-wsa false`).
    ///
    /// §3.2.2.3.11: "If the Server receives a SUBSCRIBE packet containing a Wildcard Subscription
    /// and it does not support Wildcard Subscriptions, this is a Protocol Error. The Server uses
    /// DISCONNECT with Reason Code 0xA2 (Wildcard Subscriptions not supported) as described in
    /// section 4.13." §3.2.2.3.12 says the same of a Subscription Identifier, with 0xA1.
    ///
    /// SUBACK lists 0xA1 and 0xA2 too (§3.9.3), but for another case: "If a Server supports
    /// Wildcard Subscriptions, it can still reject a particular subscribe request containing a
    /// Wildcard Subscription. In this case the Server MAY send a SUBACK Control Packet with a
    /// Reason Code 0xA2" (§3.2.2.3.11), an error the client could not anticipate (§4.13.2). Here
    /// CONNACK told the client (the flag is never left out of it when 0, see `fit_connack`), so
    /// sending one anyway is the Protocol Error of §4.13.1, which lists 0xA1 and 0xA2 among its
    /// reason codes: "When a Server detects a Malformed Packet or Protocol Error, and a Reason
    /// Code is given in the specification, it MUST close the Network Connection
    /// [MQTT-4.13.1-1]".
    fn refuse_protocol_errors(&self, subscribe: &Subscribe) -> Result<(), Close> {
        // [MQTT-3.8.3-4] (a 3.1.1 SUBSCRIBE cannot set No Local: its reserved bits are 0).
        let shared_no_local = subscribe.filters.iter().any(|(raw, options)| {
            options.no_local
                && Subscription::parse(raw)
                    .is_some_and(|subscription| subscription.group().is_some())
        });
        if shared_no_local {
            return Err(Close::Protocol(
                ReasonCode::ProtocolError,
                "No Local on a shared subscription".into(),
            ));
        }
        if self.v5.is_none() {
            return Ok(());
        }
        let config = &self.broker.config;
        if !config.subscription_identifiers
            && !subscribe.properties.subscription_identifiers.is_empty()
        {
            return Err(Close::Protocol(
                ReasonCode::SubscriptionIdentifiersNotSupported,
                "Subscription Identifier, which CONNACK said is not available".into(),
            ));
        }
        if !config.wildcard_subscriptions {
            let wildcard = subscribe.filters.iter().find(|(raw, _)| {
                Subscription::parse(raw).is_some_and(|subscription| subscription.has_wildcard())
            });
            if let Some((raw, _)) = wildcard {
                return Err(Close::Protocol(
                    ReasonCode::WildcardSubscriptionsNotSupported,
                    format!(
                        "wildcard filter {:?}, which CONNACK said is not available",
                        super::prefix_within(raw, 64)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Close> {
        self.refuse_protocol_errors(&subscribe)?;
        let wildcards = self.broker.config.wildcard_subscriptions;
        let max_qos = self.broker.config.max_qos;
        let max_subscriptions = self.broker.config.max_subscriptions;
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied()
            .unwrap_or(0);
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut subscribed = false;
        for (raw, options) in subscribe.filters {
            let Some(subscription) = Subscription::parse(&raw) else {
                reason_codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            // `-wsa false` to a 3.1/3.1.1 client (an MQTT 5 one was closed above), which was
            // told nothing: "If the Server chooses not to support topic filters that contain
            // wildcard characters it MUST reject any Subscription request whose filter contains
            // them" (3.1.1 [MQTT-3.8.3-2]), with SUBACK 0x80 for that filter alone. Refused
            // before anything is subscribed or retained messages are owed.
            if !wildcards && subscription.has_wildcard() {
                reason_codes.push(ReasonCode::WildcardSubscriptionsNotSupported);
                continue;
            }
            if let Some(access) = self.access.as_mut() {
                if !access.may_subscribe(&subscription) {
                    self.broker.metrics.denied(Denied::Subscribe).inc();
                    // A filter the client held before the rules changed goes too.
                    if self.state.subscriptions.remove(&raw).is_some() {
                        self.state.forgive_retained(subscription.filter());
                        let id = self.state.mailbox.id();
                        self.broker.router.unsubscribe(id, &subscription);
                    }
                    reason_codes.push(ReasonCode::NotAuthorized);
                    continue;
                }
            }
            // `-msc`: a new filter beyond the cap is refused (0x97, quota exceeded; 0x80 in
            // 3.1.1); renewing one the session holds is always allowed.
            let existed = self.state.subscriptions.contains_key(&raw);
            let at_cap = max_subscriptions.is_some_and(|max| self.state.subscriptions.len() >= max);
            if at_cap && !existed {
                reason_codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let granted = options.qos.min(max_qos);
            let grant = Grant {
                qos: granted,
                no_local: options.no_local,
                retain_as_published: options.retain_as_published,
                identifier,
            };
            self.broker
                .router
                .subscribe(&self.state.mailbox, &subscription, grant);
            // Shared subscriptions get no retained messages: they would reach one member at
            // random, which serves nobody.
            // Owed after the SUBACK, read from the retained store a page at a time as the
            // client's flow allows (see `pull`): not through the bounded mailbox, which would cut
            // a large set to `-mq`, and not copied, so repeating a SUBSCRIBE costs nothing more.
            let wants_retained = match options.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscription => !existed,
                RetainHandling::Never => false,
            };
            if subscription.group().is_none() && wants_retained {
                self.state
                    .owe_retained(subscription.filter(), granted, identifier, existed);
            }
            self.state.subscriptions.insert(raw, granted);
            reason_codes.push(ReasonCode::granted(granted));
            subscribed = true;
        }
        if subscribed {
            self.keep_journal();
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            properties: Properties::default(),
        });
        // In a cluster, the SUBACK goes once the other members have the new filters: a message
        // published anywhere after it reaches this subscriber.
        match subscribed.then(|| self.broker.interest_wait()).flatten() {
            // A congestion noted while not holding input (after a wait gave up) is let go.
            Some(wait) => self.waiting = Some(Waiting::Suback(Box::new((suback, wait)))),
            None => self.send_acknowledgement(suback),
        }
        Ok(())
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        for raw in &unsubscribe.filters {
            let Some(subscription) = Subscription::parse(raw) else {
                reason_codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            if self.state.subscriptions.remove(raw).is_some() {
                self.state.forgive_retained(subscription.filter());
                self.broker
                    .router
                    .unsubscribe(self.state.mailbox.id(), &subscription);
                reason_codes.push(ReasonCode::Success);
            } else {
                reason_codes.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        self.keep_journal();
        self.send_acknowledgement(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes,
            properties: Properties::default(),
        }));
    }
}

/// What a DISCONNECT's reason asks for: only 0x00 closes without the will.
fn disconnect_close(reason: ReasonCode) -> Close {
    if reason == ReasonCode::Success {
        Close::Disconnect
    } else {
        Close::DisconnectWithWill(reason)
    }
}
