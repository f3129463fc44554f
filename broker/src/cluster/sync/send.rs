//! The sync sender: takes what the peers' queues hold (best-effort batches, link segments,
//! retransmissions), seals it and sends it from the sync socket, many datagrams per system
//! call (see [`super::batch`]).
//!
//! A [`Transmitter`] does the sending, for whoever holds its lock: a publisher whose message
//! made something sendable, or the receiver when an acknowledgement opened a link's window,
//! sends at once from its own thread ([`Transmitter::send_now`]) when nobody else is sending;
//! what the socket does not take at once, what is left beyond a turn, and a control link to
//! restart are left to the sender's thread, which it wakes. That thread also keeps the timers
//! (retransmissions, membership changes) and waits for room in the socket when it must.
//! Sending in place saves a thread wake-up per burst: at 1,000 messages a second each message
//! was one more hop through the scheduler.
//!
//! The thread rather than a task: under load the sender competes with every publishing
//! connection for the runtime's workers, and as a task it got a turn too seldom to keep up
//! (a QoS 0 flood across nodes reached 0.6 % of the single-node rate, the rest dropped at its
//! full queues). While anything is left to send it does not sleep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BufMut;
use parking_lot::{Condvar, Mutex};
use std::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::warn;

use super::super::auth::DatagramKey;
use super::super::link::earliest;
use super::super::peers::{Peers, LINK_VERSION};
use super::super::replay::SequenceClock;
use super::batch::{OutBatch, Sent};
use super::wire::{encode_header, encode_parties, KIND_CONTROL_SEGMENT, KIND_SEGMENT};
use super::Origin;
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};

/// Link segments taken from one peer per turn of the sender, so that one busy peer does not
/// hold the others back.
const SEGMENTS_PER_TURN: usize = 64;

/// How often the sender looks for membership changes when nothing else wakes it.
const MEMBERS_POLL: Duration = Duration::from_millis(100);

/// Wakes the sender's thread. Cheap when it is already awake: one atomic swap.
#[derive(Default)]
pub struct Wakeup {
    /// A wake-up is on its way, or was given and not yet taken.
    pending: AtomicBool,
    woken: Mutex<bool>,
    condvar: Condvar,
    /// When the thread means to wake by itself, as nanoseconds after `base` (0 until it first
    /// plans: it is awake until then).
    planned: AtomicU64,
    base: OnceLock<Instant>,
}

impl Wakeup {
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            *self.woken.lock() = true;
            self.condvar.notify_one();
        }
    }

    /// Makes the thread wake by `deadline` if it means to sleep past it (a timer that someone
    /// sending in its place started, segments held for an acknowledgement): a sleeping thread
    /// is told to sleep less, not woken at once.
    pub fn wake_by(&self, deadline: Instant) {
        let at = self.nanos(deadline);
        if at < self.planned.fetch_min(at, Ordering::AcqRel) {
            // Under the lock: a thread about to wait has read the plan already and gets the
            // notification once it waits.
            let _woken = self.woken.lock();
            self.condvar.notify_one();
        }
    }

    /// Records when the thread will wake by itself; set by the thread before it lets anyone
    /// else send, so that [`Wakeup::wake_by`] compares with the sleep to come. An earlier
    /// time asked for since [`Wakeup::forget_plan`] stands.
    pub(in crate::cluster) fn plan(&self, deadline: Instant) {
        self.planned
            .fetch_min(self.nanos(deadline), Ordering::AcqRel);
    }

    /// Starts a pass of the thread: what it takes now needs no wake-up asked for before, and
    /// whatever is asked from now on is kept for its next sleep.
    pub(in crate::cluster) fn forget_plan(&self) {
        self.planned.store(u64::MAX, Ordering::Release);
    }

    fn nanos(&self, at: Instant) -> u64 {
        let base = *self.base.get_or_init(Instant::now);
        u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
    }

    #[cfg(test)]
    pub(in crate::cluster) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Sleeps until woken (or woken before and not yet taken), `deadline`, or an earlier time
    /// [`Wakeup::wake_by`] gave.
    pub(in crate::cluster) fn sleep_until(&self, deadline: Instant) {
        let mut woken = self.woken.lock();
        while !*woken {
            let base = *self.base.get_or_init(Instant::now);
            let planned = base
                .checked_add(Duration::from_nanos(self.planned.load(Ordering::Acquire)))
                .unwrap_or(deadline);
            let until = deadline.min(planned);
            if Instant::now() >= until || self.condvar.wait_until(&mut woken, until).timed_out() {
                break;
            }
        }
        *woken = false;
        self.pending.store(false, Ordering::Release);
    }
}

/// What the sender is told from outside.
#[derive(Default)]
struct Orders {
    /// Send what is left, wait for it to be acknowledged, and return.
    stop: AtomicBool,
    /// Return now.
    abort: AtomicBool,
}

