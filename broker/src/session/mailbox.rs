//! A session's mailbox: the bounded queue the router pushes deliveries into from any
//! publisher's task, and the connection holding the session drains within its in-flight
//! window. It also carries the flow control between a publisher and a subscriber that keeps up
//! but not fast enough (see [`Mailbox`]). A producer that queues a batch at a time (the
//! cluster receiver) wakes each consumer once per batch ([`Wakes`]) rather than per delivery.
//! A persistent session's mailbox, with a data directory, numbers each QoS 1/2 delivery it
//! queues and writes it to the session's [`Journal`] under its lock (so that no consumer can
//! acknowledge it before it is written), and removes those it drops.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::signal::Signal;
use super::SessionId;
use crate::codec::QoS;
use crate::metrics::{DropReason, Metrics};
use crate::router::Delivery;
use crate::store::Journal;

/// The bounded queue of deliveries for one session.
///
/// Flow control: past half its capacity a mailbox whose consumer is keeping up (it took
/// something within [`ACTIVE_CONSUMER`]) reports [`Pushed::Congested`], and the publisher that
/// filled it stops reading until it [drains](Mailbox::drained) to a quarter. A consumer that has
/// stopped taking gets no such courtesy: its queue is capped and drops its oldest, so a stalled
/// subscriber never slows the others.
pub struct Mailbox {
    id: SessionId,
    client_id: Arc<str>,
    queue: Mutex<Queue>,
    ready: Signal,
    drained: Notify,
    /// When the consumer last took a delivery, or was given one with nothing else waiting (an
    /// idle consumer is not a stalled one: it is judged from when it has work), in
    /// milliseconds of [`clock_ms`].
    /// Wrapping (every 49 days): compared by difference, and a wrong answer once that often
    /// costs a publisher one wait. Four bytes, beside `taken` and `capacity`: a persistent
    /// session's journal fits in the 160-byte class with them.
    last_take_ms: AtomicU32,
    /// Deliveries the consumer has taken, wrapping: its progress while a publisher waits,
    /// whatever other publishers add meanwhile.
    taken: AtomicU32,
    online: AtomicBool,
    /// Set once the session is discarded: nothing is queued any more. Written under `queue`'s
    /// lock, so that no push can slip in after the queue was cleared.
    closed: AtomicBool,
    capacity: u32,
}

/// The deliveries behind the mailbox's lock, and the journal they are written to.
#[derive(Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    /// Boxed: most sessions have none.
    journal: Option<Box<Numbering>>,
}

/// A persistent session's journal, and the number its next delivery takes.
struct Numbering {
    journal: Arc<Journal>,
    next: NonZeroU32,
}

impl Numbering {
    fn take(&mut self) -> NonZeroU32 {
        let seq = self.next;
        // After u32::MAX comes 1: see `store::keys::journal_order`.
        self.next = NonZeroU32::new(seq.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
        seq
    }
}

/// `last_take_ms` of a mailbox whose consumer has not taken anything yet.
const NEVER: u32 = u32::MAX;

/// A consumer that took something this recently is keeping up, only not fast enough.
const ACTIVE_CONSUMER: Duration = Duration::from_millis(100);

/// Milliseconds since the process started: a cheap timestamp to keep in an atomic.
fn clock_ms() -> u32 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Wrapping on purpose (see `last_take_ms`); never NEVER.
    let ms = START.get_or_init(Instant::now).elapsed().as_millis() as u32;
    ms.min(NEVER - 1)
}

/// How a congested mailbox fared while a publisher waited for it ([`Mailbox::drained`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Down to a quarter of its capacity, or its consumer stopped taking (it is capped and
    /// drops its oldest from now on, without slowing anyone).
    Drained,
    /// Still above, but its consumer took a good part of it: worth waiting again.
    Progressing,
    /// Still above, and its consumer took little of it or the queue did not get shorter:
    /// slower than what else fills it, so waiting longer would stall the publisher for
    /// nothing (and a client reading just often enough to look active could stall every
    /// publisher).
    Stalled,
}

