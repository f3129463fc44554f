//! Draining: what a node does between SIGTERM and its exit, so that a rolling update or a
//! scale-down moves clients to the other nodes without a reconnect storm.
//!
//! [`Lifecycle`] is the phase the probes report: `/healthz` is 200 from the moment the node
//! listens until it exits, `/readyz` only while it serves (a draining node answers 503 at once,
//! so that the Service stops sending it clients). On SIGTERM the server stops accepting
//! connections (connections still in their handshake are closed once they claim their
//! session) and [`disconnect_clients`] asks the connected clients to go, [`Pace`] at a time:
//! `-dr` per second, everyone left once `-dg` has run out. An MQTT 5 client is told why: 0x8B
//! "Server shutting down", or 0x9C "Use another server" with the `-dsr` Server Reference. The
//! server then waits (bounded) for the connections to close. In a cluster the node then
//! [hands its sessions over](hand_sessions_over): its peers know it drains and send it none;
//! its offline sessions go on taking their messages and move to whichever node their clients
//! reconnect to (see [`crate::cluster::handover`]); those still here when `-dg` runs out are
//! taken in by the peers, so that a client that comes back later finds its session. Then it
//! publishes the wills due, leaves the cluster and exits 0.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::cluster::handover::Handover;
use crate::config::DrainConfig;

/// The node's phase, as the probes report it.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

impl Lifecycle {
    /// The listeners are bound: the node takes clients.
    pub fn serving(&self) {
        self.0.store(SERVING, Ordering::Release);
    }

    /// SIGTERM: the node takes no more clients and sends its own away.
    pub fn draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// Alive (`/healthz`): started and not yet stopped, draining included, so that a liveness
    /// probe never kills a node in the middle of its drain.
    pub fn is_live(&self) -> bool {
        self.0.load(Ordering::Acquire) != STARTING
    }

    /// Takes clients (`/readyz`, besides having joined the cluster).
    pub fn is_serving(&self) -> bool {
        self.0.load(Ordering::Acquire) == SERVING
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire) == DRAINING
    }
}

/// How many clients a drain may have disconnected after a given time: `-dr` per second from
/// the first one, which goes at once; all of them once the grace (`-dg`) has run out, or at
/// once with a rate of 0.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    rate: u32,
    grace: Duration,
}

impl Pace {
    pub fn new(config: &DrainConfig) -> Pace {
        Pace {
            rate: config.rate,
            grace: config.grace,
        }
    }

