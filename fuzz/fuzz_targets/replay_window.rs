//! The replay window of both cluster ports against a model of what any sound window must do,
//! not of today's exact rules (its window size, how it treats far jumps or old numbers):
//!
//! - it never accepts a (boot, seq) it has accepted before;
//! - it always accepts the sequence number right after the newest it has accepted for the
//!   current boot (1 for a boot it has accepted nothing from), which is what a sender that
//!   numbers its datagrams 1, 2, 3, ... sends next.
//!
//! The input is a list of operations. Boots only move forward, as the callers guarantee (a
//! sync peer's boot is its member's current one, the newer boot wins; gossip keeps one window
//! per boot).

#![no_main]

use std::collections::HashSet;

use coolpy7::cluster::replay::ReplayWindow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut window = ReplayWindow::default();
    let mut model = Model::default();
    let mut ops = data;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let seq = match op % 5 {
            // Close to the newest: reordering, repeats, the next one.
            0 => {
                let Some((&delta, rest)) = ops.split_first() else {
                    break;
                };
                ops = rest;
                model.newest.wrapping_add_signed(i64::from(delta as i8))
            }
            // Anywhere, far jumps (a forged 2^64 - 1) included.
            1 => {
                let Some((bytes, rest)) = ops.split_first_chunk::<8>() else {
                    break;
                };
                ops = rest;
                u64::from_be_bytes(*bytes)
            }
            // The next one after the newest: must be accepted.
            2 => model.newest.wrapping_add(1),
            // A new boot of the sender, which starts counting again.
            3 => {
                let Some((&step, rest)) = ops.split_first() else {
                    break;
                };
                ops = rest;
                model.new_boot(u64::from(step) + 1);
                1 + u64::from(op / 5)
            }
            // Something just behind the newest, maybe beyond any window.
            _ => model.newest.saturating_sub(u64::from(op / 5) * 4),
        };
        model.check(&mut window, seq);
    }
});

#[derive(Default)]
struct Model {
    boot: u64,
    /// The newest sequence number accepted for `boot`; 0 before the first.
    newest: u64,
    /// Everything accepted for `boot`.
    accepted: HashSet<u64>,
}

impl Model {
    fn new_boot(&mut self, step: u64) {
        let Some(boot) = self.boot.checked_add(step) else {
            return;
        };
        *self = Model {
            boot,
            ..Model::default()
        };
    }

    fn check(&mut self, window: &mut ReplayWindow, seq: u64) {
        let is_next = self.newest != u64::MAX && seq == self.newest + 1;
        let accepted = window.accept(self.boot, seq);
        if accepted {
            assert!(
                self.accepted.insert(seq),
                "boot {} seq {seq} accepted twice",
                self.boot
            );
            self.newest = self.newest.max(seq);
        } else {
            assert!(
                !is_next,
                "boot {} seq {seq}, the next after the newest, was refused",
                self.boot
            );
        }
    }
}
