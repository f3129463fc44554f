//! What is sent to the client: deliveries pulled from the session's mailbox within the in-flight
//! window, resends after a resumed session, and the write buffer that collects every packet and
//! goes out when the socket takes it.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;
use tracing::debug;

use super::aliases::OutboundTopic;
use super::{Connection, WRITE_HIGH_WATER};
use crate::codec::{
    self, Ack, EncodeError, Packet, Protocol, PublishV5Extras, QoS, SubAck, UnsubAck,
};
use crate::metrics::DropReason;
use crate::router::{Delivery, Page, SubscriptionIds};

/// Room made in the write buffer before a pull appends to it.
const WRITE_CHUNK: usize = 4096;

/// Deliveries moved from the mailbox per pull, so one busy subscriber cannot hog its worker.
const PULL_BATCH: usize = 256;

/// A pull at least this large means the client's publishers outpace its writes: the connection
/// yields before the next one (see `Connection::pulled_many`).
const LARGE_PULL: usize = 32;

/// How many owed retained subscriptions one pull looks at, at most, before it has something to
/// send: bounds a turn's work while retiring those with no retained message in bulk.
const OWED_PER_PULL: usize = 256;

impl Connection {
    pub(super) fn can_pull(&self) -> bool {
        self.wbuf.len() < WRITE_HIGH_WATER && !self.window_full()
    }

    /// Whether the in-flight window is full: nothing more at QoS 1 or 2 goes out until the
    /// client acknowledges something.
    pub(super) fn window_full(&self) -> bool {
        self.state.outgoing.in_window() >= self.window()
    }

    /// The in-flight window: `-mif`, or an MQTT 5 client's Receive Maximum when smaller, and
    /// never more than the client's queue (`-mq`).
    ///
    /// The window is not what paces a client: TCP is. With a window of W messages a client
    /// gets at most W per round trip, so a small one caps a subscriber a network away (32 at
    /// 1 ms is 32,000 messages/s) and, on one machine, costs a wake-up of the connection per W
    /// messages. What the window does bound is what a client must take again after a
    /// reconnect, and the messages a session holds besides its queue: hence at most `-mq`, so
    /// that a session never holds more than twice its queue.
    fn window(&self) -> usize {
        let config = &self.broker.config;
        let window = match &self.v5 {
            Some(v5) => config.max_inflight.min(v5.receive_maximum),
            None => config.max_inflight,
        };
        usize::from(window).min(config.max_queued)
    }

    /// Whether deliveries are waiting to go out (in the mailbox or owed retained messages).
    pub(super) fn deliveries_waiting(&self) -> bool {
        self.state.outgoing.has_unsent()
            || !self.state.retained.is_empty()
            || !self.state.mailbox.is_empty()
    }