    /// Disconnects allowed `elapsed` after the drain began.
    pub fn allowed(&self, elapsed: Duration) -> u64 {
        if self.rate == 0 || elapsed >= self.grace {
            return u64::MAX;
        }
        // Below the grace (at most a day, see `-dg`): no overflow in u128.
        let paced = elapsed.as_micros() * u128::from(self.rate) / 1_000_000;
        u64::try_from(paced).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// When the next disconnect after `done` of them is allowed, counted from the drain's start.
    pub fn next_after(&self, done: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        // allowed(t) > done  <=>  t * rate / 1e6 >= done  <=>  t >= done * 1e6 / rate (rounded up)
        let micros = (u128::from(done) * 1_000_000).div_ceil(u128::from(self.rate));
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        Duration::from_micros(micros).min(self.grace)
    }
}

/// The shortest sleep between two rounds of disconnects: at a high rate each round takes a
/// batch rather than waking the timer for every client.
const ROUND: Duration = Duration::from_millis(10);

/// Asks the clients connected now to close, at the pace of `config`, starting at `started`;
/// returns how many were asked. Connections that claim a session after this began close by
/// themselves (see [`Broker::is_shutting_down`]).
pub async fn disconnect_clients(broker: &Broker, config: &DrainConfig, started: Instant) -> u64 {
    let pace = Pace::new(config);
    let holders = broker.sessions.connected();
    let total = holders.len();
    info!(
        clients = total,
        rate = config.rate,
        grace_secs = config.grace.as_secs(),
        "draining: disconnecting clients"
    );
    let mut asked = 0u64;
    let mut holders = holders.into_iter();
    let mut last_report = started;
    loop {
        let allowed = pace.allowed(started.elapsed());
        while asked < allowed {
            let Some(holder) = holders.next() else {
                info!(clients = asked, "draining: every client was asked to go");
                return asked;
            };
            broker.sessions.drain(&holder);
            asked += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            info!(
                asked,
                left = total as u64 - asked,
                "draining: disconnecting clients"
            );
        }
        let next = started + pace.next_after(asked);
        tokio::time::sleep_until(next.max(Instant::now() + ROUND)).await;
    }
}

/// How often the drain looks whether the sessions have gone.
const SESSION_POLL: Duration = Duration::from_millis(100);

/// The longest the peers get to take in the sessions still here when the grace runs out.
const TAKE_IN_LIMIT: Duration = Duration::from_secs(5);

/// Waits until this node's offline sessions have moved to the nodes their clients reconnected
/// to, or `deadline` (the end of `-dg`); then asks the peers to take in the rest, and waits
/// (at most [`TAKE_IN_LIMIT`]) for them to. Returns how many sessions were still here at the
/// end (they end with the process).
pub async fn hand_sessions_over(broker: &Broker, handover: &Handover, deadline: Instant) -> usize {
    let settled = || broker.sessions.is_empty() && handover.moves_in_flight() == 0;
    while !settled() && Instant::now() < deadline {
        if !handover.has_successor() {
            break;
        }
        tokio::time::sleep(SESSION_POLL).await;
    }
    let left = broker.sessions.offline();
    if !left.is_empty() && handover.has_successor() {
        let asked = handover.hand_over(&left);
        info!(
            sessions = left.len(),
            asked, "draining: asking the other nodes to take in the sessions still here"
        );
        let limit = Instant::now() + TAKE_IN_LIMIT;
        while !settled() && Instant::now() < limit {
            tokio::time::sleep(SESSION_POLL).await;
        }
    } else if !settled() {
        // Nobody to give them to: wait for the moves under way, briefly.
        let limit = Instant::now() + TAKE_IN_LIMIT;
        while handover.moves_in_flight() > 0 && Instant::now() < limit {
            tokio::time::sleep(SESSION_POLL).await;
        }
    }
    let left = broker.sessions.len();
    let on_their_way = handover.moves_in_flight();
    if on_their_way > 0 {
        // Not yet taken by their claimant (see `Handover::send_on`): with a data directory they
        // stay in it, as the sessions left here do.
        warn!(
            sessions = on_their_way,
            "draining: sessions handed over whose claimant has not confirmed them yet"
        );
    }
    if left > 0 {
        if broker.sessions.store().is_some() {
            info!(
                sessions = left,
                "draining: sessions that no other node took stay in the data directory"
            );
        } else {
            info!(
                sessions = left,
                "draining: sessions that no other node took end with the process"
            );
        }
    } else if on_their_way == 0 {
        info!("draining: every session is on another node");
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(rate: u32, grace_secs: u64) -> Pace {
        Pace::new(&DrainConfig {
            grace: Duration::from_secs(grace_secs),
            rate,
            server_reference: None,
        })
    }

    #[test]
    fn clients_go_at_the_rate_and_all_at_once_when_the_grace_runs_out() {
        let pace = pace(100, 30);
        assert_eq!(pace.allowed(Duration::ZERO), 1, "the first goes at once");
        assert_eq!(pace.allowed(Duration::from_millis(9)), 1);
        assert_eq!(pace.allowed(Duration::from_millis(10)), 2);
        assert_eq!(pace.allowed(Duration::from_secs(1)), 101);
        assert_eq!(pace.allowed(Duration::from_millis(29_999)), 3_000);
        assert_eq!(pace.allowed(Duration::from_secs(30)), u64::MAX);
        // The next one is allowed exactly when `allowed` says so.
        for done in [1, 2, 7, 100, 2_999] {
            let at = pace.next_after(done);
            assert!(pace.allowed(at) > done, "{done} at {at:?}");
            assert!(
                pace.allowed(at - Duration::from_micros(1)) <= done,
                "{done} not before {at:?}"
            );
        }
        assert_eq!(pace.next_after(10_000), Duration::from_secs(30));
    }

    #[test]
    fn a_rate_of_zero_or_no_grace_sends_everyone_at_once() {
        assert_eq!(pace(0, 30).allowed(Duration::ZERO), u64::MAX);
        assert_eq!(pace(0, 30).next_after(1_000), Duration::ZERO);
        assert_eq!(pace(1000, 0).allowed(Duration::ZERO), u64::MAX);
        // The fastest rate within the longest grace does not overflow.
        let fast = pace(u32::MAX, 86_400);
        assert!(fast.allowed(Duration::from_secs(86_399)) > u64::from(u32::MAX));
        assert_eq!(fast.next_after(u64::MAX), Duration::from_secs(86_400));
    }

    #[test]
    fn the_phase_says_live_and_serving_as_the_probes_need() {
        let lifecycle = Lifecycle::default();
        assert!(!lifecycle.is_live() && !lifecycle.is_serving());
        lifecycle.serving();
        assert!(lifecycle.is_live() && lifecycle.is_serving() && !lifecycle.is_draining());
        lifecycle.draining();
        assert!(lifecycle.is_live() && !lifecycle.is_serving() && lifecycle.is_draining());
    }
}
