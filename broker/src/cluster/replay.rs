//! Replay protection for cluster datagrams: each sender numbers its datagrams per boot, and the
//! receiver remembers, per sender, the newest number and which of the [`WINDOW`] before it it
//! has seen (the sliding window of IPsec and DTLS). A repeat, or a number too old to tell, is
//! refused.

/// How many sequence numbers behind the newest are remembered.
pub const WINDOW: u64 = 128;

/// Sequence numbers seen from one origin's boot: the newest, and a bitmap of the [`WINDOW`]
/// before it.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    boot_ms: u64,
    newest: u64,
    seen: u128,
}

impl ReplayWindow {
    /// Whether `seq` of boot `boot_ms` is new; records it if so.
    pub fn accept(&mut self, boot_ms: u64, seq: u64) -> bool {
        if boot_ms != self.boot_ms {
            // A new boot starts its sequence again (the caller checked that the boot is the
            // member's current one).
            *self = ReplayWindow {
                boot_ms,
                newest: 0,
                seen: 0,
            };
        }
        if seq == 0 {
            return false;
        }
        if seq > self.newest {
            let shift = seq - self.newest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.newest = seq;
            return true;
        }
        let behind = self.newest - seq;
        if behind >= WINDOW {
            return false;
        }
        let bit = 1u128 << behind;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_repeats() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(1, 5));
        assert!(window.accept(1, 3), "late but unseen");
        assert!(!window.accept(1, 3));
        assert!(!window.accept(1, 5));
        assert!(window.accept(1, 5 + WINDOW));
        assert!(!window.accept(1, 5), "too old to tell: refused");
        assert!(window.accept(1, 6));
        assert!(!window.accept(1, 0));
        // A new boot starts over.
        assert!(window.accept(2, 1));
        assert!(!window.accept(2, 1));
    }
}
