//! A wake-up with one waiter: set from any thread, taken by the task of the connection that
//! holds the session. Its two uses are a session's "a delivery arrived" and a holder's "you are
//! asked to close".
//!
//! What tokio's `Notify` does for one waiter (a notification with nobody waiting is kept until
//! taken), in the same 32 bytes but with a future that is one reference: every idle connection holds
//! two of these, and its task keeps the futures that wait on them. And unlike `Notify` it can
//! be pointed at any [`Waker`] without a future: while its connection sleeps in the
//! [`Parker`](crate::parker::Parker), a signal wakes the parker instead of a task.

use std::future::{poll_fn, Future};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

pub struct Signal {
    state: Mutex<State>,
}

struct State {
    /// Set by [`Signal::notify`], cleared when the waiter takes it.
    notified: bool,
    /// Whom a notification wakes: the waiting task, or the parker's alarm.
    waker: Option<Waker>,
}

impl Default for Signal {
    fn default() -> Signal {
        Signal::new()
    }
}

impl Signal {
    pub const fn new() -> Signal {
        Signal {
            state: Mutex::new(State {
                notified: false,
                waker: None,
            }),
        }
    }

    /// Sets the signal and wakes its waiter, if any; kept until taken if nobody waits.
    pub fn notify(&self) {
        let waker = {
            let mut state = self.state.lock();
            state.notified = true;
            state.waker.take()
        };
        // Woken outside the lock: the waker may be the parker's, which takes locks of its own.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes the notification if it is set; otherwise registers `cx`'s waker for the next one.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.notified {
            state.notified = false;
            return Poll::Ready(());
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
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
        let mut state = self.state.lock();
        if state.notified {
            drop(state);
            waker.wake_by_ref();
        } else {
            state.waker = Some(waker.clone());
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
    fn is_small() {
        assert!(std::mem::size_of::<Signal>() <= 32);
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
