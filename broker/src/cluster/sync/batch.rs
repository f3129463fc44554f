//! Datagrams to several addresses, sent from the sender's thread with as few system calls as
//! possible: `sendmmsg(2)` on Linux (up to [`BATCH`] datagrams per call), one `sendto(2)` per
//! datagram elsewhere. The socket is the runtime's non-blocking one (the receiver reads it):
//! when its send buffer is full the thread waits in `poll(2)` for room, never spins.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::SockAddr;

/// Datagrams sent per system call at most.
pub const BATCH: usize = 64;
/// The longest the sender waits for room in the socket's send buffer before it drops what it
/// holds (counted): a kernel that takes nothing for as long is not going to.
const ROOM_WAIT: Duration = Duration::from_millis(200);

/// Datagrams waiting to be sent, and the buffers they are written in (kept between batches).
#[derive(Default)]
pub struct Batch {
    datagrams: Vec<Vec<u8>>,
    to: Vec<SockAddr>,
    len: usize,
}

/// What [`Batch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    pub failed: usize,
}

impl Batch {
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// A cleared buffer for the next datagram, to `to`; call [`Batch::send`] first when full.
    pub fn next(&mut self, to: SocketAddr) -> &mut Vec<u8> {
        debug_assert!(!self.is_full());
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

    /// Sends what the batch holds from `socket` and empties it. A datagram the kernel refuses
    /// (an unreachable peer reported by ICMP, a datagram too big for the route) is counted as
    /// failed and the rest still go.
    pub fn send(&mut self, socket: &impl AsFd) -> Sent {
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

/// Waits until the socket can take a datagram, for at most [`ROOM_WAIT`]; says whether it can.
fn wait_for_room(socket: &impl AsFd) -> bool {
    let mut poll = libc::pollfd {
        fd: socket.as_fd().as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, ROOM_WAIT.as_millis() as libc::c_int) };
    // Room, or an error the next send reports.
    ready > 0
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
        let mut batch = Batch::default();
        // More than one call's worth, alternating between the two receivers.
        for round in 0..2 {
            for i in 0..BATCH as u8 {
                let to = receivers[usize::from(i % 2)].local_addr().unwrap();
                batch.next(to).extend_from_slice(&[round, i]);
            }
            assert!(batch.is_full());
            assert_eq!(
                batch.send(&sender),
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
        let mut batch = Batch::default();
        batch.next(to).extend_from_slice(b"first");
        // Over the largest UDP datagram: EMSGSIZE.
        batch.next(to).resize(70_000, 0);
        batch.next(to).extend_from_slice(b"last");
        assert_eq!(batch.send(&sender), Sent { sent: 2, failed: 1 });
        let mut buf = [0u8; 16];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first");
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"last");
    }
}
