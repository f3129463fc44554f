//! What a connection may take before it has proved anything: file descriptors and memory.
//!
//! At start [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one and
//! [`ConnectionPlan::new`] divides the descriptors: a fixed reserve for the process itself and
//! the cluster, the HTTP API's connection cap (so that probes always have descriptors), and the
//! rest for MQTT sockets, of which `-mc` (derived or given) keeps a share free for handshakes. The listeners count
//! every socket they accept in [`Slots`] and close at once what is beyond its limit, so the
//! process never reaches `EMFILE` (where a listener can neither accept nor refuse, and clients
//! hang in the backlog).
//!
//! Before CONNECT a client has no place in `-mc`, so its read buffer is taken from a budget shared
//! by every handshake, [`HandshakeMemory`]; a connection that would exceed it is closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

/// Descriptors kept for the process itself: stdio, the runtime's epoll and wakers, the signal
/// pipe, the listeners, the cluster's two sockets and its DNS lookups. About 15 are open in
/// practice; the rest is a margin for transient ones (resolver sockets, `/proc` reads).
pub const RESERVED_FDS: usize = 64;

/// The share of the MQTT sockets that the derived `-mc` leaves for connections still in their
/// handshake (1/16), so that a client beyond `-mc` can be told CONNACK 0x03 and a takeover can
/// complete while the broker is full. Capped: a large fd limit needs no more than this many.
const HANDSHAKE_HEADROOM_DIVISOR: usize = 16;
const MAX_HANDSHAKE_HEADROOM: usize = 1024;

/// Fewer MQTT sockets than this means the fd limit cannot run a broker.
const MIN_MQTT_SOCKETS: usize = 16;

/// The process's `RLIMIT_NOFILE` after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit in force: the most descriptors the process may hold.
    pub soft: u64,
    /// The soft limit found at start, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as most servers do: distributions start
/// processes at 1,024 for the sake of `select()`, which the broker does not use, while every
/// connection needs a descriptor. The hard limit is the administrator's choice and stays.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let found = limit.rlim_cur;
    // An unlimited hard limit is refused by setrlimit above fs.nr_open; 2^20 is its default.
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY {
        (1 << 20).max(found)
    } else {
        limit.rlim_max
    };
    if wanted <= found {
        return Ok(FdLimit {
            soft: found,
            raised_from: None,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, soft = found, "cannot raise the open-files limit; keeping it");
        return Ok(FdLimit {
            soft: found,
            raised_from: None,
        });
    }
    Ok(FdLimit {
        soft: wanted,
        raised_from: Some(found),
    })
}

/// How `-mc` was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConnectionsSource {
    /// `-mc 0` (the default): from the fd limit.
    Derived,
    /// `-mc N` within what the fd limit allows.
    Explicit,
    /// `-mc N` above the MQTT sockets the fd limit allows, less the handshake headroom:
    /// lowered to that.
    Capped { asked: usize },
}

/// The division of the fd limit between MQTT, HTTP and the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPlan {
    /// MQTT sockets open at once, in their handshake or connected; beyond it a new one is
    /// closed as soon as it is accepted.
    pub mqtt_sockets: usize,
    /// The effective `-mc`: connections that completed CONNECT; beyond it CONNACK 0x03.
    pub max_connections: usize,
    pub source: MaxConnectionsSource,
    /// The HTTP API's connection cap, reserved out of the fd limit (0 without HTTP).
    pub http_connections: usize,
}

