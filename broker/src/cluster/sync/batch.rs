//! Datagrams in and out of the sync socket in batches, for the sender's and the receiver's
//! threads, with as few system calls as possible: `sendmmsg(2)` and `recvmmsg(2)` on Linux
//! (up to [`BATCH`] datagrams per call), one `sendto(2)`/`recvfrom(2)` per datagram elsewhere.
//!
//! On Linux, consecutive datagrams of one size to one peer (the last may be shorter) go as one
//! UDP segmentation offload send (`UDP_SEGMENT`): the kernel (or the network card) cuts it into
//! the same datagrams on the wire, so the wire and every receiver are unchanged, but the
//! stack is walked once per burst instead of once per datagram. The receiver asks for the
//! reverse (`UDP_GRO`): datagrams of one burst may come up as one, with their size, and are
//! cut apart here. On loopback that took the cost of a 1.3 KB datagram from about 3 µs of
//! CPU (sender and receiver) to about 0.25 µs. A kernel that refuses the offload gets plain
//! datagrams from then on; so does a socket whose groups are refused for other reasons 64 times
//! in a row (each such group goes again as plain datagrams).
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

/// Datagrams one segmentation offload send carries at most (the kernel's limit), and their
/// bytes (within a UDP datagram's largest payload).
const GSO_SEGMENTS: usize = 64;
const GSO_BYTES: usize = 65_000;
/// The largest datagram sent with segmentation offload: what fits a 1,500-byte MTU over IPv6
/// (link segments do; a larger datagram, which may need IP fragments, goes alone).
const GSO_SEGMENT_MAX: usize = 1_452;

/// Datagrams waiting to be sent, and the buffers they are written in (kept between batches).
#[derive(Default)]
pub struct OutBatch {
    datagrams: Vec<Vec<u8>>,
    to: Vec<SockAddr>,
    len: usize,
    /// Whether to send with segmentation offload: unknown until the first send (the kernel is
    /// asked then); no once it refused.
    offload: Option<bool>,
    /// Groups refused in a row as groups (see `group_refused`; each is sent again as plain
    /// datagrams): see [`REFUSED_GROUPS_MAX`].
    refused_groups: u32,
}

