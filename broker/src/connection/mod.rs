//! One client connection: the MQTT protocol state machine over one client's stream (TCP, TLS,
//! WebSocket: the [`transport`](crate::transport) tells them apart, this module does not).
//!
//! [`serve`] runs the handshake (CONNECT within `-nt` seconds, checks, session claim, CONNACK,
//! resend of what was in flight) and then one loop that waits on whichever comes first: bytes
//! from the client, room in the socket for pending output, a delivery in the session's mailbox,
//! the keepalive or write-stall deadline, a kick (a takeover, an administrator, the server's
//! shutdown). Incoming packets are decoded in batches and answered into one write buffer;
//! deliveries are pulled from the mailbox within the in-flight window and appended to the same
//! buffer, which is written when the socket can take it, so many packets share one system call.
//! No buffer is kept while a connection is idle. When the loop ends the session goes back to the
//! registry and, unless the client sent DISCONNECT, its will is published.
//!
//! The connection's work is split by direction: [`handshake`] takes a TCP socket to an accepted
//! [`Connection`], [`inbound`] handles what the client sends, [`outbound`] what is sent to it;
//! this module holds the connection's state and the loop that drives the three. What MQTT 5
//! adds per connection (the limits CONNECT and CONNACK settled, topic aliases) is in
//! [`negotiated`] and [`aliases`]; an MQTT 3.1.1 connection carries none of it. What the client
//! may do is its [`Authorizer`], judged in [`authorized`]. An idle plain-TCP connection goes
//! to [`sleeping`] in the broker's [`Parker`](crate::parker::Parker), without a task, until
//! something happens to it.

mod aliases;
mod authorized;
mod handshake;
mod inbound;
mod negotiated;
mod outbound;
mod sleeping;

pub use sleeping::{SleepClock, Sleeping};

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};
use tracing::debug;

use crate::abuse::{ClientLimits, Violation};
use crate::auth::Authorizer;
use crate::broker::{Admission, Broker};
use crate::codec::{Disconnect, Packet, Properties, Protocol, ReasonCode};
use crate::metrics::Denied;
use crate::router::Message;
use crate::session::{DelayedWill, Holder, KickReason, SessionState};
use crate::transport::{Stream, TransportSettings};
use negotiated::Negotiated;

/// Read at least this much at a time. A busy QoS 1 publisher has 64 or more 100-byte
/// PUBLISHes in flight: a smaller buffer took its window in two reads, answered with two
/// PUBACK writes (4 KiB: 0.09 system calls per message for 8 p2p pairs, 16 KiB: 0.05). The
/// buffer is only held while input waits in it.
const READ_CHUNK: usize = 16 * 1024;
/// Stop pulling deliveries while this much output is waiting for the socket: beyond it the
/// mailbox (bounded, counted) holds the backlog, not the write buffer.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a client while this much output to it is waiting.
const READ_PAUSE: usize = 4 * WRITE_HIGH_WATER;
/// Deliveries queued for subscribers in one batch of a client's input (one message to 16
/// subscribers is 16) from which the client is a busy publisher: the loop answers it at once rather than yielding to those subscribers
/// first (see `Connection::woke_subscribers`).
const BUSY_BATCH: u8 = 16;

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT (MQTT 5: with reason 0x00): the only close that does not
    /// publish the will.
    Disconnect,
    /// An MQTT 5 client sent DISCONNECT with another reason (0x04 "with will" among them).
    DisconnectWithWill(ReasonCode),
    PeerClosed,
    KeepaliveTimeout,
    WriteTimeout,
    /// Deliveries waited behind a full in-flight window for `-t`.
    AckTimeout,
    /// The client broke the protocol; an MQTT 5 client is told why with this reason code.
    Protocol(ReasonCode, String),
    Io(io::Error),
    TakenOver,
    /// An administrator asked for the close (`DELETE /clients/<id>` on the HTTP API).
    Administrative,
    Shutdown,
    /// The credentials the client connected with expired (a token's `exp`).
    CredentialsExpired,
    /// The client pinged or published sooner than `-pl` or `-psl` allow.
    TooFast(Violation),
    /// Not a close: the connection has been idle long enough to go to sleep (see
    /// [`sleeping`]). [`Connection::run`] parks it instead of closing it.
    Idle,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Disconnect => f.write_str("client sent DISCONNECT"),
            Close::DisconnectWithWill(reason) => write!(f, "client sent DISCONNECT {reason}"),
            Close::PeerClosed => f.write_str("client closed the connection"),
            Close::KeepaliveTimeout => f.write_str("keepalive expired"),
            Close::WriteTimeout => f.write_str("client stopped reading (write timeout)"),
            Close::AckTimeout => {
                f.write_str("client stopped acknowledging QoS 1/2 deliveries (write timeout)")
            }
            Close::Protocol(code, reason) => write!(f, "protocol error ({code}): {reason}"),
            Close::Io(error) => write!(f, "network error: {error}"),
            Close::TakenOver => f.write_str("taken over by a new connection"),
            Close::Administrative => f.write_str("closed by an administrator"),
            Close::Shutdown => f.write_str("server shutting down"),
            Close::CredentialsExpired => f.write_str("credentials expired"),
            Close::TooFast(violation) => write!(f, "{violation}"),
            Close::Idle => f.write_str("idle"),
        }
    }
}