impl ConnectionPlan {
    /// Divides `fd_limit` descriptors; `max_connections` is `-mc` (`None` to derive it) and
    /// `http_connections` the HTTP cap (`None` without HTTP). An error when the limit leaves
    /// too few descriptors for MQTT.
    pub fn new(
        fd_limit: u64,
        max_connections: Option<usize>,
        http_connections: Option<usize>,
    ) -> Result<ConnectionPlan, String> {
        let fd_limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        let http_connections = http_connections.unwrap_or(0);
        let reserved = RESERVED_FDS.saturating_add(http_connections);
        let mqtt_sockets = fd_limit.saturating_sub(reserved);
        if mqtt_sockets < MIN_MQTT_SOCKETS {
            return Err(format!(
                "the open-files limit ({fd_limit}) leaves {mqtt_sockets} descriptors for MQTT \
                 after {RESERVED_FDS} for the process and {http_connections} for HTTP (-hmc); \
                 raise it (ulimit -n) to at least {}",
                reserved.saturating_add(MIN_MQTT_SOCKETS)
            ));
        }
        let headroom = (mqtt_sockets / HANDSHAKE_HEADROOM_DIVISOR).clamp(1, MAX_HANDSHAKE_HEADROOM);
        // Also the most an explicit -mc may take: beyond it a client over -mc could not be
        // told CONNACK 0x03, and a takeover could not complete while the broker is full.
        let most = mqtt_sockets - headroom;
        let (max_connections, source) = match max_connections {
            None => (most, MaxConnectionsSource::Derived),
            Some(asked) if asked > most => (most, MaxConnectionsSource::Capped { asked }),
            Some(asked) => (asked, MaxConnectionsSource::Explicit),
        };
        Ok(ConnectionPlan {
            mqtt_sockets,
            max_connections,
            source,
            http_connections,
        })
    }
}

/// A counted set of places (sockets of one listener); [`Slots::try_take`] fails beyond the
/// limit. Clones share the count.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<SlotsInner>,
}

struct SlotsInner {
    taken: AtomicUsize,
    limit: usize,
    gauge: Gauge,
}

impl Slots {
    /// `gauge` follows the number taken.
    pub fn new(limit: usize, gauge: Gauge) -> Slots {
        Slots {
            inner: Arc::new(SlotsInner {
                taken: AtomicUsize::new(0),
                limit,
                gauge,
            }),
        }
    }

    /// How many places there are.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// A place, or `None` when all are taken.
    pub fn try_take(&self) -> Option<Slot> {
        let limit = self.inner.limit;
        self.inner
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < limit).then_some(taken + 1)
            })
            .ok()?;
        self.inner.gauge.inc();
        Some(Slot {
            inner: self.inner.clone(),
        })
    }
}

/// A place taken from [`Slots`]; dropping it frees it.
pub struct Slot {
    inner: Arc<SlotsInner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.taken.fetch_sub(1, Ordering::AcqRel);
        self.inner.gauge.dec();
    }
}

/// The bytes that connections still in their handshake may hold in read buffers, together
/// (`-mhb`).
pub struct HandshakeMemory {
    used: AtomicUsize,
    limit: usize,
    gauge: Gauge,
}

impl HandshakeMemory {
    /// `gauge` follows the bytes in use.
    pub fn new(limit: usize, gauge: Gauge) -> HandshakeMemory {
        HandshakeMemory {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        }
    }

    /// A lease of `bytes`, or `None` when the budget cannot cover them.
    pub fn lease(&self, bytes: usize) -> Option<MemoryLease<'_>> {
        let mut lease = MemoryLease {
            budget: self,
            bytes: 0,
        };
        lease.grow(bytes).then_some(lease)
    }

    fn take(&self, bytes: usize) -> bool {
        let limit = self.limit;
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok();
        if taken {
            self.gauge.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        taken
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Bytes taken from [`HandshakeMemory`] by one handshake; given back when dropped.
pub struct MemoryLease<'a> {
    budget: &'a HandshakeMemory,
    bytes: usize,
}

impl MemoryLease<'_> {
    /// Takes `more` bytes; false (holding what it held) when the budget cannot cover them.
    pub fn grow(&mut self, more: usize) -> bool {
        let taken = self.budget.take(more);
        if taken {
            self.bytes += more;
        }
        taken
    }
}

impl Drop for MemoryLease<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_derives_max_connections_from_the_fd_limit() {
        let plan = ConnectionPlan::new(20_000, None, Some(32)).expect("enough descriptors");
        assert_eq!(plan.mqtt_sockets, 20_000 - 64 - 32);
        assert_eq!(plan.max_connections, plan.mqtt_sockets - 1024);
        assert_eq!(plan.source, MaxConnectionsSource::Derived);
        assert_eq!(plan.http_connections, 32);

