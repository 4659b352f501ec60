//! "Packet too big" answers to pods.
//!
//! A pod may send an IP packet larger than the overlay MTU (the path to a peer shrank below the
//! MTU its interface was given, or the pod ignores it). Dropping it silently black-holes the
//! connection; instead the router answers toward the sender with the ICMP error its kernel
//! expects, so the kernel lowers its path MTU for that destination and resends smaller:
//! - IPv4 with DF: ICMP type 3 code 4 "fragmentation needed" carrying the next-hop MTU
//!   (RFC 792, RFC 1191), quoting as much of the packet as fits a 576-byte ICMP datagram
//!   (RFC 1812 4.3.2.3), as Linux routers do;
//! - IPv6: ICMPv6 type 2 "Packet Too Big" (RFC 4443), quoting as much as fits 1280 bytes.
//!
//! [`too_big_reply`] builds the whole Ethernet frame to write back into the bridge. weft is a
//! layer-2 network with no address of its own on the pod network, so the reply claims to come
//! from the packet's destination: IP source = original destination, Ethernet source = original
//! destination MAC (the MAC the pod resolved for its next hop). Linux validates ICMP errors by
//! the packet they quote (its own socket's addresses and ports), not by who sent them, so it
//! accepts this; `datapath/tests/icmp.rs` checks that a real kernel lowers its path MTU.
//!
//! # What gets no answer
//!
//! Following RFC 1812 4.3.2.7 and RFC 4443 2.4(e), no error is sent about an ICMP error
//! (ICMPv4 types 3, 4, 5, 11, 12; ICMPv6 types below 128, and redirects), about a non-initial
//! fragment, to or from a group, broadcast, unspecified or loopback address (MAC or IP), so that
//! errors never multiply or go to many hosts. RFC 4443 would allow Packet Too Big for IPv6
//! multicast, but the reply's source would then be the group address, which is not a valid
//! source; weft has none of its own to use instead.
//!
//! IPv4 packets without DF are refused with [`TooBigError::MayFragment`]: the sender allows
//! fragmenting them, and the router drops and counts them rather than fragmenting in userspace.
//! Fragmenting would mean building and checksumming several packets per oversized one, to be
//! reassembled by the receiving pod's kernel where losing any fragment loses the packet; pods
//! get the overlay MTU on their interfaces, so oversized non-DF packets only appear while the
//! underlay path is below what it was configured for, which path-MTU discovery repairs.
//!
//! 802.1Q: one VLAN tag is understood and kept in the reply (so it goes back on the sender's
//! VLAN); stacked tags and 802.1ad are refused as unsupported ethertypes.
//!
//! Everything here reads untrusted bytes: it never panics, whatever the frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ETHERNET_HEADER_LEN;
use crate::mac::{Mac, is_multicast};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;

/// Smallest MTU of an IPv4 link (RFC 791): announcing less is meaningless.
pub const IPV4_MIN_MTU: u16 = 68;
/// Smallest MTU of an IPv6 link (RFC 8200); Packet Too Big never announces less.
pub const IPV6_MIN_MTU: u16 = 1280;
/// An ICMPv4 error, IP header included, stays within this (RFC 1812 4.3.2.3).
pub const ICMPV4_ERROR_MAX: usize = 576;
/// An ICMPv6 error, IPv6 header included, stays within the minimum IPv6 MTU (RFC 4443 2.4(c)).
pub const ICMPV6_ERROR_MAX: usize = IPV6_MIN_MTU as usize;
/// The largest frame [`too_big_reply`] builds: a VLAN-tagged ICMPv6 error of 1280 bytes.
pub const MAX_REPLY_LEN: usize = ETHERNET_HEADER_LEN + VLAN_TAG_LEN + ICMPV6_ERROR_MAX;

const VLAN_TAG_LEN: usize = 4;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
/// Type, code, checksum and four bytes (unused + MTU, or MTU): the same for ICMPv4 and v6.
const ICMP_HEADER_LEN: usize = 8;

const PROTO_ICMP: u8 = 1;
const NEXT_HEADER_ICMPV6: u8 = 58;
const IPV4_DF: u16 = 0x4000;
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
/// Time to live / hop limit of replies, the usual host default.
const REPLY_HOP_LIMIT: u8 = 64;
/// DSCP CS6 ("internetwork control"), which Linux gives the ICMP errors it sends.
const REPLY_TOS: u8 = 0xc0;

/// Why no reply was built. The router drops the packet either way and counts the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooBigError {
    #[error("frame cut short before the end of its headers")]
    Truncated,
    /// A header field contradicts itself or the frame; says which.
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6 (alone or in one 802.1Q tag)")]
    UnsupportedEthertype(u16),
    #[error("IPv4 packet without DF: the sender lets it be fragmented, which weft does not do")]
    MayFragment,
    #[error("a packet of {len} bytes fits the MTU of {mtu}")]
    FitsMtu { len: usize, mtu: u16 },
    #[error("an MTU of {mtu} is below the minimum of {minimum} for the packet's IP version")]
    MtuBelowMinimum { mtu: u16, minimum: u16 },
    #[error("the packet is itself an ICMP error, and errors are never answered with errors")]
    IcmpError,
    #[error("non-initial fragment: errors are only sent about first fragments")]
    NonInitialFragment,
    #[error("the source is not one unicast host (group, unspecified or loopback address)")]
    SourceNotUnicast,
    #[error("the destination is not one unicast host (group, unspecified or loopback address)")]
    DestinationNotUnicast,
}