impl Close {
    fn publishes_will(&self) -> bool {
        !matches!(self, Close::Disconnect)
    }

    /// A protocol error found while decoding.
    fn decode_error(error: &crate::codec::DecodeError) -> Close {
        let code = match error.reason_code() {
            // A CONNECT after CONNECT is a Protocol Error whatever its level ([MQTT-3.1.0-2]);
            // 0x84 is for CONNACK, and DISCONNECT may not carry it (§3.14.2.1).
            ReasonCode::UnsupportedProtocolVersion => ReasonCode::ProtocolError,
            code => code,
        };
        Close::Protocol(code, error.to_string())
    }

    /// The reason an MQTT 5 client is sent in a DISCONNECT before the close; `None` when the
    /// client closed, or cannot be reached.
    fn reason_to_send(&self) -> Option<(ReasonCode, Option<&str>)> {
        match self {
            Close::KeepaliveTimeout => Some((ReasonCode::KeepAliveTimeout, None)),
            Close::TakenOver => Some((ReasonCode::SessionTakenOver, None)),
            // Sent with Request Problem Information 0 too, like a protocol error's: DISCONNECT
            // is one of the packets that may carry a Reason String whatever the client asked
            // (§3.1.2.11.7).
            Close::Administrative => Some((
                ReasonCode::AdministrativeAction,
                Some("closed by an administrator"),
            )),
            // Or 0x9C "Use another server" when the drain names one (see `send_redirect`).
            Close::Shutdown => Some((ReasonCode::ServerShuttingDown, None)),
            // An MQTT 3.1.1 client gets the close alone: the server has no DISCONNECT there.
            Close::CredentialsExpired => {
                Some((ReasonCode::NotAuthorized, Some("credentials expired")))
            }
            Close::TooFast(Violation::Publish) => Some((
                ReasonCode::MessageRateTooHigh,
                Some("PUBLISH sooner than the server allows"),
            )),
            // DISCONNECT has no reason for pings in particular; 0x96 is the nearest.
            Close::TooFast(Violation::Ping) => Some((
                ReasonCode::MessageRateTooHigh,
                Some("PINGREQ sooner than the server allows"),
            )),
            Close::Protocol(code, reason) => Some((*code, Some(reason))),
            _ => None,
        }
    }
}

/// Waits while `congested` (a subscriber's mailbox, or what this node holds for a cluster peer)
/// drains (see [`crate::router::Congested::wait_while_draining`]), while nothing is queued for
/// this connection (`own`) and no kick came. Returns `false` when the wait gave up: such a
/// subscriber is capped (it drops its oldest), and not waited for again before the input
/// already read is handled, so the publisher's PUBACKs and PINGRESPs are never held for more
/// than about a second.
async fn wait_while_draining(
    congested: &crate::router::Congested,
    own: &crate::session::Mailbox,
    holder: &Holder,
) -> bool {
    congested
        .wait_while_draining(|| !own.is_empty() || holder.kick_reason().is_some())
        .await
}

