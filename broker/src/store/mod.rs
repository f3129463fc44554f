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
//! Nothing is written on the broker's threads: each change is queued, in order, for the one
//! writer thread (see `writer`), which applies what it finds queued as one atomic batch. An
//! acknowledgement (PUBACK, PUBREC, PUBCOMP, SUBACK, CONNACK) whose handling queued something
//! is held back until the writer is done with it ([`Store::synced`]): with `-dfs 0` written and
//! fsynced (a group commit: every publisher waiting meanwhile shares the next fsync); with
//! `-dfs N` written to the operating system, fsynced every N ms (a crash of the process loses
//! nothing, a power loss the last N ms).
//!
//! The engine is fjall, a log-structured store in safe Rust (see the README for why it and
//! not redb): writes append to its journal, which is what a broker's short-lived records want,
//! and a torn last write after a crash is cut off on recovery. [`Store::load`] reads it all back
//! at start-up; records that do not decode are skipped, counted and removed, never trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, KeyspaceCreateOptions};
use parking_lot::Mutex;
use tracing::error;

use crate::router::Stamp;
use crate::router::{Delivery, Message};
use crate::session::snapshot::{decode_deliveries, encode_deliveries};

mod journal;
mod keys;
mod load;
mod writer;

pub use keys::wall_ms;
pub use writer::queued_here;
use writer::{Op, Space, Spaces, Writer};

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
    /// retained: topic → message. sessions: (client id, incarnation) → the session's
    /// subscriptions, expiry, owner and delayed will. deliveries: (client id, incarnation,
    /// journal number) → a QoS 1/2 delivery queued or in flight. sent: the same key → the
    /// packet id a QoS 2 delivery was sent with, and whether PUBREC came. awaiting: (client id,
    /// incarnation, packet id) → nothing: inbound QoS 2 ids awaiting PUBREL.
    spaces: Arc<Spaces>,
    policy: SyncPolicy,
    writer: Arc<Writer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Client ids longer than this have no journal: their keys (the id and 14 bytes) would pass the
/// engine's 65,535-byte key limit. Only `-mcl` above 65,000 lets such ids in.
pub const MAX_JOURNALED_CLIENT_ID: usize = 65_000;

impl Store {
    /// Opens (creating it if need be) the data directory and starts its writer thread.
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
        let spaces = Arc::new(Spaces {
            retained: keyspace("retained").map_err(opened)?,
            sessions: keyspace("sessions").map_err(opened)?,
            deliveries: keyspace("deliveries").map_err(opened)?,
            sent: keyspace("sent").map_err(opened)?,
            awaiting: keyspace("awaiting").map_err(opened)?,
        });
        let writer = Arc::new(Writer::new());
        let thread = {
            let (writer, spaces) = (writer.clone(), spaces.clone());
            let dir_text = dir.display().to_string();
            let dir = dir_text.clone();
            std::thread::Builder::new()
                .name("coolpy7-store".into())
                .spawn(move || writer.run(db, spaces, policy, dir))
                .map_err(|source| StoreError::Create {
                    dir: PathBuf::from(&dir_text),
                    source,
                })?
        };
        Ok(Arc::new(Store {
            dir: dir.to_path_buf(),
            spaces,
            policy,
            writer,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// A ticket covering every write queued so far (see [`Store::synced`]).
    pub fn written(&self) -> u64 {
        self.writer.queued()
    }

    /// Whether so much waits for the writer that whoever queues more should wait for it too.
    pub fn is_congested(&self) -> bool {
        self.writer.is_congested()
    }

    /// Whether a write or an fsync failed (`/readyz` says so: what is acknowledged since may
    /// not be on disk).
    pub fn has_failed(&self) -> bool {
        self.writer.has_failed()
    }

    /// Whether what `ticket` covers may be acknowledged now, without waiting.
    pub fn is_synced(&self, ticket: u64) -> bool {
        self.writer.is_done(ticket)
    }

    /// Completes once the writes `ticket` covers are as durable as `-dfs` asks: written to the
    /// operating system, and with `-dfs 0` fsynced.
    pub async fn synced(&self, ticket: u64) {
        if !self.is_synced(ticket) {
            self.writer.done(ticket).await;
        }
    }

    /// Makes everything written durable and stops the writer thread: at shutdown.
    pub fn close(&self) {
        self.writer.close();
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        // Bounded: a disk that hangs must not hang the exit (what is not written is lost
        // then, as it would be on a crash).
        let deadline = Instant::now() + writer::CLOSE_LIMIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            error!(dir = %self.dir.display(), "data directory: the last writes did not finish in time");
        }
    }

    fn put(&self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.writer.push(Op::Put(space, key, value));
    }

    fn remove(&self, space: Space, key: Vec<u8>) {
        self.writer.push(Op::Remove(space, key));
    }

    /// Removes every record whose key starts with `prefix`.
    fn remove_prefix(&self, space: Space, prefix: Vec<u8>) {
        self.writer.push(Op::RemovePrefix(space, prefix));
    }

    /// Stores `message` as the retained message of its topic, with its stamp in a cluster.
    pub fn put_retained(&self, message: &Message, stamp: Option<&Stamp>) {
        // The topic is the key: one beyond the engine's limit (only the HTTP API lets one in)
        // is kept in memory only.
        if message.topic.len() > MAX_JOURNALED_CLIENT_ID {
            tracing::debug!(
                len = message.topic.len(),
                "retained topic too long for the data directory; in memory only"
            );
            return;
        }
        let value = load::encode_retained(message, stamp, Instant::now());
        self.put(Space::Retained, message.topic.to_vec(), value);
    }

    /// Removes the retained message of `topic`.
    pub fn remove_retained(&self, topic: &[u8]) {
        self.remove(Space::Retained, topic.to_vec());
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

    /// The journal of a new session of `client_id`; `None` for a client id too long to key
    /// (see [`MAX_JOURNALED_CLIENT_ID`]): that session lives in memory only.
    pub fn journal(self: &Arc<Self>, client_id: Arc<str>) -> Option<Arc<Journal>> {
        if client_id.len() > MAX_JOURNALED_CLIENT_ID {
            tracing::debug!(
                len = client_id.len(),
                "a client id too long for the data directory: its session is kept in memory only"
            );
            return None;
        }
        Some(Arc::new(Journal::new(
            self.clone(),
            client_id,
            rand::random(),
        )))
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
