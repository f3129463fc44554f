//! The data directory (`-dd`): persistent sessions and retained messages on disk, so that a node
//! that crashes or restarts comes back with them.
//!
//! What is written, and when: a retained message as it is stored (and its removal); a session's
//! subscriptions, expiry and delayed will when a connection claims it, subscribes, unsubscribes
//! or leaves ([`Journal::session`]); each QoS 1/2 delivery queued for it as it is queued
//! ([`Journal::queued`]), the packet id it was sent with, its PUBREC, and its removal once
//! acknowledged or dropped; each inbound QoS 2 packet id awaiting PUBREL. Nothing else: QoS 0
//! and sessions that end with their connection never touch the disk.
//!
//! Acknowledgements wait for what they acknowledge to be durable: a connection takes a
//! [`Store::written`] ticket after handling a PUBLISH (or SUBSCRIBE, or its CONNECT) and holds
//! the PUBACK, PUBREC, SUBACK or CONNACK back until [`Store::synced`] passes it. With `-dfs 0`
//! one thread fsyncs whatever was written when someone waits (a group commit: every publisher
//! waiting meanwhile shares the next fsync). With `-dfs N` acknowledgements go at once and the
//! thread fsyncs every N ms: every write reaches the operating system before it is
//! acknowledged, so a crash of the process loses nothing, and a power loss the last N ms.
//!
//! The engine is fjall, a log-structured store in safe Rust (see the README for why it and
//! not redb): writes append to its journal, which is what a broker's short-lived records want,
//! and a torn last write after a crash is cut off on recovery. [`Store::load`] reads it all back
//! at start-up; records that do not decode are skipped, counted and removed, never trusted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::router::Stamp;
use crate::router::{Delivery, Message};
use crate::session::snapshot::{decode_deliveries, encode_deliveries};

mod journal;
mod keys;
mod load;

pub use journal::Journal;
pub use load::{Loaded, LoadedSession, RetainedRecord};

/// When a write becomes durable (`-dfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every acknowledgement waits for an fsync of what it acknowledges (`-dfs 0`).
    EveryAcknowledgement,
    /// Acknowledged once written to the operating system; fsynced every so often.
    Interval(Duration),
}

/// A data directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error("data directory {dir} cannot be created: {source}")]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {dir} cannot be read: {source}")]
    Read {
        dir: PathBuf,
        #[source]
        source: fjall::Error,
    },
}

/// The open data directory.
pub struct Store {
    dir: PathBuf,
    db: Database,
    retained: Keyspace,
    /// (client id, incarnation) → the session's subscriptions, expiry, owner and delayed will.
    sessions: Keyspace,
    /// (client id, incarnation, journal number) → a QoS 1/2 delivery queued or in flight.
    deliveries: Keyspace,
    /// (client id, incarnation, journal number) → the packet id it was sent with, and whether PUBREC came.
    sent: Keyspace,
    /// (client id, incarnation, packet id) → nothing: inbound QoS 2 ids awaiting PUBREL.
    awaiting: Keyspace,
    policy: SyncPolicy,
    /// Writes made so far: the ticket an acknowledgement waits for.
    written: AtomicU64,
    /// Writes known durable.
    durable: watch::Sender<u64>,
    /// Set when someone waits for an fsync; the sync thread waits on it.
    wanted: Mutex<bool>,
    wake: Condvar,
    closed: AtomicBool,
    /// Set after the first failed write, which is logged; later ones are not.
    failed: AtomicBool,
}

