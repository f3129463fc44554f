//! A wake-up with one waiter: set from any thread, taken by the task of the connection that
//! holds the session. Its two uses are a session's "a delivery arrived" and a holder's "you are
//! asked to close".
//!
//! What tokio's `Notify` does for one waiter (a notification with nobody waiting is kept until
//! taken), in 24 bytes rather than 32 and with a future that is one reference: every idle connection holds
//! two of these, and its task keeps the futures that wait on them. And unlike `Notify` it can
//! be pointed at any [`Waker`] without a future: while its connection sleeps in the
//! [`Parker`](crate::parker::Parker), a signal wakes the parker instead of a task.

use std::future::{poll_fn, Future};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// The waker slot says everything: empty, a waiter's waker, or [`NOTIFIED`]. One slot rather
/// than a slot and a flag keeps a signal at 24 bytes, which keeps a mailbox in the allocator's
/// 160-byte class.
pub struct Signal {
    slot: Mutex<Option<Waker>>,
}

/// What the slot holds once notified: a waker that does nothing, told apart by its data
/// pointer (inside its own allocation, which lives for ever, so no other waker has it).
static NOTIFIED: LazyLock<Waker> = LazyLock::new(|| Waker::from(Arc::new(Nobody(0))));

/// Not zero-sized: a zero-sized value's pointer could be the address just past its allocation,
/// where another waker's data may begin.
struct Nobody(#[allow(dead_code)] u64);

impl Wake for Nobody {
    fn wake(self: Arc<Self>) {}
}

fn is_notified(slot: &Option<Waker>) -> bool {
    slot.as_ref()
        .is_some_and(|waker| std::ptr::eq(waker.data(), NOTIFIED.data()))
}

impl Default for Signal {
    fn default() -> Signal {
        Signal::new()
    }
}

impl Signal {
    pub const fn new() -> Signal {
        Signal {
            slot: Mutex::new(None),
        }
    }

    /// Sets the signal and wakes its waiter, if any; kept until taken if nobody waits.
    pub fn notify(&self) {
        let waiter = self.slot.lock().replace(NOTIFIED.clone());
        // Woken outside the lock: the waker may be the parker's, which takes locks of its own.
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// Takes the notification if it is set; otherwise registers `cx`'s waker for the next one.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.slot.lock();
        if is_notified(&slot) {
            *slot = None;
            return Poll::Ready(());
        }
        match &*slot {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Completes once the signal is set (at once if it already is), and clears it.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| self.poll_notified(cx))
    }

    /// Hands the next notification's wake-up to `waker` instead of the waiting task, and wakes
    /// it at once if the signal is already set. The notification itself is left for the task
    /// that waits next, whoever the waker is.
    pub fn watch(&self, waker: &Waker) {
        let mut slot = self.slot.lock();
        if is_notified(&slot) {
            drop(slot);
            waker.wake_by_ref();
        } else {
            *slot = Some(waker.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn is_smaller_than_a_notify() {
        assert_eq!(std::mem::size_of::<Signal>(), 24);
        assert!(std::mem::size_of::<Signal>() < std::mem::size_of::<tokio::sync::Notify>());
    }

    #[tokio::test]
    async fn a_notification_without_a_waiter_is_kept_until_taken_once() {
        let signal = Signal::new();
        signal.notify();
        signal.notify();
        tokio::time::timeout(Duration::from_secs(5), signal.notified())
            .await
            .expect("kept");
        let again = tokio::time::timeout(Duration::from_millis(50), signal.notified()).await;
        assert!(again.is_err(), "two notifications before a wait are one");
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let signal = Arc::new(Signal::new());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.notified().await }
        });
        tokio::task::yield_now().await;
        signal.notify();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }

    #[tokio::test]
    async fn a_watcher_is_woken_and_the_notification_left_for_the_next_waiter() {
        let signal = Signal::new();
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        signal.watch(&waker);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        signal.notify();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // Set already: a new watcher is woken at once.
        signal.watch(&waker);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        tokio::time::timeout(Duration::from_secs(5), signal.notified())
            .await
            .expect("the notification is still there for the task");
    }
}