/// Seals and sends what the peers hold, for the sender's thread or any thread sending in its
/// place (one at a time: whoever holds `state`).
pub struct Transmitter {
    socket: Arc<UdpSocket>,
    key: DatagramKey,
    origin: Origin,
    metrics: Arc<Metrics>,
    state: Mutex<SendState>,
    /// The thread is stopping: it waits for the peers to acknowledge everything, and must be
    /// woken when they do.
    stopping: AtomicBool,
}

/// What one sender at a time works with.
struct SendState {
    /// Numbers best-effort datagrams, for the receivers' replay windows.
    sequence: SequenceClock,
    /// Datagrams sealed and not yet sent: what a send in place left for want of room in the
    /// socket goes first in the next pass.
    batch: OutBatch,
}

/// What one pass over the peers found.
#[derive(Default)]
struct Pass {
    /// Something was left to send (beyond a turn's segments, or for want of room).
    more: bool,
    /// The earliest timer of a link (a retransmission).
    deadline: Option<Instant>,
}

impl Transmitter {
    pub(super) fn new(
        socket: Arc<UdpSocket>,
        key: DatagramKey,
        origin: Origin,
        metrics: Arc<Metrics>,
    ) -> Self {
        Transmitter {
            state: Mutex::new(SendState {
                sequence: SequenceClock::new(origin.started),
                batch: OutBatch::default(),
            }),
            socket,
            key,
            origin,
            metrics,
            stopping: AtomicBool::new(false),
        }
    }

    /// Holds the sender, as a thread sending would.
    #[cfg(test)]
    pub(super) fn lock_for_tests(&self) -> impl Drop + '_ {
        self.state.lock()
    }

    /// Sends what the peers hold now from this thread, unless someone else is sending; wakes
    /// the sender's thread for what it leaves (see [`Transmitter::pass`]), for a timer it
    /// started that the thread would sleep past, and when the thread is stopping (it waits
    /// for the peers' acknowledgements). Not to be called under the router's locks or a
    /// peer's: a pass takes them.
    pub fn send_now(&self, peers: &Peers) {
        let Some(mut state) = self.state.try_lock() else {
            // The one sending goes round again before it sleeps.
            peers.wake_sender();
            return;
        };
        let pass = self.pass(&mut state, peers, Instant::now(), false);
        drop(state);
        if pass.more || self.stopping.load(Ordering::Acquire) {
            peers.wake_sender();
        } else if let Some(deadline) = pass.deadline {
            peers.wake_sender_by(deadline);
        }
    }

    /// Takes what every peer has to send (up to a turn's segments each), seals it and sends
    /// it. `wait`: wait for room in the socket (the thread). Otherwise (in place) what the
    /// socket does not take at once stays in the batch and nothing more is taken, and control
    /// links to restart (a snapshot of every filter) are left to the thread: `more` says so.
    fn pass(&self, state: &mut SendState, peers: &Peers, now: Instant, wait: bool) -> Pass {
        let SendState { sequence, batch } = state;
        let (key, origin, cluster) = (&self.key, &self.origin, &self.metrics.cluster);
        let mut pass = Pass::default();
        // Sends what the batch holds; says whether some stayed for want of room.
        let flush = |batch: &mut OutBatch| {
            let Sent { sent, failed } = batch.send(&*self.socket, wait);
            cluster.datagrams_out(ClusterPort::Sync, sent as u64);
            if failed > 0 {
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::SendError)
                    .inc_by(failed as u64);
            }
            !batch.is_empty()
        };
        // What an earlier pass in place left goes first; while the socket takes none of it,
        // nothing more is taken.
        let mut stuck = !batch.is_empty() && flush(batch);
        let list = peers.list().clone();
        for peer in list.iter() {
            if stuck {
                break;
            }
            if peer.control_lost() {
                if wait {
                    peers.restart_control(peer);
                } else {
                    pass.more = true;
                }
            }
            let transmits = peer.take_transmits(now, SEGMENTS_PER_TURN);
            cluster
                .segments_retransmitted
                .inc_by(transmits.retransmitted);
            pass.more |= transmits.more;
            pass.deadline = earliest(pass.deadline, transmits.deadline);
            let to = peer.identity.sync_addr();
            for (count, run) in &transmits.runs {
                if batch.is_full() && !stuck {
                    stuck = flush(batch);
                }
                let datagram = batch.next(to);
                encode_header(
                    datagram,
                    peer.publish_version,
                    origin,
                    &peer.identity,
                    sequence.next_seq(),
                );
                datagram.put_u16(*count);
                datagram.extend_from_slice(run);
                key.seal(datagram);
            }
            for (kind, (link, acked), segments) in [
                (
                    KIND_CONTROL_SEGMENT,
                    transmits.control_link,
                    &transmits.control_segments,
                ),
                (KIND_SEGMENT, transmits.link, &transmits.segments),
            ] {
                for (seq, data) in segments {
                    if batch.is_full() && !stuck {
                        stuck = flush(batch);
                    }
                    let datagram = batch.next(to);
                    encode_parties(datagram, LINK_VERSION, kind, origin, &peer.identity);
                    datagram.put_u64(link);
                    datagram.put_u64(*seq);
                    datagram.put_u64(acked);
                    datagram.extend_from_slice(data);
                    key.seal(datagram);
                }
            }
        }
        if !stuck {
            stuck = flush(batch);
        }
        pass.more |= stuck;
        pass
    }
}

