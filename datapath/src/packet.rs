//! Raw Ethernet frames on one device: an `AF_PACKET` socket. The VXLAN fast path sends its
//! heartbeats through one bound to the VXLAN device (so the kernel encapsulates them like pod
//! traffic: same UDP port, outer DF, MTU) and receives them on one bound to the bridge, with
//! `PACKET_ORIGDEV` telling which port they came in on.
//!
//! [`FramePort`] is what the heartbeat engine uses; [`FakeFramePort`] records and replays.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Sends and receives whole Ethernet frames on one device.
pub trait FramePort: Send {
    /// Sends one frame (destination, source, ethertype, payload).
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// One frame into `buf` and the index of the device it came in on; `None` when none is
    /// queued (never blocks).
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u32)>>;
    /// Waits until a frame can be read or `timeout` passes; whether one is ready.
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool>;
}

/// An `AF_PACKET` `SOCK_RAW` socket bound to one device and one ethertype.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl PacketSocket {
    /// A socket for frames of `ethertype` on device `ifindex` (non-blocking, close-on-exec).
    /// With `origdev`, received frames name the device they first came in on (a bridge port)
    /// rather than the device the socket is bound to.
    pub fn open(ifindex: u32, ethertype: u16, origdev: bool) -> io::Result<PacketSocket> {
        let protocol = ethertype.to_be();
        let fd = new_socket(libc::c_int::from(protocol))?;
        if origdev {
            set_flag(&fd, libc::PACKET_ORIGDEV)?;
        }
        bind_to(&fd, ifindex, protocol)?;
        Ok(PacketSocket { fd, ifindex })
    }

    /// A socket for frames of `ethertype` that come *in* on device `ifindex`, seen there before
    /// a bridge the device is a port of takes them (`recv` names `ifindex`). For a bridge port
    /// this is the way to know the port: on a socket bound to the bridge, `PACKET_ORIGDEV`
    /// names the bridge (Linux 6.18: the bridge hands local frames up in a second receive). It
    /// taps every frame the device receives (`ETH_P_ALL`, `PACKET_IGNORE_OUTGOING`) through a
    /// socket filter that keeps only frames of `ethertype` to `dst`, so the others (pod
    /// traffic) cost a short filter run and no copy, and frames it sends cost nothing.
    pub fn open_incoming(ifindex: u32, ethertype: u16, dst: [u8; 6]) -> io::Result<PacketSocket> {
        // Protocol 0 until bound: nothing is queued before the filter is in place.
        let fd = new_socket(0)?;
        let mut program = incoming_filter(ethertype, dst);
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: the program and its descriptor live for the call; the kernel copies them.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        })?;
        // Not for frames the device sends: a tap on transmit would clone every one of them (pod
        // traffic included) before the filter could drop it.
        set_flag(&fd, libc::PACKET_IGNORE_OUTGOING)?;
        bind_to(&fd, ifindex, (libc::ETH_P_ALL as u16).to_be())?;
        Ok(PacketSocket { fd, ifindex })
    }

    /// The device it is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one whole frame out of the device. `EMSGSIZE` if it exceeds the device MTU.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is a live slice for the duration of the call; the kernel only
        // reads it. The socket is bound, so no address is needed.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short send on packet socket",
            ));
        }
        Ok(())
    }

    /// One frame and the index of the device it came in on (with `origdev`: the original
    /// device), or `None` when nothing is queued. Outgoing copies are skipped.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u32)>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are live and writable for the call with the sizes given;
            // `len` is updated in place.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some((n as usize, from.sll_ifindex as u32)));
        }
    }

    /// Waits until a frame can be read or `timeout` passes; returns whether one is ready.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, for the duration of the call.
        let rc = check(unsafe { libc::poll(&mut pollfd, 1, millis) })?;
        Ok(rc > 0 && pollfd.revents & libc::POLLIN != 0)
    }
}