        let small = ConnectionPlan::new(256, None, Some(32)).expect("enough descriptors");
        assert_eq!(small.mqtt_sockets, 160);
        assert_eq!(small.max_connections, 150, "1/16 kept for handshakes");

        let no_http = ConnectionPlan::new(256, None, None).expect("enough descriptors");
        assert_eq!(no_http.mqtt_sockets, 192);
        assert_eq!(no_http.http_connections, 0);
    }

    #[test]
    fn explicit_max_connections_wins_within_the_fd_limit() {
        let plan = ConnectionPlan::new(1024, Some(10), Some(32)).expect("enough descriptors");
        assert_eq!(plan.max_connections, 10);
        assert_eq!(plan.source, MaxConnectionsSource::Explicit);

        let capped = ConnectionPlan::new(1024, Some(5000), Some(32)).expect("enough");
        assert_eq!(capped.mqtt_sockets, 928);
        assert_eq!(capped.max_connections, 928 - 58, "1/16 kept for handshakes");
        assert_eq!(capped.source, MaxConnectionsSource::Capped { asked: 5000 });
    }

    #[test]
    fn explicit_max_connections_leaves_the_handshake_headroom() {
        // 928 MQTT sockets, 58 of them kept for handshakes.
        let derived = ConnectionPlan::new(1024, None, Some(32)).expect("enough");
        for asked in [derived.max_connections + 1, 900, 928, 929] {
            let plan = ConnectionPlan::new(1024, Some(asked), Some(32)).expect("enough");
            assert_eq!(plan.max_connections, derived.max_connections, "-mc {asked}");
            assert_eq!(plan.source, MaxConnectionsSource::Capped { asked });
        }
        let at_most =
            ConnectionPlan::new(1024, Some(derived.max_connections), Some(32)).expect("enough");
        assert_eq!(at_most.max_connections, derived.max_connections);
        assert_eq!(at_most.source, MaxConnectionsSource::Explicit);
        let huge = ConnectionPlan::new(u64::MAX, Some(usize::MAX), Some(32)).expect("plenty");
        assert_eq!(huge.max_connections, huge.mqtt_sockets - 1024);
    }

    #[test]
    fn plan_refuses_a_limit_that_leaves_no_room_for_mqtt() {
        let error = ConnectionPlan::new(100, None, Some(32)).expect_err("too few");
        assert!(error.contains("open-files limit (100)"), "{error}");
        assert!(ConnectionPlan::new(0, None, None).is_err());
        assert!(ConnectionPlan::new(u64::MAX, None, Some(usize::MAX)).is_err());
        let huge = ConnectionPlan::new(u64::MAX, None, Some(32)).expect("plenty");
        assert_eq!(huge.max_connections, huge.mqtt_sockets - 1024);
    }

    #[test]
    fn slots_refuse_beyond_the_limit_and_free_on_drop() {
        let gauge = Gauge::default();
        let slots = Slots::new(2, gauge.clone());
        let first = slots.try_take().expect("first");
        let second = slots.clone().try_take().expect("second");
        assert!(slots.try_take().is_none());
        assert_eq!(gauge.get(), 2);
        drop(first);
        let third = slots.try_take().expect("freed by the drop");
        assert!(slots.try_take().is_none());
        drop((second, third));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn handshake_memory_is_a_shared_budget() {
        let gauge = Gauge::default();
        let budget = HandshakeMemory::new(1000, gauge.clone());
        let mut a = budget.lease(256).expect("fits");
        let b = budget.lease(256).expect("fits");
        assert!(a.grow(400), "912 of 1000");
        assert!(!a.grow(100), "1012 would exceed the budget");
        assert!(budget.lease(100).is_none());
        assert_eq!(gauge.get(), 912);
        drop(a);
        assert_eq!(gauge.get(), 256);
        let c = budget.lease(744).expect("fits exactly");
        assert!(budget.lease(1).is_none());
        drop((b, c));
        assert_eq!(gauge.get(), 0);
        assert!(budget.lease(1000).is_some());
    }
}
