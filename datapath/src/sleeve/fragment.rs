//! Payloads larger than one datagram: cut into pieces by the origin, put back together by the
//! destination.
//!
//! Only offloaded super-segments (`FrameKind::Offloaded`, up to 64 KiB) are ever larger than a
//! datagram; plain frames fit the overlay MTU by construction. Each piece is a
//! `FrameKind::Fragment` frame of its own, sealed in its own datagram, so every datagram is
//! still authenticated and replay-checked on its own and relays forward pieces without
//! reassembling. A lost piece loses the whole super-segment, which TCP then resends; on the
//! loss-free links between hosts in one cluster that costs far less than segmenting every
//! super-segment in userspace.
//!
//! ```text
//! fragment payload: [id u32 BE][index u8][count u8][total u32 BE][chunk]
//! ```
//! Every piece but the last carries `ceil(total / count)` bytes; the last carries the rest.

use std::time::{Duration, Instant};

use crate::PeerId;

pub const FRAGMENT_HEADER_LEN: usize = 4 + 1 + 1 + 4;
/// The largest payload that is cut into pieces and put back together: a 64 KiB IPv6
/// super-segment with its Ethernet and offload headers fits with room to spare.
pub const MAX_REASSEMBLED: usize = 128 * 1024;
/// Pieces kept under reassembly at once, from all origins together.
pub const DEFAULT_SLOTS: usize = 32;
/// A payload still incomplete after this long will not complete (its pieces travel back to
/// back): its slot may be reused.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Chosen by the origin; unique among its recent payloads.
    pub id: u32,
    pub index: u8,
    pub count: u8,
    /// Length of the whole payload.
    pub total: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("fragment header cut short")]
    Truncated,
    #[error("fragment {index} of {count} is out of range")]
    BadIndex { index: u8, count: u8 },
    #[error("reassembled length {0} exceeds the limit")]
    TooLong(u32),
    #[error("fragment carries {got} bytes where {expected} were due")]
    WrongLength { got: usize, expected: usize },
}

impl FragmentHeader {
    pub fn to_bytes(&self) -> [u8; FRAGMENT_HEADER_LEN] {
        let mut b = [0; FRAGMENT_HEADER_LEN];
        b[..4].copy_from_slice(&self.id.to_be_bytes());
        b[4] = self.index;
        b[5] = self.count;
        b[6..].copy_from_slice(&self.total.to_be_bytes());
        b
    }

    /// Bytes each piece but the last carries.
    pub fn chunk_len(&self) -> usize {
        (self.total as usize).div_ceil(usize::from(self.count.max(1)))
    }

    /// Where this piece's chunk goes in the whole payload, and how long it must be.
    fn span(&self) -> (usize, usize) {
        let chunk = self.chunk_len();
        let offset = usize::from(self.index) * chunk;
        let len = (self.total as usize).saturating_sub(offset).min(chunk);
        (offset, len)
    }
}

/// Decodes a fragment frame's payload into its header and chunk, checking the chunk has
/// exactly the length its position implies.
pub fn parse(payload: &[u8]) -> Result<(FragmentHeader, &[u8]), FragmentError> {
    let (b, chunk) = payload
        .split_first_chunk::<FRAGMENT_HEADER_LEN>()
        .ok_or(FragmentError::Truncated)?;
    let header = FragmentHeader {
        id: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        index: b[4],
        count: b[5],
        total: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
    };
    if header.index >= header.count {
        return Err(FragmentError::BadIndex {
            index: header.index,
            count: header.count,
        });
    }
    if header.total as usize > MAX_REASSEMBLED {
        return Err(FragmentError::TooLong(header.total));
    }
    let (_, expected) = header.span();
    if chunk.len() != expected || expected == 0 {
        return Err(FragmentError::WrongLength {
            got: chunk.len(),
            expected,
        });
    }
    Ok((header, chunk))
}

/// Cuts `payload` into pieces of at most `max_chunk` bytes: yields each piece's header and
/// chunk. `None` if it would take more than 255 pieces or exceeds [`MAX_REASSEMBLED`].
pub fn split(
    payload: &[u8],
    id: u32,
    max_chunk: usize,
) -> Option<impl Iterator<Item = (FragmentHeader, &[u8])>> {
    if payload.is_empty() || payload.len() > MAX_REASSEMBLED || max_chunk == 0 {
        return None;
    }
    let count = u8::try_from(payload.len().div_ceil(max_chunk)).ok()?;
    let total = u32::try_from(payload.len()).ok()?;
    let chunk = payload.len().div_ceil(usize::from(count));
    Some(
        payload
            .chunks(chunk)
            .enumerate()
            .map(move |(index, piece)| {
                let header = FragmentHeader {
                    id,
                    // At most `count` chunks, and `count` fits u8.
                    index: u8::try_from(index).unwrap_or(u8::MAX),
                    count,
                    total,
                };
                (header, piece)
            }),
    )
}

