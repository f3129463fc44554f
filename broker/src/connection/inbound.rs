//! What the client sends: reading the socket, decoding packets and acting on each (PUBLISH to
//! the router, acknowledgements to the session's in-flight state, SUBSCRIBE and UNSUBSCRIBE to
//! the subscription tree), with answers appended to the write buffer.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::time::Instant;

use super::{Close, Connection, READ_CHUNK};
use crate::codec::{
    self, Ack, Packet, Properties, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::router::{Grant, Message};
use crate::topic::{self, Subscription};

/// Payloads up to this size are copied out of the read buffer into their own allocation, so
/// that the read buffer can be reused and queued messages do not pin it.
const COPY_PAYLOAD_MAX: usize = 4096;

impl Connection {
    /// Whether input not yet handled holds a DISCONNECT (it can when reading was paused, or a
    /// takeover or network error won the race): then the client asked for no will. Best effort,
    /// bounded, and without handling anything else it finds.
    pub(super) fn sent_disconnect(&mut self) -> bool {
        let max = self.broker.config.max_packet_size;
        for _ in 0..16 {
            loop {
                match codec::decode(&mut self.rbuf, Some(self.protocol), max) {
                    Ok(Some(Packet::Disconnect(_))) => return true,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
        false
    }

    /// Whether the client has sent bytes not read yet, asking the socket itself rather than the
    /// runtime's readiness flags, which lag after the process was paused.
    pub(super) fn input_waiting(&self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        matches!(SockRef::from(&self.stream).peek(&mut probe), Ok(n) if n > 0)
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
        self.handle_buffered()
    }

    /// Handles every complete packet in the read buffer.
    pub(super) fn handle_buffered(&mut self) -> Result<(), Close> {
        let max = self.broker.config.max_packet_size;
        loop {
            match codec::decode(&mut self.rbuf, Some(self.protocol), max) {
                Ok(Some(packet)) => self.handle(packet)?,
                Ok(None) => break,
                Err(error) => return Err(Close::Protocol(error.to_string())),
            }
        }
        if self.rbuf.is_empty() {
            // Idle connections keep no read buffer.
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish)?,
            // An acknowledgement is progress: a client that keeps acknowledging, however
            // slowly, is not stalled (the loop times a new stall from its next full window).
            Packet::PubAck(ack) => {
                if self.state.outgoing.acknowledge(ack.packet_id) {
                    self.unacknowledged_since = None;
                }
            }
            Packet::PubRec(ack) => {
                if self.state.outgoing.received(ack.packet_id) {
                    self.unacknowledged_since = None;
                    self.send(&Packet::PubRel(Ack::new(ack.packet_id)));
                }
            }
            Packet::PubRel(ack) => {
                self.state.incoming_qos2.remove(&ack.packet_id);
                self.send(&Packet::PubComp(Ack::new(ack.packet_id)));
            }
            Packet::PubComp(ack) => {
                if self.state.outgoing.complete(ack.packet_id) {
                    self.unacknowledged_since = None;
                }
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(_) => return Err(Close::Disconnect),
            other => {
                return Err(Close::Protocol(format!(
                    "unexpected {} from a client",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn handle_publish(&mut self, publish: Publish) -> Result<(), Close> {
        if !topic::is_valid_topic_name(&publish.topic) {
            return Err(Close::Protocol("invalid topic name in PUBLISH".into()));
        }
        self.broker
            .metrics
            .record_received(publish.qos, publish.payload.len());
        let qos = publish.qos;
        let packet_id = publish.packet_id.unwrap_or(0);
        match qos {
            QoS::AtMostOnce => self.route(publish),
            QoS::AtLeastOnce => {
                self.route(publish);
                self.send(&Packet::PubAck(Ack::new(packet_id)));
            }
            QoS::ExactlyOnce => {
                // Delivered on first receipt; a resend of the same id before PUBREL is only
                // acknowledged again, so it is delivered exactly once.
                if self.state.incoming_qos2.insert(packet_id) {
                    self.route(publish);
                }
                self.send(&Packet::PubRec(Ack::new(packet_id)));
            }
        }
        Ok(())
    }

    fn route(&mut self, publish: Publish) {
        let (topic, payload) = if publish.payload.len() <= COPY_PAYLOAD_MAX {
            // One allocation for both, and the read buffer stays ours to reuse.
            let mut owned = BytesMut::with_capacity(publish.topic.len() + publish.payload.len());
            owned.extend_from_slice(&publish.topic);
            owned.extend_from_slice(&publish.payload);
            let mut owned = owned.freeze();
            let topic = owned.split_to(publish.topic.len());
            (topic, owned)
        } else {
            (publish.topic, publish.payload)
        };
        let message = Message::new(topic, payload, publish.qos, publish.retain);
        let routed = self.broker.publish(Arc::new(message));
        self.woke_subscribers |= routed.deliveries > 0;
        if self.congested.is_none() {
            self.congested = routed.congested;
        }
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) {
        let max_qos = self.broker.config.max_qos;
        let max_subscriptions = self.broker.config.max_subscriptions;
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for (raw, options) in subscribe.filters {
            let requested = options.qos;
            let Some(subscription) = Subscription::parse(&raw) else {
                return_codes.push(ReasonCode::UnspecifiedError);
                continue;
            };
            // `-msc`: a new filter beyond the cap is refused (0x80 in MQTT 3.1.1; MQTT 5 would
            // say 0x97, quota exceeded); renewing one the session holds is always allowed.
            let at_cap = max_subscriptions.is_some_and(|max| self.state.subscriptions.len() >= max);
            if at_cap && !self.state.subscriptions.contains_key(&raw) {
                return_codes.push(ReasonCode::UnspecifiedError);
                continue;
            }
            let granted = requested.min(max_qos);
            self.broker
                .router
                .subscribe(&self.state.mailbox, &subscription, Grant::qos(granted));
            // Shared subscriptions get no retained messages: they would reach one member at
            // random, which serves nobody.
            // Owed after the SUBACK, read from the retained store a page at a time as the
            // client's flow allows (see `pull`): not through the bounded mailbox, which would cut
            // a large set to `-mq`, and not copied, so repeating a SUBSCRIBE costs nothing more.
            if subscription.group().is_none() {
                self.state.owe_retained(subscription.filter(), granted);
            }
            self.state.subscriptions.insert(raw, granted);
            return_codes.push(ReasonCode::granted(granted));
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes: return_codes,
            properties: Properties::default(),
        }));
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        for raw in &unsubscribe.filters {
            if self.state.subscriptions.remove(raw).is_some() {
                if let Some(subscription) = Subscription::parse(raw) {
                    self.state.forgive_retained(subscription.filter());
                    self.broker
                        .router
                        .unsubscribe(self.state.mailbox.id(), &subscription);
                }
            }
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes: Vec::new(),
            properties: Properties::default(),
        }));
    }
}