/// The running sender.
pub struct Sender {
    orders: Arc<Orders>,
    transmitter: Arc<Transmitter>,
    peers: Arc<Peers>,
    done: oneshot::Receiver<()>,
}

impl Sender {
    /// Starts the sender's thread, and lets the peers send in its place.
    pub fn spawn(
        socket: Arc<UdpSocket>,
        peers: Arc<Peers>,
        key: DatagramKey,
        origin: Origin,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Sender> {
        let transmitter = Arc::new(Transmitter::new(socket, key, origin, metrics));
        peers.attach_transmitter(transmitter.clone());
        let loop_transmitter = transmitter.clone();
        let orders = Arc::new(Orders::default());
        let (finished, done) = oneshot::channel();
        let loop_orders = orders.clone();
        let loop_peers = peers.clone();
        std::thread::Builder::new()
            .name("coolpy7-sync-send".into())
            .spawn(move || {
                send_loop(&loop_transmitter, &loop_peers, &loop_orders);
                let _ = finished.send(());
            })?;
        Ok(Sender {
            orders,
            transmitter,
            peers,
            done,
        })
    }

    /// Sends what is still queued (the wills of the connections closed at shutdown) and waits
    /// for its acknowledgements, for at most `limit`; says whether everything went.
    pub async fn finish(mut self, limit: Duration) -> bool {
        self.orders.stop.store(true, Ordering::Release);
        self.transmitter.stopping.store(true, Ordering::Release);
        self.peers.wake_sender();
        // The thread dropping its end without a word panicked: not finished.
        let finished = matches!(
            tokio::time::timeout(limit, &mut self.done).await,
            Ok(Ok(()))
        );
        if !finished {
            self.orders.abort.store(true, Ordering::Release);
            self.peers.wake_sender();
        }
        finished
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.orders.abort.store(true, Ordering::Release);
        self.peers.wake_sender();
    }
}

/// Sends what is queued for the peers, as best-effort datagrams and link segments, and keeps
/// the peers in step with membership, until aborted, or stopped and nothing is left to send
/// or to be acknowledged.
fn send_loop(transmitter: &Transmitter, peers: &Peers, orders: &Orders) {
    while !orders.abort.load(Ordering::Acquire) {
        let stopping = orders.stop.load(Ordering::Acquire);
        let mut state = transmitter.state.lock();
        peers.forget_sender_plan();
        // Read once the lock is held: a pass in place may have held it for a while.
        let now = Instant::now();
        let pass = transmitter.pass(&mut state, peers, now, true);
        if stopping && peers.all_idle() {
            return;
        }
        if pass.more {
            continue;
        }
        let wake_at = pass
            .deadline
            .map_or(now + MEMBERS_POLL, |d| d.min(now + MEMBERS_POLL));
        // Planned before anyone else may send: a timer they start is compared with it.
        peers.plan_sender_wake(wake_at);
        drop(state);
        peers.sleep_sender_until(wake_at);
    }
    if orders.stop.load(Ordering::Acquire) {
        warn!("the sync sender stopped before every peer acknowledged what it was sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_started_in_place_wakes_the_thread_only_when_it_would_sleep_past_it() {
        let wakeup = Arc::new(Wakeup::default());
        let now = Instant::now();
        wakeup.forget_plan();
        wakeup.plan(now + Duration::from_secs(10));
        wakeup.wake_by(now + Duration::from_secs(20));
        assert!(!wakeup.is_pending(), "not a wake-up");
        // A thread sleeping for its plan is told to sleep less, by a timer started meanwhile.
        let sleeper = {
            let wakeup = wakeup.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                wakeup.sleep_until(started + Duration::from_secs(10));
                started.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        wakeup.wake_by(Instant::now() + Duration::from_millis(20));
        assert!(!wakeup.is_pending(), "not woken at once");
        let slept = sleeper.join().unwrap();
        assert!(slept < Duration::from_secs(5), "slept {slept:?}");
        assert!(slept >= Duration::from_millis(60), "slept {slept:?}");
    }
}
