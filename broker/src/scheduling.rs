//! How the kernel schedules the broker's threads (`-tsp`). The policy is set on the main
//! thread before the runtime starts; every thread created afterwards (tokio's workers, the
//! cluster's sync sender and receiver) inherits it.
//!
//! `batch`, the default, is Linux's `SCHED_BATCH`: a thread that wakes up runs at once on an
//! idle CPU, but does not preempt the thread running on a busy one; it waits for that one to
//! sleep or use up its time slice. A broker under load wakes its own threads all the time (a
//! worker for the subscriber a message was queued for, a cluster receiver for a datagram), and
//! on busy CPUs each wake-up used to switch threads there and then, a few messages at a time.
//! Two cluster nodes and their load generator sharing two cores: cross-node QoS 1 went from
//! 0.77 (fan-in) and 0.59 (p2p) of one node's rate to 0.86 and 0.76 (README, Performance).
//! The price is tail latency on a saturated CPU: a woken thread may wait up to a time slice
//! (a few milliseconds) where it would have run at once. `normal` leaves the threads as they
//! were started (`SCHED_OTHER`, or whatever `chrt` gave the process; `batch` replaces even a
//! real-time policy).

use std::str::FromStr;

/// The scheduling policy of the broker's threads (`-tsp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ThreadScheduling {
    /// `SCHED_BATCH` on Linux: throughput first.
    #[default]
    Batch,
    /// As the process was started.
    Normal,
}

impl FromStr for ThreadScheduling {
    type Err = String;

    fn from_str(value: &str) -> Result<ThreadScheduling, String> {
        match value.to_ascii_lowercase().as_str() {
            "batch" => Ok(ThreadScheduling::Batch),
            "normal" => Ok(ThreadScheduling::Normal),
            _ => Err("expected batch or normal".to_string()),
        }
    }
}

impl ThreadScheduling {
    /// Gives the calling thread (and the threads it creates from now on) this policy; an
    /// error when the system refuses it (a sandbox that filters the call). Lowering a thread
    /// to `SCHED_BATCH` takes no privilege. Nothing is done on other systems than Linux.
    pub fn apply(self) -> std::io::Result<()> {
        match self {
            ThreadScheduling::Normal => Ok(()),
            ThreadScheduling::Batch => set_batch(),
        }
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> std::io::Result<()> {
    // The kernel's `struct sched_param` is one int, the priority (0 for SCHED_BATCH); libc's
    // struct has more fields on musl. The system call rather than libc's wrapper, which musl
    // implements as ENOSYS.
    let (calling_thread, priority): (libc::pid_t, libc::c_int) = (0, 0);
    // SAFETY: `priority` is a valid sched_param for the kernel and outlives the call; pid 0
    // is the calling thread.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            calling_thread,
            libc::SCHED_BATCH,
            &priority as *const libc::c_int,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere there is no such policy: the flag has no effect.
#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_policy_in_any_case() {
        assert_eq!("batch".parse(), Ok(ThreadScheduling::Batch));
        assert_eq!("Normal".parse(), Ok(ThreadScheduling::Normal));
        for bad in ["", "fifo", "idle", "1"] {
            assert!(bad.parse::<ThreadScheduling>().is_err(), "{bad:?}");
        }
    }

    #[cfg(target_os = "linux")]
    fn current_policy() -> i32 {
        // SAFETY: pid 0 is the calling thread; nothing is passed by pointer.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// On a thread of its own, so the test runner's threads keep their policy.
    #[cfg(target_os = "linux")]
    #[test]
    fn batch_is_applied_to_the_calling_thread_and_inherited() {
        let policies = std::thread::spawn(|| {
            ThreadScheduling::Batch.apply().expect("SCHED_BATCH");
            let child = std::thread::spawn(current_policy)
                .join()
                .expect("child thread");
            (current_policy(), child)
        })
        .join()
        .expect("test thread");
        assert_eq!(policies, (libc::SCHED_BATCH, libc::SCHED_BATCH));
    }
}
