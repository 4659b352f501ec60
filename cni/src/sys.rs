//! What std and [`weft_netlink`] do not cover: sending a gratuitous ARP from a raw `AF_PACKET`
//! socket (entering a netns is [`weft_netlink::in_netns`]). The only module with `unsafe`: each
//! block is one libc call.
#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The ARP packet (without the Ethernet header, which the kernel adds for `SOCK_DGRAM`) of a
/// gratuitous ARP request: sender and target protocol address are both `ip`.
pub fn garp_payload(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    p[4] = 6; // hlen
    p[5] = 4; // plen
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // op: request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// Broadcasts a gratuitous ARP for `ip` from interface `ifindex` (MAC `mac`) of the calling
/// thread's network namespace.
pub fn send_gratuitous_arp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; OwnedFd closes it once.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex =
        i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value before the fields are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let payload = garp_payload(mac, ip);
    // SAFETY: the buffer and the address point to live locals of the sizes passed; the socket
    // descriptor is owned by `sock` for the duration of the call.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_layout() {
        let p = garp_payload([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 32, 0, 5));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&p[14..18], &[10, 32, 0, 5]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 32, 0, 5]);
    }
}
