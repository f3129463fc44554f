//! Datagrams in and out of the sync socket in batches, for the sender's and the receiver's
//! threads, with as few system calls as possible: `sendmmsg(2)` and `recvmmsg(2)` on Linux
//! (up to [`BATCH`] datagrams per call), one `sendto(2)`/`recvfrom(2)` per datagram elsewhere.
//! Every call is non-blocking (the two threads share the socket): a thread waits for room or
//! for datagrams in `poll(2)`, never spins. A [`Doorbell`] wakes the receiver's wait when
//! something else needs it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use socket2::SockAddr;

/// Datagrams sent per system call at most.
pub const BATCH: usize = 64;
/// The longest the sender waits for room in the socket's send buffer before it drops what it
/// holds (counted): a kernel that takes nothing for as long is not going to.
const ROOM_WAIT: Duration = Duration::from_millis(200);

/// Datagrams waiting to be sent, and the buffers they are written in (kept between batches).
#[derive(Default)]
pub struct OutBatch {
    datagrams: Vec<Vec<u8>>,
    to: Vec<SockAddr>,
    len: usize,
}

/// What [`OutBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    pub failed: usize,
}

impl OutBatch {
    /// Whether it holds a system call's worth.
    pub fn is_full(&self) -> bool {
        self.len >= BATCH
    }

    /// A cleared buffer for the next datagram, to `to`. A batch may hold more than
    /// [`BATCH`]: it is sent in several calls then.
    pub fn next(&mut self, to: SocketAddr) -> &mut Vec<u8> {
        if self.len == self.datagrams.len() {
            self.datagrams.push(Vec::with_capacity(1_500));
            self.to.push(SockAddr::from(to));
        } else {
            self.to[self.len] = SockAddr::from(to);
        }
        let datagram = &mut self.datagrams[self.len];
        datagram.clear();
        self.len += 1;
        datagram
    }

    /// Whether it holds nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends what the batch holds from `socket`. A datagram the kernel refuses (an
    /// unreachable peer reported by ICMP, a datagram too big for the route) is counted as
    /// failed and the rest still go. With `wait`, waits for room in the socket's buffer when it
    /// is full (and drops what it holds, counted, if none comes): the batch is empty after;
    /// without, what the socket does not take at once stays in the batch, first in line.
    pub fn send(&mut self, socket: &impl AsFd, wait: bool) -> Sent {
        let mut outcome = Sent::default();
        let mut from = 0;
        while from < self.len {
            match send_some(
                socket,
                &self.datagrams[from..self.len],
                &self.to[from..self.len],
            ) {
                Ok(sent) => {
                    outcome.sent += sent;
                    from += sent;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if !wait {
                        // The unsent datagrams move to the front (their buffers swap places
                        // with the sent ones', which are reused).
                        self.datagrams[..self.len].rotate_left(from);
                        self.to[..self.len].rotate_left(from);
                        self.len -= from;
                        return outcome;
                    }
                    if !wait_for_room(socket) {
                        tracing::debug!("sync socket takes nothing; datagrams dropped");
                        outcome.failed += self.len - from;
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, to = ?self.to[from].as_socket(), "sync send failed");
                    outcome.failed += 1;
                    from += 1;
                }
            }
        }
        self.len = 0;
        outcome
    }
}

/// Sends the first datagrams of `datagrams` (to the matching `to`); returns how many went.
#[cfg(target_os = "linux")]
fn send_some(socket: &impl AsFd, datagrams: &[Vec<u8>], to: &[SockAddr]) -> io::Result<usize> {
    let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain data, for which all zeroes is a valid (empty) value.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let count = datagrams.len().min(BATCH);
    for i in 0..count {
        iovecs[i] = libc::iovec {
            iov_base: datagrams[i].as_ptr() as *mut libc::c_void,
            iov_len: datagrams[i].len(),
        };
        let header = &mut headers[i].msg_hdr;
        header.msg_name = to[i].as_ptr() as *mut libc::c_void;
        header.msg_namelen = to[i].len();
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
    }
    // SAFETY: every header points at one iovec and one address that outlive the call, each
    // iovec at a buffer of its length; the kernel only reads them (and writes msg_len).
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_fd().as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(not(target_os = "linux"))]
fn send_some(socket: &impl AsFd, datagrams: &[Vec<u8>], to: &[SockAddr]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(&datagrams[0], &to[0])?;
    Ok(1)
}