/// What reading from a client waits for: one field for both, since an idle connection has
/// neither and every connection carries the field.
enum Waiting {
    /// A subscriber's mailbox (or a cluster peer's link) this client's messages filled past
    /// its soft limit: reading waits until it drains (flow control; see
    /// [`crate::session::Mailbox`]).
    Congested(crate::router::Congested),
    /// A SUBACK held until the other cluster members have the filters it grants (see
    /// [`crate::broker::Broker::interest_wait`]); the packets after its SUBSCRIBE wait with it.
    Suback(Box<(Packet, crate::cluster::peers::InterestWait)>),
}

/// A will, ready to be published when the connection ends without a normal DISCONNECT.
struct Will {
    /// Without its expiry, which counts from the moment it is published.
    message: Message,
    /// MQTT 5 Message Expiry Interval, seconds.
    expiry: Option<u32>,
    /// MQTT 5 Will Delay Interval.
    delay: Duration,
}

/// What every end of a connection does, awake or asleep: bans a client that was too fast,
/// publishes its will unless `close` says otherwise, and releases its session.
fn end_session(
    broker: &Arc<Broker>,
    holder: Holder,
    state: Box<SessionState>,
    will: Option<Box<Will>>,
    access: Option<Box<Authorizer>>,
    close: &Close,
) {
    if matches!(close, Close::TooFast(_)) {
        // Without access control no username was proved: the client id alone.
        let username = access.as_ref().and_then(|access| access.username());
        broker.bans.ban(state.client_id(), username, Instant::now());
    }
    let will = will.filter(|will| {
        if !close.publishes_will() {
            return false;
        }
        let allowed = access
            .as_ref()
            .is_none_or(|access| access.may_publish_will(&will.message.topic));
        if !allowed {
            broker.metrics.denied(Denied::Will).inc();
            debug!(
                client_id = state.client_id(),
                "will not published: the rules deny its topic"
            );
        }
        allowed
    });
    let will = will.map(|will| {
        let Will {
            message,
            expiry,
            delay,
        } = *will;
        DelayedWill {
            message: Box::new(message),
            expiry: expiry.map(|secs| Duration::from_secs(u64::from(secs))),
            // Outside a cluster, sessions end with the process: a will due later is due now.
            // In one, the session moves to another node, its will delay with it; with a data
            // directory it waits there for the next start.
            delay: if broker.is_shutting_down()
                && broker.handover.is_none()
                && broker.sessions.store().is_none()
            {
                Duration::ZERO
            } else {
                delay
            },
        }
    });
    // A will without a delay goes out now; the session keeps a delayed one, and hands it
    // back if the session ends with the connection.
    let (now, later) = match will {
        Some(will) if will.delay.is_zero() => {
            (Some(will.publish_at(std::time::Instant::now())), None)
        }
        will => (None, will),
    };
    let due = broker
        .sessions
        .release(&holder, state, later, &broker.router);
    for will in now.into_iter().chain(due) {
        broker.publish(will);
    }
}

/// How long a client with keepalive `seconds` may stay silent: one and a half times that
/// (MQTT §3.1.2.10); `None` for 0, no keepalive.
fn keep_alive_limit(seconds: u16) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_millis(u64::from(seconds) * 1500))
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character.
fn prefix_within(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    // At most three steps back: a UTF-8 character is at most four bytes.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What the listener keeps for as long as a connection lives, awake or asleep: its place under
/// the file-descriptor limit, and its part in the server's wait for every connection to end.
pub struct Held {
    pub slot: crate::admission::Slot,
    pub done: tokio::sync::mpsc::Sender<()>,
}

/// Serves one TCP connection accepted by a listener of `listener`'s kind until it closes, then
/// drops `held`.
///
/// The returned future is what an idle connection keeps in memory for its whole life, so it
/// is kept small. The handshake's futures are large and needed once: they are boxed and freed
/// before the connection settles into its loop. And this is not an `async fn`, whose future
/// would carry its arguments to the end even after they were moved into the handshake; the
/// future is meant to be spawned as it is, since a task wrapping it in another `async` block
/// would hold it twice (once captured, once awaited).
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    listener: Arc<TransportSettings>,
    held: Held,
) -> impl Future<Output = ()> + Send {
    let handshake = Box::pin(handshake::handshake(stream, peer, broker, listener));
    async move {
        if let Some((connection, admission)) = handshake.await {
            connection.run(admission, held).await;
        }
    }
}