/// Builds into `out` (cleared first; its capacity is reused) the Ethernet frame answering
/// `frame`, an oversized frame a pod sent, with "packet too big" for an overlay MTU of `mtu`
/// (the largest IP packet that fits), and returns its length (at most [`MAX_REPLY_LEN`]).
///
/// `mtu` must be at least [`IPV4_MIN_MTU`] / [`IPV6_MIN_MTU`] for the packet's IP version, and
/// the packet's IP length must exceed it. On error `out` holds nothing useful.
pub fn too_big_reply(frame: &[u8], mtu: u16, out: &mut Vec<u8>) -> Result<usize, TooBigError> {
    out.clear();
    let ethernet = Ethernet::parse(frame)?;
    if is_multicast(&ethernet.src) || ethernet.src == [0; 6] {
        return Err(TooBigError::SourceNotUnicast);
    }
    if is_multicast(&ethernet.dst) {
        return Err(TooBigError::DestinationNotUnicast);
    }
    let packet = frame
        .get(ethernet.header_len()..)
        .ok_or(TooBigError::Truncated)?;
    match ethernet.ethertype {
        ETHERTYPE_IPV4 => ipv4_reply(&ethernet, packet, mtu, out),
        ETHERTYPE_IPV6 => ipv6_reply(&ethernet, packet, mtu, out),
        other => Err(TooBigError::UnsupportedEthertype(other)),
    }
}

struct Ethernet {
    dst: Mac,
    src: Mac,
    /// Tag control information of an 802.1Q tag, if the frame had one.
    vlan_tci: Option<[u8; 2]>,
    /// Of the payload, inside the tag if there is one.
    ethertype: u16,
}

impl Ethernet {
    fn parse(frame: &[u8]) -> Result<Self, TooBigError> {
        let dst = array(frame, 0).ok_or(TooBigError::Truncated)?;
        let src = array(frame, 6).ok_or(TooBigError::Truncated)?;
        let ethertype = u16::from_be_bytes(array(frame, 12).ok_or(TooBigError::Truncated)?);
        if ethertype != ETHERTYPE_VLAN {
            return Ok(Self {
                dst,
                src,
                vlan_tci: None,
                ethertype,
            });
        }
        let tci = array(frame, 14).ok_or(TooBigError::Truncated)?;
        let inner = u16::from_be_bytes(array(frame, 16).ok_or(TooBigError::Truncated)?);
        if !matches!(inner, ETHERTYPE_IPV4 | ETHERTYPE_IPV6) {
            // Stacked tags included: one level is all pods on a bridge ever use.
            return Err(TooBigError::UnsupportedEthertype(inner));
        }
        Ok(Self {
            dst,
            src,
            vlan_tci: Some(tci),
            ethertype: inner,
        })
    }

    fn header_len(&self) -> usize {
        match self.vlan_tci {
            Some(_) => ETHERNET_HEADER_LEN + VLAN_TAG_LEN,
            None => ETHERNET_HEADER_LEN,
        }
    }

    /// Writes the reply's Ethernet header: back to the sender, from the MAC it sent to.
    fn write_reply_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        if let Some(tci) = self.vlan_tci {
            out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            out.extend_from_slice(&tci);
        }
        out.extend_from_slice(&self.ethertype.to_be_bytes());
    }
}

