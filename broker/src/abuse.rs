//! Abuse limits: Coolpy7's minimum intervals between a client's PINGREQs (`-pl`) and PUBLISHes
//! (`-psl`) with a ban for violators (`-dt`), a connection-rate limit per listener (`-cr`) and a
//! publish-rate limit per client (`-prm` messages, `-prb` bytes per second).
//!
//! The intervals are hard limits: a client that goes faster is closed and, with `-dt`, its client
//! id is refused for that long ([`Bans`]). The rates are soft: a client over its publish rate is
//! not read from until it is back within it ([`ClientLimits::publish`] says until when), so TCP
//! slows it down and nothing it sent is dropped; a listener over its connection rate closes new
//! sockets at once, before any handshake work ([`TokenBucket`] in the accept loop).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::AbuseLimits;

/// A rate with a burst of one second's worth: `take` spends, time refills.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u64, now: Instant) -> TokenBucket {
        let per_second = per_second.max(1) as f64;
        TokenBucket {
            per_second,
            tokens: per_second,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Spends `amount`, going into debt if need be; returns how long until the debt is paid
    /// (zero when there was enough).
    pub fn spend(&mut self, amount: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= amount as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// A client went faster than `-pl` or `-psl` allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Ping,
    Publish,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Violation::Ping => "PINGREQ sooner than -pl allows",
            Violation::Publish => "PUBLISH sooner than -psl allows",
        })
    }
}

/// One client's limits and where it stands against them.
#[derive(Debug)]
pub struct ClientLimits {
    ping_interval: Option<Duration>,
    publish_interval: Option<Duration>,
    last_ping: Option<Instant>,
    last_publish: Option<Instant>,
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Reading from the client waits until then (publish rate).
    pub paused_until: Option<Instant>,
    /// Packets were left in the read buffer when a pause began: they go first when it ends.
    pub input_held: bool,
}

impl ClientLimits {
    /// The limits `limits` put on one client; `None` when there are none.
    pub fn new(limits: &AbuseLimits, now: Instant) -> Option<ClientLimits> {
        let any = limits.ping_interval.is_some()
            || limits.publish_interval.is_some()
            || limits.publish_rate_limited();
        any.then(|| ClientLimits {
            ping_interval: limits.ping_interval,
            publish_interval: limits.publish_interval,
            last_ping: None,
            last_publish: None,
            messages: limits
                .publish_messages
                .map(|rate| TokenBucket::new(u64::from(rate), now)),
            bytes: limits.publish_bytes.map(|rate| TokenBucket::new(rate, now)),
            paused_until: None,
            input_held: false,
        })
    }

    /// A PINGREQ arrived at `now`.
    pub fn ping(&mut self, now: Instant) -> Result<(), Violation> {
        check_interval(&mut self.last_ping, self.ping_interval, now).map_err(|()| Violation::Ping)
    }

    /// A PUBLISH of `payload` bytes arrived at `now`. Within the rate, or paused until the
    /// client is back within it (see [`ClientLimits::paused_until`]).
    pub fn publish(&mut self, payload: usize, now: Instant) -> Result<(), Violation> {
        check_interval(&mut self.last_publish, self.publish_interval, now)
            .map_err(|()| Violation::Publish)?;
        let mut wait = Duration::ZERO;
        if let Some(messages) = &mut self.messages {
            wait = wait.max(messages.spend(1, now));
        }
        if let Some(bytes) = &mut self.bytes {
            wait = wait.max(bytes.spend(payload as u64, now));
        }
        if !wait.is_zero() {
            self.paused_until = Some(now + wait);
        }
        Ok(())
    }

    /// Whether reading is paused at `now`; clears a pause that has run out.
    pub fn is_paused(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.paused_until = None;
                false
            }
            None => false,
        }
    }
}

fn check_interval(
    last: &mut Option<Instant>,
    minimum: Option<Duration>,
    now: Instant,
) -> Result<(), ()> {
    let Some(minimum) = minimum else {
        return Ok(());
    };
    let too_soon = last.is_some_and(|last| now.saturating_duration_since(last) < minimum);
    *last = Some(now);
    if too_soon {
        Err(())
    } else {
        Ok(())
    }
}

/// The most client ids banned at once: a flood of violators with fresh ids cannot grow the map
/// without bound (the oldest bans go first when it is full).
const MAX_BANS: usize = 100_000;

/// Clients refused until a moment (`-dt`), by client id and username together: with access
/// control on, the username is the one the client proved, so nobody can get another user
/// banned by borrowing a client id.
pub struct Bans {
    duration: Option<Duration>,
    until: Mutex<HashMap<Box<str>, Instant>>,
}

