//! The one thread that writes to the data directory. Everything the broker writes (a delivery
//! queued, acknowledged, a retained message, a session's record) is appended to an in-memory
//! queue, in the order it happened, under whatever broker lock the change was made under: that
//! costs a copy and a short lock, never disk I/O, so no runtime thread or broker lock waits for
//! the disk. The writer thread takes everything queued at once, applies it as one atomic batch
//! (written to the operating system), and, with `-dfs 0`, fsyncs it; then it tells the
//! acknowledgements waiting on those writes (their tickets, see [`super::Store::synced`]) that
//! they may go. With `-dfs N` it fsyncs every N ms instead, and acknowledgements go as soon as
//! their batch is written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, PersistMode};
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::{error, warn};

use super::SyncPolicy;

/// Which keyspace an operation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    Retained,
    Sessions,
    Deliveries,
    Sent,
    Awaiting,
}

/// One change to the data directory.
#[derive(Debug)]
pub(super) enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Remove(Space, Vec<u8>),
    /// Every key that starts with the bytes (a session's records).
    RemovePrefix(Space, Vec<u8>),
}

/// The keyspaces, by [`Space`].
pub(super) struct Spaces {
    pub retained: Keyspace,
    pub sessions: Keyspace,
    pub deliveries: Keyspace,
    pub sent: Keyspace,
    pub awaiting: Keyspace,
}

impl Spaces {
    pub fn get(&self, space: Space) -> &Keyspace {
        match space {
            Space::Retained => &self.retained,
            Space::Sessions => &self.sessions,
            Space::Deliveries => &self.deliveries,
            Space::Sent => &self.sent,
            Space::Awaiting => &self.awaiting,
        }
    }
}

thread_local! {
    /// The ticket of the last operation this thread queued, in any store: a connection compares
    /// it before and after handling a packet to learn whether the handling wrote anything (and
    /// its acknowledgement must wait), without a field of its own.
    static QUEUED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A mark of what this thread has queued so far (see [`QUEUED_HERE`]).
pub fn queued_here() -> u64 {
    QUEUED_HERE.with(std::cell::Cell::get)
}

/// The longest key the engine takes (it panics beyond).
const MAX_KEY: usize = u16::MAX as usize;

/// Bytes queued for the writer beyond which a connection whose handling queued anything waits
/// for it (QoS 0 too): what bounds the queue when the disk is slower than the traffic.
pub(super) const CONGESTED_BYTES: usize = 64 << 20;

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Put(_, key, value) => key.len() + value.len() + 32,
            Op::Remove(_, key) | Op::RemovePrefix(_, key) => key.len() + 32,
        }
    }
}