fn ipv4_reply(
    ethernet: &Ethernet,
    packet: &[u8],
    mtu: u16,
    out: &mut Vec<u8>,
) -> Result<usize, TooBigError> {
    let fixed: [u8; IPV4_HEADER_LEN] = array(packet, 0).ok_or(TooBigError::Truncated)?;
    let [
        version_ihl,
        _tos,
        len_hi,
        len_lo,
        _,
        _,
        frag_hi,
        frag_lo,
        _ttl,
        protocol,
        ..,
    ] = fixed;
    if version_ihl >> 4 != 4 {
        return Err(TooBigError::Malformed("IPv4 header: version is not 4"));
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN {
        return Err(TooBigError::Malformed("IPv4 header: shorter than 20 bytes"));
    }
    let header = packet.get(..header_len).ok_or(TooBigError::Truncated)?;
    // RFC 1812 5.2.2: a router checks the header before acting on it. A corrupt header's
    // addresses could name anyone.
    if checksum(header, 0) != 0 {
        return Err(TooBigError::Malformed("IPv4 header: bad checksum"));
    }
    let total_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if total_len < header_len {
        return Err(TooBigError::Malformed(
            "IPv4 header: total length below header length",
        ));
    }
    let src = Ipv4Addr::from(array::<4>(&fixed, 12).ok_or(TooBigError::Truncated)?);
    let dst = Ipv4Addr::from(array::<4>(&fixed, 16).ok_or(TooBigError::Truncated)?);
    if !is_unicast_v4(src) {
        return Err(TooBigError::SourceNotUnicast);
    }
    if !is_unicast_v4(dst) {
        return Err(TooBigError::DestinationNotUnicast);
    }
    if mtu < IPV4_MIN_MTU {
        return Err(TooBigError::MtuBelowMinimum {
            mtu,
            minimum: IPV4_MIN_MTU,
        });
    }
    if total_len <= usize::from(mtu) {
        return Err(TooBigError::FitsMtu {
            len: total_len,
            mtu,
        });
    }
    let flags_offset = u16::from_be_bytes([frag_hi, frag_lo]);
    if flags_offset & IPV4_FRAGMENT_OFFSET != 0 {
        return Err(TooBigError::NonInitialFragment);
    }
    if flags_offset & IPV4_DF == 0 {
        return Err(TooBigError::MayFragment);
    }
    if protocol == PROTO_ICMP {
        let icmp_type = *packet.get(header_len).ok_or(TooBigError::Truncated)?;
        // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
        if matches!(icmp_type, 3 | 4 | 5 | 11 | 12) {
            return Err(TooBigError::IcmpError);
        }
    }

    let quote = quote(
        packet,
        total_len,
        ICMPV4_ERROR_MAX - IPV4_HEADER_LEN - ICMP_HEADER_LEN,
    );
    let icmp_len = ICMP_HEADER_LEN + quote.len();
    // At most 576, so the cast cannot truncate.
    let ip_len = (IPV4_HEADER_LEN + icmp_len) as u16;

    let mut ip = [0u8; IPV4_HEADER_LEN];
    ip[0] = 0x45;
    ip[1] = REPLY_TOS;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    // Identification 0 with DF: an atomic datagram needs no unique ID (RFC 6864).
    ip[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
    ip[8] = REPLY_HOP_LIMIT;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&dst.octets());
    ip[16..20].copy_from_slice(&src.octets());
    let ip_checksum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    // Type 3 "destination unreachable", code 4 "fragmentation needed and DF set"; then 16
    // unused bits and the next-hop MTU (RFC 1191).
    let mut icmp = [3, 4, 0, 0, 0, 0, 0, 0];
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let icmp_checksum = checksum(quote, sum(&icmp, 0));
    icmp[2..4].copy_from_slice(&icmp_checksum.to_be_bytes());

    ethernet.write_reply_header(out);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out.extend_from_slice(quote);
    Ok(out.len())
}

fn ipv6_reply(
    ethernet: &Ethernet,
    packet: &[u8],
    mtu: u16,
    out: &mut Vec<u8>,
) -> Result<usize, TooBigError> {
    let fixed: [u8; IPV6_HEADER_LEN] = array(packet, 0).ok_or(TooBigError::Truncated)?;
    let [version_class, _, _, _, len_hi, len_lo, next_header, ..] = fixed;
    if version_class >> 4 != 6 {
        return Err(TooBigError::Malformed("IPv6 header: version is not 6"));
    }
    // A payload length of 0 would be a jumbogram, which Ethernet cannot carry: it then "fits".
    let total_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let src = Ipv6Addr::from(array::<16>(&fixed, 8).ok_or(TooBigError::Truncated)?);
    let dst = Ipv6Addr::from(array::<16>(&fixed, 24).ok_or(TooBigError::Truncated)?);
    if !is_unicast_v6(&src) {
        return Err(TooBigError::SourceNotUnicast);
    }
    if !is_unicast_v6(&dst) {
        return Err(TooBigError::DestinationNotUnicast);
    }
    if mtu < IPV6_MIN_MTU {
        return Err(TooBigError::MtuBelowMinimum {
            mtu,
            minimum: IPV6_MIN_MTU,
        });
    }
    if total_len <= usize::from(mtu) {
        return Err(TooBigError::FitsMtu {
            len: total_len,
            mtu,
        });
    }
    let declared = packet.get(..total_len).unwrap_or(packet);
    check_ipv6_upper_layer(declared, next_header)?;

    let quote = quote(
        packet,
        total_len,
        ICMPV6_ERROR_MAX - IPV6_HEADER_LEN - ICMP_HEADER_LEN,
    );
    // At most 1240, so the cast cannot truncate.
    let icmp_len = (ICMP_HEADER_LEN + quote.len()) as u16;

    let mut ip = [0u8; IPV6_HEADER_LEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&icmp_len.to_be_bytes());
    ip[6] = NEXT_HEADER_ICMPV6;
    ip[7] = REPLY_HOP_LIMIT;
    ip[8..24].copy_from_slice(&dst.octets());
    ip[24..40].copy_from_slice(&src.octets());

    // Type 2 "packet too big", code 0, then the MTU as 32 bits.
    let mut icmp = [2, 0, 0, 0, 0, 0, 0, 0];
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    // Pseudo-header (RFC 8200 8.1): source, destination, upper-layer length, next header.
    let mut pseudo = sum(&dst.octets(), 0);
    pseudo = sum(&src.octets(), pseudo);
    pseudo = sum(&u32::from(icmp_len).to_be_bytes(), pseudo);
    pseudo = sum(&[0, 0, 0, NEXT_HEADER_ICMPV6], pseudo);
    let icmp_checksum = checksum(quote, sum(&icmp, pseudo));
    icmp[2..4].copy_from_slice(&icmp_checksum.to_be_bytes());

    ethernet.write_reply_header(out);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out.extend_from_slice(quote);
    Ok(out.len())
}

/// Walks the extension headers of an IPv6 packet to its upper-layer header, refusing
/// non-initial fragments and ICMPv6 errors (and redirects, RFC 4443 2.4(e.2)). Other upper
/// layers, and headers it cannot see into (ESP), are answered.
fn check_ipv6_upper_layer(packet: &[u8], mut next_header: u8) -> Result<(), TooBigError> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTHENTICATION: u8 = 51;
    const DESTINATION_OPTIONS: u8 = 60;
    const REDIRECT: u8 = 137;

    let mut at = IPV6_HEADER_LEN;
    // Each step moves `at` forward by at least 8 and reads there, so the walk ends within the
    // packet.
    loop {
        match next_header {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                let [next, len] = array(packet, at).ok_or(TooBigError::Truncated)?;
                next_header = next;
                at = at.saturating_add((usize::from(len) + 1) * 8);
            }
            AUTHENTICATION => {
                let [next, len] = array(packet, at).ok_or(TooBigError::Truncated)?;
                next_header = next;
                at = at.saturating_add((usize::from(len) + 2) * 4);
            }
            FRAGMENT => {
                let [next, _, offset_hi, offset_lo, ..] =
                    array::<8>(packet, at).ok_or(TooBigError::Truncated)?;
                if u16::from_be_bytes([offset_hi, offset_lo]) & 0xfff8 != 0 {
                    return Err(TooBigError::NonInitialFragment);
                }
                next_header = next;
                at = at.saturating_add(8);
            }
            NEXT_HEADER_ICMPV6 => {
                let icmp_type = *packet.get(at).ok_or(TooBigError::Truncated)?;
                return if icmp_type < 128 || icmp_type == REDIRECT {
                    Err(TooBigError::IcmpError)
                } else {
                    Ok(())
                };
            }
            _ => return Ok(()),
        }
    }
}