/// An accepted connection with its session.
struct Connection {
    stream: Stream,
    /// The client's address from a PROXY header; without one, the socket's is asked for when
    /// logged. Boxed: an idle connection would pay for the space otherwise.
    proxied_peer: Option<Box<SocketAddr>>,
    broker: Arc<Broker>,
    protocol: Protocol,
    /// What MQTT 5 CONNECT and CONNACK settled; `None` for MQTT 3.1/3.1.1. Boxed: every
    /// idle 3.1.1 connection would pay for the space otherwise.
    v5: Option<Box<Negotiated>>,
    holder: Holder,
    state: Box<SessionState>,
    /// Boxed: most clients have none, and every connection would pay for the space.
    will: Option<Box<Will>>,
    /// The keepalive settled at CONNECT, seconds (0: none); see [`keep_alive_limit`]. Two
    /// bytes rather than an `Option<Duration>`'s sixteen: every connection has one.
    keep_alive: u16,
    last_packet: Instant,
    /// When the socket last refused output that was waiting; cleared by progress.
    write_blocked_since: Option<Instant>,
    /// Since when deliveries have been waiting behind a full in-flight window: a client that
    /// stops acknowledging is as stalled as one that stops reading, and `-t` applies to both.
    /// Cleared when the window has room again.
    unacknowledged_since: Option<Instant>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// What reading from this client waits for (see [`Waiting`]).
    waiting: Option<Waiting>,
    /// Set when packets wait in the read buffer because a subscriber this client filled is
    /// congested: they are handled once it has drained (see `waiting`), so that a burst
    /// already read cannot overflow the subscriber's queue.
    input_held: bool,
    /// How many of this client's messages were queued for subscribers since the loop last
    /// yielded (saturating): a few is light load, where the loop yields to the subscribers
    /// first; [`BUSY_BATCH`] or more is a busy publisher, which sends its PUBACKs and reads on.
    woke_subscribers: u8,
    /// Set when the last pull from the mailbox was a large one (under load): the loop yields
    /// once before pulling again, so that the publishers filling the mailbox run meanwhile and
    /// the next write carries more. Without it a busy subscriber's task ran in step with its
    /// publishers, writing about 40 messages at a time where FlashMQ writes 170, and its client
    /// spent twice the CPU reading them. Small pulls (light load) go out at once.
    pulled_many: bool,
    /// Set when the loop had something to do since the last look at whether the connection
    /// may go to sleep: idle for [`sleeping::SLEEP_AFTER`] means no such turn in between.
    busy: bool,
    /// When to look next whether the connection may go to sleep (plain TCP only).
    idle_check_at: Instant,
    /// What the client may do; `None` when access control is off. Boxed: it holds caches an
    /// idle connection without access control should not pay for.
    access: Option<Box<Authorizer>>,
    /// `-pl`, `-psl`, `-prm`, `-prb`; `None` when none is set.
    limits: Option<Box<ClientLimits>>,
    /// With a data directory: set when `wbuf` acknowledges something written to it; nothing is
    /// written to the client before everything written so far is durable. A flag, not a
    /// ticket: eight bytes more would move every connection to the next size class.
    hold_for_durable: bool,
}

impl Connection {
    /// The client's address, for logs.
    fn peer(&self) -> Option<SocketAddr> {
        match &self.proxied_peer {
            Some(peer) => Some(**peer),
            None => self.stream.peer_addr().ok(),
        }
    }

