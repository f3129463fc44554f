//! Replay protection for cluster datagrams, the same on both ports.
//!
//! Each sender numbers its datagrams per boot with a [`SequenceClock`]: strictly increasing, and
//! never behind the microseconds since the process started, so that sequence numbers advance at
//! least as fast as time. The receiver keeps, per sender, a [`ReplayWindow`]: the [`WINDOW`]
//! largest numbers it accepted (a repeat of one of them, or anything older than all of them, is
//! refused), and when it accepted the newest.
//!
//! Someone who holds the cluster key can sign any number, 2^64 − 1 included. A window that
//! jumped there would refuse every later genuine datagram from that sender, for good (its boot
//! never changes). Two rules keep one datagram from doing harm, and many from doing lasting
//! harm:
//!
//! - A number may be ahead of the newest by at most the time since the newest was accepted (plus
//!   1 %, for clocks that run at slightly different rates) plus [`AHEAD_SLACK_US`]: a genuine
//!   sender cannot be further ahead, since its numbers follow its clock. So a forged number can
//!   hold back a sender's genuine datagrams for about [`AHEAD_SLACK_US`] at most, and only once
//!   [`WINDOW`] forged numbers fill the window; a single one costs one slot and nothing else.
//! - A window refusing every number as too far ahead for [`REANCHOR_AFTER_US`] takes the next
//!   one anyway: the receiver's clock may have stopped (a suspended host) while the sender's ran.
//!
//! The window is a pure function of its inputs (the caller passes the time), for tests and
//! fuzzing.

use std::time::Instant;

/// How many of the largest accepted sequence numbers are remembered: a datagram overtaken by up
/// to this many later ones is still accepted.
pub const WINDOW: usize = 128;

/// How far ahead of what time allows a sequence number may be: network delay, a burst of more
/// than one datagram per microsecond, scheduling.
pub const AHEAD_SLACK_US: u64 = 1_000_000;

/// After this long of refusing every number from a sender as too far ahead, the next one is
/// accepted (see the module documentation).
pub const REANCHOR_AFTER_US: u64 = 10_000_000;

/// Numbers the datagrams of one boot: strictly increasing, at least the microseconds since
/// `start` (plus one, so never 0).
#[derive(Debug)]
pub struct SequenceClock {
    start: Instant,
    last: u64,
}

impl SequenceClock {
    pub fn new(start: Instant) -> SequenceClock {
        SequenceClock { start, last: 0 }
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.last = (self.last + 1).max(elapsed + 1);
        self.last
    }
}

/// Microseconds on the receiver's monotonic clock since `start`, for [`ReplayWindow::accept`].
pub fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Sequence numbers seen from one origin's boot.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    boot_ms: u64,
    /// The largest accepted numbers, ascending; at most [`WINDOW`].
    recent: Vec<u64>,
    /// Nothing below the first number accepted from this boot is accepted (what came before
    /// the window existed cannot be told from a replay).
    floor: u64,
    /// The receiver's time when the newest number was accepted.
    newest_at_us: u64,
    /// Since when every number has been refused as too far ahead; 0 = not so.
    ahead_since_us: u64,
}

impl ReplayWindow {
    /// Whether `seq` of boot `boot_ms`, received at `now_us` (the receiver's monotonic clock, in
    /// microseconds), is new; records it if so.
    pub fn accept(&mut self, boot_ms: u64, seq: u64, now_us: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if boot_ms != self.boot_ms || self.recent.is_empty() {
            // The first number of a boot (the caller checked that the boot is the member's
            // current one): nothing to compare it with.
            let mut recent = Vec::with_capacity(WINDOW);
            recent.push(seq);
            *self = ReplayWindow {
                boot_ms,
                recent,
                floor: seq,
                newest_at_us: now_us,
                ahead_since_us: 0,
            };
            return true;
        }
        if seq < self.floor {
            return false;
        }
        let newest = self.recent.last().copied().unwrap_or(0);
        if seq > newest {
            if seq - newest > self.allowed_ahead(now_us) && !self.reanchor(now_us) {
                return false;
            }
            self.ahead_since_us = 0;
            self.newest_at_us = now_us;
            self.recent.push(seq);
        } else {
            match self.recent.binary_search(&seq) {
                Ok(_) => return false,
                // Older than every remembered number of a full window: too old to tell.
                Err(0) if self.recent.len() == WINDOW => return false,
                Err(at) => self.recent.insert(at, seq),
            }
        }
        if self.recent.len() > WINDOW {
            self.recent.remove(0);
        }
        true
    }

