//! The replay window of both cluster ports against a model of what any sound window must do,
//! not of today's exact rules (its window size, how it treats far jumps or old numbers):
//!
//! it never accepts a (boot, seq) it has accepted before, whatever the numbers, their order and
//! the receiver's clock (which the input moves forward). Which fresh numbers a window takes
//! depends on its rules against forged jumps (numbers follow the sender's clock), so that is
//! left to the unit and end-to-end tests.
//!
//! The input is a list of operations. Boots only move forward, as the callers guarantee (a
//! sync peer's boot is its member's current one, the newer boot wins; gossip keeps one window
//! per boot).

#![no_main]

use std::collections::HashSet;

use coolpy7::cluster::replay::{ReceivedAt, ReplayWindow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut window = ReplayWindow::default();
    let mut model = Model::default();
    let mut ops = data;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        if op % 6 == 5 {
            // Time passes on the receiver's clock: up to about 4 s per step.
            let Some((&step, rest)) = ops.split_first() else {
                break;
            };
            ops = rest;
            model.now_us += u64::from(step) * 16_000 + u64::from(op);
            continue;
        }
        let seq = match op % 6 {
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
            // The next one after the newest.
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
    /// The receiver's clock, in microseconds; only moves forward.
    now_us: u64,
}

impl Model {
    fn new_boot(&mut self, step: u64) {
        let Some(boot) = self.boot.checked_add(step) else {
            return;
        };
        *self = Model {
            boot,
            now_us: self.now_us,
            ..Model::default()
        };
    }

    fn check(&mut self, window: &mut ReplayWindow, seq: u64) {
        // The sender booted at wall-clock `boot` ms, when the receiver's clock read 0.
        let at = ReceivedAt {
            now_us: self.now_us,
            wall_ms: self.boot.saturating_add(self.now_us / 1_000),
        };
        if window.accept(self.boot, seq, at) {
            assert!(
                self.accepted.insert(seq),
                "boot {} seq {seq} accepted twice",
                self.boot
            );
            self.newest = self.newest.max(seq);
        }
    }
}
