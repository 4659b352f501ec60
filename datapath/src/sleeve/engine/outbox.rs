//! Datagrams being gathered for each next hop by one of the engine's threads, sealed and sent
//! together (UDP GSO runs) by [`Outbox::flush`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::link::PeerLink;
use super::{Shared, add, bump, lock};
use crate::mac::format_mac;
use crate::sleeve::batch::DatagramBatch;
use crate::sleeve::codec::FrameKind;
use crate::sleeve::fragment;
use crate::sleeve::offload::VnetHeader;
use crate::{ETHERNET_HEADER_LEN, PeerId};

/// A frame as read from the TAP, split once.
#[derive(Clone, Copy)]
pub(super) struct TapFrame<'a> {
    pub(super) offload: VnetHeader,
    /// The offload header and the frame, as read.
    pub(super) raw: &'a [u8],
    /// The Ethernet frame after the offload header.
    pub(super) frame: &'a [u8],
}

pub(super) struct Outbox {
    hops: Vec<(PeerId, Arc<PeerLink>, DatagramBatch)>,
    /// Entries of `hops` in use; the rest keep their buffers for later batches.
    used: usize,
    /// Where `Shared::too_big` builds its ICMP replies, so oversized frames allocate nothing.
    pub(super) reply: Vec<u8>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            hops: Vec::new(),
            used: 0,
            reply: Vec::with_capacity(crate::icmp::MAX_REPLY_LEN),
        }
    }
}

impl Outbox {
    fn batch(&mut self, shared: &Shared, hop: PeerId) -> Option<&mut DatagramBatch> {
        let at = match self.hops[..self.used]
            .iter()
            .position(|(id, ..)| *id == hop)
        {
            Some(at) => at,
            None => {
                let link = shared.link(&hop)?;
                if self.used == self.hops.len() {
                    self.hops.push((hop, link.clone(), DatagramBatch::new()));
                }
                let entry = &mut self.hops[self.used];
                entry.0 = hop;
                entry.1 = link;
                let max_datagram = entry.1.max_datagram.load(Ordering::Relaxed);
                entry.2.reset(&entry.1.header, max_datagram);
                self.used += 1;
                self.used - 1
            }
        };
        Some(&mut self.hops[at].2)
    }

    /// Queues one frame for `hop`; counts it as dropped when there is no link or it is too big.
    pub(super) fn push(
        &mut self,
        shared: &Shared,
        hop: PeerId,
        kind: FrameKind,
        src: PeerId,
        dst: PeerId,
        parts: &[&[u8]],
    ) -> bool {
        let Some(batch) = self.batch(shared, hop) else {
            bump(&shared.counters.drop_no_route);
            return false;
        };
        match batch.push(kind, src, dst, parts) {
            Ok(()) => true,
            Err(_) => {
                bump(&shared.counters.drop_too_big);
                false
            }
        }
    }

    /// Queues an Ethernet frame read from the TAP for `hop`, in pieces if it does not fit one
    /// datagram.
    pub(super) fn push_ethernet(
        &mut self,
        shared: &Shared,
        hop: PeerId,
        src: PeerId,
        dst: PeerId,
        tap_frame: &TapFrame<'_>,
    ) -> bool {
        let TapFrame {
            offload,
            raw,
            frame,
        } = *tap_frame;
        let Some(batch) = self.batch(shared, hop) else {
            bump(&shared.counters.drop_no_route);
            return false;
        };
        let max_payload = batch.max_payload();
        if !offload.is_gso() && frame.len() > max_payload {
            // One packet larger than the path to this peer carries: tell the pod, as a router
            // would. (Super-segments are cut into pieces instead: their packets fit the pods'
            // MTU, only the datagrams carrying them would not.)
            shared.too_big(
                frame,
                max_payload.saturating_sub(ETHERNET_HEADER_LEN),
                &mut self.reply,
            );
            return false;
        }
        if offload.is_plain() {
            return batch.push(FrameKind::Ethernet, src, dst, &[frame]).is_ok();
        }
        if raw.len() <= max_payload {
            return batch.push(FrameKind::Offloaded, src, dst, &[raw]).is_ok();
        }
        let id = shared.next_fragment_id.fetch_add(1, Ordering::Relaxed);
        let max_chunk = max_payload.saturating_sub(fragment::FRAGMENT_HEADER_LEN);
        let Some(pieces) = fragment::split(raw, id, max_chunk) else {
            bump(&shared.counters.drop_too_big);
            return false;
        };
        for (header, chunk) in pieces {
            if batch
                .push(FrameKind::Fragment, src, dst, &[&header.to_bytes(), chunk])
                .is_err()
            {
                bump(&shared.counters.drop_too_big);
                return false;
            }
        }
        true
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.hops[..self.used]
            .iter()
            .map(|(_, _, b)| b.bytes())
            .sum()
    }

    /// Seals and sends everything gathered, then empties the outbox.
    pub(super) fn flush(&mut self, shared: &Shared) {
        let counters = &shared.counters;
        for (hop, link, batch) in &mut self.hops[..self.used] {
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = batch.seal(&mut lock(&link.encap)) {
                tracing::error!(error = %e, peer = %format_mac(hop), "cannot seal for peer");
                continue;
            }
            add(&counters.frames_out, batch.frames());
            for (run, size) in batch.runs() {
                let Ok(segment) = u16::try_from(size) else {
                    continue;
                };
                match shared.udp.send_segments(link.addr, run, segment) {
                    Ok(()) => {
                        let datagrams = run.len().div_ceil(size);
                        add(&counters.datagrams_out, datagrams);
                        add(&counters.bytes_out, run.len());
                        add(&link.counters.datagrams_out, datagrams);
                        add(&link.counters.bytes_out, run.len());
                    }
                    Err(e) => {
                        bump(&counters.send_errors);
                        bump(&link.counters.send_errors);
                        tracing::debug!(error = %e, addr = %link.addr, "sleeve send failed");
                    }
                }
            }
        }
        self.used = 0;
    }
}
