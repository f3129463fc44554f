//! A connection asleep in the [`Parker`](crate::parker::Parker): what an idle plain-TCP
//! connection keeps once its task has ended, and how it gets a task again.
//!
//! A connection that has had nothing to do for [`SLEEP_AFTER`] (no input, no delivery, nothing
//! to write, nothing held back) and whose socket is plain TCP turns into a [`Sleeping`]: the
//! socket, taken out of the runtime, and the state that outlives an idle moment (the session,
//! the will, the negotiated limits, what keeps its keepalive). Its buffers, timer and task are
//! freed. The parker wakes it for input, a delivery or a kick (its session's signals point at
//! the parker meanwhile) or when its keepalive or credentials expire, and [`Sleeping::wake`]
//! rebuilds the connection and runs its loop again. TLS and WebSocket connections never sleep:
//! their transports hold state of their own.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::negotiated::Negotiated;
use super::{end_session, keep_alive_limit, Close, Connection, Held, Will};
use crate::abuse::ClientLimits;
use crate::auth::Authorizer;
use crate::broker::{Admission, Broker};
use crate::codec::Protocol;
use crate::parker::Sleeper;
use crate::session::{Holder, SessionState};
use crate::transport::Stream;

/// How long a connection has nothing to do before it goes to sleep (at most twice this: idle
/// time is checked at this pace). Long enough that a client sending every few hundred
/// milliseconds stays awake, short enough that a quiet one costs little soon.
pub const SLEEP_AFTER: Duration = Duration::from_secs(1);

/// What a sleeping connection keeps: [`Connection`] without its buffers, its transient state
/// and the broker (the parker's wake-up brings it back).
pub struct Sleeping {
    socket: std::net::TcpStream,
    protocol: Protocol,
    keep_alive: u16,
    /// When the client last sent something, on [`SleepClock`]: 8 bytes rather than an
    /// `Instant`'s 16, which keeps a sleeper in the allocator's 64-byte class.
    last_packet: SleepClock,
    holder: Holder,
    state: Box<SessionState>,
    admission: Admission,
    held: Held,
    /// What most connections have none of, in one box, `None` when they have none of it: five
    /// pointers fewer keep a sleeper in the allocator's 64-byte class rather than 112.
    rare: Option<Box<Rare>>,
}

/// An instant as milliseconds since the process started (see [`SleepClock::start`]), to
/// the millisecond: a keepalive is checked every half second while asleep anyway.
#[derive(Debug, Clone, Copy)]
pub struct SleepClock(u64);