/// What became of a pushed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the queue is past its soft limit while its consumer is active: the publisher
    /// should wait for it to drain.
    Congested,
    Dropped,
}

/// Consumers to wake once a batch of deliveries is queued (see [`Mailbox::push_batched`]).
/// Its holder wakes them when its batch is done, or as soon as [`Wakes::due`] says so, and
/// before it sleeps; dropping it wakes them too, so that no consumer is left asleep with work
/// waiting.
#[derive(Default)]
pub struct Wakes {
    mailboxes: Vec<Arc<Mailbox>>,
    /// Deliveries queued since the last [`Wakes::wake_all`].
    queued: usize,
}

/// Deliveries after which the consumers gathered should run: what a consumer takes in one
/// turn (`PULL_BATCH`), well below a mailbox's soft limit at the default `-mq`.
const WAKE_AFTER: usize = 256;

impl Wakes {
    /// Whether enough was queued that the consumers should run now rather than at the end of
    /// the batch.
    pub fn due(&self) -> bool {
        self.queued >= WAKE_AFTER
    }

    /// Wakes every consumer gathered so far.
    pub fn wake_all(&mut self) {
        self.queued = 0;
        for mailbox in self.mailboxes.drain(..) {
            mailbox.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

impl Mailbox {
    pub(crate) fn new(id: SessionId, client_id: Arc<str>, capacity: usize) -> Mailbox {
        Mailbox {
            id,
            client_id,
            queue: Mutex::new(Queue::default()),
            ready: Signal::new(),
            drained: Notify::new(),
            last_take_ms: AtomicU32::new(NEVER),
            taken: AtomicU32::new(0),
            online: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The client id, shared.
    pub fn client_id_shared(&self) -> Arc<str> {
        self.client_id.clone()
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Whether the session is discarded (its subscriptions may still be on their way out of the
    /// router).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Queues a delivery. A full queue drops its oldest delivery (the newest data is worth more);
    /// QoS 0 is not queued for an offline client.
    pub fn push(&self, delivery: Delivery, metrics: &Metrics) -> Pushed {
        let (pushed, wake, _) = self.queue(delivery, metrics);
        if wake {
            self.wake();
        }
        pushed
    }

    /// Appends what another copy of the session owed (see
    /// [`super::SessionRegistry::adopt`]) in the room the queue has left: the queue's own
    /// messages stay (a full queue makes room for a new message by dropping its oldest, which
    /// here would be its own), and what does not fit is dropped and counted.
    pub fn merge(&self, deliveries: impl IntoIterator<Item = Delivery>, metrics: &Metrics) {
        let mut wake = false;
        for delivery in deliveries {
            wake |= self.queue_into(delivery, metrics, false).1;
        }
        if wake {
            self.wake();
        }
    }

    /// [`Mailbox::push`], leaving the wake-up it calls for in `wakes`: a producer that pushes a
    /// batch wakes each consumer once, when the batch is done, rather than at its first
    /// delivery, when the consumer would run for that one and sleep again. A congested
    /// mailbox wakes its consumer at once: its producer is about to wait for it to drain.
    pub fn push_batched(
        self: &Arc<Self>,
        delivery: Delivery,
        metrics: &Metrics,
        wakes: &mut Wakes,
    ) -> Pushed {
        let (pushed, wake, len) = self.queue(delivery, metrics);
        if pushed != Pushed::Dropped {
            wakes.queued += 1;
        }
        // Nor does one wait for the batch with half its soft limit queued: a small `-mq`
        // would otherwise reach the limit before its consumer ever ran.
        let early = len == (self.soft_limit() / 2).clamp(1, WAKE_AFTER);
        if pushed == Pushed::Congested || early {
            self.wake();
        } else if wake {
            wakes.mailboxes.push(self.clone());
        }
        pushed
    }

    /// Queues a delivery; returns what became of it, whether the consumer is to be woken, and
    /// how many deliveries the queue holds.
    fn queue(&self, delivery: Delivery, metrics: &Metrics) -> (Pushed, bool, usize) {
        self.queue_into(delivery, metrics, true)
    }

    /// [`Mailbox::queue`]; a full queue drops its oldest delivery for this one if
    /// `evict_oldest`, else this one.
    #[inline]
    fn queue_into(
        &self,
        delivery: Delivery,
        metrics: &Metrics,
        evict_oldest: bool,
    ) -> (Pushed, bool, usize) {
        if delivery.qos == QoS::AtMostOnce && !self.is_online() {
            metrics.dropped(DropReason::OfflineQos0).inc();
            return (Pushed::Dropped, false, 0);
        }
        let (was_empty, len) = {
            let mut queue = self.queue.lock();
            if self.is_closed() {
                return (Pushed::Dropped, false, 0);
            }
            let Queue {
                deliveries,
                journal,
            } = &mut *queue;
            let was_empty = deliveries.is_empty();
            if deliveries.len() >= self.capacity() && !evict_oldest {
                metrics.dropped(DropReason::QueueFull).inc();
                return (Pushed::Dropped, false, deliveries.len());
            }
            if deliveries.len() >= self.capacity() {
                let dropped = deliveries.pop_front();
                if let (Some(numbering), Some(seq)) =
                    (journal.as_ref(), dropped.and_then(|d| d.stored))
                {
                    numbering.journal.done(seq, false);
                }
                metrics.dropped(DropReason::QueueFull).inc();
            } else {
                metrics.queued.inc();
            }
            let mut delivery = delivery;
            if let Some(numbering) = journal.as_mut() {
                if delivery.qos != QoS::AtMostOnce && delivery.stored.is_none() {
                    let seq = numbering.take();
                    numbering.journal.queued(seq, &delivery);
                    delivery.stored = Some(seq);
                }
            }
            deliveries.push_back(delivery);
            (was_empty, deliveries.len())
        };
        if was_empty {
            self.last_take_ms.store(clock_ms(), Ordering::Relaxed);
        }
        let pushed = if len >= self.soft_limit() && self.consumer_is_active() {
            Pushed::Congested
        } else {
            Pushed::Queued
        };
        // The consumer drains everything it is woken for, so only the first delivery into an
        // empty queue needs to wake it.
        (pushed, was_empty, len)
    }

    /// Wakes the consumer (again, if it was: a spare wake-up finds nothing and sleeps).
    fn wake(&self) {
        self.ready.notify();
    }

    fn capacity(&self) -> usize {
        self.capacity as usize
    }

    fn soft_limit(&self) -> usize {
        (self.capacity() / 2).max(1)
    }

    fn drained_level(&self) -> usize {
        self.capacity() / 4
    }

    fn consumer_is_active(&self) -> bool {
        let last = self.last_take_ms.load(Ordering::Relaxed);
        self.is_online()
            && last != NEVER
            && clock_ms().wrapping_sub(last) <= ACTIVE_CONSUMER.as_millis() as u32
    }

    /// Waits (at most `limit`) until the queue has drained to a quarter of its capacity, or its
    /// consumer has stopped keeping up; says which, or how the queue moved meanwhile.
    pub async fn drained(&self, limit: Duration) -> Drain {
        let notified = self.drained.notified();
        tokio::pin!(notified);
        // Registered before the check, so a drain in between is not missed.
        notified.as_mut().enable();
        let Some(before) = self.congested_len() else {
            return Drain::Drained;
        };
        let taken_before = self.taken.load(Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, notified).await;
        let taken = self
            .taken
            .load(Ordering::Relaxed)
            .wrapping_sub(taken_before) as usize;
        match self.congested_len() {
            None => Drain::Drained,
            // At least 1 % of the capacity taken per wait, and the queue shorter for it: its
            // consumer outpaces whatever else fills it.
            Some(after) if taken >= (self.capacity() / 100).max(1) && after < before => {
                Drain::Progressing
            }
            Some(_) => Drain::Stalled,
        }
    }

    /// The queue's length while it is above a quarter of its capacity and its consumer keeps
    /// taking.
    fn congested_len(&self) -> Option<usize> {
        let len = self.queue.lock().deliveries.len();
        (len > self.drained_level() && self.consumer_is_active()).then_some(len)
    }

    /// Moves deliveries into `out` within the limits of [`take_within`].
    pub fn take(
        &self,
        max: usize,
        window: usize,
        byte_budget: usize,
        out: &mut Vec<Delivery>,
        metrics: &Metrics,
    ) {
        let mut queue = self.queue.lock();
        let Queue {
            deliveries,
            journal,
        } = &mut *queue;
        let was_congested = deliveries.len() > self.drained_level();
        let journal = journal.as_ref().map(|numbering| &*numbering.journal);
        let (taken, expired) = take_within(deliveries, max, window, byte_budget, out, journal);
        let more = !deliveries.is_empty();
        let drained = was_congested && deliveries.len() <= self.drained_level();
        drop(queue);
        metrics.queued.dec_by((taken + expired) as i64);
        if expired > 0 {
            metrics.dropped(DropReason::Expired).inc_by(expired as u64);
        }
        if taken > 0 {
            self.last_take_ms.store(clock_ms(), Ordering::Relaxed);
            self.taken.fetch_add(taken as u32, Ordering::Relaxed);
        }
        if drained {
            self.drained.notify_waiters();
        }
        // Pushes only wake the consumer when the queue was empty; what is left behind must be
        // announced here or it would wait for the next push into an empty queue.
        if more {
            self.ready.notify();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().deliveries.is_empty()
    }

    /// Writes the QoS 1/2 deliveries queued from now on to `journal`, numbered from `next`
    /// (with `None`, stops); those queued already that have no number are numbered and written
    /// now. Returns the journal it wrote to before, if any.
    pub(crate) fn set_journal(
        &self,
        journal: Option<(Arc<Journal>, NonZeroU32)>,
    ) -> Option<Arc<Journal>> {
        let mut queue = self.queue.lock();
        let Queue {
            deliveries,
            journal: current,
        } = &mut *queue;
        let before = current.take().map(|numbering| numbering.journal);
        if let Some((journal, next)) = journal {
            let mut numbering = Box::new(Numbering { journal, next });
            for delivery in deliveries.iter_mut() {
                if delivery.qos != QoS::AtMostOnce && delivery.stored.is_none() {
                    let seq = numbering.take();
                    numbering.journal.queued(seq, delivery);
                    delivery.stored = Some(seq);
                }
            }
            *current = Some(numbering);
        }
        before
    }

    /// Takes the next journal number (for a delivery in flight that has none, see
    /// [`super::Outgoing::set_journal`]).
    pub(crate) fn next_journal_number(&self) -> Option<NonZeroU32> {
        let mut queue = self.queue.lock();
        queue.journal.as_mut().map(|numbering| numbering.take())
    }

    /// Wakes the consumer if deliveries are queued: for a consumer that took from elsewhere
    /// after being woken.
    pub fn announce(&self) {
        if !self.queue.lock().deliveries.is_empty() {
            self.ready.notify();
        }
    }

    /// Completes when a delivery arrives in an empty queue (or one arrived since the last wait).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Points the next delivery's wake-up at `waker` (the parker's, while the connection
    /// sleeps); wakes it at once if one is already announced.
    pub fn watch(&self, waker: &std::task::Waker) {
        self.ready.watch(waker);
    }

    /// Discards the session's queue and refuses everything from now on.
    pub(super) fn close(&self, metrics: &Metrics) {
        let dropped = {
            let mut queue = self.queue.lock();
            self.closed.store(true, Ordering::Relaxed);
            if let Some(numbering) = queue.journal.take() {
                numbering.journal.end();
            }
            std::mem::take(&mut queue.deliveries).len()
        };
        metrics.queued.dec_by(dropped as i64);
    }
}

/// Moves deliveries from the front of `queue` into `out` in order: at most `max` of them, of
/// which at most `window` have QoS 1 or 2, and no more once `byte_budget` bytes of topic and
/// payload are taken. Stops at the first one that does not fit, so order is kept. Messages whose
/// MQTT 5 expiry has passed are dropped on the way. Returns how many it moved and how many it
/// dropped.
fn take_within(
    queue: &mut VecDeque<Delivery>,
    max: usize,
    mut window: usize,
    byte_budget: usize,
    out: &mut Vec<Delivery>,
    journal: Option<&Journal>,
) -> (usize, usize) {
    let mut taken = 0;
    let mut expired = 0;
    let mut bytes = 0;
    // Read only when a message that can expire is met: most never do.
    let mut now = None;
    while taken < max && bytes < byte_budget {
        match queue.front() {
            Some(delivery) if delivery.message.expires_at.is_some() => {
                let now = *now.get_or_insert_with(Instant::now);
                if delivery.message.is_expired(now) {
                    let stored = delivery.stored;
                    queue.pop_front();
                    if let (Some(journal), Some(seq)) = (journal, stored) {
                        journal.done(seq, false);
                    }
                    expired += 1;
                    continue;
                }
                if delivery.qos != QoS::AtMostOnce && window == 0 {
                    break;
                }
            }
            Some(delivery) if delivery.qos != QoS::AtMostOnce && window == 0 => break,
            Some(_) => {}
            None => break,
        }
        if let Some(delivery) = queue.pop_front() {
            if delivery.qos != QoS::AtMostOnce {
                window -= 1;
            }
            bytes += delivery.message.topic.len() + delivery.message.payload.len();
            out.push(delivery);
            taken += 1;
        }
    }
    (taken, expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::{delivery, payloads};

    /// Whether the mailbox's consumer has been woken (taking the notification).
    fn woken(mailbox: &Mailbox) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        mailbox.ready.poll_notified(&mut cx).is_ready()
    }

    #[test]
    fn a_batch_wakes_a_filling_consumer_early_and_says_when_the_rest_are_due() {
        let metrics = Metrics::new();
        // Soft limit 4: woken at once at 2 queued, and when congested.
        let small = Arc::new(Mailbox::new(1, Arc::from("s"), 8));
        small.set_online(true);
        small.last_take_ms.store(clock_ms(), Ordering::Relaxed);
        let mut wakes = Wakes::default();
        let push = |wakes: &mut Wakes| {
            small.push_batched(delivery(QoS::AtLeastOnce, b"x"), &metrics, wakes)
        };
        assert_eq!(push(&mut wakes), Pushed::Queued);
        assert!(!woken(&small), "the first delivery waits for the batch");
        assert_eq!(push(&mut wakes), Pushed::Queued);
        assert!(woken(&small), "half the soft limit wakes at once");
        assert_eq!(push(&mut wakes), Pushed::Queued);
        assert!(!woken(&small));
        assert_eq!(push(&mut wakes), Pushed::Congested);
        assert!(woken(&small), "a congested mailbox wakes at once");
        // `due` counts deliveries to every mailbox since the last wake_all.
        let mut wakes = Wakes::default();
        let other = Arc::new(Mailbox::new(2, Arc::from("o"), 100_000));
        other.set_online(true);
        for _ in 0..WAKE_AFTER - 1 {
            other.push_batched(delivery(QoS::AtMostOnce, b"y"), &metrics, &mut wakes);
        }
        assert!(!wakes.due());
        other.push_batched(delivery(QoS::AtMostOnce, b"y"), &metrics, &mut wakes);
        assert!(wakes.due());
        wakes.wake_all();
        assert!(!wakes.due());
    }

    #[test]
    fn batched_pushes_wake_each_consumer_once_when_the_batch_is_done() {
        let metrics = Metrics::new();
        let (a, b) = (
            Arc::new(Mailbox::new(1, Arc::from("a"), 100)),
            Arc::new(Mailbox::new(2, Arc::from("b"), 100)),
        );
        for mailbox in [&a, &b] {
            mailbox.set_online(true);
        }
        let mut wakes = Wakes::default();
        for payload in [b"1" as &[u8], b"2", b"3"] {
            for mailbox in [&a, &b] {
                let pushed =
                    mailbox.push_batched(delivery(QoS::AtLeastOnce, payload), &metrics, &mut wakes);
                assert_eq!(pushed, Pushed::Queued);
            }
        }
        assert_eq!(wakes.mailboxes.len(), 2, "one wake-up per consumer");
        assert!(
            !woken(&a) && !woken(&b),
            "nobody woken before the batch is done"
        );
        wakes.wake_all();
        assert!(wakes.mailboxes.is_empty());
        assert!(woken(&a) && woken(&b));
        // A batch dropped unfinished (a panic, an early return) still wakes.
        let mut out = Vec::new();
        a.take(usize::MAX, usize::MAX, usize::MAX, &mut out, &metrics);
        assert_eq!(payloads(&out).len(), 3);
        let mut wakes = Wakes::default();
        a.push_batched(delivery(QoS::AtLeastOnce, b"4"), &metrics, &mut wakes);
        assert!(!woken(&a));
        drop(wakes);
        assert!(woken(&a));
        // A plain push wakes at once.
        assert!(!woken(&b));
        let mut out = Vec::new();
        b.take(usize::MAX, usize::MAX, usize::MAX, &mut out, &metrics);
        b.push(delivery(QoS::AtLeastOnce, b"5"), &metrics);
        assert!(woken(&b));
    }

    #[test]
    fn take_keeps_order_and_respects_the_window() {
        let metrics = Metrics::new();
        let mailbox = Mailbox::new(1, Arc::from("c"), 10);
        mailbox.set_online(true);
        for (qos, payload) in [
            (QoS::AtLeastOnce, b"1" as &[u8]),
            (QoS::AtMostOnce, b"2"),
            (QoS::ExactlyOnce, b"3"),
            (QoS::AtMostOnce, b"4"),
        ] {
            assert_eq!(
                mailbox.push(delivery(qos, payload), &metrics),
                Pushed::Queued
            );
        }
        assert_eq!(metrics.queued.get(), 4);
        let mut out = Vec::new();
        mailbox.take(usize::MAX, 1, usize::MAX, &mut out, &metrics);
        assert_eq!(
            payloads(&out),
            vec![b"1" as &[u8], b"2"],
            "stops at the QoS 2 message"
        );
        out.clear();
        mailbox.take(1, 5, usize::MAX, &mut out, &metrics);
        assert_eq!(payloads(&out), vec![b"3" as &[u8]], "at most `max`");
        out.clear();
        mailbox.take(usize::MAX, 0, usize::MAX, &mut out, &metrics);
        assert_eq!(payloads(&out), vec![b"4" as &[u8]], "QoS 0 needs no window");
        assert_eq!(metrics.queued.get(), 0);
    }

    #[tokio::test]
    async fn what_a_take_leaves_behind_wakes_the_consumer_again() {
        let metrics = Metrics::new();
        let mailbox = Mailbox::new(1, Arc::from("c"), 10);
        mailbox.set_online(true);
        for payload in [b"1", b"2", b"3"] {
            mailbox.push(delivery(QoS::AtMostOnce, payload), &metrics);
        }
        mailbox.ready().await;
        let mut out = Vec::new();
        // A byte budget smaller than one message still takes one.
        mailbox.take(usize::MAX, usize::MAX, 1, &mut out, &metrics);
        assert_eq!(payloads(&out), vec![b"1" as &[u8]]);
        let woken = tokio::time::timeout(Duration::from_secs(5), mailbox.ready()).await;
        assert!(
            woken.is_ok(),
            "deliveries left behind must wake the consumer"
        );
        out.clear();
        mailbox.take(usize::MAX, usize::MAX, usize::MAX, &mut out, &metrics);
        assert_eq!(payloads(&out), vec![b"2" as &[u8], b"3"]);
    }

    #[tokio::test]
    async fn an_active_consumer_past_half_capacity_asks_publishers_to_wait_until_drained() {
        let metrics = Metrics::new();
        let mailbox = Arc::new(Mailbox::new(1, Arc::from("c"), 8));
        mailbox.set_online(true);
        // Work for an idle consumer: it is given ACTIVE_CONSUMER to start taking, and meanwhile
        // pushes past half capacity report congestion.
        let pushes: Vec<Pushed> = (0..5)
            .map(|_| mailbox.push(delivery(QoS::AtLeastOnce, b"x"), &metrics))
            .collect();
        assert_eq!(
            pushes,
            [
                Pushed::Queued,
                Pushed::Queued,
                Pushed::Queued,
                Pushed::Congested,
                Pushed::Congested
            ]
        );
        // One that took nothing for that long is stalled: no flow control, only the cap.
        std::thread::sleep(ACTIVE_CONSUMER * 2);
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, b"x"), &metrics),
            Pushed::Queued
        );

        // Once it takes, it is active: past half capacity, pushes report congestion.
        let mut out = Vec::new();
        mailbox.take(3, usize::MAX, usize::MAX, &mut out, &metrics);
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, b"x"), &metrics),
            Pushed::Congested
        );
        let waiter = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.drained(Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "still congested");
        out.clear();
        mailbox.take(usize::MAX, usize::MAX, usize::MAX, &mut out, &metrics);
        let drain = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("draining wakes the waiting publisher")
            .expect("waiter task");
        assert_eq!(drain, Drain::Drained);
    }

    #[tokio::test]
    async fn a_publisher_waits_again_only_while_the_consumer_makes_progress() {
        let metrics = Metrics::new();
        // Drained at 50, 1 % is 2 messages.
        let mailbox = Arc::new(Mailbox::new(1, Arc::from("c"), 200));
        mailbox.set_online(true);
        for _ in 0..150 {
            mailbox.push(delivery(QoS::AtLeastOnce, b"x"), &metrics);
        }
        let mut out = Vec::new();
        let mut take = |n: usize| {
            out.clear();
            mailbox.take(n, usize::MAX, usize::MAX, &mut out, &metrics);
            assert_eq!(out.len(), n);
        };
        take(1);
        let wait = |mailbox: Arc<Mailbox>| {
            tokio::spawn(async move { mailbox.drained(Duration::from_millis(50)).await })
        };
        // It took just now, so it is active, but it takes nothing more meanwhile.
        let waiter = wait(mailbox.clone());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(waiter.await.expect("waiter"), Drain::Stalled);

        // It keeps taking, 2 at a time: at least 1 % by the end of the wait.
        let waiter = wait(mailbox.clone());
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(8)).await;
            take(2);
        }
        assert_eq!(waiter.await.expect("waiter"), Drain::Progressing);

        // A consumer that stopped taking is no longer waited for (the clock is the real one).
        std::thread::sleep(ACTIVE_CONSUMER * 2);
        assert_eq!(wait(mailbox.clone()).await.expect("waiter"), Drain::Drained);
    }