/// The start of the packet to quote: no more than `limit` bytes, nor than the packet's own
/// length (not the Ethernet padding after it), nor than the frame holds.
fn quote(packet: &[u8], total_len: usize, limit: usize) -> &[u8] {
    let len = total_len.min(limit).min(packet.len());
    packet.get(..len).unwrap_or(packet)
}

/// One host, fit to be a source or a destination: not "this network" (0/8), loopback,
/// multicast, the reserved 240/4 or broadcast.
fn is_unicast_v4(addr: Ipv4Addr) -> bool {
    let [first, ..] = addr.octets();
    first != 0 && !addr.is_loopback() && first < 224
}

/// One host: not unspecified, loopback or multicast.
fn is_unicast_v6(addr: &Ipv6Addr) -> bool {
    !addr.is_unspecified() && !addr.is_loopback() && !addr.is_multicast()
}

/// `N` bytes at `at`, if the slice has them.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Adds `bytes` as big-endian 16-bit words (odd length: zero padded) to a ones'-complement
/// running sum. Callers chain pieces of even length before the last one.
fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        if let [hi, lo] = word {
            acc += u64::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// The Internet checksum (RFC 1071) of `bytes` after the running sum `acc`.
fn checksum(bytes: &[u8], acc: u64) -> u16 {
    let mut folded = sum(bytes, acc);
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    // The loop leaves at most 16 bits.
    !(folded as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POD_MAC: Mac = [0x02, 0x42, 0x0a, 0x20, 0x00, 0x02];
    const GW_MAC: Mac = [0x02, 0x42, 0x0a, 0x20, 0x00, 0x01];
    const POD_V4: [u8; 4] = [10, 32, 0, 2];
    const FAR_V4: [u8; 4] = [10, 40, 1, 7];
    const POD_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 2];
    const FAR_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 1, 7];

    /// A checksum verifier written independently of the code under test (RFC 1071, u32
    /// accumulator, 16-bit words summed in order): a correct checksum makes the total 0xffff.
    fn verifies(data: &[u8]) -> bool {
        let mut total: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).copied().map_or(0, u32::from);
            total += hi | lo;
            i += 2;
        }
        while total > 0xffff {
            total = (total >> 16) + (total & 0xffff);
        }
        total == 0xffff
    }

    fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// An IPv4 packet with a correct header checksum.
    fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, flags: u16, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut header = vec![0x45, 0x00];
        header.extend_from_slice(&total.to_be_bytes());
        header.extend_from_slice(&[0x1c, 0x46]); // identification
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(&[63, protocol, 0, 0]);
        header.extend_from_slice(&src);
        header.extend_from_slice(&dst);
        let sum = checksum(&header, 0);
        header[10..12].copy_from_slice(&sum.to_be_bytes());
        header.extend_from_slice(payload);
        header
    }

    fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x60, 0x0a, 0xbc, 0xde];
        packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[next_header, 64]);
        packet.extend_from_slice(&src);
        packet.extend_from_slice(&dst);
        packet.extend_from_slice(payload);
        packet
    }

    /// A TCP segment with `data` bytes of payload: ports, sequence numbers, data offset 5.
    fn tcp(flags: u8, data: usize) -> Vec<u8> {
        let mut segment = vec![0xc3, 0x50, 0x01, 0xbb]; // 50000 -> 443
        segment.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]);
        segment.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0xab, 0xcd, 0, 0]);
        segment.extend((0..data).map(|i| i as u8));
        segment
    }

    fn v4_frame(flags: u16, protocol: u8, payload: &[u8]) -> Vec<u8> {
        ethernet(
            GW_MAC,
            POD_MAC,
            ETHERTYPE_IPV4,
            &ipv4(POD_V4, FAR_V4, protocol, flags, payload),
        )
    }

    fn v6_frame(next_header: u8, payload: &[u8]) -> Vec<u8> {
        ethernet(
            GW_MAC,
            POD_MAC,
            ETHERTYPE_IPV6,
            &ipv6(POD_V6, FAR_V6, next_header, payload),
        )
    }

    fn reply(frame: &[u8], mtu: u16) -> Result<Vec<u8>, TooBigError> {
        let mut out = vec![0xee; 7]; // stale contents must not leak into the reply
        let len = too_big_reply(frame, mtu, &mut out)?;
        assert_eq!(len, out.len());
        Ok(out)
    }

    /// The fields of a parsed ICMPv4 frag-needed reply frame.
    #[derive(Debug)]
    struct V4Reply {
        dst_mac: Mac,
        src_mac: Mac,
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        mtu: u16,
        quote: Vec<u8>,
    }

    /// Parses a reply as a receiving kernel would, checking every fixed field and checksum.
    fn parse_v4_reply(frame: &[u8]) -> V4Reply {
        assert_eq!(frame[12..14], [0x08, 0x00], "ethertype IPv4");
        let ip = &frame[14..];
        assert_eq!(ip[0], 0x45, "IPv4 without options");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "total length covers exactly the rest");
        assert!(total <= ICMPV4_ERROR_MAX);
        assert_eq!(ip[6] & 0x1f, 0, "no fragment offset");
        assert_eq!(ip[7], 0);
        assert_eq!(ip[9], 1, "protocol ICMP");
        assert!(verifies(&ip[..20]), "IP header checksum");
        let icmp = &ip[20..];
        assert_eq!(
            icmp[..2],
            [3, 4],
            "destination unreachable, fragmentation needed"
        );
        assert_eq!(icmp[4..6], [0, 0], "unused");
        assert!(verifies(icmp), "ICMP checksum");
        V4Reply {
            dst_mac: frame[0..6].try_into().unwrap(),
            src_mac: frame[6..12].try_into().unwrap(),
            src: ip[12..16].try_into().unwrap(),
            dst: ip[16..20].try_into().unwrap(),
            ttl: ip[8],
            mtu: u16::from_be_bytes([icmp[6], icmp[7]]),
            quote: icmp[8..].to_vec(),
        }
    }

    #[derive(Debug)]
    struct V6Reply {
        dst_mac: Mac,
        src_mac: Mac,
        src: [u8; 16],
        dst: [u8; 16],
        hop_limit: u8,
        mtu: u32,
        quote: Vec<u8>,
    }

    fn parse_v6_reply(frame: &[u8]) -> V6Reply {
        assert_eq!(frame[12..14], [0x86, 0xdd], "ethertype IPv6");
        let ip = &frame[14..];
        assert_eq!(ip[0] >> 4, 6);
        let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        assert_eq!(
            40 + payload_len,
            ip.len(),
            "payload length covers exactly the rest"
        );
        assert!(ip.len() <= 1280, "an ICMPv6 error fits the minimum MTU");
        assert_eq!(ip[6], 58, "next header ICMPv6");
        let icmp = &ip[40..];
        assert_eq!(icmp[..2], [2, 0], "packet too big");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[8..40]);
        pseudo.extend_from_slice(&(payload_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        assert!(verifies(&pseudo), "ICMPv6 checksum over the pseudo-header");
        V6Reply {
            dst_mac: frame[0..6].try_into().unwrap(),
            src_mac: frame[6..12].try_into().unwrap(),
            src: ip[8..24].try_into().unwrap(),
            dst: ip[24..40].try_into().unwrap(),
            hop_limit: ip[7],
            mtu: u32::from_be_bytes(icmp[4..8].try_into().unwrap()),
            quote: icmp[8..].to_vec(),
        }
    }

    #[test]
    fn a_full_size_tcp_segment_with_df_gets_fragmentation_needed() {
        // What Linux sends for a 1500-byte MTU: a 1460-byte TCP segment with DF.
        let frame = v4_frame(IPV4_DF, 6, &tcp(0x18, 1460));
        let out = reply(&frame, 1390).unwrap();
        let original_ip = &frame[14..];
        let parsed = parse_v4_reply(&out);
        assert_eq!(parsed.dst_mac, POD_MAC, "back to the sender");
        assert_eq!(parsed.src_mac, GW_MAC, "from the MAC it sent to");
        assert_eq!(parsed.src, FAR_V4);
        assert_eq!(parsed.dst, POD_V4);
        assert_eq!(parsed.ttl, 64);
        assert_eq!(parsed.mtu, 1390);
        // As much as fits 576 bytes: 576 - 20 - 8 = 548 bytes of the original.
        assert_eq!(parsed.quote, original_ip[..548]);
        assert_eq!(out.len(), 14 + 576);
    }

    #[test]
    fn the_reply_to_a_tcp_syn_has_the_kernels_byte_layout() {
        // A SYN with DF, padded with 1400 bytes of TCP Fast Open data so it is oversized.
        let frame = v4_frame(IPV4_DF, 6, &tcp(0x02, 1400));
        let out = reply(&frame, 1300).unwrap();
        let header = [
            // Ethernet: to the pod, from the MAC it addressed, IPv4.
            0x02, 0x42, 0x0a, 0x20, 0x00, 0x02, 0x02, 0x42, 0x0a, 0x20, 0x00, 0x01, 0x08, 0x00,
            // IPv4: 576 bytes, ID 0, DF, TTL 64, ICMP, checksum (below), FAR -> POD.
            0x45, 0xc0, 0x02, 0x40, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 40, 1, 7,
            10, 32, 0, 2, // ICMP: type 3, code 4, checksum (below), unused, MTU 1300.
            0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x14,
        ];
        let mut got = out[..header.len()].to_vec();
        got[24..26].fill(0);
        got[36..38].fill(0);
        assert_eq!(got, header);
        // The quote starts with the original IP header, then the TCP ports and SYN flag.
        assert_eq!(out[42..62], frame[14..34]);
        assert_eq!(out[62..66], [0xc3, 0x50, 0x01, 0xbb]);
        assert_eq!(out[42 + 20 + 13], 0x02, "SYN");
        assert!(verifies(&out[14..34]));
        assert!(verifies(&out[34..]));
    }

    #[test]
    fn ipv6_gets_packet_too_big_quoting_up_to_1280_bytes() {
        let frame = v6_frame(6, &tcp(0x10, 1440));
        let out = reply(&frame, 1400).unwrap();
        let parsed = parse_v6_reply(&out);
        assert_eq!(parsed.dst_mac, POD_MAC);
        assert_eq!(parsed.src_mac, GW_MAC);
        assert_eq!(parsed.src, FAR_V6);
        assert_eq!(parsed.dst, POD_V6);
        assert_eq!(parsed.hop_limit, 64);
        assert_eq!(parsed.mtu, 1400);
        assert_eq!(parsed.quote, frame[14..14 + 1232]);
        assert_eq!(out.len(), 14 + 1280);
    }

    #[test]
    fn a_short_packet_is_quoted_whole_without_ethernet_padding() {
        // 100 bytes of IPv4 with trailing padding on the wire; the MTU is tiny.
        let mut frame = v4_frame(IPV4_DF, 17, &[7; 80]);
        frame.extend_from_slice(&[0; 10]);
        let out = reply(&frame, 68).unwrap();
        let parsed = parse_v4_reply(&out);
        assert_eq!(parsed.quote, frame[14..114]);
        assert_eq!(parsed.mtu, 68);
    }

    #[test]
    fn odd_length_quotes_checksum_correctly() {
        let frame = v4_frame(IPV4_DF, 17, &[0xab; 81]);
        parse_v4_reply(&reply(&frame, 100).unwrap());
        // An IPv6 quote is odd only when the frame ends early: a truncated capture.
        let mut frame = v6_frame(17, &[0xcd; 1301]);
        frame.truncate(14 + 141);
        let parsed = parse_v6_reply(&reply(&frame, 1280).unwrap());
        assert_eq!(parsed.quote.len(), 141);
    }

    #[test]
    fn a_vlan_tag_is_kept_in_the_reply() {
        let untagged = v4_frame(IPV4_DF, 6, &tcp(0x10, 1460));
        let mut tagged = untagged[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x64]); // priority 1, VLAN 100
        tagged.extend_from_slice(&untagged[12..]);
        let out = reply(&tagged, 1400).unwrap();
        assert_eq!(out[12..16], [0x81, 0x00, 0x20, 0x64]);
        let mut untagged_reply = out[..12].to_vec();
        untagged_reply.extend_from_slice(&out[16..]);
        assert_eq!(untagged_reply, reply(&untagged, 1400).unwrap());

        // Stacked tags and 802.1ad are not understood.
        let mut stacked = tagged[..16].to_vec();
        stacked.extend_from_slice(&tagged[12..]);
        assert_eq!(
            reply(&stacked, 1400),
            Err(TooBigError::UnsupportedEthertype(0x8100))
        );
        let mut qinq = untagged.clone();
        qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(
            reply(&qinq, 1400),
            Err(TooBigError::UnsupportedEthertype(0x88a8))
        );
    }

    #[test]
    fn without_df_the_packet_may_be_fragmented_and_gets_no_reply() {
        let frame = v4_frame(0, 6, &tcp(0x10, 1460));
        assert_eq!(reply(&frame, 1400), Err(TooBigError::MayFragment));
        // A first fragment (MF, offset 0) without DF is the same.
        let frame = v4_frame(0x2000, 17, &[0; 1460]);
        assert_eq!(reply(&frame, 1400), Err(TooBigError::MayFragment));
    }

    #[test]
    fn packets_that_fit_get_no_reply() {
        let frame = v4_frame(IPV4_DF, 6, &tcp(0x10, 1360));
        assert_eq!(
            reply(&frame, 1400),
            Err(TooBigError::FitsMtu {
                len: 1400,
                mtu: 1400
            })
        );
        let frame = v6_frame(17, &[0; 1360]);
        assert_eq!(
            reply(&frame, 1400),
            Err(TooBigError::FitsMtu {
                len: 1400,
                mtu: 1400
            })
        );
    }

    #[test]
    fn mtus_below_the_ip_minimum_are_refused() {
        let frame = v4_frame(IPV4_DF, 6, &tcp(0x10, 1460));
        assert_eq!(
            reply(&frame, 67),
            Err(TooBigError::MtuBelowMinimum {
                mtu: 67,
                minimum: 68
            })
        );
        let frame = v6_frame(6, &tcp(0x10, 1440));
        assert_eq!(
            reply(&frame, 1279),
            Err(TooBigError::MtuBelowMinimum {
                mtu: 1279,
                minimum: 1280
            })
        );
        assert!(reply(&frame, 1280).is_ok());
    }

    #[test]
    fn icmp_errors_are_never_answered() {
        for error_type in [3u8, 4, 5, 11, 12] {
            let mut icmp = vec![error_type, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&[0; 1460]);
            let frame = v4_frame(IPV4_DF, 1, &icmp);
            assert_eq!(reply(&frame, 1400), Err(TooBigError::IcmpError));
        }
        // An oversized echo request is not an error: it gets an answer.
        let mut echo = vec![8, 0, 0, 0, 0, 1, 0, 1];
        echo.extend_from_slice(&[0; 1460]);
        assert!(reply(&v4_frame(IPV4_DF, 1, &echo), 1400).is_ok());

        for error_type in [1u8, 2, 3, 4, 127, 137] {
            let mut icmp = vec![error_type, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&[0; 1440]);
            assert_eq!(
                reply(&v6_frame(58, &icmp), 1400),
                Err(TooBigError::IcmpError)
            );
        }
        let mut echo = vec![128, 0, 0, 0, 0, 1, 0, 1];
        echo.extend_from_slice(&[0; 1440]);
        assert!(reply(&v6_frame(58, &echo), 1400).is_ok());
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_find_icmp_errors_and_fragments() {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> ICMPv6 destination
        // unreachable: an error behind extension headers is still an error.
        let mut payload = vec![60, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[58, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[0; 1400]);
        assert_eq!(
            reply(&v6_frame(0, &payload), 1400),
            Err(TooBigError::IcmpError)
        );
        // The same chain ending in TCP is answered.
        payload[8] = 6;
        assert!(reply(&v6_frame(0, &payload), 1400).is_ok());

        // First fragment (offset 0, M set) of UDP: answered; a later fragment: not.
        let mut fragment = vec![17, 0, 0x00, 0x01, 0, 0, 0, 42];
        fragment.extend_from_slice(&[0; 1400]);
        assert!(reply(&v6_frame(44, &fragment), 1400).is_ok());
        fragment[2..4].copy_from_slice(&[0x05, 0xa9]); // offset 181 * 8, M set
        assert_eq!(
            reply(&v6_frame(44, &fragment), 1400),
            Err(TooBigError::NonInitialFragment)
        );

        // Authentication header: length in 4-byte units, minus 2. 16 bytes, then ICMPv6 error.
        let mut ah = vec![58, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        ah.extend_from_slice(&[2, 0, 0, 0, 0, 0, 5, 0]);
        ah.extend_from_slice(&[0; 1400]);
        assert_eq!(reply(&v6_frame(51, &ah), 1400), Err(TooBigError::IcmpError));

        // A chain running past the end of the packet.
        let truncated = v6_frame(0, &[0, 200]);
        let mut long = truncated.clone();
        long[14 + 4..14 + 6].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(reply(&long, 1400), Err(TooBigError::Truncated));
    }

    #[test]
    fn ipv4_non_initial_fragments_are_not_answered() {
        let frame = v4_frame(IPV4_DF | 185, 17, &[0; 1460]);
        assert_eq!(reply(&frame, 1400), Err(TooBigError::NonInitialFragment));
    }

    #[test]
    fn group_and_unspecified_addresses_get_no_reply() {
        let payload = tcp(0x10, 1460);
        let v4 = |src: [u8; 4], dst: [u8; 4]| {
            ethernet(
                GW_MAC,
                POD_MAC,
                ETHERTYPE_IPV4,
                &ipv4(src, dst, 6, IPV4_DF, &payload),
            )
        };
        for src in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 5], [255; 4]] {
            assert_eq!(
                reply(&v4(src, FAR_V4), 1400),
                Err(TooBigError::SourceNotUnicast)
            );
        }
        for dst in [[0, 0, 0, 0], [239, 1, 2, 3], [255; 4], [240, 0, 0, 1]] {
            assert_eq!(
                reply(&v4(POD_V4, dst), 1400),
                Err(TooBigError::DestinationNotUnicast)
            );
        }
        let v6 = |src: [u8; 16], dst: [u8; 16]| {
            ethernet(
                GW_MAC,
                POD_MAC,
                ETHERTYPE_IPV6,
                &ipv6(src, dst, 6, &payload),
            )
        };
        let multicast = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
        for src in [[0; 16], Ipv6Addr::LOCALHOST.octets(), multicast] {
            assert_eq!(
                reply(&v6(src, FAR_V6), 1400),
                Err(TooBigError::SourceNotUnicast)
            );
        }
        assert_eq!(
            reply(&v6(POD_V6, multicast), 1400),
            Err(TooBigError::DestinationNotUnicast)
        );

        let frame = v4_frame(IPV4_DF, 6, &payload);
        let mut from_group = frame.clone();
        from_group[6] |= 1;
        assert_eq!(reply(&from_group, 1400), Err(TooBigError::SourceNotUnicast));
        let mut from_zero = frame.clone();
        from_zero[6..12].fill(0);
        assert_eq!(reply(&from_zero, 1400), Err(TooBigError::SourceNotUnicast));
        let mut broadcast = frame;
        broadcast[..6].fill(0xff);
        assert_eq!(
            reply(&broadcast, 1400),
            Err(TooBigError::DestinationNotUnicast)
        );
    }

    #[test]
    fn malformed_and_truncated_packets_are_refused() {
        let frame = v4_frame(IPV4_DF, 6, &tcp(0x10, 1460));
        for len in [0, 5, 13, 14, 20, 33] {
            assert_eq!(reply(&frame[..len], 1400), Err(TooBigError::Truncated));
        }
        let mut bad_checksum = frame.clone();
        bad_checksum[14 + 10] ^= 1;
        assert_eq!(
            reply(&bad_checksum, 1400),
            Err(TooBigError::Malformed("IPv4 header: bad checksum"))
        );
        let mut bad_version = frame.clone();
        bad_version[14] = 0x65;
        assert!(matches!(
            reply(&bad_version, 1400),
            Err(TooBigError::Malformed(_))
        ));
        // IPv4 options: an IHL of 15 with only 20 bytes of header present before the frame ends.
        let mut long_header = frame[..34].to_vec();
        long_header[14] = 0x4f;
        assert_eq!(reply(&long_header, 1400), Err(TooBigError::Truncated));
        let mut short_ihl = frame.clone();
        short_ihl[14] = 0x44;
        assert!(matches!(
            reply(&short_ihl, 1400),
            Err(TooBigError::Malformed(_))
        ));

        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            reply(&arp, 1400),
            Err(TooBigError::UnsupportedEthertype(0x0806))
        );
        let v6 = v6_frame(6, &tcp(0x10, 1440));
        assert_eq!(reply(&v6[..14 + 39], 1400), Err(TooBigError::Truncated));
        let mut v6_bad_version = v6;
        v6_bad_version[14] = 0x40;
        assert!(matches!(
            reply(&v6_bad_version, 1400),
            Err(TooBigError::Malformed(_))
        ));
    }

    #[test]
    fn a_reply_is_never_answered_itself() {
        let frame = v4_frame(IPV4_DF, 6, &tcp(0x10, 1460));
        let first = reply(&frame, 1400).unwrap();
        assert_eq!(reply(&first, 68), Err(TooBigError::IcmpError));
        let frame = v6_frame(6, &tcp(0x10, 1440));
        let first = reply(&frame, 1400).unwrap();
        // 1280 bytes never exceed an IPv6 MTU, so feed it to an impossible one by pretending
        // it is larger: the ICMP check still holds once the length does not.
        let mut grown = first.clone();
        grown[14 + 4..14 + 6].copy_from_slice(&1400u16.to_be_bytes());
        assert_eq!(reply(&grown, 1280), Err(TooBigError::IcmpError));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            TooBigError::MtuBelowMinimum {
                mtu: 1000,
                minimum: 1280
            }
            .to_string(),
            "an MTU of 1000 is below the minimum of 1280 for the packet's IP version"
        );
        assert_eq!(
            TooBigError::Malformed("IPv4 header: bad checksum").to_string(),
            "malformed IPv4 header: bad checksum"
        );
    }

    /// Checks what every reply must satisfy, whatever the input it answered.
    fn check_reply(frame: &[u8], mtu: u16, out: &[u8]) -> Result<(), TestCaseError> {
        prop_assert!(out.len() <= MAX_REPLY_LEN);
        prop_assert_eq!(&out[..6], &frame[6..12]);
        prop_assert_eq!(&out[6..12], &frame[..6]);
        let tagged = frame[12..14] == [0x81, 0x00];
        let (out, frame) = if tagged {
            prop_assert_eq!(&out[12..16], &frame[12..16]);
            (
                [&out[..12], &out[16..]].concat(),
                [&frame[..12], &frame[16..]].concat(),
            )
        } else {
            (out.to_vec(), frame.to_vec())
        };
        if frame[12..14] == [0x08, 0x00] {
            let parsed = parse_v4_reply(&out);
            prop_assert_eq!(parsed.mtu, mtu);
            prop_assert_eq!(parsed.src, <[u8; 4]>::try_from(&frame[30..34]).unwrap());
            prop_assert_eq!(parsed.dst, <[u8; 4]>::try_from(&frame[26..30]).unwrap());
            prop_assert!(frame[14..].starts_with(&parsed.quote));
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            prop_assert!(parsed.quote.len() >= (ihl + 8).min(frame.len() - 14));
        } else {
            let parsed = parse_v6_reply(&out);
            prop_assert_eq!(parsed.mtu, u32::from(mtu));
            prop_assert_eq!(parsed.src, <[u8; 16]>::try_from(&frame[38..54]).unwrap());
            prop_assert_eq!(parsed.dst, <[u8; 16]>::try_from(&frame[22..38]).unwrap());
            prop_assert!(frame[14..].starts_with(&parsed.quote));
        }
        Ok(())
    }

    /// Mostly longer than the MTUs the tests pick, sometimes any length.
    fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 1460..1700),
            1 => prop::collection::vec(any::<u8>(), 0..1600),
        ]
    }

    /// An MTU the frame's IP version allows, up to 1500.
    fn mtu_for(frame: &[u8], seed: u16) -> u16 {
        let ipv6 = [0x86, 0xdd];
        if frame.get(12..14) == Some(&ipv6[..]) || frame.get(16..18) == Some(&ipv6[..]) {
            IPV6_MIN_MTU + seed % (1501 - IPV6_MIN_MTU)
        } else {
            IPV4_MIN_MTU + seed % (1501 - IPV4_MIN_MTU)
        }
    }

    /// Valid frames of either IP version, mostly oversized, sometimes VLAN-tagged.
    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        let v4 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            prop_oneof![Just(1u8), Just(6), Just(17), any::<u8>()],
            // Mostly DF with offset 0, the packets that get answers.
            prop_oneof![3 => Just(IPV4_DF), 1 => any::<u16>()],
            arb_payload(),
        )
            .prop_map(|(src, dst, protocol, flags, payload)| {
                ethernet(
                    GW_MAC,
                    POD_MAC,
                    ETHERTYPE_IPV4,
                    &ipv4(src, dst, protocol, flags, &payload),
                )
            });
        let v6 = (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            prop_oneof![
                Just(0u8),
                Just(6),
                Just(17),
                Just(44),
                Just(58),
                any::<u8>()
            ],
            arb_payload(),
        )
            .prop_map(|(src, dst, next, payload)| {
                ethernet(
                    GW_MAC,
                    POD_MAC,
                    ETHERTYPE_IPV6,
                    &ipv6(src, dst, next, &payload),
                )
            });
        (prop_oneof![v4, v6], any::<Option<[u8; 2]>>()).prop_map(|(frame, tag)| match tag {
            None => frame,
            Some(tci) => [&frame[..12], &[0x81, 0x00], &tci[..], &frame[12..]].concat(),
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            frame in prop::collection::vec(any::<u8>(), 0..1600),
            mtu in any::<u16>(),
        ) {
            let mut out = Vec::new();
            if let Ok(len) = too_big_reply(&frame, mtu, &mut out) {
                prop_assert_eq!(len, out.len());
                check_reply(&frame, mtu, &out)?;
            }
        }

        #[test]
        fn replies_to_valid_packets_parse_back_with_correct_checksums(
            frame in arb_frame(),
            mtu_seed in any::<u16>(),
        ) {
            let mtu = mtu_for(&frame, mtu_seed);
            let mut out = Vec::new();
            if too_big_reply(&frame, mtu, &mut out).is_ok() {
                check_reply(&frame, mtu, &out)?;
            }
        }

        /// Valid packets with a few bytes changed or cut off: every field is reached with
        /// nonsense in it.
        #[test]
        fn mangled_packets_never_panic(
            frame in arb_frame(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            mtu in any::<u16>(),
        ) {
            let mut frame = frame;
            for (at, byte) in edits {
                let at = at.index(frame.len());
                frame[at] = byte;
            }
            frame.truncate(cut.index(frame.len() + 1));
            let mut out = Vec::new();
            if too_big_reply(&frame, mtu, &mut out).is_ok() {
                check_reply(&frame, mtu, &out)?;
            }
        }
    }
}
