//! What is sent to the client: deliveries pulled from the session's mailbox within the in-flight
//! window, resends after a resumed session, and the write buffer that collects every packet and
//! goes out when the socket takes it.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::time::Instant;
use tracing::debug;

use super::aliases::OutboundTopic;
use super::{Connection, READ_CHUNK, WRITE_HIGH_WATER};
use crate::codec::{self, Ack, Packet, PublishV5Extras, QoS};
use crate::metrics::DropReason;
use crate::router::{Delivery, Page, SubscriptionIds};

/// Deliveries moved from the mailbox per pull, so one busy subscriber cannot hog its worker.
const PULL_BATCH: usize = 256;

impl Connection {
    pub(super) fn can_pull(&self) -> bool {
        self.wbuf.len() < WRITE_HIGH_WATER && !self.window_full()
    }

    /// Whether the in-flight window is full: nothing more at QoS 1 or 2 goes out until the
    /// client acknowledges something.
    pub(super) fn window_full(&self) -> bool {
        self.state.outgoing.in_window() >= self.window()
    }

    /// The in-flight window: `-mif`, or an MQTT 5 client's Receive Maximum when smaller.
    fn window(&self) -> usize {
        let window = self.broker.config.max_inflight;
        let window = match &self.v5 {
            Some(v5) => window.min(v5.receive_maximum),
            None => window,
        };
        usize::from(window)
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
        if let Some(owed) = self.state.retained.front_mut() {
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
                    // The mailbox announced what arrived meanwhile while the backlog went first;
                    // announce it again, or it would wait for the next push into an empty queue.
                    self.state.mailbox.announce();
                }
            }
            scratch.extend(page.messages.into_iter().map(|message| Delivery {
                qos: message.qos.min(granted),
                message,
                retain: true,
                subscription_ids: subscription_ids.clone(),
            }));
        } else {
            let metrics = &self.broker.metrics;
            self.state
                .mailbox
                .take(PULL_BATCH, window, budget, scratch, metrics);
        }
        if scratch.is_empty() {
            return;
        }
        self.wbuf.reserve(READ_CHUNK);
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
                self.state.outgoing.publish(delivery.clone())
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
            } else {
                // Beyond what a PUBLISH can carry: never sent, so it holds no packet id.
                if packet_id != 0 {
                    self.state.outgoing.unsent(packet_id);
                }
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
        let message = delivery.message.clone();
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
            self.state.outgoing.publish(delivery.clone())
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
        if written.is_err() && packet_id != 0 {
            // Beyond what a PUBLISH can carry (the topic spelled out, identifiers added): never
            // sent, so it holds no packet id.
            self.state.outgoing.unsent(packet_id);
        }
        written.ok().map(|()| message.payload.len())
    }

    /// After CONNACK on a resumed session: everything unacknowledged goes again, in order: PUBREL
    /// for QoS 2 messages the client had already received, and the PUBLISHes with DUP set as far
    /// as this connection's window allows (the rest follow as acknowledgements make room, see
    /// [`Connection::resend_unsent`]).
    pub(super) fn resend_in_flight(&mut self) {
        self.state.outgoing.resume();
        let mut out = std::mem::take(&mut self.wbuf);
        for (packet_id, in_flight) in self.state.outgoing.iter() {
            if let crate::session::InFlight::Released = in_flight {
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

    /// Appends a packet to the write buffer; it goes out with the next write.
    pub(super) fn send(&mut self, packet: &Packet) {
        if let Err(error) = packet.encode(self.protocol, &mut self.wbuf) {
            debug!(peer = ?self.stream.peer_addr().ok(), %error, "could not encode {}", packet.name());
        }
    }

    /// Offers pending output to the socket with one direct system call, past the runtime's
    /// readiness flags (see [`Connection::input_waiting`]); progress clears the write stall.
    pub(super) fn write_bypassing_readiness(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        match SockRef::from(&self.stream).send(&self.wbuf) {
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

    /// Writes as much pending output as the socket takes now, without waiting.
    pub(super) fn write_now(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                    self.broker.metrics.bytes_sent.inc_by(n as u64);
                    self.write_blocked_since = None;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked_since.get_or_insert_with(Instant::now);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        if self.wbuf.is_empty() {
            // Idle connections keep no write buffer.
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }
}