/// Groups refused in a row after which offload is turned off: a refusal that lasts (a route
/// whose MTU is below the segment size, a socket without checksums) would otherwise cost a
/// failed system call before every group.
const REFUSED_GROUPS_MAX: u32 = 64;

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
        let offload = *self
            .offload
            .get_or_insert_with(|| offload_supported(socket));
        // A group the kernel refused for another reason than the offload itself (a route with
        // a smaller MTU, a filter) goes again as plain datagrams, each failing on its own; the
        // groups after it are groups again.
        let mut plain_until = 0;
        while from < self.len {
            let plain = from < plain_until;
            let offload = offload && self.offload != Some(false) && !plain;
            let end = if plain { plain_until } else { self.len };
            let result = send_some(
                socket,
                &self.datagrams[from..end],
                &self.to[from..end],
                offload,
            );
            let group = if offload {
                grouped(&self.datagrams[from..end], &self.to[from..end])
            } else {
                1
            };
            let was_group = group > 1;
            match result {
                Ok(sent) => {
                    if was_group {
                        self.refused_groups = 0;
                    }
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
                Err(error) if was_group => {
                    // Errors a plain datagram would meet as well (a filter, no route) are not
                    // the grouping's fault.
                    if group_refused(&error) {
                        self.refused_groups += 1;
                    }
                    if offload_refused(&error) || self.refused_groups >= REFUSED_GROUPS_MAX {
                        tracing::info!(%error, refused_in_a_row = self.refused_groups,
                                       "UDP segmentation offload refused; sync datagrams go one by one from now on");
                        self.offload = Some(false);
                    } else {
                        plain_until = from + group;
                    }
                }
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

/// How many of the first datagrams of `datagrams` one segmentation offload send may carry:
/// those to the same address as the first, of its size (the last may be shorter), within the
/// kernel's limits.
fn grouped(datagrams: &[Vec<u8>], to: &[SockAddr]) -> usize {
    let Some(first) = datagrams.first() else {
        return 0;
    };
    let size = first.len();
    if size > GSO_SEGMENT_MAX {
        return 1;
    }
    let mut bytes = size;
    let mut count = 1;
    while count < datagrams.len().min(GSO_SEGMENTS) {
        let next = &datagrams[count];
        if to[count] != to[0]
            || next.is_empty()
            || next.len() > size
            || datagrams[count - 1].len() != size
            || bytes + next.len() > GSO_BYTES
        {
            break;
        }
        bytes += next.len();
        count += 1;
    }
    count
}

/// Whether a send failed because the kernel (or the route's device) does not do UDP
/// segmentation offload: EIO when the device cannot checksum it (or IPsec is in the way).
fn offload_refused(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

/// Whether `error`, returned for a group, says the kernel would not send that group as one
/// (EINVAL: no checksum, segments over the route's MTU on older kernels; EMSGSIZE: the same on
/// newer ones), rather than something its datagrams would meet one by one too.
fn group_refused(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE))
}

/// Whether the kernel knows UDP segmentation offload (Linux 4.18 and later): an older one
/// would ignore the option and send a group as one large datagram.
fn offload_supported(socket: &impl AsFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: passes a live int and its size, which the kernel writes within.
        let done = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        done == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
    }
}

/// Room for one control message holding a u16 or an int, 8-byte aligned.
#[cfg(target_os = "linux")]
type ControlBuffer = [u64; 4];

/// Sends the first datagrams of `datagrams` (to the matching `to`), those of a size to one
/// address as one segmentation offload send when `offload`; returns how many datagrams went.
#[cfg(target_os = "linux")]
fn send_some(
    socket: &impl AsFd,
    datagrams: &[Vec<u8>],
    to: &[SockAddr],
    offload: bool,
) -> io::Result<usize> {
    let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain data, for which all zeroes is a valid (empty) value.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls: [ControlBuffer; BATCH] = [[0; 4]; BATCH];
    // Where each message's datagrams end.
    let mut ends = [0usize; BATCH];
    let count = datagrams.len().min(BATCH);
    for (i, datagram) in datagrams[..count].iter().enumerate() {
        iovecs[i] = libc::iovec {
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        };
    }
    let mut messages = 0;
    let mut start = 0;
    while start < count {
        let size = if offload {
            grouped(&datagrams[start..count], &to[start..count])
        } else {
            1
        };
        let header = &mut headers[messages].msg_hdr;
        header.msg_name = to[start].as_ptr() as *mut libc::c_void;
        header.msg_namelen = to[start].len();
        // SAFETY: start + size <= count <= BATCH: within the array.
        header.msg_iov = unsafe { iovecs.as_mut_ptr().add(start) };
        header.msg_iovlen = size as _;
        if size > 1 {
            let control = &mut controls[messages];
            header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: CMSG_SPACE only computes a size.
            header.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            // SAFETY: the header points at a control buffer of msg_controllen bytes (32 >=
            // CMSG_SPACE(2) = 24), 8-byte aligned, so the first cmsghdr and its 2 data bytes lie
            // within it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(header);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                let segment = datagrams[start].len() as u16;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
            }
        }
        start += size;
        ends[messages] = start;
        messages += 1;
    }
    // SAFETY: every header points at its iovecs and one address that outlive the call, each
    // iovec at a buffer of its length, and a control buffer when it has one; the kernel only
    // reads them (and writes msg_len).
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_fd().as_raw_fd(),
            headers.as_mut_ptr(),
            messages as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match sent as usize {
        0 => 0,
        n => ends[n - 1],
    })
}

#[cfg(not(target_os = "linux"))]
fn send_some(
    socket: &impl AsFd,
    datagrams: &[Vec<u8>],
    to: &[SockAddr],
    _offload: bool,
) -> io::Result<usize> {
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
    /// What the kernel wrote in each buffer: its length, and the size of the datagrams it
    /// holds when it coalesced several (`UDP_GRO`), else 0.
    lens: Vec<(usize, usize)>,
    from: Vec<Option<SocketAddr>>,
    /// The datagrams received by the last call: buffer, start, end.
    datagrams: Vec<(usize, usize, usize)>,
    /// Buffers that held more than one datagram, over every call (for tests).
    coalesced: u64,
}

