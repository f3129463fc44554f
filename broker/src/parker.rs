//! The parker: where idle connections sleep without a task.
//!
//! Most of a broker's connections are idle most of the time (a device that pings once a
//! minute), and what an idle connection costs is mostly what its task keeps ready for the next
//! event: the task and its future, the runtime's registration of its socket, its timer. A
//! connection that has had nothing to do for a while hands the parker what it must remember
//! (a [`Sleeper`]: its socket and its state) and its task ends. The parker's thread watches
//! every sleeping socket in one epoll set, and wakes a sleeper when
//! - its socket has input, or was closed;
//! - it is signalled (a delivery, a kick): a sleeper points its signals at an alarm, a waker
//!   that tells the parker which sleeper it is for;
//! - its deadline (a keepalive) has passed, found by a sweep every [`SWEEP`].
//!
//! Waking takes the socket out of the set and hands the sleeper to the `wake` function the
//! parker was started with, which gives it a task again. A thread of its own rather than a
//! task: it blocks in `epoll_wait` and is never in the runtime's way, and its epoll set needs
//! no registration with the runtime's. The parker is generic over the sleeper so that it is
//! tested here with bare sockets.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use parking_lot::Mutex;
use tracing::warn;

/// How often sleepers' deadlines are checked: a keepalive that expires during sleep is acted
/// on at most this late.
pub const SWEEP: Duration = Duration::from_millis(500);

/// Events taken from the epoll set at a time.
const EVENTS: usize = 1024;

/// The token of the alarms' own wake-up in the epoll set; sleepers' ids count up from 0.
const ALARMS: Token = Token(usize::MAX);

/// What sleeps in the parker.
pub trait Sleeper: Send + 'static {
    /// The socket to watch for input.
    fn fd(&self) -> RawFd;
    /// When the sleeper must be woken whatever happens (its keepalive expires); `None` never.
    fn deadline(&self) -> Option<Instant>;
    /// Points the sleeper's signals at `alarm`, waking it at once for one already set.
    fn watch(&self, alarm: &Waker);
}

/// A handle to a running parker; dropping it stops the parker's thread, and the sleepers still
/// in it are dropped.
pub struct Parker<S: Sleeper> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    registry: mio::Registry,
    /// Boxed: a sleeper is a hundred bytes or more, and the map's spare room would hold that
    /// many per empty slot.
    sleeping: Mutex<HashMap<usize, Box<S>>>,
    alarms: Arc<Alarms>,
    /// Never reused, so that a late alarm for a sleeper already woken finds nothing.
    next_id: AtomicUsize,
    stopped: AtomicBool,
}

/// The ids of the sleepers whose alarms rang since the parker last looked.
struct Alarms {
    rung: Mutex<Vec<usize>>,
    /// Wakes the parker's thread out of `epoll_wait`.
    waker: mio::Waker,
}

impl Alarms {
    fn ring(&self, id: usize) {
        let first = {
            let mut rung = self.rung.lock();
            rung.push(id);
            rung.len() == 1
        };
        // One wake-up per batch: the parker takes every id rung so far when it wakes.
        if first {
            if let Err(error) = self.waker.wake() {
                warn!(%error, "could not wake the parker");
            }
        }
    }
}

/// The waker a sleeper's signals are pointed at. It holds the alarms weakly: the sleeper holds
/// its signals, and they hold this.
struct Alarm {
    alarms: Weak<Alarms>,
    id: usize,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(alarms) = self.alarms.upgrade() {
            alarms.ring(self.id);
        }
    }
}

