//! The sleeve's UDP edge: datagrams to and from other routers (port 6783), in batches.
//!
//! The sleeve has to move a gigabit per second of encrypted traffic on two cores, so one
//! syscall per datagram is too many. This edge batches in the three ways Linux offers:
//! - `sendmmsg`/`recvmmsg` move up to [`MAX_BATCH`] datagrams (to or from any peers) per call;
//! - UDP GSO (`UDP_SEGMENT`): one `sendmsg` hands over one large buffer that the kernel splits
//!   into equal-size datagrams to one destination ([`UdpEdge::send_segments`]);
//! - UDP GRO (`UDP_GRO`): the kernel hands over several coalesced datagrams from one source in
//!   one buffer, with the segment size in a control message ([`RecvMeta::segment`]; split them
//!   with [`segments`]).
//!
//! One socket serves IPv4 and IPv6: a socket bound to an IPv6 address (e.g. `[::]:6783`) sends
//! to IPv4 destinations as v4-mapped addresses and reports v4-mapped sources as plain IPv4
//! addresses, so a peer's address compares equal however it was learnt. All methods take
//! `&self` and keep their scratch space on the stack, so worker threads can share one edge.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs, UdpSocket,
};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libc::{c_int, c_uint, c_void, socklen_t};

/// The most datagrams one `sendmmsg`/`recvmmsg` moves; larger send batches take several calls,
/// a receive returns at most this many datagrams (or GRO groups).
pub const MAX_BATCH: usize = 64;
/// The largest UDP payload over IPv4 (65535 − 20 − 8). Used as the limit for both families,
/// including for one GSO send (all its segments together).
pub const MAX_DATAGRAM: usize = 65507;
/// The most segments one GSO send carries: the kernel's `UDP_MAX_SEGMENTS` (64 until Linux 6.11,
/// 128 since; the smaller value works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// A receive buffer this long holds any datagram and any GRO group without truncation.
pub const RECV_BUFFER_LEN: usize = 65536;
/// Socket buffer size asked for in both directions (the kernel may grant less).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Room for the control messages of one received datagram (only `UDP_GRO` is expected).
const CONTROL_LEN: usize = 64;

/// Control-message space, aligned for `cmsghdr` (whose first field is a `size_t`).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// What one received datagram (or GRO group) was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The sender (v4-mapped IPv6 sources are reported as IPv4).
    pub src: SocketAddr,
    /// `Some(size)` when the kernel coalesced datagrams (GRO): the buffer holds datagrams of
    /// `size` bytes each, the last one possibly shorter. `None`: one datagram.
    pub segment: Option<usize>,
    /// The datagram (or group) did not fit the buffer and `len` bytes of it were kept. In a
    /// truncated GRO group, the segments before the last kept byte are whole, the last is not.
    pub truncated: bool,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            segment: None,
            truncated: false,
        }
    }
}

impl RecvMeta {
    /// The datagrams this receive put into `buf` (the buffer it was received into).
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> Segments<'a> {
        segments(&buf[..self.len.min(buf.len())], self.segment)
    }
}

/// Splits a receive buffer into its datagrams: with `segment: Some(size)` (a GRO group) into
/// pieces of `size` bytes, the last possibly shorter; with `None` (or a size of 0, which the
/// kernel never reports) the buffer is one datagram, even when empty.
pub fn segments(buf: &[u8], segment: Option<usize>) -> Segments<'_> {
    Segments {
        rest: buf,
        size: segment.filter(|s| *s > 0),
        whole: true,
    }
}

/// Iterator returned by [`segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    size: Option<usize>,
    /// For `size: None`: the single datagram has not been yielded yet.
    whole: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self.size {
            None => {
                if !self.whole {
                    return None;
                }
                self.whole = false;
                Some(mem::take(&mut self.rest))
            }
            Some(size) => {
                if self.rest.is_empty() {
                    return None;
                }
                let (head, tail) = self.rest.split_at(size.min(self.rest.len()));
                self.rest = tail;
                Some(head)
            }
        }
    }
}

/// A UDP socket with batched IO. See the module documentation.
#[derive(Debug)]
pub struct UdpEdge {
    socket: UdpSocket,
    /// The socket is AF_INET6 (IPv4 peers are reached through v4-mapped addresses).
    v6: bool,
    /// UDP GSO works; cleared for good when the kernel refuses a GSO send with EIO (a device
    /// without checksum offload on the route).
    gso: AtomicBool,
    gro: bool,
}