/// A non-blocking, close-on-exec `AF_PACKET` raw socket for `protocol` (network order).
fn new_socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers and returns a new descriptor or -1.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` is a descriptor socket() just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Turns on the `SOL_PACKET` option `option`.
fn set_flag(fd: &OwnedFd, option: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value points at a live c_int of the given size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Binds the socket to device `ifindex` for `protocol` (network order).
fn bind_to(fd: &OwnedFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    let addr = sockaddr_ll(ifindex, protocol);
    // SAFETY: `addr` is a sockaddr_ll living for the call, with its exact size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr_ll(ifindex: u32, protocol_be: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol_be;
    addr.sll_ifindex = ifindex as libc::c_int;
    addr
}

/// Classic BPF: accept frames to `dst` whose ethertype is `ethertype` and that are not
/// outgoing.
fn incoming_filter(ethertype: u16, dst: [u8; 6]) -> [libc::sock_filter; 10] {
    // BPF_LD (0) | BPF_H | BPF_ABS; BPF_LD | BPF_W (0) | BPF_ABS; BPF_JMP | BPF_JEQ | BPF_K (0).
    const LD_H_ABS: u16 = 0x08 | 0x20;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const RET_K: u16 = 0x06;
    // SKF_AD_OFF + SKF_AD_PKTTYPE: the packet type, as an ancillary load.
    const PKTTYPE: u32 = 0xffff_f000 + 4;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let dst_hi = u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]);
    let dst_lo = u32::from(u16::from_be_bytes([dst[4], dst[5]]));
    [
        op(LD_H_ABS, 0, 0, 12),
        op(JEQ_K, 0, 7, u32::from(ethertype)),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 5, dst_hi),
        op(LD_H_ABS, 0, 0, 4),
        op(JEQ_K, 0, 3, dst_lo),
        op(LD_W_ABS, 0, 0, PKTTYPE),
        op(JEQ_K, 1, 0, u32::from(libc::PACKET_OUTGOING)),
        op(RET_K, 0, 0, 0x0004_0000),
        op(RET_K, 0, 0, 0),
    ]
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FramePort for PacketSocket {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        PacketSocket::send(self, frame)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u32)>> {
        PacketSocket::recv(self, buf)
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        PacketSocket::wait_readable(self, timeout)
    }
}

#[derive(Debug, Default)]
struct FakeState {
    sent: Vec<Vec<u8>>,
    inbox: VecDeque<(Vec<u8>, u32)>,
    fail_sends: Option<(usize, i32)>,
}

/// A [`FramePort`] in memory: records what is sent, hands out what a test queued. Clones share
/// the same state, so a test keeps one while the engine owns another.
#[derive(Debug, Clone, Default)]
pub struct FakeFramePort {
    state: Arc<Mutex<FakeState>>,
}

impl FakeFramePort {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame as if it came in on device `ifindex`.
    pub fn push_incoming(&self, frame: &[u8], ifindex: u32) {
        self.lock().inbox.push_back((frame.to_vec(), ifindex));
    }

    /// Every frame sent so far.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.lock().sent.clone()
    }

    /// The frames sent so far, forgetting them.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.lock().sent)
    }

    /// The next `n` sends fail with `errno` (and are not recorded).
    pub fn fail_next_sends(&self, n: usize, errno: i32) {
        self.lock().fail_sends = (n > 0).then_some((n, errno));
    }
}

impl FramePort for FakeFramePort {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        if let Some((n, errno)) = s.fail_sends {
            s.fail_sends = (n > 1).then_some((n - 1, errno));
            return Err(io::Error::from_raw_os_error(errno));
        }
        s.sent.push(frame.to_vec());
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u32)>> {
        let Some((frame, ifindex)) = self.lock().inbox.pop_front() else {
            return Ok(None);
        };
        // Like a datagram socket: a frame longer than the buffer is cut.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(Some((n, ifindex)))
    }

    fn wait_readable(&self, _timeout: Duration) -> io::Result<bool> {
        Ok(!self.lock().inbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_records_sends_and_replays_queued_frames_in_order() {
        let port = FakeFramePort::new();
        let engine_side: Box<dyn FramePort> = Box::new(port.clone());
        engine_side.send(&[1, 2, 3]).unwrap();
        assert_eq!(port.sent(), vec![vec![1, 2, 3]]);
        let mut buf = [0u8; 2];
        assert!(!engine_side.wait_readable(Duration::ZERO).unwrap());
        assert_eq!(engine_side.recv(&mut buf).unwrap(), None);
        port.push_incoming(&[9, 8, 7], 5);
        port.push_incoming(&[6], 6);
        assert!(engine_side.wait_readable(Duration::ZERO).unwrap());
        assert_eq!(engine_side.recv(&mut buf).unwrap(), Some((2, 5)));
        assert_eq!(buf, [9, 8]);
        assert_eq!(engine_side.recv(&mut buf).unwrap(), Some((1, 6)));
        port.fail_next_sends(1, libc::ENETDOWN);
        let err = engine_side.send(&[1]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENETDOWN));
        engine_side.send(&[2]).unwrap();
        assert_eq!(port.take_sent(), vec![vec![1, 2, 3], vec![2]]);
        assert!(port.sent().is_empty());
    }

    #[test]
    fn opening_on_a_device_that_does_not_exist_fails() {
        // Without CAP_NET_RAW socket() fails first (EPERM); as root the bind does (ENODEV).
        let err = PacketSocket::open(u32::MAX >> 1, 0x88b5, true).unwrap_err();
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::ENODEV | libc::EPERM | libc::EACCES)
            ),
            "{err}"
        );
    }
}