impl SleepClock {
    fn epoch() -> Instant {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// Fixes the clock's origin; called when the broker is built, before any connection, so
    /// that no instant a sleeper keeps is earlier (one would be kept as the origin).
    pub fn start() {
        Self::epoch();
    }

    fn at(instant: Instant) -> SleepClock {
        let since = instant.saturating_duration_since(Self::epoch());
        SleepClock(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn instant(self) -> Instant {
        Self::epoch() + Duration::from_millis(self.0)
    }
}

/// The optional parts of a sleeping connection (see [`Connection`] for each).
struct Rare {
    proxied_peer: Option<Box<SocketAddr>>,
    v5: Option<Box<Negotiated>>,
    will: Option<Box<Will>>,
    access: Option<Box<Authorizer>>,
    limits: Option<Box<ClientLimits>>,
}

impl Rare {
    /// Boxed, unless there is nothing to keep.
    fn keep(rare: Rare) -> Option<Box<Rare>> {
        let Rare {
            proxied_peer,
            v5,
            will,
            access,
            limits,
        } = &rare;
        let none = proxied_peer.is_none()
            && v5.is_none()
            && will.is_none()
            && access.is_none()
            && limits.is_none();
        (!none).then(|| Box::new(rare))
    }

    fn unpack(rare: Option<Box<Rare>>) -> Rare {
        rare.map_or(
            Rare {
                proxied_peer: None,
                v5: None,
                will: None,
                access: None,
                limits: None,
            },
            |rare| *rare,
        )
    }
}

impl Sleeper for Sleeping {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        let last_packet = self.last_packet.instant();
        let keep_alive = keep_alive_limit(self.keep_alive).map(|limit| last_packet + limit);
        let expiry = self
            .rare
            .as_ref()
            .and_then(|rare| rare.access.as_ref())
            .and_then(|access| access.expires_at);
        let earliest = match (keep_alive, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        earliest.map(Instant::into_std)
    }

    fn watch(&self, alarm: &Waker) {
        self.state.mailbox.watch(alarm);
        self.holder.watch(alarm);
    }
}

impl Connection {
    /// Whether the connection may go to sleep now: plain TCP, and nothing under way that its
    /// loop would have to carry on (a delivery arriving meanwhile wakes it at once).
    pub(super) fn may_sleep(&self) -> bool {
        matches!(self.stream, Stream::Tcp(_))
            && self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && !self.input_held
            && self.waiting.is_none()
            && !self.pulled_many
            && self.woke_subscribers == 0
            && self.write_blocked_since.is_none()
            && self.unacknowledged_since.is_none()
            && self
                .limits
                .as_ref()
                .is_none_or(|limits| !limits.input_held && limits.paused_until.is_none())
            && self.state.retained.is_empty()
            && self.state.mailbox.is_empty()
            && self.holder.kick_reason().is_none()
            && !self.broker.is_shutting_down()
    }

    /// Puts the connection to sleep in the broker's parker. Without a parker (it could not be
    /// started), the connection is given back to go on as it was.
    pub(super) fn sleep(
        self: Box<Self>,
        admission: Admission,
        held: Held,
    ) -> Result<(), (Box<Self>, Admission, Held)> {
        let broker = self.broker.clone();
        let Some(parker) = broker.parker().filter(|parker| parker.is_running()) else {
            return Err((self, admission, held));
        };
        if !matches!(self.stream, Stream::Tcp(_)) {
            return Err((self, admission, held));
        }
        let Connection {
            stream,
            proxied_peer,
            broker,
            protocol,
            v5,
            holder,
            state,
            will,
            keep_alive,
            last_packet,
            access,
            limits,
            // What an idle connection has none of, or starts afresh.
            write_blocked_since: _,
            unacknowledged_since: _,
            rbuf: _,
            wbuf: _,
            waiting: _,
            input_held: _,
            woke_subscribers: _,
            pulled_many: _,
            busy: _,
            idle_check_at: _,
            hold_for_durable: _,
        } = *self;
        let Stream::Tcp(tcp) = stream else {
            unreachable!("checked above");
        };
        let socket = match tcp.into_std() {
            Ok(socket) => socket,
            Err(error) => {
                // The runtime would not let go of the socket, which is closed with it.
                let close = Close::Io(error);
                debug!(client_id = state.client_id(), reason = %close, "connection dropped");
                end_session(&broker, holder, state, will, access, &close);
                drop((admission, held));
                return Ok(());
            }
        };
        let sleeping = Sleeping {
            socket,
            protocol,
            keep_alive,
            last_packet: SleepClock::at(last_packet),
            holder,
            state,
            admission,
            held,
            rare: Rare::keep(Rare {
                proxied_peer,
                v5,
                will,
                access,
                limits,
            }),
        };
        broker.metrics.connections_sleeping.inc();
        if let Err((sleeping, error)) = parker.park(sleeping) {
            // Woken at once: it runs on with a task, and tries to sleep again later.
            warn!(%error, "a connection could not go to sleep");
            tokio::spawn(sleeping.wake(broker));
        }
        Ok(())
    }
}

impl Sleeping {
    /// Gives the connection its task again: what the parker's wake-up spawns.
    pub async fn wake(self, broker: Arc<Broker>) {
        let Sleeping {
            socket,
            protocol,
            keep_alive,
            last_packet,
            holder,
            state,
            admission,
            held,
            rare,
        } = self;
        let Rare {
            proxied_peer,
            v5,
            will,
            access,
            limits,
        } = Rare::unpack(rare);
        broker.metrics.connections_sleeping.dec();
        let stream = match tokio::net::TcpStream::from_std(socket) {
            Ok(stream) => stream,
            Err(error) => {
                let close = Close::Io(error);
                debug!(client_id = state.client_id(), reason = %close, "connection dropped");
                end_session(&broker, holder, state, will, access, &close);
                return;
            }
        };
        let connection = Box::new(Connection {
            stream: Stream::Tcp(stream),
            proxied_peer,
            broker,
            protocol,
            v5,
            holder,
            state,
            will,
            keep_alive,
            last_packet: last_packet.instant(),
            write_blocked_since: None,
            unacknowledged_since: None,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            waiting: None,
            input_held: false,
            woke_subscribers: 0,
            pulled_many: false,
            busy: false,
            idle_check_at: Instant::now() + SLEEP_AFTER,
            access,
            limits,
            hold_for_durable: false,
        });
        connection.run(admission, held).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sleeper_stays_within_the_allocators_64_byte_class() {
        // Every sleeping connection is one of these: a field more moves them all to 80 or 96.
        assert!(std::mem::size_of::<super::Sleeping>() <= 64);
    }

    #[test]
    fn the_sleep_clock_keeps_an_instant_to_the_millisecond() {
        use super::{Instant, SleepClock};
        use std::time::Duration;
        SleepClock::start();
        let now = Instant::now() + Duration::from_secs(90);
        let kept = SleepClock::at(now).instant();
        assert!(kept <= now && now - kept < Duration::from_millis(1));
    }
}