impl<S: Sleeper> Parker<S> {
    /// Starts a parker's thread; each sleeper it wakes is given to `wake`, on that thread (so
    /// `wake` should hand the work on, e.g. spawn it on the runtime).
    pub fn start(wake: impl Fn(S) + Send + 'static) -> io::Result<Parker<S>> {
        let poll = mio::Poll::new()?;
        let shared = Arc::new(Shared {
            registry: poll.registry().try_clone()?,
            sleeping: Mutex::new(HashMap::new()),
            alarms: Arc::new(Alarms {
                rung: Mutex::new(Vec::new()),
                waker: mio::Waker::new(poll.registry(), ALARMS)?,
            }),
            next_id: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let running = shared.clone();
        std::thread::Builder::new()
            .name("coolpy7-parker".into())
            .spawn(move || run(poll, running, wake))?;
        Ok(Parker { shared })
    }

    /// Puts `sleeper` to sleep. Given back, with the error, when its socket cannot be watched.
    pub fn park(&self, sleeper: S) -> Result<(), (S, io::Error)> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let fd = sleeper.fd();
        let alarm = Waker::from(Arc::new(Alarm {
            alarms: Arc::downgrade(&self.shared.alarms),
            id,
        }));
        // All under the map's lock, so that the parker cannot take the sleeper before it is
        // watched in full: an alarm that rings at once (a signal set already) is handled once
        // the lock is released, with the socket registered and the id in the map. Input that
        // is already there is reported by the registration itself (epoll checks the socket
        // when it is added).
        let mut sleeping = self.shared.sleeping.lock();
        // Read under the lock: a failing parker sets it before it takes the lock to wake every
        // sleeper, so none is added behind its back.
        if !self.is_running() {
            return Err((sleeper, io::Error::other("the parker has stopped")));
        }
        if let Err(error) =
            self.shared
                .registry
                .register(&mut SourceFd(&fd), Token(id), Interest::READABLE)
        {
            return Err((sleeper, error));
        }
        sleeper.watch(&alarm);
        sleeping.insert(id, Box::new(sleeper));
        Ok(())
    }

    /// False once the parker's thread has stopped (its epoll set failed): nothing more may go
    /// to sleep.
    pub fn is_running(&self) -> bool {
        !self.shared.stopped.load(Ordering::Acquire)
    }

    /// How many sleep.
    pub fn len(&self) -> usize {
        self.shared.sleeping.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S: Sleeper> Drop for Parker<S> {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        let _ = self.shared.alarms.waker.wake();
    }
}

/// The parker's thread: waits for socket events, alarms and the sweep, and wakes the sleepers
/// they are for.
fn run<S: Sleeper>(mut poll: mio::Poll, shared: Arc<Shared<S>>, wake: impl Fn(S)) {
    let mut events = mio::Events::with_capacity(EVENTS);
    let mut next_sweep = Instant::now() + SWEEP;
    let mut due: Vec<usize> = Vec::new();
    loop {
        let timeout = next_sweep.saturating_duration_since(Instant::now());
        if let Err(error) = poll.poll(&mut events, Some(timeout)) {
            if error.kind() != io::ErrorKind::Interrupted {
                warn!(%error, "the parker's epoll set failed; every sleeping connection is woken and none sleeps any more");
                shared.stopped.store(true, Ordering::Release);
                // Taken under the lock after the flag is set: no park can add one afterwards.
                let all: Vec<Box<S>> = shared.sleeping.lock().drain().map(|(_, s)| s).collect();
                for sleeper in all {
                    wake(*sleeper);
                }
                return;
            }
        }
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        for event in events.iter() {
            match event.token() {
                ALARMS => due.append(&mut shared.alarms.rung.lock()),
                Token(id) => due.push(id),
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + SWEEP;
            due.extend(
                shared
                    .sleeping
                    .lock()
                    .iter()
                    .filter(|(_, sleeper)| sleeper.deadline().is_some_and(|at| at <= now))
                    .map(|(id, _)| *id),
            );
        }
        for id in due.drain(..) {
            // Gone already when two reasons came at once, or for a late alarm.
            let Some(sleeper) = shared.sleeping.lock().remove(&id) else {
                continue;
            };
            // Failing only if the socket was not registered, which leaves nothing to undo.
            let _ = shared.registry.deregister(&mut SourceFd(&sleeper.fd()));
            wake(*sleeper);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use tokio::sync::mpsc;

    use super::*;
    use crate::session::Signal;

    struct Bare {
        name: &'static str,
        socket: TcpStream,
        deadline: Option<Instant>,
        signal: Arc<Signal>,
    }

    impl Sleeper for Bare {
        fn fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn watch(&self, alarm: &Waker) {
            self.signal.watch(alarm);
        }
    }

    /// A parker whose woken sleepers come out of the returned channel.
    fn started() -> (Parker<Bare>, mpsc::UnboundedReceiver<Bare>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let parker = Parker::start(move |sleeper: Bare| {
            let _ = tx.send(sleeper);
        })
        .expect("parker");
        (parker, rx)
    }

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        (client, server)
    }

    async fn woken(rx: &mut mpsc::UnboundedReceiver<Bare>) -> &'static str {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("woken in time")
            .expect("parker running")
            .name
    }

    #[tokio::test]
    async fn wakes_a_sleeper_for_input_a_signal_or_its_deadline_and_not_before() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (parker, mut rx) = started();
        let (mut input_client, input) = pair(&listener);
        let (_signal_client, signalled) = pair(&listener);
        let (_deadline_client, deadline) = pair(&listener);
        let (_idle_client, idle) = pair(&listener);
        let signal = Arc::new(Signal::new());
        let other = Arc::new(Signal::new());
        let sleeper = |name, socket, deadline, signal: &Arc<Signal>| {
            let sleeper = Bare {
                name,
                socket,
                deadline,
                signal: signal.clone(),
            };
            assert!(parker.park(sleeper).is_ok());
        };
        sleeper("input", input, None, &other);
        sleeper("signal", signalled, None, &signal);
        sleeper(
            "deadline",
            deadline,
            Some(Instant::now() + Duration::from_millis(100)),
            &other,
        );
        sleeper("idle", idle, None, &other);
        assert_eq!(parker.len(), 4);
        let nothing = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
        assert!(nothing.is_err(), "nobody is woken for nothing");

        input_client.write_all(b"x").expect("write");
        assert_eq!(woken(&mut rx).await, "input");
        signal.notify();
        assert_eq!(woken(&mut rx).await, "signal");
        // The sweep comes within SWEEP of the deadline.
        assert_eq!(woken(&mut rx).await, "deadline");
        assert_eq!(parker.len(), 1, "the idle one sleeps on");
        let nothing = tokio::time::timeout(SWEEP * 2, rx.recv()).await;
        assert!(nothing.is_err(), "nobody else is woken");
    }

    #[tokio::test]
    async fn a_sleeper_whose_signal_or_input_came_before_it_slept_is_woken_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (parker, mut rx) = started();
        let (mut client, with_input) = pair(&listener);
        client.write_all(b"x").expect("write");
        // Give the byte time to arrive: the registration must report what is already there.
        std::thread::sleep(Duration::from_millis(50));
        let (_client, signalled) = pair(&listener);
        let set = Arc::new(Signal::new());
        set.notify();
        assert!(parker
            .park(Bare {
                name: "input",
                socket: with_input,
                deadline: None,
                signal: Arc::new(Signal::new()),
            })
            .is_ok());
        assert_eq!(woken(&mut rx).await, "input");
        assert!(parker
            .park(Bare {
                name: "signal",
                socket: signalled,
                deadline: None,
                signal: set,
            })
            .is_ok());
        assert_eq!(woken(&mut rx).await, "signal");
    }

    #[tokio::test]
    async fn a_closed_socket_wakes_its_sleeper_and_a_woken_one_sleeps_again() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (parker, mut rx) = started();
        let (client, server) = pair(&listener);
        let (_client, other) = pair(&listener);
        let signal = Arc::new(Signal::new());
        let park = |name, socket, signal: &Arc<Signal>| {
            assert!(parker
                .park(Bare {
                    name,
                    socket,
                    deadline: None,
                    signal: signal.clone(),
                })
                .is_ok());
        };
        park("closed", server, &Arc::new(Signal::new()));
        drop(client);
        assert_eq!(woken(&mut rx).await, "closed");

        park("signalled", other, &signal);
        signal.notify();
        let sleeper = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("woken in time")
            .expect("parker running");
        // The woken one's task takes the notification, and it goes back to sleep.
        tokio::time::timeout(Duration::from_secs(5), signal.notified())
            .await
            .expect("the notification waits for the task");
        assert!(parker.park(sleeper).is_ok());
        let nothing = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
        assert!(
            nothing.is_err(),
            "the first sleep's alarm does not ring again"
        );
        signal.notify();
        assert_eq!(woken(&mut rx).await, "signalled");
        assert!(parker.is_empty());
    }

    /// Review finding: a sleeper whose signal was already set was woken (and its socket handed
    /// back to the runtime) before `park` registered the socket, which then stayed in the
    /// epoll set for nobody, and the next park of that socket failed.
    #[tokio::test]
    async fn a_sleeper_woken_at_once_can_sleep_again_and_again() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (parker, mut rx) = started();
        let (_client, socket) = pair(&listener);
        let signal = Arc::new(Signal::new());
        let mut sleeper = Bare {
            name: "again",
            socket,
            deadline: None,
            signal: signal.clone(),
        };
        for round in 0..200 {
            signal.notify();
            if let Err((_, error)) = parker.park(sleeper) {
                panic!("round {round}: {error}");
            }
            sleeper = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("woken in time")
                .expect("parker running");
            // What the woken connection's task does first.
            signal.notified().await;
        }
        assert!(parker.is_empty());
    }
}
