//! The router's port on the weft bridge: a TAP device.
//!
//! Frames pods send to other hosts reach the bridge, which forwards (or floods) them to this
//! port; the router reads them here and writes frames from other hosts back. With
//! `IFF_VNET_HDR` every frame is preceded by a `virtio_net_hdr`, which lets the kernel hand over
//! TCP segments of up to 64 KiB unsegmented and without checksums (offloads), which the sleeve
//! uses to cut per-packet costs.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Linux limits interface names to 15 bytes plus the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Size of `struct virtio_net_hdr` (`linux/virtio_net.h`), prepended to frames with
/// `IFF_VNET_HDR`.
pub use crate::sleeve::offload::VNET_HDR_LEN;

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
}

impl Tap {
    /// Creates (or attaches to) the TAP device `name`. The device is not persistent: it
    /// disappears when the last handle closes, so a crashed router leaves nothing behind.
    pub fn create(name: &str, vnet_hdr: bool) -> io::Result<Tap> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives for the whole call; the
        // fd is an open /dev/net/tun handle.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
            vnet_hdr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a `virtio_net_hdr` prefix.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one frame (blocking unless the descriptor was made non-blocking).
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame; the kernel takes it whole or not at all.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        let written = (&self.file).write(frame)?;
        if written != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ));
        }
        Ok(())
    }

    /// Asks the kernel to hand over (and accept) frames with offloads pending: partial
    /// checksums and TCP super-segments of up to 64 KiB, plus UDP super-segments where the
    /// kernel knows them (Linux 6.2+; skipped quietly before). Needs `IFF_VNET_HDR`. Returns
    /// the flags that took effect.
    pub fn enable_offloads(&self) -> io::Result<libc::c_uint> {
        if !self.vnet_hdr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offloads need a TAP opened with a virtio-net header",
            ));
        }
        let tcp = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        let udp = libc::TUN_F_USO4 | libc::TUN_F_USO6;
        match self.set_offload(tcp | udp) {
            Ok(()) => Ok(tcp | udp),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.set_offload(tcp)?;
                Ok(tcp)
            }
            Err(e) => Err(e),
        }
    }

    fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value, not through a pointer.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes reads return `WouldBlock` instead of waiting, so a reader can drain what is
    /// queued and then flush its batch.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on an open descriptor with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes one frame given as a header (with `IFF_VNET_HDR`: the `virtio_net_hdr`) and the
    /// frame itself, in one `writev`, so the two need not be copied together.
    pub fn write_parts(&self, header: &[u8], frame: &[u8]) -> io::Result<()> {
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point into live slices for the duration of the call; the kernel
        // only reads through them.
        let written = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if written < 0 {
            return Err(io::Error::last_os_error());
        }
        if written as usize != header.len() + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ));
        }
        Ok(())
    }

    /// Waits until a frame can be read or `timeout` passes; returns whether one is ready.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, for the duration of the call.
        let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc > 0 && pollfd.revents & libc::POLLIN != 0)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for bad in ["", "a-name-longer-than-15", "sl/ash", "sp ace"] {
            let err = Tap::create(bad, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
