//! Datagrams to one next hop, built back to back in one reused buffer and sent together.
//!
//! A reader of the TAP (or of the UDP socket, when relaying) drains what is queued, packs the
//! frames for each next hop into as few datagrams as fit the path MTU, seals them all under one
//! lock of the link's encapsulator, and hands them to the kernel in runs of equal-size datagrams
//! (one UDP GSO `sendmsg` per run, see [`DatagramBatch::runs`]). Small frames (TCP ACKs, ARP)
//! share datagrams; the pieces of a super-segment fill theirs exactly, so they form one run.

use super::codec::{EncapError, Encapsulator, FRAME_HEADER_LEN, FrameKind, write_frame};
use crate::PeerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a frame of {len} bytes does not fit a datagram of at most {max_len}")]
pub struct FrameTooBig {
    pub len: usize,
    pub max_len: usize,
}

#[derive(Debug, Default)]
pub struct DatagramBatch {
    buf: Vec<u8>,
    /// Where each datagram starts; the last one is still open for frames.
    starts: Vec<usize>,
    /// The datagram header of the link (as [`Encapsulator::begin`] writes it, before sealing).
    header: Vec<u8>,
    max_datagram: usize,
    frames: usize,
}

impl DatagramBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the batch (keeping its memory) for datagrams of at most `max_datagram` bytes
    /// starting with `header`: what [`Encapsulator::begin`] writes for the link. It depends
    /// only on the sender and whether the link seals, so a link can compute it once and the
    /// encapsulator need not be locked until [`seal`](Self::seal).
    pub fn reset(&mut self, header: &[u8], max_datagram: usize) {
        self.buf.clear();
        self.starts.clear();
        self.header.clear();
        self.header.extend_from_slice(header);
        self.max_datagram = max_datagram;
        self.frames = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Frames pushed since the last reset.
    pub fn frames(&self) -> usize {
        self.frames
    }

    pub fn datagrams(&self) -> usize {
        self.starts.len()
    }

    /// Bytes of all datagrams so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The largest payload a frame can have and still fit a datagram of its own.
    pub fn max_payload(&self) -> usize {
        self.max_datagram
            .saturating_sub(self.header.len() + FRAME_HEADER_LEN)
            .min(usize::from(u16::MAX))
    }

    /// Appends a frame whose payload is the concatenation of `parts`: to the open datagram if
    /// it fits there, else to a new one.
    pub fn push(
        &mut self,
        kind: FrameKind,
        src: PeerId,
        dst: PeerId,
        parts: &[&[u8]],
    ) -> Result<(), FrameTooBig> {
        let payload: usize = parts.iter().map(|part| part.len()).sum();
        if payload > self.max_payload() {
            return Err(FrameTooBig {
                len: payload + FRAME_HEADER_LEN,
                max_len: self.max_payload() + FRAME_HEADER_LEN,
            });
        }
        let open_len = self.starts.last().map(|start| self.buf.len() - start);
        let fits =
            open_len.is_some_and(|len| len + FRAME_HEADER_LEN + payload <= self.max_datagram);
        if !fits {
            self.starts.push(self.buf.len());
            self.buf.extend_from_slice(&self.header);
        }
        write_frame(&mut self.buf, kind, src, dst, parts);
        self.frames += 1;
        Ok(())
    }

    /// Seals every datagram with `encap` (the link's, whose header was given to
    /// [`reset`](Self::reset)).
    /// On an error nothing must be sent: the batch is emptied.
    pub fn seal(&mut self, encap: &mut Encapsulator) -> Result<(), EncapError> {
        let mut end = self.buf.len();
        for &start in self.starts.iter().rev() {
            if let Err(e) = encap.finish(&mut self.buf[start..end]) {
                self.buf.clear();
                self.starts.clear();
                return Err(e);
            }
            end = start;
        }
        Ok(())
    }

    fn len_of(&self, i: usize) -> usize {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.buf.len());
        end - self.starts[i]
    }

    /// The datagrams as runs for UDP GSO: each item is a stretch of the buffer made of
    /// datagrams of `size` bytes, the last possibly shorter (exactly what one GSO send takes).
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            batch: self,
            next: 0,
        }
    }
}

/// Iterator returned by [`DatagramBatch::runs`]: `(bytes, segment size)`.
pub struct Runs<'a> {
    batch: &'a DatagramBatch,
    next: usize,
}