    /// Runs the connection until it closes, or goes to sleep (its task then ends, and the
    /// parker runs this again on a new one when it wakes).
    async fn run(mut self: Box<Self>, admission: Admission, held: Held) {
        let (mut admission, mut held) = (admission, held);
        let mut close = loop {
            match self.serve().await {
                Close::Idle => match self.sleep(admission, held) {
                    Ok(()) => return,
                    // No parker: it stays awake, and asks again in a while (not at once: its
                    // idle check is due, and the loop would spin).
                    Err(back) => {
                        (self, admission, held) = back;
                        self.idle_check_at = Instant::now() + sleeping::SLEEP_AFTER;
                    }
                },
                close => break close,
            }
        };
        if matches!(
            close,
            Close::Io(_)
                | Close::PeerClosed
                | Close::TakenOver
                | Close::Administrative
                | Close::WriteTimeout
                | Close::AckTimeout
                | Close::Shutdown
        ) {
            if let Some(disconnect) = self.sent_disconnect() {
                close = disconnect;
            }
        }
        match &close {
            Close::Disconnect | Close::PeerClosed | Close::Shutdown | Close::Administrative => {
                debug!(peer = ?self.peer(), client_id = self.state.client_id(), reason = %close, "connection closed")
            }
            _ => {
                debug!(peer = ?self.peer(), client_id = self.state.client_id(), reason = %close, "connection dropped")
            }
        }
        if self.v5.is_some() {
            let redirected = matches!(close, Close::Shutdown) && self.send_redirect();
            if let Some((reason, text)) = close.reason_to_send().filter(|_| !redirected) {
                self.send_disconnect(reason, text);
            }
        }
        // Best effort: flush what is pending (a PINGRESP, a PUBACK, a DISCONNECT) without
        // waiting for a client that does not read.
        if !matches!(close, Close::Io(_) | Close::WriteTimeout) {
            self.wait_until_durable().await;
            if !self.wbuf.is_empty() || self.stream.has_pending_output() {
                let _ = self.write_now();
                // A connection just woken from sleep has a registration the runtime has not
                // polled yet, which reports a socket with room as full: its DISCONNECT would
                // be lost. The socket itself is asked.
                let _ = self.write_bypassing_readiness();
            }
            self.stream.close();
        }
        let Connection {
            broker,
            holder,
            state,
            will,
            access,
            ..
        } = *self;
        end_session(&broker, holder, state, will, access, &close);
        drop((admission, held));
    }

    /// Appends an MQTT 5 DISCONNECT with `reason` and `text` as its Reason String, cut (at a
    /// character) to what a string property and the client's Maximum Packet Size allow: a text
    /// quoting the client's own input must never cost the client its DISCONNECT.
    fn send_disconnect(&mut self, reason: ReasonCode, text: Option<&str>) {
        let mut properties = Properties::default();
        let limit = self
            .v5
            .as_ref()
            .map_or(usize::MAX, |v5| v5.maximum_packet_size);
        // The packet without a reason string is at most 16 bytes (fixed header, reason code,
        // property length, the string's identifier and length prefix).
        let room = limit.saturating_sub(16).min(usize::from(u16::MAX));
        if let Some(text) = text {
            let text = prefix_within(text, room);
            if !text.is_empty() {
                properties.set().reason_string = Some(text.to_string());
            }
        }
        self.send(&Packet::Disconnect(Disconnect { reason, properties }));
    }