impl Bans {
    pub fn new(duration: Option<Duration>) -> Bans {
        Bans {
            duration,
            until: Mutex::new(HashMap::new()),
        }
    }

    fn key(client_id: &str, username: Option<&str>) -> Box<str> {
        // NUL cannot occur in either (MQTT strings exclude it).
        format!("{client_id}\0{}", username.unwrap_or_default()).into()
    }

    /// Bans `client_id` with `username` for `-dt` from `now` (nothing without `-dt`).
    pub fn ban(&self, client_id: &str, username: Option<&str>, now: Instant) {
        let Some(duration) = self.duration else {
            return;
        };
        let mut until = self.until.lock();
        if until.len() >= MAX_BANS {
            until.retain(|_, &mut end| end > now);
            if until.len() >= MAX_BANS {
                let oldest = until
                    .iter()
                    .min_by_key(|(_, &end)| end)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    until.remove(&oldest);
                }
            }
        }
        until.insert(Self::key(client_id, username), now + duration);
    }

    /// Whether `client_id` with `username` is banned at `now`.
    pub fn is_banned(&self, client_id: &str, username: Option<&str>, now: Instant) -> bool {
        if self.duration.is_none() {
            return false;
        }
        let key = Self::key(client_id, username);
        let mut until = self.until.lock();
        match until.get(&key) {
            Some(&end) if end > now => true,
            Some(_) => {
                until.remove(&key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AbuseLimits {
        AbuseLimits::default()
    }

    #[test]
    fn no_limits_no_state() {
        assert!(ClientLimits::new(&limits(), Instant::now()).is_none());
    }

    #[test]
    fn intervals_are_minimums_between_two_packets() {
        let now = Instant::now();
        let mut client = ClientLimits::new(
            &AbuseLimits {
                ping_interval: Some(Duration::from_secs(10)),
                publish_interval: Some(Duration::from_millis(100)),
                ..limits()
            },
            now,
        )
        .expect("limits");
        assert_eq!(client.ping(now), Ok(()));
        assert_eq!(client.ping(now + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            client.ping(now + Duration::from_secs(15)),
            Err(Violation::Ping)
        );
        assert_eq!(client.publish(1, now), Ok(()));
        assert_eq!(client.publish(1, now + Duration::from_millis(100)), Ok(()));
        assert_eq!(
            client.publish(1, now + Duration::from_millis(150)),
            Err(Violation::Publish)
        );
    }

    #[test]
    fn a_client_over_its_rate_is_paused_until_it_is_back_within_it() {
        let now = Instant::now();
        let mut client = ClientLimits::new(
            &AbuseLimits {
                publish_messages: Some(10),
                publish_bytes: Some(1000),
                ..limits()
            },
            now,
        )
        .expect("limits");
        // A second's worth goes at once.
        for _ in 0..10 {
            assert_eq!(client.publish(10, now), Ok(()));
        }
        assert!(!client.is_paused(now));
        // The eleventh message is a tenth of a second early.
        assert_eq!(client.publish(10, now), Ok(()));
        assert!(client.is_paused(now));
        assert!(client.is_paused(now + Duration::from_millis(90)));
        assert!(!client.is_paused(now + Duration::from_millis(101)));
        // Bytes count too: 2,000 bytes against a full 1,000 B/s bucket pause 1 s.
        let later = now + Duration::from_secs(5);
        assert_eq!(client.publish(2000, later), Ok(()));
        assert!(client.is_paused(later + Duration::from_millis(999)));
        assert!(!client.is_paused(later + Duration::from_millis(1001)));
    }

    #[test]
    fn a_bucket_refills_up_to_one_seconds_worth() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(2, now);
        assert!(bucket.try_take(now));
        assert!(bucket.try_take(now));
        assert!(!bucket.try_take(now));
        assert!(bucket.try_take(now + Duration::from_millis(500)));
        let much_later = now + Duration::from_secs(100);
        assert!(bucket.try_take(much_later));
        assert!(bucket.try_take(much_later));
        assert!(!bucket.try_take(much_later));
    }

    #[test]
    fn bans_last_for_their_duration_and_only_with_one() {
        let now = Instant::now();
        let bans = Bans::new(Some(Duration::from_secs(5)));
        bans.ban("a", Some("u"), now);
        assert!(bans.is_banned("a", Some("u"), now + Duration::from_secs(4)));
        assert!(!bans.is_banned("a", Some("v"), now));
        assert!(!bans.is_banned("a", None, now));
        assert!(!bans.is_banned("b", Some("u"), now));
        assert!(!bans.is_banned("a", Some("u"), now + Duration::from_secs(5)));
        let off = Bans::new(None);
        off.ban("a", None, now);
        assert!(!off.is_banned("a", None, now));
    }
}