    /// How far ahead of the newest a number may be at `now_us`.
    fn allowed_ahead(&self, now_us: u64) -> u64 {
        let elapsed = now_us.saturating_sub(self.newest_at_us);
        elapsed
            .saturating_add(elapsed / 100)
            .saturating_add(AHEAD_SLACK_US)
    }

    /// Notes a number refused as too far ahead; true when that has lasted long enough to take
    /// it anyway.
    fn reanchor(&mut self, now_us: u64) -> bool {
        if self.ahead_since_us == 0 {
            self.ahead_since_us = now_us.max(1);
            return false;
        }
        now_us.saturating_sub(self.ahead_since_us) >= REANCHOR_AFTER_US
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_accepts_reordering_and_refuses_repeats() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(1, 5, 0));
        assert!(window.accept(1, 7, 0));
        assert!(window.accept(1, 6, 0), "late but unseen");
        assert!(!window.accept(1, 6, 0));
        assert!(!window.accept(1, 5, 0));
        assert!(!window.accept(1, 4, 0), "before the first one accepted");
        assert!(!window.accept(1, 0, 0));
        // Fill the window: the oldest remembered numbers fall out and are refused for good.
        for seq in 8..8 + WINDOW as u64 {
            assert!(window.accept(1, seq, 0));
        }
        assert!(!window.accept(1, 7, 0), "too old to tell: refused");
        assert!(!window.accept(1, 8, 0), "a repeat");
        // A new boot starts over.
        assert!(window.accept(2, 1, 0));
        assert!(!window.accept(2, 1, 0));
    }

    #[test]
    fn a_forged_number_far_ahead_is_refused_and_does_not_silence_the_sender() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(1, 1_000, 0));
        assert!(!window.accept(1, u64::MAX, 10), "2^64 - 1 is not plausible");
        // The sender's next numbers still pass.
        assert!(window.accept(1, 1_001, 20));
        assert!(window.accept(1, 2_000, 1_000));
        // What time allows, plus the slack, is accepted; one microsecond more is not.
        let at = 1_000_000;
        let limit = 2_000 + (at - 1_000) + (at - 1_000) / 100 + AHEAD_SLACK_US;
        assert!(!window.accept(1, limit + 1, at));
        assert!(window.accept(1, limit, at));
    }

    #[test]
    fn forged_numbers_within_the_bound_hold_a_sender_back_for_the_slack_at_most() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(1, 1, 0));
        // A key holder fills the whole window as far ahead as it may, at once.
        let mut forged = 1;
        for _ in 0..WINDOW {
            forged += AHEAD_SLACK_US;
            assert!(window.accept(1, forged, 0));
        }
        // The genuine sender, whose numbers follow time: refused for about the slack, then
        // heard again however many numbers were forged.
        let genuine = |t: u64| t + 2;
        assert!(!window.accept(1, genuine(AHEAD_SLACK_US / 2), AHEAD_SLACK_US / 2));
        let mut t = AHEAD_SLACK_US + 10;
        for _ in 0..1_000 {
            assert!(window.accept(1, genuine(t), t), "genuine {t} refused");
            t += 1_000;
        }
    }

    #[test]
    fn a_sender_stuck_too_far_ahead_is_taken_back_after_a_while() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(1, 1, 0));
        // The receiver's clock stood still for an hour while the sender's ran on.
        let hour = 3_600_000_000u64;
        let mut t = 10;
        let mut taken = None;
        for i in 0..200u64 {
            if window.accept(1, hour + t, t) {
                taken = Some(i);
                break;
            }
            t += 100_000;
        }
        let taken = taken.expect("taken back");
        assert!(
            taken * 100_000 >= REANCHOR_AFTER_US,
            "not before {REANCHOR_AFTER_US} us"
        );
        assert!(
            window.accept(1, hour + t + 5, t + 5),
            "and followed from there"
        );
    }

    #[test]
    fn the_sequence_clock_is_strictly_increasing_and_follows_time() {
        let start = Instant::now() - std::time::Duration::from_secs(2);
        let mut clock = SequenceClock::new(start);
        let first = clock.next_seq();
        assert!(first >= 2_000_000, "{first}");
        let mut last = first;
        for _ in 0..10_000 {
            let next = clock.next_seq();
            assert!(next > last);
            last = next;
        }
    }
}
