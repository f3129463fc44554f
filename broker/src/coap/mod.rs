//! Coolpy7's CoAP publish (`-cl`, UDP, off unless given): a device that cannot keep an MQTT
//! connection publishes with one CoAP request (RFC 7252), through the same
//! [`gateway`](crate::gateway) as the HTTP `POST /pub`: authenticated with `-as` and authorized
//! with the rules like an MQTT client, then published locally and to the cluster.
//!
//! # The mapping
//!
//! `POST coap://host:port/<topic>?qos=1&retain=true&c=<client id>&u=<user>&p=<password>`
//!
//! - The Uri-Path options joined with `/` are the topic: `coap://host/sensors/t1` publishes to
//!   `sensors/t1`, `coap://host//a` to `/a` (an empty segment is an empty level). The client
//!   percent-decodes; a segment that holds a `/` (`%2F`) or a NUL is 4.00, no path is 4.00, and
//!   a topic MQTT forbids (`+`, `#`, too deep) is 4.00. There is no `/ps/` prefix (the CoAP
//!   pub/sub draft's): the path is the topic as it is.
//! - Uri-Query options, each name at most once, all optional: `qos` = `0`, `1` or `2` (default
//!   0), `retain` = `true`/`false` or `1`/`0` (default false), `c` the client id (default
//!   `coap-<peer IP>`: stable per device, so that the rules' `%c` and the authentication
//!   service's cache see the same one each time), `u` the username, `p` the password (or, with
//!   `-as 1`, the JWT alone, as with HTTP). Another name, a repeated one or a bad value is 4.00.
//! - The payload is the message's payload (empty is allowed: with `retain=true` it clears the
//!   retained message, as in MQTT).
//!
//! # The answers
//!
//! A Confirmable request is answered by a piggybacked ACK (same message id, same token); a
//! Non-confirmable one by a Non-confirmable response (the same token, a message id of its own),
//! success included, so that a device learns that its message was refused (RFC 7252 §5.2.3).
//!
//! | code | when |
//! |---|---|
//! | 2.04 Changed | published |
//! | 4.00 Bad Request | no topic, an invalid topic, a bad or unknown query parameter |
//! | 4.01 Unauthorized | the credentials were refused |
//! | 4.02 Bad Option | a critical option this listener does not know (or a repeated one) |
//! | 4.03 Forbidden | the rules do not let this client publish to this topic |
//! | 4.05 Method Not Allowed | GET, PUT, DELETE, FETCH, PATCH, iPATCH |
//! | 4.13 Request Entity Too Large | the message is larger than `-mpl`, or a block-wise (Block1) transfer, which is not supported: the payload must fit one datagram |
//! | 5.03 Service Unavailable | with Max-Age 2: the authentication service did not answer, or too many requests are in progress |
//! | 5.05 Proxying Not Supported | a Proxy-Uri or Proxy-Scheme option |
//!
//! Errors carry a short diagnostic text as payload when that keeps the answer no longer than
//! the request (no amplification, §11.3). Uri-Host, Uri-Port, Accept and Block2 are accepted
//! and ignored, elective options ignored.
//!
//! A datagram that is not CoAP version 1 is ignored; a Confirmable message that cannot be read
//! (a format error), an empty one (a ping) or a response is answered with a Reset; ACKs,
//! Resets and unreadable Non-confirmable messages are ignored (§4.2, §4.3).
//!
//! A retransmission (same peer and message id within EXCHANGE_LIFETIME, 247 s) is not
//! published again: a Confirmable one gets the same ACK again, or nothing while the first is
//! still in progress; a Non-confirmable one is ignored ([`dedup`]).
//!
//! # Bounds
//!
//! Requests are read by one task; each one to publish is handled on its own task (the gateway
//! may wait on an authentication service or a password hash), at most [`MAX_IN_FLIGHT`] at a
//! time: beyond them the answer is 5.03 with Max-Age. The deduplication cache holds at most
//! [`DEDUP_CAPACITY`] entries. `coolpy7_coap_requests_total{outcome}` counts every datagram;
//! `coolpy7_coap_in_flight` the requests in progress.

mod dedup;
pub(crate) mod message;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::UdpSocket;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::abuse::TokenBucket;
use crate::broker::Broker;
use crate::gateway;
use crate::metrics::CoapOutcome;
use dedup::{Dedup, Key, Seen, EXCHANGE_LIFETIME};
use message::{Answer, Incoming, Publish, ReplyTo, Request};

/// Requests being authenticated and published at the same time; beyond, 5.03.
pub const MAX_IN_FLIGHT: usize = 256;

/// Requests remembered for deduplication: 247 s of 130 requests per second; under more, the
/// oldest are forgotten early.
pub const DEDUP_CAPACITY: usize = 32 * 1024;

/// Larger than any UDP datagram (65,507 bytes of payload over IPv4, 65,527 over IPv6).
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The default client id of a request from `peer` without `c=`.
pub fn default_client_id(peer: SocketAddr) -> String {
    format!("coap-{}", peer.ip().to_canonical())
}

struct Server {
    socket: UdpSocket,
    broker: Arc<Broker>,
    dedup: Mutex<Dedup>,
    permits: Arc<Semaphore>,
    /// `-cr`: requests per second this listener takes, as a TCP listener takes connections
    /// (each may cost a password hash or a request to the HTTP service).
    rate: Mutex<Option<TokenBucket>>,
    /// The message ids of Non-confirmable responses.
    next_id: AtomicU16,
}