impl UdpEdge {
    /// Binds `addr`, asks for [`SOCKET_BUFFER_BYTES`] of socket buffer in both directions
    /// (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` when privileged, else `SO_RCVBUF`/`SO_SNDBUF`, which
    /// `net.core.rmem_max`/`wmem_max` cap; failures are ignored), enables GRO when the kernel
    /// has it and probes GSO support (`getsockopt(UDP_SEGMENT)` succeeds).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        let fd = socket.as_raw_fd();
        let size = c_int::try_from(SOCKET_BUFFER_BYTES).unwrap_or(c_int::MAX);
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(fd, libc::SOL_SOCKET, force, size).is_err() {
                let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, size);
            }
        }
        let gro = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let gso = getsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok();
        Ok(UdpEdge {
            socket,
            v6: addr.is_ipv6(),
            gso: AtomicBool::new(gso),
            gro,
        })
    }

    /// [`bind`](Self::bind) for anything that names an address (e.g. `"127.0.0.1:0"`); the
    /// first address it resolves to is used.
    pub fn bind_to(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        UdpEdge::bind(addr)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The underlying socket (for options this type does not wrap).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Whether [`send_segments`](Self::send_segments) uses UDP GSO (else it sends each segment
    /// as its own datagram, still batched with `sendmmsg`).
    pub fn supports_gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Makes [`send_segments`](Self::send_segments) send segments individually from now on,
    /// as it does on kernels without GSO (for comparisons and to exercise that path).
    pub fn disable_gso(&self) {
        self.gso.store(false, Ordering::Relaxed);
    }

    /// Whether GRO is enabled, i.e. receives may return coalesced groups.
    pub fn supports_gro(&self) -> bool {
        self.gro
    }

    /// The socket buffer sizes the kernel granted (receive, send), as it reports them (Linux
    /// doubles the requested value for its bookkeeping).
    pub fn buffer_sizes(&self) -> io::Result<(usize, usize)> {
        let fd = self.socket.as_raw_fd();
        let rcv = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        let snd = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
        Ok((
            usize::try_from(rcv).unwrap_or(0),
            usize::try_from(snd).unwrap_or(0),
        ))
    }

    /// Path-MTU discovery for this socket's datagrams. `true`: `IP_PMTUDISC_DO` (DF set, never
    /// fragmented locally; a datagram larger than the known path MTU fails with `EMSGSIZE`), as
    /// the sleeve's MTU probes need. `false`: `IP_PMTUDISC_DONT` (no DF; the kernel fragments).
    /// On an IPv6 socket both the IPv6 setting and the one for v4-mapped traffic are set.
    pub fn set_dont_fragment(&self, on: bool) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        let v4 = if on {
            libc::IP_PMTUDISC_DO
        } else {
            libc::IP_PMTUDISC_DONT
        };
        if self.v6 {
            let v6 = if on {
                libc::IPV6_PMTUDISC_DO
            } else {
                libc::IPV6_PMTUDISC_DONT
            };
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v6)?;
            // For v4-mapped destinations; refused only on IPv6-only sockets, where it is moot.
            let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4);
            Ok(())
        } else {
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4)
        }
    }

    /// The kernel's current path-MTU estimate towards `peer` (IP packet size, headers included).
    ///
    /// `IP_MTU` only answers on a connected socket, and this one is not connected (it talks to
    /// all peers), so a short-lived UDP socket of the peer's family, bound to this edge's local
    /// address when that is specific (policy routing may depend on the source), is connected to
    /// `peer` (no packet is sent) and asked for `IP_MTU`/`IPV6_MTU`. Learnt path MTUs (from ICMP
    /// "fragmentation needed"/"packet too big") live in the kernel's route cache, shared by all
    /// sockets, so the answer is the one this edge's datagrams are held to. Fails when there is
    /// no route to `peer`.
    pub fn path_mtu(&self, peer: SocketAddr) -> io::Result<u32> {
        let peer = unmap(peer);
        let local = unmap(self.local_addr()?).ip();
        let bind_ip = match (local, peer) {
            (IpAddr::V4(ip), SocketAddr::V4(_)) if !ip.is_unspecified() => IpAddr::V4(ip),
            (IpAddr::V6(ip), SocketAddr::V6(_)) if !ip.is_unspecified() => IpAddr::V6(ip),
            (_, SocketAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, SocketAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let probe = UdpSocket::bind((bind_ip, 0))?;
        probe.connect(peer)?;
        let (level, name) = match peer {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
        };
        let mtu = getsockopt_int(probe.as_raw_fd(), level, name)?;
        u32::try_from(mtu).map_err(|_| io::Error::other(format!("kernel reported MTU {mtu}")))
    }

    /// Sends `batch` in order, each item a datagram `(destination, payload)`, with one
    /// `sendmmsg` per [`MAX_BATCH`] items when nothing fails; blocks while the socket buffer is
    /// full. Returns how many datagrams were sent.
    ///
    /// Errors are per datagram and never lose the rest of the batch: every item is either
    /// sent or reported exactly once to `on_error(index, error)`, in order, so
    /// `returned + reports == batch.len()`. (`sendmmsg` stops at the first failing datagram
    /// and drops its error when some before it went out; the edge resumes right at that
    /// datagram, so its error surfaces on the next call, is reported, and the datagram
    /// skipped.) Typical per-datagram errors: `EMSGSIZE` (larger than [`MAX_DATAGRAM`], or
    /// than the path MTU with [`set_dont_fragment`](Self::set_dont_fragment)),
    /// `ENETUNREACH`/`EHOSTUNREACH`, `EAFNOSUPPORT`/`EINVAL` (an IPv6 destination on an IPv4
    /// socket). When the socket itself fails (`EAGAIN` on a socket made non-blocking, `EBADF`,
    /// `ENOTSOCK`, `EFAULT`, `ENOMEM`), trying further is pointless: that error is reported for
    /// each remaining item without more syscalls.
    pub fn send_batch(
        &self,
        batch: &[(SocketAddr, &[u8])],
        mut on_error: impl FnMut(usize, io::Error),
    ) -> usize {
        let fd = self.socket.as_raw_fd();
        let mut sent = 0;
        let mut next = 0;
        while next < batch.len() {
            let end = batch.len().min(next + MAX_BATCH);
            match send_mmsg(fd, &batch[next..end], self.v6) {
                Ok(0) => {
                    on_error(next, io::Error::from(io::ErrorKind::WriteZero));
                    next += 1;
                }
                Ok(n) => {
                    let n = n.min(end - next);
                    sent += n;
                    next += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_socket_error(&e) => {
                    for index in next..batch.len() {
                        on_error(index, copy_error(&e));
                    }
                    break;
                }
                Err(e) => {
                    on_error(next, e);
                    next += 1;
                }
            }
        }
        sent
    }

    /// Sends `buf` as datagrams of `segment` bytes each (the last may be shorter), all to
    /// `dst`. With GSO, one `sendmsg` with a `UDP_SEGMENT` control message per
    /// [`MAX_GSO_SEGMENTS`] segments (and at most [`MAX_DATAGRAM`] bytes); without, the
    /// segments go out individually through [`send_batch`](Self::send_batch). A GSO send the
    /// kernel refuses with `EIO` (no checksum offload on the route's device: GSO is then
    /// switched off for this edge) or `EINVAL` (e.g. a segment above the path MTU with DF set)
    /// is retried as individual datagrams, so the caller sees the per-datagram error
    /// (`EMSGSIZE`).
    ///
    /// An empty `buf` sends nothing. `segment == 0` is `InvalidInput`; a segment above
    /// [`MAX_DATAGRAM`] is `EMSGSIZE`. On an error, every segment was still attempted and the
    /// first error is returned; some segments may have been sent.
    pub fn send_segments(&self, dst: SocketAddr, buf: &[u8], segment: u16) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let size = usize::from(segment);
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment size 0",
            ));
        }
        if size > MAX_DATAGRAM {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        let per_send = (MAX_DATAGRAM / size).clamp(1, MAX_GSO_SEGMENTS);
        let fd = self.socket.as_raw_fd();
        let mut first_error = None;
        for chunk in buf.chunks(per_send * size) {
            let result = if chunk.len() > size && self.supports_gso() {
                match send_gso(fd, dst, chunk, segment, self.v6) {
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                        self.gso.store(false, Ordering::Relaxed);
                        self.send_each(dst, chunk, size)
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.send_each(dst, chunk, size)
                    }
                    other => other,
                }
            } else {
                self.send_each(dst, chunk, size)
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends `chunk` (at most [`MAX_BATCH`] segments) as individual datagrams.
    fn send_each(&self, dst: SocketAddr, chunk: &[u8], size: usize) -> io::Result<()> {
        let mut items: [(SocketAddr, &[u8]); MAX_BATCH] = [(dst, &[]); MAX_BATCH];
        let mut n = 0;
        for (item, seg) in items.iter_mut().zip(chunk.chunks(size)) {
            item.1 = seg;
            n += 1;
        }
        let mut first_error = None;
        self.send_batch(&items[..n], |_, e| {
            first_error.get_or_insert(e);
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams (or GRO groups) with
    /// one `recvmmsg` into the callers' buffers (each filled up to its length: a `Vec`'s `len`,
    /// not its capacity; with GRO on, use [`RECV_BUFFER_LEN`] bytes so groups are not cut) and
    /// describes datagram `i` in `meta[i]`. No allocation.
    ///
    /// Returns as soon as at least one datagram is there, with all that are queued up to the
    /// limit. Waits (`poll`) at most `timeout` (`None`: without limit; `Some(Duration::ZERO)`:
    /// not at all) and returns `Ok(0)` when nothing came; also `Ok(0)` at once when there is no
    /// buffer to fill. A pending socket error (e.g. an ICMP error queued for the socket) is
    /// returned as `Err`.
    pub fn recv_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        meta: &mut [RecvMeta],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        // A deadline too far to represent is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            match recv_mmsg(fd, bufs, meta) {
                Ok(n) => {
                    for m in &mut meta[..n] {
                        m.src = unmap(m.src);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let wait = match (timeout, deadline) {
                (None, _) | (Some(_), None) => None,
                (Some(_), Some(deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(0);
                    }
                    Some(left)
                }
            };
            wait_readable(fd, wait)?;
        }
    }
}

impl AsRawFd for UdpEdge {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A v4-mapped IPv6 address as the IPv4 address it stands for; anything else unchanged.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The address to put on the wire: on an IPv6 socket, IPv4 destinations become v4-mapped.
fn wire_addr(addr: SocketAddr, v6_socket: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => addr,
    }
}

/// Errors that are about the socket, not about one datagram.
fn is_socket_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || matches!(
            e.raw_os_error(),
            Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::ENOMEM)
        )
}

fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Converts a socket address to its C form, for the kernel: the storage and the length that
/// is used of it.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value for it.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned at least as
            // strictly (it is made to hold any socket address), so the write stays inside
            // `storage` and is aligned.
            unsafe { ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as socklen_t)
}

/// Reads a socket address the kernel wrote (`len` bytes of `storage` used). `None` for
/// families other than IPv4/IPv6 or a length too short for the family.
pub fn from_sockaddr(storage: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in and at least as aligned;
            // sockaddr_in is plain integers, for which any bytes are valid.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn setsockopt_int(fd: RawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: the option value is one c_int that lives for the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast::<c_void>(),
            mem::size_of::<c_int>() as socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(fd: RawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as socklen_t;
    // SAFETY: the kernel writes at most `len` bytes to `value`, which lives for the call.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast::<c_void>(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Waits until `fd` is readable (or has an error pending) or `timeout` passes.
fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<()> {
    let millis = match timeout {
        None => -1,
        // Rounded up, so a wait never ends before the deadline and spins.
        Some(t) => c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX),
    };
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// One `sendmmsg` of up to [`MAX_BATCH`] items (more are ignored): how many went out, or the
/// error of the first one.
fn send_mmsg(fd: RawFd, items: &[(SocketAddr, &[u8])], v6_socket: bool) -> io::Result<usize> {
    let n = items.len().min(MAX_BATCH);
    let mut addrs = [to_sockaddr(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))); MAX_BATCH];
    let mut iovs = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is plain old data (integers and pointers); all-zero (null pointers,
    // zero lengths) is a valid value for it.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    for (i, (dst, data)) in items.iter().take(n).enumerate() {
        addrs[i] = to_sockaddr(&wire_addr(*dst, v6_socket));
        iovs[i] = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: data.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&raw mut addrs[i].0).cast::<c_void>();
        h.msg_namelen = addrs[i].1;
        h.msg_iov = &raw mut iovs[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers point at addresses, iovecs and payloads that all outlive
    // the call (locals and `items`); the kernel only reads payloads on send.
    let rc = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as c_uint, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// One `sendmsg` of `buf` to `dst` with a `UDP_SEGMENT` control message (GSO), retried when
/// interrupted.
fn send_gso(
    fd: RawFd,
    dst: SocketAddr,
    buf: &[u8],
    segment: u16,
    v6_socket: bool,
) -> io::Result<()> {
    let (mut addr, addr_len) = to_sockaddr(&wire_addr(dst, v6_socket));
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; CONTROL_LEN]);
    let control_len = write_segment_cmsg(&mut control, segment);
    // SAFETY: msghdr is plain old data; all-zero is a valid value for it.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast::<c_void>();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = control_len as _;
    loop {
        // SAFETY: `msg` points at the address, iovec, payload and control buffer, which all
        // outlive the call; the kernel only reads them on send.
        let rc = unsafe { libc::sendmsg(fd, &msg, 0) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes one `SOL_UDP`/`UDP_SEGMENT` control message (a `u16`) at the start of `control`;
/// returns the control length to pass.
fn write_segment_cmsg(control: &mut Control, segment: u16) -> usize {
    let data_len = mem::size_of::<u16>() as c_uint;
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic only.
    let (space, len) = unsafe { (libc::CMSG_SPACE(data_len), libc::CMSG_LEN(data_len)) };
    let space = (space as usize).min(CONTROL_LEN);
    // SAFETY: msghdr is plain old data; all-zero is a valid value for it.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_control = control.0.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes `control` (CONTROL_LEN bytes, aligned for cmsghdr, of which
    // `space` are declared), which is at least CMSG_SPACE(2) long, so CMSG_FIRSTHDR returns a
    // pointer to its start, and the header and its two data bytes lie inside it; the data may
    // be unaligned for u16, hence write_unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return 0;
        }
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = len as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
    space
}

/// The GRO segment size among the control messages the kernel wrote (`len` bytes of
/// `control`), if any.
fn read_gro_segment(control: &Control, len: usize) -> Option<usize> {
    // SAFETY: msghdr is plain old data; all-zero is a valid value for it.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_control = control.0.as_ptr().cast_mut().cast::<c_void>();
    msg.msg_controllen = len.min(CONTROL_LEN) as _;
    let want = mem::size_of::<c_int>() as c_uint;
    // SAFETY: CMSG_LEN is arithmetic only.
    let data_end = unsafe { libc::CMSG_LEN(want) } as usize;
    let base = control.0.as_ptr() as usize;
    let declared = msg.msg_controllen as usize;
    // SAFETY: `msg` describes at most CONTROL_LEN bytes of `control`, aligned for cmsghdr;
    // CMSG_FIRSTHDR/CMSG_NXTHDR only return headers that lie inside those bytes (else null).
    // Each header's claimed length is checked against the bytes left before stepping on
    // (CMSG_NXTHDR would overflow on absurd lengths) and before reading its data; the data is
    // read with read_unaligned, so any alignment will do. Nothing is written.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let left = declared.saturating_sub(cmsg as usize - base);
            let claimed = (*cmsg).cmsg_len as usize;
            if claimed > left {
                break;
            }
            if (*cmsg).cmsg_level == libc::SOL_UDP
                && (*cmsg).cmsg_type == libc::UDP_GRO
                && claimed >= data_end
            {
                let size = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>());
                return usize::try_from(size).ok().filter(|s| *s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    None
}

/// One non-blocking `recvmmsg` into up to `min(bufs.len(), meta.len(), MAX_BATCH)` buffers.
/// `EAGAIN` when nothing is queued.
fn recv_mmsg<B: AsMut<[u8]>>(
    fd: RawFd,
    bufs: &mut [B],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value for it.
    let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control([0; CONTROL_LEN]); MAX_BATCH];
    let mut iovs = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value for it.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    for (i, buf) in bufs.iter_mut().take(n).enumerate() {
        let buf = buf.as_mut();
        iovs[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast::<c_void>(),
            iov_len: buf.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&raw mut addrs[i]).cast::<c_void>();
        h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        h.msg_iov = &raw mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].0.as_mut_ptr().cast::<c_void>();
        h.msg_controllen = CONTROL_LEN as _;
    }
    // SAFETY: the first `n` headers point at address storage, control buffers and iovecs on
    // this stack frame and at the callers' buffers (borrowed mutably for this whole function),
    // with their true lengths, so the kernel writes only inside them; no timeout pointer.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as c_uint,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = (rc as usize).min(n);
    for i in 0..got {
        let h = &hdrs[i].msg_hdr;
        meta[i] = RecvMeta {
            len: (hdrs[i].msg_len as usize).min(iovs[i].iov_len),
            src: from_sockaddr(&addrs[i], h.msg_namelen)
                .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            segment: read_gro_segment(&controls[i], h.msg_controllen as usize),
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_splits_groups_and_keeps_single_datagrams_whole() {
        let buf: Vec<u8> = (0..10).collect();
        let parts: Vec<&[u8]> = segments(&buf, Some(4)).collect();
        assert_eq!(parts, [&buf[0..4], &buf[4..8], &buf[8..10]]);
        let exact: Vec<&[u8]> = segments(&buf[..8], Some(4)).collect();
        assert_eq!(exact, [&buf[0..4], &buf[4..8]]);
        let big: Vec<&[u8]> = segments(&buf, Some(100)).collect();
        assert_eq!(big, [&buf[..]]);
        for none in [None, Some(0)] {
            let whole: Vec<&[u8]> = segments(&buf, none).collect();
            assert_eq!(whole, [&buf[..]]);
        }
        // An empty datagram is still a datagram; an empty group holds none.
        assert_eq!(segments(&[], None).count(), 1);
        assert_eq!(segments(&[], Some(4)).count(), 0);
    }

    #[test]
    fn meta_datagrams_never_read_past_the_buffer() {
        let buf = [7u8; 10];
        let meta = RecvMeta {
            len: 1000,
            segment: Some(3),
            ..RecvMeta::default()
        };
        let total: usize = meta.datagrams(&buf).map(<[u8]>::len).sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn segment_cmsg_reads_back() {
        let mut control = Control([0; CONTROL_LEN]);
        let len = write_segment_cmsg(&mut control, 1200);
        assert!(len > 0 && len <= CONTROL_LEN);
        // Not a GRO message: the reader ignores it.
        assert_eq!(read_gro_segment(&control, len), None);
        // A GRO message (as the kernel writes it: an int) after another one is found.
        let mut gro = Control([0; CONTROL_LEN]);
        let first = write_segment_cmsg(&mut gro, 7);
        let hdr = mem::size_of::<libc::cmsghdr>();
        let at = first;
        let cmsg_len = hdr + mem::size_of::<c_int>();
        gro.0[at..at + mem::size_of::<usize>()].copy_from_slice(&cmsg_len.to_ne_bytes());
        gro.0[at + mem::size_of::<usize>()..at + mem::size_of::<usize>() + 4]
            .copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        gro.0[at + mem::size_of::<usize>() + 4..at + hdr]
            .copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        gro.0[at + hdr..at + hdr + 4].copy_from_slice(&1400i32.to_ne_bytes());
        assert_eq!(read_gro_segment(&gro, at + hdr + 8), Some(1400));
        // Cut short, it is not read.
        assert_eq!(read_gro_segment(&gro, at + hdr + 2), None);
        // Garbage or short control data never panics.
        for fill in [0x00, 0x01, 0x7f, 0xff] {
            let junk = Control([fill; CONTROL_LEN]);
            for len in 0..=CONTROL_LEN + 8 {
                let _ = read_gro_segment(&junk, len);
            }
        }
        let mut junk = gro;
        for i in 0..CONTROL_LEN {
            junk.0[i] ^= 0xa5;
            for len in 0..=CONTROL_LEN {
                let _ = read_gro_segment(&junk, len);
            }
        }
    }

    #[test]
    fn mapping_round_trips() {
        let v4: SocketAddr = "10.0.0.1:6783".parse().unwrap();
        let mapped = wire_addr(v4, true);
        assert_eq!(mapped, "[::ffff:10.0.0.1]:6783".parse().unwrap());
        assert_eq!(unmap(mapped), v4);
        assert_eq!(wire_addr(v4, false), v4);
        let v6: SocketAddr = "[fd00::1]:6783".parse().unwrap();
        assert_eq!(wire_addr(v6, true), v6);
        assert_eq!(unmap(v6), v6);
    }
}