    #[test]
    fn a_mailbox_stays_within_the_allocators_160_byte_class() {
        // Every session has one, in an Arc (two counts before it): a field more, or a bigger
        // signal, moves every session to the 192-byte class.
        assert!(std::mem::size_of::<Mailbox>() + 16 <= 160);
    }

    #[test]
    fn a_full_mailbox_drops_its_oldest_and_counts_it() {
        let metrics = Metrics::new();
        let mailbox = Mailbox::new(1, Arc::from("c"), 2);
        for payload in [b"1", b"2", b"3"] {
            assert_ne!(
                mailbox.push(delivery(QoS::AtLeastOnce, payload), &metrics),
                Pushed::Dropped
            );
        }
        let mut out = Vec::new();
        mailbox.take(usize::MAX, usize::MAX, usize::MAX, &mut out, &metrics);
        assert_eq!(payloads(&out), vec![b"2" as &[u8], b"3"]);
        assert_eq!(metrics.dropped(DropReason::QueueFull).get(), 1);
        assert_eq!(metrics.queued.get(), 0);
    }

    #[test]
    fn offline_sessions_queue_only_qos_1_and_2() {
        let metrics = Metrics::new();
        let mailbox = Mailbox::new(1, Arc::from("c"), 10);
        assert_eq!(
            mailbox.push(delivery(QoS::AtMostOnce, b"0"), &metrics),
            Pushed::Dropped
        );
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, b"1"), &metrics),
            Pushed::Queued
        );
        assert_eq!(metrics.dropped(DropReason::OfflineQos0).get(), 1);
        assert!(!mailbox.is_empty());
    }
}