/// Answers CoAP requests on `socket` until `stopping` turns true. Requests in progress then
/// finish on their own tasks.
pub async fn serve(socket: UdpSocket, broker: Arc<Broker>, mut stopping: watch::Receiver<bool>) {
    let server =
        Arc::new(Server {
            socket,
            dedup: Mutex::new(Dedup::new(DEDUP_CAPACITY, EXCHANGE_LIFETIME)),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            rate: Mutex::new(
                broker.config.limits.connection_rate.map(|per_second| {
                    TokenBucket::new(u64::from(per_second), Instant::now().into())
                }),
            ),
            next_id: AtomicU16::new(rand::random()),
            broker,
        });
    let mut buffer = vec![0; RECEIVE_BUFFER];
    loop {
        let received = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            received = server.socket.recv_from(&mut buffer) => received,
        };
        match received {
            Ok((len, peer)) => server.datagram(&buffer[..len], peer),
            Err(error) => {
                // Not expected of an unconnected UDP socket; do not spin if it repeats.
                warn!(%error, "CoAP listener: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// `coap_in_flight` while a request is handled, however its task ends.
struct InFlight(Gauge);

impl InFlight {
    fn new(gauge: &Gauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Server {
    fn count(&self, outcome: CoapOutcome) {
        self.broker.metrics.coap(outcome).inc();
    }

    fn fresh_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends without waiting: a full send buffer drops the answer, as the network may, and the
    /// client retransmits.
    fn send_now(&self, datagram: &[u8], peer: SocketAddr) {
        if let Err(error) = self.socket.try_send_to(datagram, peer) {
            debug!(%peer, %error, "CoAP answer not sent");
        }
    }

    fn datagram(self: &Arc<Self>, datagram: &[u8], peer: SocketAddr) {
        match message::classify(datagram) {
            Incoming::Ignore(outcome) => {
                self.count(outcome);
                debug!(%peer, len = datagram.len(), outcome = outcome.label(), "CoAP datagram ignored");
            }
            Incoming::Reset {
                message_id,
                outcome,
            } => {
                self.count(outcome);
                debug!(%peer, message_id, outcome = outcome.label(), "CoAP message reset");
                if let Some(reset) = message::reset(message_id) {
                    self.send_now(&reset, peer);
                }
            }
            Incoming::Request(Request {
                reply_to,
                action: Err(answer),
            }) => {
                self.count(answer.outcome);
                debug!(%peer, code = answer.code.as_str(), reason = answer.diagnostic, "CoAP request refused");
                self.answer_now(&reply_to, &answer, peer);
            }
            Incoming::Request(Request {
                reply_to,
                action: Ok(publish),
            }) => self.start(reply_to, publish, peer),
        }
    }

    fn answer_now(&self, reply_to: &ReplyTo, answer: &Answer, peer: SocketAddr) {
        if let Some(datagram) = reply_to.encode(answer, self.fresh_id()) {
            self.send_now(&datagram, peer);
        }
    }

    /// Deduplicates, takes a permit and hands the request to a task of its own.
    fn start(self: &Arc<Self>, reply_to: ReplyTo, publish: Publish, peer: SocketAddr) {
        let key = (peer, reply_to.message_id);
        let now = Instant::now();
        let mut dedup = self.dedup.lock();
        if let Some(seen) = dedup.lookup(&key, now) {
            drop(dedup);
            self.count(CoapOutcome::Duplicate);
            debug!(%peer, message_id = reply_to.message_id, "CoAP retransmission");
            if let (true, Seen::Answered(Some(ack))) = (reply_to.confirmable, seen) {
                self.send_now(&ack, peer);
            }
            return;
        }
        let over_rate = self
            .rate
            .lock()
            .as_mut()
            .is_some_and(|rate| !rate.try_take(now.into()));
        if over_rate {
            drop(dedup);
            let answer = Answer::busy();
            self.count(answer.outcome);
            debug!(%peer, "CoAP request refused: over the listener's rate (-cr)");
            self.answer_now(&reply_to, &answer, peer);
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            drop(dedup);
            let answer = Answer::busy();
            self.count(answer.outcome);
            debug!(%peer, "CoAP request refused: {MAX_IN_FLIGHT} in progress");
            self.answer_now(&reply_to, &answer, peer);
            return;
        };
        dedup.begin(key, now);
        drop(dedup);
        let in_flight = InFlight::new(&self.broker.metrics.coap_in_flight);
        let server = self.clone();
        tokio::spawn(async move {
            server
                .publish(key, reply_to, publish, (permit, in_flight))
                .await;
        });
    }

    async fn publish(
        &self,
        key: Key,
        reply_to: ReplyTo,
        publish: Publish,
        _held: (OwnedSemaphorePermit, InFlight),
    ) {
        let peer = key.0;
        let canonical = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let client_id = publish
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id(peer));
        let result = gateway::publish(&self.broker, publish.gateway(&client_id, canonical)).await;
        let answer = Answer::of(&result);
        self.count(answer.outcome);
        debug!(
            %peer,
            client_id,
            topic = publish.topic,
            code = answer.code.as_str(),
            "CoAP publish"
        );
        let datagram = reply_to.encode(&answer, self.fresh_id()).map(Bytes::from);
        // What a retransmission gets: the same ACK; nothing for a Non-confirmable request.
        let again = datagram.clone().filter(|_| reply_to.confirmable);
        self.dedup.lock().answer(&key, again);
        if let Some(datagram) = datagram {
            if let Err(error) = self.socket.send_to(&datagram, peer).await {
                debug!(%peer, %error, "CoAP answer not sent");
            }
        }
    }
}