impl Store {
    /// Opens (creating it if need be) the data directory and starts its sync thread.
    pub fn open(dir: &Path, policy: SyncPolicy) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Create {
            dir: dir.to_path_buf(),
            source,
        })?;
        let opened = |source| StoreError::Open {
            dir: dir.to_path_buf(),
            source,
        };
        let db = Database::builder(dir)
            // Two workers for flushes and compactions (at least one is required).
            .worker_threads(2)
            .open()
            .map_err(opened)?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let store = Arc::new(Store {
            dir: dir.to_path_buf(),
            retained: keyspace("retained").map_err(opened)?,
            sessions: keyspace("sessions").map_err(opened)?,
            deliveries: keyspace("deliveries").map_err(opened)?,
            sent: keyspace("sent").map_err(opened)?,
            awaiting: keyspace("awaiting").map_err(opened)?,
            db,
            policy,
            written: AtomicU64::new(0),
            durable: watch::Sender::new(0),
            wanted: Mutex::new(false),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let syncer = store.clone();
        std::thread::Builder::new()
            .name("coolpy7-store-sync".into())
            .spawn(move || syncer.sync_loop())
            .map_err(|source| StoreError::Create {
                dir: dir.to_path_buf(),
                source,
            })?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// A ticket covering every write made so far (see [`Store::synced`]).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether what `ticket` covers may be acknowledged now, without waiting.
    pub fn is_synced(&self, ticket: u64) -> bool {
        matches!(self.policy, SyncPolicy::Interval(_)) || *self.durable.borrow() >= ticket
    }

    /// Completes once the writes `ticket` covers are durable as `-dfs` asks: at once with an
    /// interval, after the next fsync with `-dfs 0`.
    pub async fn synced(&self, ticket: u64) {
        if self.is_synced(ticket) {
            return;
        }
        let mut durable = self.durable.subscribe();
        {
            let mut wanted = self.wanted.lock();
            *wanted = true;
            self.wake.notify_one();
        }
        // The sync thread only stops at close, after a last fsync that covers every ticket.
        let _ = durable.wait_for(|durable| *durable >= ticket).await;
    }

    /// The sync thread: fsyncs what was written when asked (`-dfs 0`) or every interval.
    fn sync_loop(self: Arc<Self>) {
        loop {
            {
                let mut wanted = self.wanted.lock();
                match self.policy {
                    SyncPolicy::EveryAcknowledgement => {
                        while !*wanted && !self.closed.load(Ordering::Acquire) {
                            self.wake.wait(&mut wanted);
                        }
                    }
                    SyncPolicy::Interval(every) => {
                        if !*wanted && !self.closed.load(Ordering::Acquire) {
                            self.wake.wait_for(&mut wanted, every);
                        }
                    }
                }
                *wanted = false;
            }
            let closing = self.closed.load(Ordering::Acquire);
            let target = self.written();
            let durable = *self.durable.borrow();
            if target > durable || closing {
                if let Err(error) = self.db.persist(PersistMode::SyncData) {
                    // Nothing more can be made durable; acknowledgements go on (the broker
                    // keeps working in memory) rather than stall every publisher.
                    error!(dir = %self.dir.display(), %error, "data directory fsync failed: writes are no longer durable");
                }
                // Read apart: a `borrow` still held while sending would deadlock.
                let durable = (*self.durable.borrow()).max(target);
                self.durable.send_replace(durable);
            }
            if closing {
                self.durable.send_replace(u64::MAX);
                return;
            }
        }
    }

    /// Makes everything written durable and stops the sync thread: at shutdown.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        {
            let mut wanted = self.wanted.lock();
            *wanted = true;
            self.wake.notify_one();
        }
        if let Err(error) = self.db.persist(PersistMode::SyncAll) {
            error!(dir = %self.dir.display(), %error, "data directory: the last fsync failed");
        }
    }

    /// Counts a write and logs the first that failed.
    fn wrote(&self, result: fjall::Result<()>) {
        match result {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    error!(dir = %self.dir.display(), %error, "data directory write failed: what is not written is in memory only");
                }
            }
        }
    }

    fn put(&self, keyspace: &Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.wrote(keyspace.insert(key, value));
    }

    fn remove(&self, keyspace: &Keyspace, key: Vec<u8>) {
        self.wrote(keyspace.remove(key));
    }

    /// Removes every record whose key starts with `prefix`.
    fn remove_prefix(&self, keyspace: &Keyspace, prefix: &[u8]) {
        let mut keys = Vec::new();
        for guard in keyspace.prefix(prefix) {
            match guard.key() {
                Ok(key) => keys.push(key),
                Err(error) => {
                    warn!(%error, "data directory: a record could not be read to remove it");
                    break;
                }
            }
        }
        for key in keys {
            self.wrote(keyspace.remove(key));
        }
    }

    /// Stores `message` as the retained message of its topic, with its stamp in a cluster.
    pub fn put_retained(&self, message: &Message, stamp: Option<&Stamp>) {
        let value = load::encode_retained(message, stamp, Instant::now());
        self.put(&self.retained, message.topic.to_vec(), value);
    }

    /// Removes the retained message of `topic`.
    pub fn remove_retained(&self, topic: &[u8]) {
        self.remove(&self.retained, topic.to_vec());
    }

    /// Reads the data directory back: the retained messages, and the sessions with their
    /// deliveries (each still carrying its journal number, so nothing is written again).
    pub fn load(&self) -> Result<Loaded, StoreError> {
        load::load(self).map_err(|source| StoreError::Read {
            dir: self.dir.clone(),
            source,
        })
    }

    /// The journal of `client_id`'s session read back with `incarnation`.
    pub fn journal_of(self: &Arc<Self>, client_id: Arc<str>, incarnation: u64) -> Arc<Journal> {
        Arc::new(Journal::new(self.clone(), client_id, incarnation))
    }

    /// The journal of a new session of `client_id`.
    pub fn journal(self: &Arc<Self>, client_id: Arc<str>) -> Arc<Journal> {
        Arc::new(Journal::new(self.clone(), client_id, rand::random()))
    }
}

/// A delivery's record: `[written ms u64]` then the delivery as in a session snapshot.
fn encode_delivery(delivery: &Delivery) -> Vec<u8> {
    let now = Instant::now();
    let mut value = Vec::with_capacity(64 + delivery.message.payload.len());
    value.extend_from_slice(&keys::wall_ms().to_be_bytes());
    value.extend_from_slice(&encode_deliveries(std::slice::from_ref(delivery), now));
    value
}

/// Reads a delivery's record; its message's expiry counts the time it lay on disk.
fn decode_delivery(value: &[u8]) -> Option<Delivery> {
    let (written, rest) = value.split_first_chunk::<8>()?;
    let age = keys::age(u64::from_be_bytes(*written));
    let now = Instant::now();
    let then = now.checked_sub(age).unwrap_or(now);
    decode_deliveries(rest, then).ok()?.into_iter().next()
}

#[cfg(test)]
mod tests;
