//! The kernel's offload metadata, carried with a frame from one TAP to another.
//!
//! With `IFF_VNET_HDR` and offloads switched on, the TAP hands the router TCP (and UDP)
//! super-segments of up to 64 KiB that the kernel has not yet cut into MTU-sized packets, and
//! packets whose checksum is still to be filled in, each preceded by a `virtio_net_hdr`
//! (`linux/virtio_net.h`) saying so. The sleeve carries that header with the frame and hands
//! both to the destination's TAP, whose kernel then segments (or passes the super-segment on to
//! the pod whole, as GRO would) and completes the checksum. One read, one seal pass and one
//! write per 64 KiB instead of per 1.4 KiB is where the sleeve's throughput comes from.
//!
//! The header's 16-bit fields are little-endian: a TAP uses the host's byte order unless told
//! otherwise, and weft runs on little-endian hosts (x86-64, arm64).

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_*` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Flag bit on `gso_type`: the TCP segment carries ECN's CWR.
pub const GSO_ECN: u8 = 0x80;

/// A decoded `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (Ethernet, IP, TCP/UDP) repeated in every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// No offload: a complete frame with a complete checksum.
    pub const NONE: VnetHeader = VnetHeader {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Splits `bytes` into the header and what follows it; `None` if it is cut short.
    pub fn split(bytes: &[u8]) -> Option<(VnetHeader, &[u8])> {
        let (header, rest) = bytes.split_first_chunk::<VNET_HDR_LEN>()?;
        Some((Self::from_bytes(header), rest))
    }

    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VnetHeader {
        let field = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        }
    }

    /// A const fn, so fixed headers (such as [`VnetHeader::NONE`]'s) can be constants.
    pub const fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let [hdr_len_0, hdr_len_1] = self.hdr_len.to_le_bytes();
        let [gso_size_0, gso_size_1] = self.gso_size.to_le_bytes();
        let [csum_start_0, csum_start_1] = self.csum_start.to_le_bytes();
        let [csum_offset_0, csum_offset_1] = self.csum_offset.to_le_bytes();
        [
            self.flags,
            self.gso_type,
            hdr_len_0,
            hdr_len_1,
            gso_size_0,
            gso_size_1,
            csum_start_0,
            csum_start_1,
            csum_offset_0,
            csum_offset_1,
        ]
    }

    /// Whether the frame needs nothing from the kernel: it can travel as a plain Ethernet
    /// frame (`FLAG_DATA_VALID` is only a hint and may be dropped).
    pub fn is_plain(&self) -> bool {
        self.flags & !FLAG_DATA_VALID == 0 && self.gso_type == GSO_NONE
    }

    /// Whether the frame is a super-segment the kernel still has to cut.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// The largest Ethernet frame this frame becomes on the wire: one segment (headers plus
    /// `gso_size` bytes) for a super-segment, else the frame itself.
    pub fn wire_frame_len(&self, frame_len: usize) -> usize {
        if self.is_gso() {
            frame_len.min(usize::from(self.hdr_len) + usize::from(self.gso_size))
        } else {
            frame_len
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_kernel_tcp_super_segment_header_decodes() {
        // As read from a TAP for a 64 KiB TCP/IPv4 send: NEEDS_CSUM, TCPV4, headers 66 bytes,
        // MSS 1448, checksum from byte 34 (after Ethernet + IPv4), field 16 bytes into TCP.
        let bytes = [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let (header, rest) = VnetHeader::split(&bytes).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            header,
            VnetHeader {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(header.is_gso() && !header.is_plain());
        assert_eq!(header.wire_frame_len(65000), 66 + 1448);
        assert_eq!(header.to_bytes(), bytes);
    }

    #[test]
    fn plain_and_checksum_only_headers() {
        assert!(VnetHeader::NONE.is_plain() && !VnetHeader::NONE.is_gso());
        let valid = VnetHeader {
            flags: FLAG_DATA_VALID,
            ..VnetHeader::NONE
        };
        assert!(valid.is_plain());
        let partial = VnetHeader {
            flags: FLAG_NEEDS_CSUM,
            ..VnetHeader::NONE
        };
        assert!(!partial.is_plain() && !partial.is_gso());
        assert_eq!(partial.wire_frame_len(1400), 1400);
        let ecn_only = VnetHeader {
            gso_type: GSO_ECN,
            ..VnetHeader::NONE
        };
        assert!(!ecn_only.is_gso());
        assert!(VnetHeader::split(&[0; VNET_HDR_LEN - 1]).is_none());
    }

    proptest! {
        #[test]
        fn bytes_round_trip(bytes in any::<[u8; VNET_HDR_LEN]>()) {
            prop_assert_eq!(VnetHeader::from_bytes(&bytes).to_bytes(), bytes);
        }
    }
}