impl Default for InBatch {
    fn default() -> InBatch {
        InBatch {
            buffers: (0..IN_BATCH).map(|_| vec![0; DATAGRAM_MAX]).collect(),
            lens: vec![(0, 0); IN_BATCH],
            from: vec![None; IN_BATCH],
            datagrams: Vec::with_capacity(IN_BATCH),
            coalesced: 0,
        }
    }
}

impl InBatch {
    /// Takes the datagrams the socket holds, up to a batch of buffers, without waiting;
    /// `WouldBlock` when there are none. Returns how many datagrams it took.
    pub fn receive(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        self.datagrams.clear();
        let buffers = receive_some(socket, self)?;
        for (buffer, &(len, segment)) in self.lens[..buffers].iter().enumerate() {
            // A coalesced buffer is cut at the size the kernel gave (the last may be shorter).
            let step = if segment == 0 { len } else { segment };
            if step < len {
                self.coalesced += 1;
            }
            let mut start = 0;
            while start < len || (start == 0 && len == 0) {
                let end = (start + step).min(len);
                self.datagrams.push((buffer, start, end));
                if end == start {
                    break;
                }
                start = end;
            }
        }
        Ok(self.datagrams.len())
    }

    /// The `i`th datagram received by the last call, and who sent it.
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>)> {
        let &(buffer, start, end) = self.datagrams.get(i)?;
        Some((&self.buffers[buffer][start..end], self.from[buffer]))
    }

    /// How many buffers held more than one datagram, over every call.
    #[cfg(test)]
    pub fn coalesced(&self) -> u64 {
        self.coalesced
    }
}

/// Asks the kernel to hand up the datagrams of a burst from one sender as one (`UDP_GRO`),
/// which [`InBatch::receive`] cuts apart; says whether it will.
pub fn coalesce_received(socket: &impl AsFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        let on: libc::c_int = 1;
        // SAFETY: passes a live int of its size.
        let done = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        done == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
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
    let mut controls: [ControlBuffer; IN_BATCH] = [[0; 4]; IN_BATCH];
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
        header.msg_control = controls[i].as_mut_ptr() as *mut libc::c_void;
        header.msg_controllen = std::mem::size_of::<ControlBuffer>() as _;
    }
    // SAFETY: every header points at one iovec over a buffer of its length, at an address
    // buffer and a control buffer of their sizes, all alive for the call; the kernel writes
    // within them.
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
        let len = (headers[i].msg_len as usize).min(DATAGRAM_MAX);
        batch.lens[i] = (len, coalesced_size(&headers[i].msg_hdr));
        batch.from[i] = socket_addr(&addresses[i]);
    }
    Ok(received)
}

