//! The sync sender: a thread of its own that takes what the peers' queues hold (best-effort
//! batches, link segments, retransmissions), seals it and sends it from the sync socket, many
//! datagrams per system call (see [`super::batch`]).
//!
//! A thread rather than a task: under load the sender competes with every publishing
//! connection for the runtime's workers, and as a task it got a turn too seldom to keep up
//! (a QoS 0 flood across nodes reached 0.6 % of the single-node rate, the rest dropped at its
//! full queues). Publishers wake it through [`Wakeup`] when they queue into an idle peer; while
//! anything is left to send it does not sleep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BufMut;
use parking_lot::{Condvar, Mutex};
use std::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::warn;

use super::super::auth::DatagramKey;
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
}

impl Wakeup {
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            *self.woken.lock() = true;
            self.condvar.notify_one();
        }
    }

    /// Sleeps until woken (or woken before and not yet taken) or `deadline`.
    pub(in crate::cluster) fn sleep_until(&self, deadline: Instant) {
        let mut woken = self.woken.lock();
        if !*woken {
            self.condvar.wait_until(&mut woken, deadline);
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

/// The running sender.
pub struct Sender {
    orders: Arc<Orders>,
    peers: Arc<Peers>,
    done: oneshot::Receiver<()>,
}

impl Sender {
    /// Starts the sender's thread.
    pub fn spawn(
        socket: Arc<UdpSocket>,
        peers: Arc<Peers>,
        key: DatagramKey,
        origin: Origin,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Sender> {
        let orders = Arc::new(Orders::default());
        let (finished, done) = oneshot::channel();
        let loop_orders = orders.clone();
        let loop_peers = peers.clone();
        std::thread::Builder::new()
            .name("coolpy7-sync-send".into())
            .spawn(move || {
                send_loop(&socket, &loop_peers, &loop_orders, &key, &origin, &metrics);
                let _ = finished.send(());
            })?;
        Ok(Sender {
            orders,
            peers,
            done,
        })
    }

    /// Sends what is still queued (the wills of the connections closed at shutdown) and waits
    /// for its acknowledgements, for at most `limit`; says whether everything went.
    pub async fn finish(mut self, limit: Duration) -> bool {
        self.orders.stop.store(true, Ordering::Release);
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
fn send_loop(
    socket: &UdpSocket,
    peers: &Peers,
    orders: &Orders,
    key: &DatagramKey,
    origin: &Origin,
    metrics: &Metrics,
) {
    let mut sequence = SequenceClock::new(origin.started);
    let mut batch = OutBatch::default();
    let cluster = &metrics.cluster;
    let flush = |batch: &mut OutBatch| {
        let Sent { sent, failed } = batch.send(socket);
        cluster.datagrams_out(ClusterPort::Sync, sent as u64);
        if failed > 0 {
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::SendError)
                .inc_by(failed as u64);
        }
    };
    while !orders.abort.load(Ordering::Acquire) {
        let stopping = orders.stop.load(Ordering::Acquire);
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut more = false;
        let list = peers.list().clone();
        for peer in list.iter() {
            if peer.control_lost() {
                peers.restart_control(peer);
            }
            let transmits = peer.take_transmits(now, SEGMENTS_PER_TURN);
            cluster
                .segments_retransmitted
                .inc_by(transmits.retransmitted);
            more |= transmits.more;
            deadline = match (deadline, transmits.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let to = peer.identity.sync_addr();
            for (count, run) in &transmits.runs {
                if batch.is_full() {
                    flush(&mut batch);
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
                    if batch.is_full() {
                        flush(&mut batch);
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
        flush(&mut batch);
        if stopping && peers.all_idle() {
            return;
        }
        if more {
            continue;
        }
        let wake_at = deadline.map_or(now + MEMBERS_POLL, |d| d.min(now + MEMBERS_POLL));
        peers.sleep_sender_until(wake_at);
    }
    if orders.stop.load(Ordering::Acquire) {
        warn!("the sync sender stopped before every peer acknowledged what it was sent");
    }
}