impl<'a> Iterator for Runs<'a> {
    type Item = (&'a [u8], usize);

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.batch.starts.len();
        let first = self.next;
        if first >= n {
            return None;
        }
        let size = self.batch.len_of(first);
        let mut end = first + 1;
        while end < n && self.batch.len_of(end) == size {
            end += 1;
        }
        if end < n && self.batch.len_of(end) < size {
            end += 1;
        }
        self.next = end;
        let from = self.batch.starts[first];
        let to = self
            .batch
            .starts
            .get(end)
            .copied()
            .unwrap_or(self.batch.buf.len());
        Some((&self.batch.buf[from..to], size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sleeve::codec::{Decapsulator, Frame};
    use crate::udp::segments;
    use weft_crypto::SecretKey;

    const ALICE: PeerId = [2, 0, 0, 0, 0, 0xa];
    const BOB: PeerId = [2, 0, 0, 0, 0, 0xb];

    fn links(sealed: bool) -> (Encapsulator, Decapsulator) {
        let key = || Box::new(|_| SecretKey::from_bytes([5; 32])) as _;
        if sealed {
            (
                Encapsulator::sealed(ALICE, key()),
                Decapsulator::sealed(ALICE, key()),
            )
        } else {
            (Encapsulator::plain(ALICE), Decapsulator::plain(ALICE))
        }
    }

    /// The datagram header `encap` writes, as `reset` takes it.
    fn header(encap: &Encapsulator) -> Vec<u8> {
        let mut header = Vec::new();
        encap.begin(&mut header);
        header
    }

    /// Pushes `payloads` and returns, per datagram received, the payloads it carried.
    fn round_trip(
        sealed: bool,
        max: usize,
        payloads: &[Vec<u8>],
    ) -> (Vec<Vec<Vec<u8>>>, Vec<usize>) {
        let (mut encap, mut decap) = links(sealed);
        let mut batch = DatagramBatch::new();
        batch.reset(&header(&encap), max);
        for p in payloads {
            batch.push(FrameKind::Ethernet, ALICE, BOB, &[p]).unwrap();
        }
        assert_eq!(batch.frames(), payloads.len());
        batch.seal(&mut encap).unwrap();
        let mut received = Vec::new();
        let mut sizes = Vec::new();
        for (run, size) in batch.runs() {
            sizes.push(size);
            for datagram in segments(run, Some(size)) {
                assert!(datagram.len() <= max);
                let mut copy = datagram.to_vec();
                let frames: Vec<Vec<u8>> = decap
                    .decapsulate(&mut copy)
                    .unwrap()
                    .map(|f: Result<Frame<'_>, _>| f.unwrap().payload.to_vec())
                    .collect();
                received.push(frames);
            }
        }
        (received, sizes)
    }

    #[test]
    fn small_frames_share_datagrams_and_order_is_kept() {
        for sealed in [false, true] {
            let payloads: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i; 60]).collect();
            let (received, _) = round_trip(sealed, 1472, &payloads);
            assert!(
                received.len() < 5,
                "30 small frames took {} datagrams",
                received.len()
            );
            let flat: Vec<Vec<u8>> = received.into_iter().flatten().collect();
            assert_eq!(flat, payloads);
        }
    }

    #[test]
    fn full_size_pieces_form_one_gso_run_with_a_short_tail() {
        let (encap, _) = links(true);
        let mut batch = DatagramBatch::new();
        batch.reset(&header(&encap), 1472);
        let full = batch.max_payload();
        let mut payloads = vec![vec![7u8; full]; 10];
        payloads.push(vec![8u8; 100]);
        let (received, sizes) = round_trip(true, 1472, &payloads);
        assert_eq!(sizes, [1472]);
        assert_eq!(received.len(), 11);
    }

    #[test]
    fn mixed_sizes_split_into_runs() {
        let payloads = vec![
            vec![1u8; 1000],
            vec![2u8; 1000],
            vec![3u8; 200],
            vec![4u8; 1000],
        ];
        let (received, sizes) = round_trip(false, 1100, &payloads);
        assert_eq!(received.len(), 4);
        // [1000, 1000, 200] is one run (equal sizes and a shorter tail), then [1000].
        assert_eq!(sizes.len(), 2);
    }

    #[test]
    fn a_frame_larger_than_a_datagram_is_refused() {
        let (encap, _) = links(false);
        let mut batch = DatagramBatch::new();
        batch.reset(&header(&encap), 500);
        let err = batch
            .push(FrameKind::Ethernet, ALICE, BOB, &[&[0; 600]])
            .unwrap_err();
        assert_eq!(err.max_len, 500 - encap.header_len());
        assert!(batch.is_empty());
    }
}