/// What happened to payloads under reassembly, for counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub completed: u64,
    /// Payloads given up incomplete (a piece was lost, or too many arrived at once).
    pub abandoned: u64,
    /// Pieces that were already there.
    pub duplicates: u64,
}

struct Slot {
    origin: PeerId,
    header: FragmentHeader,
    /// Pieces received, by index.
    have: [u64; 4],
    received: u16,
    started: Instant,
    active: bool,
    buf: Vec<u8>,
}

impl Slot {
    fn matches(&self, origin: PeerId, header: &FragmentHeader) -> bool {
        self.active
            && self.origin == origin
            && self.header.id == header.id
            && self.header.count == header.count
            && self.header.total == header.total
    }
}

/// Puts pieces back together, in a fixed number of slots whose buffers are reused.
pub struct Reassembler {
    slots: Vec<Slot>,
    max_slots: usize,
    max_age: Duration,
    stats: ReassemblyStats,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new(DEFAULT_SLOTS, DEFAULT_MAX_AGE)
    }
}

impl Reassembler {
    pub fn new(max_slots: usize, max_age: Duration) -> Self {
        Reassembler {
            slots: Vec::new(),
            max_slots: max_slots.max(1),
            max_age,
            stats: ReassemblyStats::default(),
        }
    }

    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Adds a piece (already checked by [`parse`]) from `origin`; returns the whole payload
    /// once its last piece is in.
    pub fn insert(
        &mut self,
        origin: PeerId,
        header: FragmentHeader,
        chunk: &[u8],
        now: Instant,
    ) -> Option<&[u8]> {
        let (offset, len) = header.span();
        if chunk.len() != len || header.index >= header.count {
            return None;
        }
        let at = self.slot_for(origin, header, now);
        let slot = &mut self.slots[at];
        let (word, bit) = (usize::from(header.index) / 64, header.index % 64);
        if slot.have[word] & (1 << bit) != 0 {
            self.stats.duplicates += 1;
            return None;
        }
        slot.have[word] |= 1 << bit;
        slot.received += 1;
        slot.buf[offset..offset + len].copy_from_slice(chunk);
        if slot.received < u16::from(header.count) {
            return None;
        }
        slot.active = false;
        self.stats.completed += 1;
        Some(&slot.buf[..header.total as usize])
    }