/// The queue between the broker and the writer thread.
pub(super) struct Writer {
    queue: Mutex<Vec<Op>>,
    wake: Condvar,
    /// Operations queued so far: a ticket covering all of them.
    queued: AtomicU64,
    /// Bytes of the operations queued and not yet taken by the writer.
    queued_bytes: std::sync::atomic::AtomicUsize,
    /// Operations an acknowledgement may rely on (written, and fsynced with `-dfs 0`).
    done: watch::Sender<u64>,
    closed: AtomicBool,
    /// Set after the first failure, which is logged; later ones are not.
    failed: AtomicBool,
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            queue: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            queued: AtomicU64::new(0),
            queued_bytes: std::sync::atomic::AtomicUsize::new(0),
            done: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }

    /// Queues `op`; returns its ticket.
    pub fn push(&self, op: Op) -> u64 {
        let ticket = {
            self.queued_bytes.fetch_add(op.bytes(), Ordering::Relaxed);
            let mut queue = self.queue.lock();
            queue.push(op);
            // Under the queue's lock: tickets follow the queue's order.
            let ticket = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
            if queue.len() == 1 {
                self.wake.notify_one();
            }
            ticket
        };
        QUEUED_HERE.with(|here| here.set(ticket));
        ticket
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether more than [`CONGESTED_BYTES`] wait for the writer.
    pub fn is_congested(&self) -> bool {
        self.queued_bytes.load(Ordering::Relaxed) > CONGESTED_BYTES
    }

    /// Whether a write or an fsync failed: what is acknowledged since may not be on disk.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn is_done(&self, ticket: u64) -> bool {
        *self.done.borrow() >= ticket
    }

    /// Completes once `ticket` is done.
    pub async fn done(&self, ticket: u64) {
        let mut done = self.done.subscribe();
        // The writer only stops at close, after it has done everything queued.
        let _ = done.wait_for(|done| *done >= ticket).await;
    }

    /// Asks the thread to finish what is queued, fsync and stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _queue = self.queue.lock();
        self.wake.notify_one();
    }

    /// The writer thread's loop, until [`Writer::close`].
    pub fn run(
        self: Arc<Self>,
        db: Database,
        spaces: Arc<Spaces>,
        policy: SyncPolicy,
        dir: String,
    ) {
        let mut unsynced = false;
        let mut last_sync = Instant::now();
        loop {
            let (ops, upto) = {
                let mut queue = self.queue.lock();
                loop {
                    if !queue.is_empty() || self.closed.load(Ordering::Acquire) {
                        break;
                    }
                    match policy {
                        SyncPolicy::Interval(every) if unsynced => {
                            let left = every.saturating_sub(last_sync.elapsed());
                            if left.is_zero() || self.wake.wait_for(&mut queue, left).timed_out() {
                                break;
                            }
                        }
                        _ => self.wake.wait(&mut queue),
                    }
                }
                // Read under the lock: every ticket up to it is in `ops`, or earlier.
                (
                    std::mem::take(&mut *queue),
                    self.queued.load(Ordering::Acquire),
                )
            };
            if !ops.is_empty() {
                let bytes: usize = ops.iter().map(Op::bytes).sum();
                // A panic in the engine must not stop the writer: everything waiting on it
                // would wait for ever. It counts as a failed write.
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.apply(&db, &spaces, ops, &dir)
                }));
                if applied.is_err() && !self.failed.swap(true, Ordering::Relaxed) {
                    error!(%dir, "data directory write failed (the engine panicked): what is not written is in memory only");
                }
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                unsynced = true;
            }
            let closing = self.closed.load(Ordering::Acquire) && self.queue.lock().is_empty();
            let sync_now = match policy {
                SyncPolicy::EveryAcknowledgement => unsynced,
                SyncPolicy::Interval(every) => unsynced && last_sync.elapsed() >= every,
            };
            if sync_now || (closing && unsynced) {
                let mode = if closing {
                    PersistMode::SyncAll
                } else {
                    PersistMode::SyncData
                };
                if let Err(error) = db.persist(mode) {
                    if !self.failed.swap(true, Ordering::Relaxed) {
                        error!(%dir, %error, "data directory fsync failed: writes are no longer durable");
                    }
                }
                unsynced = false;
                last_sync = Instant::now();
            }
            // With an interval, acknowledgements rely on the write only (the process may crash,
            // the operating system has it). What is queued after the close is never written, so
            // never acknowledged either (the process is exiting).
            self.done.send_replace(upto);
            if closing {
                return;
            }
        }
    }

    /// Applies `ops` in order, as few atomic batches as the prefix removals allow.
    fn apply(&self, db: &Database, spaces: &Spaces, ops: Vec<Op>, dir: &str) {
        let mut batch = db.batch();
        for op in ops {
            let key_len = match &op {
                Op::Put(_, key, _) | Op::Remove(_, key) | Op::RemovePrefix(_, key) => key.len(),
            };
            if key_len > MAX_KEY {
                warn!(%dir, key_len, "data directory: a key too long for the engine; not written");
                continue;
            }
            match op {
                Op::Put(space, key, value) => batch.insert(spaces.get(space), key, value),
                Op::Remove(space, key) => batch.remove(spaces.get(space), key),
                Op::RemovePrefix(space, prefix) => {
                    // What the batch so far wrote under the prefix must be seen by the scan.
                    let before = std::mem::replace(&mut batch, db.batch());
                    self.commit(before, dir);
                    for guard in spaces.get(space).prefix(&prefix) {
                        match guard.key() {
                            Ok(key) => batch.remove(spaces.get(space), key),
                            Err(error) => {
                                warn!(%dir, %error, "data directory: a record could not be read to remove it");
                                break;
                            }
                        }
                    }
                }
            }
        }
        self.commit(batch, dir);
    }

    fn commit(&self, batch: fjall::OwnedWriteBatch, dir: &str) {
        if batch.is_empty() {
            return;
        }
        if let Err(error) = batch.commit() {
            if !self.failed.swap(true, Ordering::Relaxed) {
                error!(%dir, %error, "data directory write failed: what is not written is in memory only");
            }
        }
    }
}

/// How long [`super::Store::close`] waits for the writer to finish.
pub(super) const CLOSE_LIMIT: Duration = Duration::from_secs(30);
