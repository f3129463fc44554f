//! Message deduplication (RFC 7252 §4.5): a client that gets no acknowledgement sends the same
//! Confirmable request again, with the same message id, for up to EXCHANGE_LIFETIME; a
//! Non-confirmable one may arrive twice too. The answer to a (peer, message id) is kept so that
//! a retransmission is answered again rather than published again.
//!
//! Bounded in time (an entry lives [`EXCHANGE_LIFETIME`]) and in entries (beyond the capacity
//! the oldest go first), so a flood of requests, spoofed or not, cannot grow it: under one, the
//! entries cover less than the lifetime and a late retransmission may publish twice, as QoS 1
//! allows.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// RFC 7252 §4.8.2: how long a message id may be reused for the same exchange (247 s with the
/// default transmission parameters).
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// A request's identity: where it came from and its message id.
pub type Key = (SocketAddr, u16);

/// What is known of a request already seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Still being authenticated or published: a retransmission is ignored (the client sends
    /// it again later, and gets the answer then).
    InProgress,
    /// Answered: with these bytes (an ACK, to send again), or `None` (a non-confirmable
    /// request, whose duplicates are ignored).
    Answered(Option<Bytes>),
}

pub struct Dedup {
    entries: HashMap<Key, Seen>,
    /// The keys in the order they were added, with when: the oldest expire or are evicted first.
    order: VecDeque<(Key, Instant)>,
    capacity: usize,
    lifetime: Duration,
}

impl Dedup {
    pub fn new(capacity: usize, lifetime: Duration) -> Dedup {
        Dedup {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            lifetime,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// What is known of `key`, after forgetting what is older than the lifetime at `now`.
    pub fn lookup(&mut self, key: &Key, now: Instant) -> Option<Seen> {
        self.expire(now);
        self.entries.get(key).cloned()
    }

    /// Records that `key` is being processed, making room by evicting the oldest entries.
    pub fn begin(&mut self, key: Key, now: Instant) {
        self.expire(now);
        if let Some(seen) = self.entries.get_mut(&key) {
            *seen = Seen::InProgress;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some((oldest, _)) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        self.entries.insert(key, Seen::InProgress);
        self.order.push_back((key, now));
    }

    /// Records the answer to `key`, unless it has been evicted meanwhile.
    pub fn answer(&mut self, key: &Key, response: Option<Bytes>) {
        if let Some(seen) = self.entries.get_mut(key) {
            *seen = Seen::Answered(response);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(key, added)) = self.order.front() {
            if now.saturating_duration_since(added) < self.lifetime {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, id: u16) -> Key {
        (SocketAddr::from(([127, 0, 0, 1], port)), id)
    }

    #[test]
    fn a_request_is_new_then_in_progress_then_answered() {
        let now = Instant::now();
        let mut dedup = Dedup::new(8, EXCHANGE_LIFETIME);
        assert_eq!(dedup.lookup(&key(1, 7), now), None);
        dedup.begin(key(1, 7), now);
        assert_eq!(dedup.lookup(&key(1, 7), now), Some(Seen::InProgress));
        // Another peer, or another message id, is another request.
        assert_eq!(dedup.lookup(&key(2, 7), now), None);
        assert_eq!(dedup.lookup(&key(1, 8), now), None);
        dedup.answer(&key(1, 7), Some(Bytes::from_static(b"ack")));
        assert_eq!(
            dedup.lookup(&key(1, 7), now),
            Some(Seen::Answered(Some(Bytes::from_static(b"ack"))))
        );
        dedup.begin(key(1, 8), now);
        dedup.answer(&key(1, 8), None);
        assert_eq!(dedup.lookup(&key(1, 8), now), Some(Seen::Answered(None)));
    }

    #[test]
    fn entries_expire_after_the_exchange_lifetime() {
        let start = Instant::now();
        let mut dedup = Dedup::new(8, EXCHANGE_LIFETIME);
        dedup.begin(key(1, 1), start);
        dedup.answer(&key(1, 1), Some(Bytes::from_static(b"a")));
        let later = start + Duration::from_secs(100);
        dedup.begin(key(1, 2), later);
        let before = start + EXCHANGE_LIFETIME - Duration::from_millis(1);
        assert!(dedup.lookup(&key(1, 1), before).is_some());
        assert_eq!(dedup.lookup(&key(1, 1), start + EXCHANGE_LIFETIME), None);
        assert_eq!(dedup.len(), 1, "the later one stays");
        assert!(dedup
            .lookup(
                &key(1, 2),
                later + EXCHANGE_LIFETIME - Duration::from_secs(1)
            )
            .is_some());
        assert_eq!(dedup.lookup(&key(1, 2), later + EXCHANGE_LIFETIME), None);
        assert_eq!(dedup.len(), 0);
        assert!(dedup.order.is_empty());
    }

    #[test]
    fn a_flood_is_bounded_by_the_capacity_oldest_out_first() {
        let now = Instant::now();
        let mut dedup = Dedup::new(100, EXCHANGE_LIFETIME);
        for id in 0..10_000u16 {
            dedup.begin(key(id % 50, id), now);
            dedup.answer(&key(id % 50, id), Some(Bytes::from_static(b"0123456789")));
            assert!(dedup.len() <= 100);
            assert_eq!(dedup.order.len(), dedup.len());
        }
        assert_eq!(dedup.len(), 100);
        assert_eq!(dedup.lookup(&key(0, 0), now), None, "the oldest went first");
        assert!(dedup.lookup(&key(9_999 % 50, 9_999), now).is_some());
        assert!(dedup.lookup(&key(9_900 % 50, 9_900), now).is_some());
        assert_eq!(dedup.lookup(&key(9_899 % 50, 9_899), now), None);
    }

    #[test]
    fn an_answer_after_eviction_is_dropped_and_begin_twice_keeps_one_entry() {
        let now = Instant::now();
        let mut dedup = Dedup::new(1, EXCHANGE_LIFETIME);
        dedup.begin(key(1, 1), now);
        dedup.begin(key(1, 2), now);
        dedup.answer(&key(1, 1), Some(Bytes::from_static(b"late")));
        assert_eq!(dedup.lookup(&key(1, 1), now), None);
        assert_eq!(dedup.len(), 1);
        dedup.begin(key(1, 2), now);
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.order.len(), 1);
    }
}