    /// Moves deliveries into the write buffer, within the in-flight window: the retained
    /// messages owed for new subscriptions first (they are older than anything published since),
    /// then the mailbox.
    pub(super) fn pull(&mut self, scratch: &mut Vec<Delivery>) {
        if !self.can_pull() {
            return;
        }
        if self.state.outgoing.has_unsent() {
            // What an earlier connection had in flight goes first, in order.
            self.resend_unsent();
            if self.state.outgoing.has_unsent() || !self.can_pull() {
                return;
            }
        }
        let window = self
            .window()
            .saturating_sub(self.state.outgoing.in_window());
        let budget = WRITE_HIGH_WATER - self.wbuf.len();
        if !self.state.retained.is_empty() {
            // Owed entries with nothing (more) to send are retired many per turn: a client
            // subscribing a million filters adds them faster than one a turn would retire them,
            // and each new subscription looks through those still owed.
            for _ in 0..OWED_PER_PULL {
                let Some(owed) = self.state.retained.front_mut() else {
                    break;
                };
                // A QoS 0 subscription's messages never count against the window.
                let max = if owed.qos == QoS::AtMostOnce {
                    PULL_BATCH
                } else {
                    PULL_BATCH.min(window)
                };
                let mut page = Page::new(max, budget);
                let router = &self.broker.router;
                let more = router.retained_page(&owed.filter, owed.after.as_deref(), &mut page);
                if let Some(last) = page.messages.last() {
                    owed.after = Some(last.topic.clone());
                }
                let granted = owed.qos;
                // [MQTT-3.3.4-3]: sent because of the subscription, so with its identifier.
                let subscription_ids: SubscriptionIds = (owed.identifier != 0)
                    .then_some(owed.identifier)
                    .into_iter()
                    .collect();
                if !more {
                    self.state.retained.pop_front();
                    if self.state.retained.is_empty() {
                        // The mailbox announced what arrived meanwhile while the backlog went
                        // first; announce it again, or it would wait for the next push into an
                        // empty queue.
                        self.state.mailbox.announce();
                    }
                }
                scratch.extend(page.messages.into_iter().map(|message| Delivery {
                    qos: message.qos.min(granted),
                    message,
                    retain: true,
                    subscription_ids: subscription_ids.clone(),
                    stored: None,
                }));
                // One that still owes (a page went out, or the window is full) goes on later.
                if !scratch.is_empty() || more {
                    break;
                }
            }
        } else {
            let metrics = &self.broker.metrics;
            self.state
                .mailbox
                .take(PULL_BATCH, window, budget, scratch, metrics);
            self.pulled_many = scratch.len() >= LARGE_PULL;
        }
        self.drop_unreadable(scratch);
        if scratch.is_empty() {
            return;
        }
        self.wbuf.reserve(WRITE_CHUNK);
        // Counted per batch: one atomic add per QoS, not one per message.
        let mut messages = [0u64; 3];
        let mut payload_bytes = [0u64; 3];
        if self.v5.is_some() {
            let now = std::time::Instant::now();
            let mut too_large = 0;
            for delivery in scratch.drain(..) {
                let qos = delivery.qos as usize;
                match self.write_v5(delivery, now) {
                    Some(payload) => {
                        messages[qos] += 1;
                        payload_bytes[qos] += payload as u64;
                    }
                    None => too_large += 1,
                }
            }
            if too_large > 0 {
                let metrics = &self.broker.metrics;
                metrics
                    .dropped(DropReason::PacketTooLarge)
                    .inc_by(too_large);
            }
        }
        for delivery in scratch.drain(..) {
            let qos = delivery.qos;
            // Other references mean other subscribers: worth encoding once for all of them.
            let shared = Arc::strong_count(&delivery.message) > 1;
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                self.state.outgoing.next_id()
            };
            let message = &delivery.message;
            if message.write_to(
                &mut self.wbuf,
                qos,
                packet_id,
                delivery.retain,
                false,
                shared,
            ) {
                messages[qos as usize] += 1;
                payload_bytes[qos as usize] += message.payload.len() as u64;
                if packet_id != 0 {
                    self.state.outgoing.record(packet_id, delivery);
                }
            } else {
                // Beyond what a PUBLISH can carry: never sent, so it is not recorded.
                self.state.outgoing.forget_unsent(&delivery);
                let metrics = &self.broker.metrics;
                metrics.dropped(DropReason::PacketTooLarge).inc();
            }
        }
        let metrics = &self.broker.metrics;
        for qos in 0..3 {
            if messages[qos] > 0 {
                metrics.messages_sent[qos].inc_by(messages[qos]);
                metrics.payload_bytes_sent[qos].inc_by(payload_bytes[qos]);
            }
        }
        if scratch.capacity() > PULL_BATCH {
            *scratch = Vec::new();
        }
    }

    /// Appends one delivery to an MQTT 5 client: with its remaining expiry, subscription
    /// identifiers and a topic alias, and a packet id from the in-flight window. Returns the
    /// payload size, or `None` when the packet would exceed the client's Maximum Packet Size
    /// (then nothing is sent and no packet id is used).
    fn write_v5(&mut self, delivery: Delivery, now: std::time::Instant) -> Option<usize> {
        let v5 = self.v5.as_mut()?;
        let message = &delivery.message;
        let mut extras = PublishV5Extras {
            message_expiry: message.remaining_expiry(now),
            topic_alias: None,
            subscription_ids: &delivery.subscription_ids,
            message_properties: &message.properties,
        };
        // Judged with the whole topic (and an alias), so that the choice of alias below never
        // makes a difference.
        extras.topic_alias = v5.outbound_aliases_enabled().then_some(0);
        let size = codec::publish_v5_size(
            delivery.qos,
            message.topic.len(),
            &extras,
            message.payload.len(),
        );
        // Past the protocol's own limit too (the topic spelled out, identifiers added): decided
        // before an alias is assigned, which the client would otherwise never learn.
        if size > v5.maximum_packet_size.min(codec::MAX_REMAINING_LENGTH + 5) {
            self.state.outgoing.forget_unsent(&delivery);
            return None;
        }
        let (topic, alias) = match v5.outbound_aliases().assign(&message.topic) {
            OutboundTopic::Plain => (&message.topic[..], None),
            OutboundTopic::Define(alias) => (&message.topic[..], Some(alias)),
            OutboundTopic::Alias(alias) => (&[][..], Some(alias)),
        };
        extras.topic_alias = alias;
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            self.state.outgoing.next_id()
        };
        let written = codec::encode_publish_v5(
            &mut self.wbuf,
            false,
            delivery.qos,
            delivery.retain,
            topic,
            packet_id,
            &extras,
            &message.payload,
        );
        // Beyond what a PUBLISH can carry (the topic spelled out, identifiers added): never
        // sent, so it is not recorded.
        written.ok()?;
        let payload = message.payload.len();
        if packet_id != 0 {
            self.state.outgoing.record(packet_id, delivery);
        }
        Some(payload)
    }

    /// After CONNACK on a resumed session: everything unacknowledged goes again, in order: PUBREL
    /// for QoS 2 messages the client had already received, and the PUBLISHes with DUP set as far
    /// as this connection's window allows (the rest follow as acknowledgements make room, see
    /// [`Connection::resend_unsent`]).
    pub(super) fn resend_in_flight(&mut self) {
        self.state.outgoing.resume();
        let mut out = std::mem::take(&mut self.wbuf);
        for (packet_id, in_flight) in self.state.outgoing.iter() {
            if let crate::session::InFlight::Released(_) = in_flight {
                let _ = Packet::PubRel(Ack::new(*packet_id)).encode(self.protocol, &mut out);
            }
        }
        self.wbuf = out;
        self.resend_unsent();
    }

    /// Resends the PUBLISHes of an earlier connection, oldest first, while the window has room
    /// (§4.9: the client's Receive Maximum on this connection bounds resends too). An MQTT 5
    /// resend names its topic in full (topic aliases do not outlive a connection), and one larger
    /// than this client's Maximum Packet Size is discarded as if it had been delivered
    /// ([MQTT-3.1.2-25]).
    pub(super) fn resend_unsent(&mut self) {
        let now = std::time::Instant::now();
        let mut too_large = 0;
        while !self.window_full() && self.wbuf.len() < WRITE_HIGH_WATER {
            let Some((packet_id, delivery)) = self.state.outgoing.take_unsent() else {
                break;
            };
            let message = &delivery.message;
            let Some(v5) = &self.v5 else {
                let (qos, retain) = (delivery.qos, delivery.retain);
                if !message.write_to(&mut self.wbuf, qos, packet_id, retain, true, false) {
                    // Never sent, so it gives its packet id back.
                    self.state.outgoing.unsent(packet_id);
                    too_large += 1;
                }
                continue;
            };
            let extras = PublishV5Extras {
                message_expiry: message.remaining_expiry(now),
                topic_alias: None,
                subscription_ids: &delivery.subscription_ids,
                message_properties: &message.properties,
            };
            let size = codec::publish_v5_size(
                delivery.qos,
                message.topic.len(),
                &extras,
                message.payload.len(),
            );
            if size > v5.maximum_packet_size {
                // Ends the exchange as a refusing PUBREC would.
                self.state.outgoing.refused(packet_id);
                too_large += 1;
                continue;
            }
            let written = codec::encode_publish_v5(
                &mut self.wbuf,
                true,
                delivery.qos,
                delivery.retain,
                &message.topic,
                packet_id,
                &extras,
                &message.payload,
            );
            if written.is_err() {
                self.state.outgoing.unsent(packet_id);
                too_large += 1;
            }
        }
        if too_large > 0 {
            let metrics = &self.broker.metrics;
            metrics
                .dropped(DropReason::PacketTooLarge)
                .inc_by(too_large);
        }
    }

    /// Appends a SUBACK or UNSUBACK, held to an MQTT 5 client's Maximum Packet Size: "The Server
    /// MUST NOT send packets exceeding Maximum Packet Size to the Client [MQTT-3.1.2-24]". Its
    /// Reason String and User Properties go first, which the standard has the Server leave out
    /// when they would make the packet too large ([MQTT-3.9.2-1], [MQTT-3.9.2-2],
    /// [MQTT-3.11.2-1], [MQTT-3.11.2-2]); one still too large (a reason code per filter: 20
    /// filters to a client allowing 10 bytes) is discarded: "Where a Packet is too large to send,
    /// the Server MUST discard it without sending it and then behave as if it had completed
    /// sending that Application Message [MQTT-3.1.2-25]". So the subscriptions it acknowledges
    /// stay in effect (they were made before it was built, retained messages owed included), as
    /// they would for a SUBACK lost with the connection; undoing them would make a client that
    /// cannot read the answer see a different broker from one that can. Counted and logged: the
    /// client waits for an answer that will not come, and the operator can see why.
    pub(super) fn send_acknowledgement(&mut self, mut packet: Packet) {
        let limit = match &self.v5 {
            Some(v5) => v5.maximum_packet_size,
            None => return self.send(&packet),
        };
        match append_within(&mut self.wbuf, &mut packet, limit) {
            Ok(true) => {}
            Ok(false) => {
                self.broker.metrics.acks_too_large.inc();
                debug!(
                    peer = ?self.peer(),
                    limit,
                    "{} larger than the client's Maximum Packet Size: discarded, its \
                     subscriptions kept",
                    packet.name()
                );
            }
            Err(error) => {
                debug!(peer = ?self.peer(), %error, "could not encode {}", packet.name());
            }
        }
        // A discarded packet was encoded before it was measured: the buffer it grew must not
        // stay with a connection that may now be idle for a long time.
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
    }

    /// Appends a packet to the write buffer; it goes out with the next write.
    pub(super) fn send(&mut self, packet: &Packet) {
        if let Err(error) = packet.encode(self.protocol, &mut self.wbuf) {
            debug!(peer = ?self.peer(), %error, "could not encode {}", packet.name());
        }
    }

    /// Offers pending output to the socket with one direct system call, past the runtime's
    /// readiness flags (see [`Connection::input_waiting`]); progress clears the write stall.
    pub(super) fn write_bypassing_readiness(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        match self.stream.send_bypassing_readiness(&self.wbuf) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = self.wbuf.split_to(n);
                self.broker.metrics.bytes_sent.inc_by(n as u64);
                self.write_blocked_since = None;
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Writes as much pending output as the socket takes now, without waiting; then what TLS
    /// or WebSocket still holds.
    pub(super) fn write_now(&mut self) -> io::Result<()> {
        // What TLS or WebSocket sent of earlier output while a write here would block is
        // progress too: a client reading slowly is not stalled.
        let layers_sent = self.stream.bytes_sent();
        let mut blocked = false;
        loop {
            if self.wbuf.is_empty() {
                match self.stream.flush() {
                    Ok(()) => self.write_blocked_since = None,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => blocked = true,
                    Err(error) => return Err(error),
                }
                break;
            }
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                    self.broker.metrics.bytes_sent.inc_by(n as u64);
                    self.write_blocked_since = None;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        if blocked {
            if self.stream.bytes_sent() != layers_sent {
                self.write_blocked_since = Some(Instant::now());
            } else {
                self.write_blocked_since.get_or_insert_with(Instant::now);
            }
        }
        if self.wbuf.is_empty() {
            // Idle connections keep no write buffer.
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }
}

/// Appends an MQTT 5 SUBACK or UNSUBACK to `out` if it is at most `limit` bytes, without its
/// Reason String and User Properties when only that makes it fit (`packet` is then left
/// without them). Returns whether it was appended; `out` is unchanged when not.
fn append_within(
    out: &mut BytesMut,
    packet: &mut Packet,
    limit: usize,
) -> Result<bool, EncodeError> {
    let start = out.len();
    packet.encode(Protocol::V5, out)?;
    if out.len() - start <= limit {
        return Ok(true);
    }
    out.truncate(start);
    let properties = match packet {
        Packet::SubAck(SubAck { properties, .. })
        | Packet::UnsubAck(UnsubAck { properties, .. }) => properties,
        _ => return Ok(false),
    };
    if properties.reason_string.is_none() && properties.user_properties.is_empty() {
        return Ok(false);
    }
    properties.set().strip_problem_information();
    packet.encode(Protocol::V5, out)?;
    if out.len() - start <= limit {
        return Ok(true);
    }
    out.truncate(start);
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, ReasonCode};

    fn suback(filters: usize, reason_string: Option<&str>) -> Packet {
        let mut properties = Properties::default();
        if let Some(text) = reason_string {
            let values = properties.set();
            values.reason_string = Some(text.to_string());
            values.user_properties.push(("k".into(), "v".into()));
        }
        Packet::SubAck(SubAck {
            packet_id: 7,
            reason_codes: vec![ReasonCode::GrantedQoS1; filters],
            properties,
        })
    }

    fn encoded_len(packet: &Packet) -> usize {
        let mut out = BytesMut::new();
        assert!(packet.encode(Protocol::V5, &mut out).is_ok());
        out.len()
    }

    #[test]
    fn an_acknowledgement_that_fits_goes_whole() {
        let mut out = BytesMut::from(&b"queued"[..]);
        let mut packet = suback(3, Some("why"));
        let whole = encoded_len(&packet);
        assert_eq!(append_within(&mut out, &mut packet, whole).ok(), Some(true));
        assert_eq!(out.len(), 6 + whole);
        assert_eq!(
            packet.clone(),
            suback(3, Some("why")),
            "nothing was dropped"
        );
    }

    #[test]
    fn reason_string_and_user_properties_go_first() {
        let mut out = BytesMut::from(&b"queued"[..]);
        let mut packet = suback(3, Some("a reason string"));
        let bare = encoded_len(&suback(3, None));
        assert!(encoded_len(&packet) > bare);
        assert_eq!(append_within(&mut out, &mut packet, bare).ok(), Some(true));
        assert_eq!(&out[..6], b"queued");
        assert_eq!(out.len(), 6 + bare);
        assert_eq!(packet, suback(3, None));
    }

    #[test]
    fn an_acknowledgement_that_cannot_fit_is_not_written() {
        for reason_string in [None, Some("why")] {
            let mut out = BytesMut::from(&b"queued"[..]);
            let mut packet = suback(20, reason_string);
            assert_eq!(append_within(&mut out, &mut packet, 10).ok(), Some(false));
            assert_eq!(&out[..], b"queued", "{reason_string:?}");
        }
        let mut out = BytesMut::new();
        let mut unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            reason_codes: vec![ReasonCode::Success; 20],
            properties: Properties::default(),
        });
        assert_eq!(append_within(&mut out, &mut unsuback, 10).ok(), Some(false));
        assert!(out.is_empty());
    }
}