/// The largest datagram the receiver takes whole: a UDP datagram's largest payload over IPv4
/// (best-effort batches to nodes without links carry records up to about 60 KB).
const DATAGRAM_MAX: usize = 65_536;
/// Datagrams taken per `recvmmsg(2)` call.
const IN_BATCH: usize = 32;

/// Buffers for the datagrams of one receive call, kept between calls.
pub struct InBatch {
    buffers: Vec<Vec<u8>>,
    lens: Vec<usize>,
    from: Vec<Option<SocketAddr>>,
    len: usize,
}

impl Default for InBatch {
    fn default() -> InBatch {
        InBatch {
            buffers: (0..IN_BATCH).map(|_| vec![0; DATAGRAM_MAX]).collect(),
            lens: vec![0; IN_BATCH],
            from: vec![None; IN_BATCH],
            len: 0,
        }
    }
}

impl InBatch {
    /// Takes the datagrams the socket holds, up to a batch, without waiting; `WouldBlock` when
    /// there are none.
    pub fn receive(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        self.len = 0;
        self.len = receive_some(socket, self)?;
        Ok(self.len)
    }

    /// The `i`th datagram received by the last call, and who sent it.
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>)> {
        (i < self.len).then(|| (&self.buffers[i][..self.lens[i]], self.from[i]))
    }
}