    /// The slot collecting `origin`'s payload `header.id`: the one already open, else a free
    /// or expired one, else the oldest (abandoning its payload).
    fn slot_for(&mut self, origin: PeerId, header: FragmentHeader, now: Instant) -> usize {
        if let Some(at) = self.slots.iter().position(|s| s.matches(origin, &header)) {
            return at;
        }
        let reusable =
            |s: &Slot| !s.active || now.saturating_duration_since(s.started) > self.max_age;
        let at = match self.slots.iter().position(reusable) {
            Some(at) => at,
            None if self.slots.len() < self.max_slots => {
                self.slots.push(Slot {
                    origin,
                    header,
                    have: [0; 4],
                    received: 0,
                    started: now,
                    active: false,
                    buf: Vec::new(),
                });
                self.slots.len() - 1
            }
            None => self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.started)
                .map_or(0, |(at, _)| at),
        };
        let slot = &mut self.slots[at];
        if slot.active {
            self.stats.abandoned += 1;
        }
        slot.origin = origin;
        slot.header = header;
        slot.have = [0; 4];
        slot.received = 0;
        slot.started = now;
        slot.active = true;
        if slot.buf.len() < header.total as usize {
            slot.buf.resize(header.total as usize, 0);
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: PeerId = [2, 0, 0, 0, 0, 0xa];
    const B: PeerId = [2, 0, 0, 0, 0, 0xb];

    fn pieces(payload: &[u8], id: u32, max_chunk: usize) -> Vec<Vec<u8>> {
        split(payload, id, max_chunk)
            .unwrap()
            .map(|(h, chunk)| [&h.to_bytes()[..], chunk].concat())
            .collect()
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 256) as u8).collect()
    }

    #[test]
    fn a_super_segment_round_trips_in_order_and_reversed() {
        let data = payload(65_000);
        for reversed in [false, true] {
            let mut wire = pieces(&data, 9, 1400);
            assert_eq!(wire.len(), 47);
            if reversed {
                wire.reverse();
            }
            let mut r = Reassembler::default();
            let now = Instant::now();
            let mut out = None;
            for piece in &wire {
                let (h, chunk) = parse(piece).unwrap();
                assert!(out.is_none(), "complete before the last piece");
                out = r.insert(A, h, chunk, now).map(<[u8]>::to_vec);
            }
            assert_eq!(out.as_deref(), Some(&data[..]));
            assert_eq!(r.stats().completed, 1);
        }
    }

    #[test]
    fn duplicates_and_interleaved_origins_are_kept_apart() {
        let x = payload(5000);
        let y: Vec<u8> = payload(4000).into_iter().rev().collect();
        // The same id from two origins: two payloads.
        let (px, py) = (pieces(&x, 1, 1000), pieces(&y, 1, 1000));
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut done = Vec::new();
        for i in 0..5 {
            for (origin, list) in [(A, &px), (B, &py)] {
                let Some(piece) = list.get(i) else { continue };
                let (h, chunk) = parse(piece).unwrap();
                let last = i + 1 == list.len();
                if !last {
                    // A duplicate before completion changes nothing.
                    assert!(r.insert(origin, h, chunk, now).is_none());
                }
                if let Some(whole) = r.insert(origin, h, chunk, now) {
                    assert!(last);
                    done.push(whole.to_vec());
                }
            }
        }
        assert_eq!(done, [y, x]);
        assert_eq!(r.stats().completed, 2);
        assert_eq!(r.stats().duplicates, 7);
    }

    #[test]
    fn a_lost_piece_abandons_only_its_payload_once_slots_run_out() {
        let mut r = Reassembler::new(2, Duration::from_secs(10));
        let now = Instant::now();
        let data = payload(3000);
        for id in 0..4u32 {
            let wire = pieces(&data, id, 1000);
            // Piece 1 of payload 0 is lost.
            for (i, piece) in wire.iter().enumerate() {
                if id == 0 && i == 1 {
                    continue;
                }
                let (h, chunk) = parse(piece).unwrap();
                let whole = r.insert(A, h, chunk, now + Duration::from_millis(id.into()));
                assert_eq!(whole.is_some(), id != 0 && i == 2);
            }
        }
        assert_eq!(r.stats().completed, 3);
        // Slot of payload 0 was reused once the other slot was busy... or kept: either way at
        // most one payload was abandoned.
        assert!(r.stats().abandoned <= 1);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(parse(&[0; 9]), Err(FragmentError::Truncated));
        let h = |index, count, total: u32| {
            FragmentHeader {
                id: 1,
                index,
                count,
                total,
            }
            .to_bytes()
        };
        assert!(matches!(
            parse(&h(2, 2, 10)),
            Err(FragmentError::BadIndex { .. })
        ));
        assert!(matches!(
            parse(&h(0, 0, 10)),
            Err(FragmentError::BadIndex { .. })
        ));
        assert!(matches!(
            parse(&h(0, 1, u32::MAX)),
            Err(FragmentError::TooLong(_))
        ));
        let mut short = h(0, 2, 10).to_vec();
        short.extend_from_slice(&[0; 4]);
        assert!(matches!(
            parse(&short),
            Err(FragmentError::WrongLength { .. })
        ));
        // More pieces than the total has bytes: an empty chunk is never valid.
        assert!(parse(&h(3, 4, 2)).is_err());
        assert!(split(&[], 1, 10).is_none());
        assert!(split(&[0; 3000], 1, 10).is_none(), "more than 255 pieces");
    }

    proptest! {
        #[test]
        fn any_order_reassembles(len in 1usize..70_000, max_chunk in 200usize..2000, seed in any::<u64>()) {
            prop_assume!(len.div_ceil(max_chunk) <= 255);
            let data = payload(len);
            let mut wire = pieces(&data, 77, max_chunk);
            // A deterministic shuffle.
            let mut state = seed | 1;
            for i in (1..wire.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                wire.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut r = Reassembler::default();
            let now = Instant::now();
            let mut out = None;
            for piece in &wire {
                let (h, chunk) = parse(piece).unwrap();
                prop_assert!(chunk.len() <= max_chunk);
                if let Some(whole) = r.insert(A, h, chunk, now) {
                    out = Some(whole.to_vec());
                }
            }
            prop_assert_eq!(out, Some(data));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut r = Reassembler::new(2, Duration::from_millis(1));
            if let Ok((h, chunk)) = parse(&bytes) {
                let _ = r.insert(A, h, chunk, Instant::now());
            }
        }
    }
}