    /// Appends an MQTT 5 DISCONNECT 0x9C "Use another server" with the drain's Server
    /// Reference (`-dsr`); `false` when none is configured or it does not fit in the client's
    /// Maximum Packet Size (a reference cut short would send the client somewhere else), in
    /// which case the caller sends 0x8B.
    fn send_redirect(&mut self) -> bool {
        let Some(reference) = self.broker.config.drain.server_reference.as_deref() else {
            return false;
        };
        let limit = self
            .v5
            .as_ref()
            .map_or(usize::MAX, |v5| v5.maximum_packet_size);
        // Fixed header and remaining length (at most 5), reason code, property length (at most
        // 4), the property's identifier and the string's length prefix.
        if reference.len() + 13 > limit {
            return false;
        }
        let mut properties = Properties::default();
        properties.set().server_reference = Some(reference.to_string());
        self.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::UseAnotherServer,
            properties,
        }));
        true
    }

    /// Waits until the acknowledgements in `wbuf` may go (see `hold_for_durable`). Boxed: every
    /// idle connection's task would otherwise hold the wait's state.
    async fn wait_until_durable(&mut self) {
        if !std::mem::take(&mut self.hold_for_durable) {
            return;
        }
        if let Some(store) = self.broker.sessions.store() {
            // Every write so far: a little more than what `wbuf` acknowledges, at no cost (the
            // next fsync covers them all).
            let ticket = store.written();
            if !store.is_synced(ticket) {
                let store = store.clone();
                Box::pin(async move { store.synced(ticket).await }).await;
            }
        }
    }

    async fn serve(&mut self) -> Close {
        let mailbox = self.state.mailbox.clone();
        let holder = self.holder.clone();
        let mut timer: Pin<Box<Sleep>> = Box::pin(sleep_until(self.next_deadline()));
        let mut scratch = Vec::new();
        // A shutdown that began while this connection was still in its handshake kicked nobody.
        if self.broker.is_shutting_down() {
            return Close::Shutdown;
        }
        // Packets the client sent right behind its CONNECT.
        if let Err(close) = self.handle_buffered(true) {
            return close;
        }
        loop {
            if std::mem::take(&mut self.pulled_many) {
                tokio::task::yield_now().await;
            }
            let woke = std::mem::take(&mut self.woke_subscribers);
            if woke > 0 && woke < BUSY_BATCH {
                // Let the subscribers this batch woke write first: they are what the publish's
                // latency is measured on, and our PUBACKs and next read can wait a moment.
                // Not after a large batch: there the publisher's window, not latency, paces it,
                // and its PUBACKs going out at once bring its next batch sooner, while the
                // subscribers, run once it has read what the socket held, write what several
                // batches queued in one go. Yielding there made the subscribers write about 35
                // messages at a time instead of 85, and their clients' CPU per message doubled.
                tokio::task::yield_now().await;
            }
            let mut hold_on_congestion = true;
            match self.waiting.take() {
                Some(Waiting::Suback(held)) => {
                    // Bounded (`INTEREST_WAIT`): a peer that does not answer is not waited for.
                    let (suback, wait) = *held;
                    Box::pin(wait.settled()).await;
                    self.send_acknowledgement(suback);
                }
                Some(Waiting::Congested(congested)) => {
                    // For as long as the subscriber drains its queue: a publisher let go while its
                    // subscriber is still congested reads another batch, and a thousand of them
                    // overflow the queue, dropping messages already acknowledged. In bounded steps,
                    // so that a kick is seen, and never while deliveries to this client wait: two
                    // clients flooding each other would each wait for the other to drain.
                    // Boxed: it would otherwise be part of every idle connection's task.
                    hold_on_congestion = Box::pin(wait_while_draining(
                        &congested,
                        &self.state.mailbox,
                        &holder,
                    ))
                    .await;
                }
                None => {}
            }
            // Input held back by a publish-rate pause that ended or by the congestion just
            // waited for, whatever woke the loop: what waited in the buffer goes first. Not
            // after a kick, which the loop takes first: a revoked right or a closing connection
            // must not publish what was held.
            if holder.kick_reason().is_none() {
                if let Err(close) = self.resume_held_input(hold_on_congestion) {
                    return close;
                }
            }
            // A QoS 2 delivery to a persistent session goes out once the packet id it is sent
            // with is on disk: sent again after a crash under another id, the client would take
            // it for a new message.
            if self.broker.sessions.store().is_some() {
                let mark = crate::store::queued_here();
                self.pull(&mut scratch);
                self.hold_if_written(mark);
                self.wait_until_durable().await;
            } else {
                self.pull(&mut scratch);
            }
            // One write per batch of input or deliveries, not one per packet.
            if !self.wbuf.is_empty() {
                if let Err(error) = self.write_now() {
                    return Close::Io(error);
                }
            }
            // TLS and WebSocket may hold output the socket did not take, with nothing in wbuf.
            let writing = !self.wbuf.is_empty() || self.stream.has_pending_output();
            // A client that does not read its acknowledgements is not read from either, so its
            // output cannot grow without bound (TCP pushes back on it instead).
            // Nor from one whose input is held: what follows (a DISCONNECT, the close) must
            // wait for what came before it.
            let reading = self.wbuf.len() < READ_PAUSE && !self.rate_paused() && !self.input_held;
            let can_pull = self.can_pull();
            // Retained messages owed for a subscription are not announced by the mailbox: keep
            // pulling them while the client takes them.
            let retained_owed = can_pull && !self.state.retained.is_empty();
            // Watched only while the window is full, where it costs a lock per turn; a delivery
            // arriving then wakes the loop once (below) so the stall is timed from it.
            let window_stalled = self.window_full() && self.deliveries_waiting();
            if !window_stalled {
                self.unacknowledged_since = None;
            } else if self.unacknowledged_since.is_none() {
                self.unacknowledged_since = Some(Instant::now());
            }
            let watch_mailbox = can_pull || (self.window_full() && !window_stalled);
            let deadline = self.next_deadline();
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                // One signal for every kick keeps every idle task smaller; its reason is read
                // from the shared signals once it fires.
                _ = holder.kicked() => {
                    if self.broker.is_shutting_down() {
                        return Close::Shutdown;
                    }
                    match holder.kick_reason() {
                        // A wake-up whose rules change was already taken.
                        None => {}
                        // When taking it fails a real kick replaced it, and its own wake-up
                        // comes next.
                        Some(KickReason::RulesChanged) if holder.take_recheck() => {
                            self.apply_reloaded_rules();
                        }
                        Some(KickReason::RulesChanged) => {}
                        Some(KickReason::TakenOver) => return Close::TakenOver,
                        Some(KickReason::Administrative) => return Close::Administrative,
                        Some(KickReason::Shutdown) => return Close::Shutdown,
                    }
                }
                // poll_*_ready keep the waker in the socket's own slot; the readable() and
                // writable() futures would add 300 bytes to every connection's task.
                ready = poll_fn(|cx| self.stream.poll_read_ready(cx)), if reading => {
                    if let Err(error) = ready {
                        return Close::Io(error);
                    }
                    if let Err(close) = self.read() {
                        return close;
                    }
                    self.busy = true;
                }
                ready = poll_fn(|cx| self.stream.poll_write_ready(cx)), if writing => {
                    if let Err(error) = ready.and_then(|()| self.write_now()) {
                        return Close::Io(error);
                    }
                    self.busy = true;
                }
                _ = mailbox.ready(), if watch_mailbox => self.busy = true,
                _ = &mut timer => {
                    if let Err(close) = self.check_deadlines(reading) {
                        return close;
                    }
                    if self.idle_check(Instant::now()) {
                        return Close::Idle;
                    }

                    timer.as_mut().reset(self.next_deadline());
                }
                // Last, so that input, acknowledgements and deadlines go first; and one yield
                // per batch, so that a large backlog cannot hog the worker.
                // Input held for a congestion is not announced by the socket either.
                _ = tokio::task::yield_now(), if retained_owed || self.input_held => {
                    self.busy = true;
                }
            }
        }
    }

    /// The timer fired: closes the connection if the client's keepalive or a stall has expired.
    /// A process that was paused (SIGSTOP, a VM freeze) wakes with every deadline passed and its
    /// clients' packets unread, and the runtime may run its timers before it has noticed those
    /// packets (its readiness flags are stale until then): so the socket itself is asked whether
    /// input waits, and pending output is offered to it, before anything is declared expired.
    fn check_deadlines(&mut self, reading: bool) -> Result<(), Close> {
        let now = Instant::now();
        if !reading {
            // We are not reading, so silence is ours, not the client's; a client that is gone
            // shows up as a write stall instead.
            self.last_packet = now;
        }
        if keep_alive_limit(self.keep_alive).is_some_and(|limit| now >= self.last_packet + limit) {
            if !self.input_waiting() {
                return Err(Close::KeepaliveTimeout);
            }
            // The client did speak: the runtime will report it and the loop read it.
            self.last_packet = now;
        }
        if self
            .access
            .as_ref()
            .and_then(|access| access.expires_at)
            .is_some_and(|at| now >= at)
        {
            return Err(Close::CredentialsExpired);
        }
        let write_limit = self.broker.config.write_timeout;
        if self
            .write_blocked_since
            .is_some_and(|since| now >= since + write_limit)
        {
            self.write_bypassing_readiness().map_err(Close::Io)?;
            if self.write_blocked_since.is_some() {
                return Err(Close::WriteTimeout);
            }
        }
        if self
            .unacknowledged_since
            .is_some_and(|since| now >= since + write_limit)
        {
            // Acknowledgements may be waiting unread, as above: give the loop a turn to read
            // them before the next check.
            // Not reading is ours, not the client's (its output is the write stall's to judge).
            if reading && !self.input_waiting() {
                return Err(Close::AckTimeout);
            }
            self.unacknowledged_since = Some(now);
        }
        Ok(())
    }

    /// At the time of an idle check: whether the connection had nothing to do since the last
    /// one and may go to sleep. Otherwise the next check is set.
    fn idle_check(&mut self, now: Instant) -> bool {
        if now < self.idle_check_at {
            return false;
        }
        if !std::mem::take(&mut self.busy) && self.may_sleep() {
            return true;
        }
        self.idle_check_at = now + sleeping::SLEEP_AFTER;
        false
    }

    /// Handles the packets a publish-rate pause or a congestion left in the read buffer, once
    /// it is over.
    fn resume_held_input(&mut self, hold_on_congestion: bool) -> Result<(), Close> {
        let rate_held = self.limits.as_ref().is_some_and(|limits| limits.input_held);
        if !(rate_held || self.input_held) || self.rate_paused() {
            return Ok(());
        }
        self.input_held = false;
        if let Some(limits) = self.limits.as_mut() {
            limits.input_held = false;
        }
        self.handle_buffered(hold_on_congestion)
    }

    /// Whether reading waits for the client to get back within its publish rate.
    fn rate_paused(&mut self) -> bool {
        self.limits
            .as_mut()
            .is_some_and(|limits| limits.is_paused(Instant::now()))
    }

    /// The earliest moment the connection must be checked: keepalive expiry or a stall.
    fn next_deadline(&self) -> Instant {
        let keep_alive = keep_alive_limit(self.keep_alive).map(|limit| self.last_packet + limit);
        let stalled = match (self.write_blocked_since, self.unacknowledged_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let write = stalled.map(|since| since + self.broker.config.write_timeout);
        let expiry = self.access.as_ref().and_then(|access| access.expires_at);
        let paused = self.limits.as_ref().and_then(|limits| limits.paused_until);
        // Only plain TCP connections go to sleep.
        let idle_check = matches!(self.stream, Stream::Tcp(_)).then_some(self.idle_check_at);
        [keep_alive, write, expiry, paused, idle_check]
            .into_iter()
            .flatten()
            .min()
            // Nothing to watch: a deadline far enough away never to fire in practice.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_within;

    #[test]
    fn prefix_within_cuts_at_a_character() {
        assert_eq!(prefix_within("abc", 10), "abc");
        assert_eq!(prefix_within("abc", 2), "ab");
        assert_eq!(prefix_within("abc", 0), "");
        // "é" is two bytes, "€" three: never cut inside one.
        assert_eq!(prefix_within("aé", 2), "a");
        assert_eq!(prefix_within("a€b", 3), "a");
        assert_eq!(prefix_within("a€b", 4), "a€");
    }
}
/// Idle connections are what a broker holds most of: these sizes are checked so that a new
/// field cannot cross an allocator size class unnoticed (jemalloc's classes near them are 256
/// and 320 bytes; tokio's task cell is the future plus about 100 bytes, 128-aligned).
#[cfg(test)]
mod idle_size {
    use std::sync::Arc;

    #[tokio::test]
    async fn a_connection_and_its_task_stay_within_their_size_classes() {
        assert!(
            std::mem::size_of::<super::Connection>() <= 256,
            "Connection is {} bytes",
            std::mem::size_of::<super::Connection>()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let broker = Arc::new(crate::broker::Broker::new(
            crate::config::Config::for_tests(),
            Arc::new(crate::metrics::Metrics::new()),
            None,
            None,
        ));
        let settings = Arc::new(crate::transport::TransportSettings {
            kind: crate::config::ListenerKind::Tcp,
            proxy_protocol: false,
            certificates: None,
            ws_path: String::new(),
        });
        let slots =
            crate::admission::Slots::new(1, prometheus_client::metrics::gauge::Gauge::default());
        let (done, _all_done) = tokio::sync::mpsc::channel::<()>(1);
        let held = super::Held {
            slot: slots.try_take().expect("a slot"),
            done,
        };
        // Boxed and freed after CONNECT, but allocated for every connection at once in a
        // reconnect storm: the TLS and WebSocket handshakes are boxed apart so that a plain one
        // stays small.
        let second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let handshake = super::handshake::handshake(second, addr, broker.clone(), settings.clone());
        assert!(
            std::mem::size_of_val(&handshake) <= 2048,
            "the handshake's future is {} bytes",
            std::mem::size_of_val(&handshake)
        );
        drop(handshake);
        let future = super::serve(client, addr, broker, settings, held);
        assert!(
            std::mem::size_of_val(&future) <= 408,
            "the connection task's future is {} bytes",
            std::mem::size_of_val(&future)
        );
    }
}