#[cfg(target_os = "linux")]
fn receive_some(socket: &impl AsFd, batch: &mut InBatch) -> io::Result<usize> {
    let mut iovecs: [libc::iovec; IN_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; IN_BATCH];
    // SAFETY: all zeroes is a valid value of these plain-data types.
    let mut headers: [libc::mmsghdr; IN_BATCH] = unsafe { std::mem::zeroed() };
    let mut addresses: [libc::sockaddr_storage; IN_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..IN_BATCH {
        iovecs[i] = libc::iovec {
            iov_base: batch.buffers[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: batch.buffers[i].len(),
        };
        let header = &mut headers[i].msg_hdr;
        header.msg_name = &mut addresses[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
        header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
    }
    // SAFETY: every header points at one iovec over a buffer of its length and at an address
    // buffer of its size, all alive for the call; the kernel writes within them.
    let received = unsafe {
        libc::recvmmsg(
            socket.as_fd().as_raw_fd(),
            headers.as_mut_ptr(),
            IN_BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    for i in 0..received {
        // A datagram larger than the buffer is cut (MSG_TRUNC): its tag no longer matches, so
        // it is refused as forged would be.
        batch.lens[i] = (headers[i].msg_len as usize).min(DATAGRAM_MAX);
        batch.from[i] = socket_addr(&addresses[i]);
    }
    Ok(received)
}

/// The IPv4 or IPv6 address the kernel wrote into `storage`.
#[cfg(target_os = "linux")]
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let v4 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let v6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(v6.sin6_port))))
        }
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn receive_some(socket: &impl AsFd, batch: &mut InBatch) -> io::Result<usize> {
    let socket = socket2::SockRef::from(socket);
    // SAFETY: a u8 buffer is a valid MaybeUninit<u8> buffer, and recv_from only writes to it.
    let buffer = unsafe {
        &mut *(batch.buffers[0].as_mut_slice() as *mut [u8] as *mut [std::mem::MaybeUninit<u8>])
    };
    let (len, from) = socket.recv_from(buffer)?;
    batch.lens[0] = len;
    batch.from[0] = from.as_socket();
    Ok(1)
}

/// Wakes a thread waiting in [`wait_readable`]: an `eventfd(2)` (elsewhere than Linux, a pair
/// of connected Unix datagram sockets).
pub struct Doorbell {
    fd: OwnedFd,
    #[cfg(not(target_os = "linux"))]
    ringer: std::os::unix::net::UnixDatagram,
}

impl Doorbell {
    #[cfg(not(target_os = "linux"))]
    pub fn new() -> io::Result<Doorbell> {
        let (bell, ringer) = std::os::unix::net::UnixDatagram::pair()?;
        bell.set_nonblocking(true)?;
        ringer.set_nonblocking(true)?;
        Ok(Doorbell {
            fd: OwnedFd::from(bell),
            ringer,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn ring(&self) {
        // A full socket already rings.
        let _ = self.ringer.send(&[1]);
    }

    #[cfg(not(target_os = "linux"))]
    fn clear(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live buffer of its length.
        while unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        } > 0
        {}
    }

    #[cfg(target_os = "linux")]
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Doorbell {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    #[cfg(target_os = "linux")]
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (never, in practice) already
        // rings: the result needs no check.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Silences it until the next ring.
    #[cfg(target_os = "linux")]
    fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN when it did not ring is fine.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut count as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }
}

/// Waits until `socket` has a datagram, or `doorbell` rings, for at most `limit`.
pub fn wait_readable(socket: &impl AsFd, doorbell: &Doorbell, limit: Duration) {
    let mut polls = [
        libc::pollfd {
            fd: socket.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: doorbell.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds, for the duration of the call.
    unsafe { libc::poll(polls.as_mut_ptr(), 2, limit.as_millis() as libc::c_int) };
    if polls[1].revents & libc::POLLIN != 0 {
        doorbell.clear();
    }
}

/// Waits until the socket can take a datagram, for at most [`ROOM_WAIT`]; says whether it can.
fn wait_for_room(socket: &impl AsFd) -> bool {
    let mut poll = libc::pollfd {
        fd: socket.as_fd().as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, ROOM_WAIT.as_millis() as libc::c_int) };
    // Room, or an error the next send reports; a signal that cut the wait short is no reason
    // to drop anything.
    ready > 0 || (ready < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reaches_every_address_in_order() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        let receivers: Vec<_> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for receiver in &receivers {
            receiver
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
        }
        let mut batch = OutBatch::default();
        // More than one call's worth, alternating between the two receivers.
        for round in 0..2 {
            for i in 0..BATCH as u8 {
                let to = receivers[usize::from(i % 2)].local_addr().unwrap();
                batch.next(to).extend_from_slice(&[round, i]);
            }
            assert!(batch.is_full());
            assert_eq!(
                batch.send(&sender, true),
                Sent {
                    sent: BATCH,
                    failed: 0
                }
            );
        }
        for (r, receiver) in receivers.iter().enumerate() {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            for _ in 0..BATCH {
                let n = receiver.recv(&mut buf).unwrap();
                got.push(buf[..n].to_vec());
            }
            let expected: Vec<Vec<u8>> = (0..2u8)
                .flat_map(|round| {
                    (0..BATCH as u8)
                        .filter(move |i| usize::from(i % 2) == r)
                        .map(move |i| vec![round, i])
                })
                .collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_datagram_the_kernel_refuses_is_counted_and_the_rest_go() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let mut batch = OutBatch::default();
        batch.next(to).extend_from_slice(b"first");
        // Over the largest UDP datagram: EMSGSIZE.
        batch.next(to).resize(70_000, 0);
        batch.next(to).extend_from_slice(b"last");
        assert_eq!(batch.send(&sender, true), Sent { sent: 2, failed: 1 });
        let mut buf = [0u8; 16];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first");
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"last");
    }

    #[test]
    fn datagrams_are_received_in_batches_with_their_sender() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let doorbell = Doorbell::new().unwrap();
        let mut batch = InBatch::default();
        assert_eq!(
            batch.receive(&socket).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing there: no wait"
        );
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let big = vec![7u8; 60_000];
        for i in 0..40u8 {
            let datagram = if i == 5 { big.clone() } else { vec![i; 3] };
            sender.send_to(&datagram, to).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..10 {
            wait_readable(&socket, &doorbell, Duration::from_secs(5));
            match batch.receive(&socket) {
                Ok(n) => {
                    for i in 0..n {
                        let (datagram, from) = batch.get(i).unwrap();
                        assert_eq!(from, Some(sender.local_addr().unwrap()));
                        got.push(datagram.to_vec());
                    }
                }
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::WouldBlock),
            }
            if got.len() == 40 {
                break;
            }
        }
        assert_eq!(got.len(), 40);
        assert_eq!(got[5], big, "a large datagram arrives whole");
        assert_eq!(got[39], vec![39u8; 3]);
        assert!(batch.get(IN_BATCH).is_none());
        // A ring ends a wait at once, and is taken by it.
        doorbell.ring();
        let started = std::time::Instant::now();
        wait_readable(&socket, &doorbell, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