/// The size of the datagrams the kernel coalesced into a received message (`UDP_GRO`), if
/// it did.
#[cfg(target_os = "linux")]
fn coalesced_size(header: &libc::msghdr) -> usize {
    // SAFETY: the header's control buffer was filled by the kernel, which set msg_controllen
    // to what it wrote; the CMSG macros walk within it and CMSG_DATA of a UDP_GRO message
    // points at an int.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                return usize::try_from(size).unwrap_or(0);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    0
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
    batch.lens[0] = (len, 0);
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
    fn a_burst_to_one_peer_is_sent_and_received_whole_and_cut_into_its_datagrams() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        // One receiver asks for coalesced bursts, the other does not.
        let coalescing = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let coalesces = coalesce_received(&coalescing);
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut batch = OutBatch::default();
        let mut expected = Vec::new();
        for i in 0..21u8 {
            // 20 of one size, the last shorter: one offload send.
            let len = if i == 20 { 300 } else { 1_200 };
            let datagram = vec![i; len];
            batch
                .next(coalescing.local_addr().unwrap())
                .extend_from_slice(&datagram);
            expected.push(datagram);
        }
        for i in 0..5u8 {
            batch
                .next(plain.local_addr().unwrap())
                .extend_from_slice(&[100 + i; 1_200]);
        }
        assert_eq!(
            batch.send(&sender, true),
            Sent {
                sent: 26,
                failed: 0
            }
        );
        let offloaded = batch.offload == Some(true);
        let doorbell = Doorbell::new().unwrap();
        let mut received = InBatch::default();
        let mut got = Vec::new();
        for _ in 0..20 {
            wait_readable(&coalescing, &doorbell, Duration::from_secs(5));
            if let Ok(n) = received.receive(&coalescing) {
                for i in 0..n {
                    let (datagram, from) = received.get(i).unwrap();
                    assert_eq!(from, Some(sender.local_addr().unwrap()));
                    got.push(datagram.to_vec());
                }
            }
            if got.len() >= expected.len() {
                break;
            }
        }
        assert_eq!(got, expected, "every datagram, whole and in order");
        // Linux has both since 5.0; elsewhere neither is asked for.
        if cfg!(target_os = "linux") {
            assert!(coalesces && offloaded, "offload and coalescing on");
            assert!(received.coalesced() > 0, "the burst came up as one");
        }
        let mut buf = [0u8; 2_048];
        for i in 0..5u8 {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[100 + i; 1_200][..], "cut by the kernel");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_group_the_kernel_refuses_goes_again_as_plain_datagrams_until_offload_is_given_up() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        // Without UDP checksums the kernel refuses segmentation offload (EINVAL).
        let on: libc::c_int = 1;
        // SAFETY: passes a live int of its size.
        let set = unsafe {
            libc::setsockopt(
                sender.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut batch = OutBatch::default();
        for i in 0..10u8 {
            batch
                .next(receiver.local_addr().unwrap())
                .extend_from_slice(&[i; 1_000]);
        }
        assert_eq!(
            batch.send(&sender, true),
            Sent {
                sent: 10,
                failed: 0
            }
        );
        // EINVAL is not the offload refused: it stays on for the next batch.
        assert_eq!(batch.offload, Some(true));
        let mut buf = [0u8; 2_048];
        for i in 0..10u8 {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i; 1_000][..]);
        }
        // ... until groups have been refused REFUSED_GROUPS_MAX times in a row: then it is
        // off, and what follows goes plain at once.
        for round in 1..REFUSED_GROUPS_MAX {
            assert_eq!(batch.offload, Some(true), "round {round}");
            for _ in 0..2 {
                batch
                    .next(receiver.local_addr().unwrap())
                    .extend_from_slice(&[round as u8; 100]);
            }
            assert_eq!(batch.send(&sender, true).sent, 2);
            for _ in 0..2 {
                assert_eq!(receiver.recv(&mut buf).unwrap(), 100);
            }
        }
        assert_eq!(batch.offload, Some(false));
        // From then on plain at once: nothing more is refused.
        for _ in 0..2 {
            batch
                .next(receiver.local_addr().unwrap())
                .extend_from_slice(&[0; 100]);
        }
        assert_eq!(batch.send(&sender, true).sent, 2);
        assert_eq!(batch.refused_groups, REFUSED_GROUPS_MAX);
    }

    #[test]
    fn an_offload_send_takes_datagrams_of_one_size_to_one_address() {
        let a = SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 1)));
        let b = SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 2)));
        let sizes = |lens: &[usize]| lens.iter().map(|&n| vec![0u8; n]).collect::<Vec<_>>();
        let to = vec![a.clone(); 70];
        assert_eq!(grouped(&sizes(&[1_000; 70]), &to), GSO_SEGMENTS);
        assert_eq!(grouped(&sizes(&[1_000, 1_000, 500, 1_000]), &to), 3);
        assert_eq!(grouped(&sizes(&[1_000, 1_200]), &to), 1, "larger after");
        assert_eq!(grouped(&sizes(&[1_000, 0]), &to), 1, "empty");
        assert_eq!(
            grouped(&sizes(&[1_452; 64]), &to),
            44,
            "within 65,000 bytes"
        );
        assert_eq!(
            grouped(&sizes(&[1_453; 2]), &to),
            1,
            "over a 1,500-byte MTU"
        );
        assert_eq!(grouped(&sizes(&[1_000; 3]), &[a.clone(), a, b]), 2);
        assert_eq!(grouped(&[], &[]), 0);
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
