//! Sleeve datagrams: frames in, UDP payloads out, and back (layout in `docs/sleeve.md`).
//!
//! ```text
//! sealed: [kind=0x02][sender name 6][epoch u16 BE][counter u32 BE][tag 16][ciphertext: frames]
//! plain:  [kind=0x01][sender name 6][frames]
//! frames: repeated [frame kind u8][src peer 6][dst peer 6][len u16 BE][len bytes]
//! ```
//!
//! One [`Encapsulator`] and one [`Decapsulator`] exist per peer connection and direction.
//! Encapsulation writes into a caller's reused buffer and decapsulation works in place,
//! returning the frames as slices of the datagram, so nothing allocates per packet.
//!
//! # What authenticates the header
//!
//! secretbox has no associated data, yet every header field is bound:
//! - epoch and counter make up the nonce, so changing either makes the tag fail to verify
//!   (and a changed epoch also selects another key);
//! - the sender name picks the decapsulator, and each decapsulator holds the key of exactly
//!   one sender→receiver direction, so a datagram relabelled with another sender meets a key
//!   it was not sealed with;
//! - the kind is fixed per connection: a sealed connection refuses plain datagrams and vice
//!   versa, so downgrading a datagram to plain gets it rejected.
//!
//! # Rekeying
//!
//! The sender moves to the next epoch (fresh key, counter 0) after `rekey_after` datagrams, so
//! a (key, nonce) pair is never reused. The receiver accepts the current epoch, the previous
//! one (datagrams still in flight) and the next one, which becomes current once a datagram of
//! it authenticates. Each kept epoch has its own [`ReplayWindow`], moved only by authenticated
//! datagrams.

use std::fmt;
use std::iter::FusedIterator;

use weft_crypto::{Nonce, SecretBox, SecretKey, TAG_LEN};

use super::replay::{ReplayError, ReplayWindow};
use crate::PeerId;

/// First byte of a plaintext datagram (mesh without a password).
pub const KIND_PLAIN: u8 = 0x01;
/// First byte of a sealed datagram.
pub const KIND_SEALED: u8 = 0x02;
/// Destination of frames that follow the broadcast tree of their source.
pub const BROADCAST: PeerId = [0xff; 6];
/// Nonce domain of the sleeve; the control channel uses 0. Keys are never shared between the
/// two, so this is a second line of defence against nonce reuse, not the first.
pub const SLEEVE_NONCE_DOMAIN: u8 = 1;

const KIND_LEN: usize = 1;
const SENDER_LEN: usize = 6;
const EPOCH_LEN: usize = 2;
const COUNTER_LEN: usize = 4;
/// Bytes before the frames of a plaintext datagram: kind and sender.
pub const PLAIN_HEADER_LEN: usize = KIND_LEN + SENDER_LEN;
/// Bytes before the frames (ciphertext) of a sealed datagram: kind, sender, epoch, counter, tag.
pub const SEALED_HEADER_LEN: usize = KIND_LEN + SENDER_LEN + EPOCH_LEN + COUNTER_LEN + TAG_LEN;
/// Bytes before each frame's payload: kind, src, dst, length.
pub const FRAME_HEADER_LEN: usize = 1 + 6 + 6 + 2;

const EPOCH_AT: usize = KIND_LEN + SENDER_LEN;
const COUNTER_AT: usize = EPOCH_AT + EPOCH_LEN;
const TAG_AT: usize = COUNTER_AT + COUNTER_LEN;

/// Datagrams per epoch unless [`Encapsulator::with_rekey_after`] says otherwise: counters
/// 0..u32::MAX-1, so the counter can never wrap within an epoch.
pub const DEFAULT_REKEY_AFTER: u32 = u32::MAX;

/// Derives the key of one epoch for one direction of a connection. The router passes a
/// closure over `SecureChannel::derive_key("sleeve epoch N", from_dialer)`.
pub type KeySchedule = Box<dyn Fn(u16) -> SecretKey + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// An Ethernet frame from a pod.
    Ethernet = 0,
    /// Liveness of the path; the payload is the connection uid.
    Heartbeat = 1,
    /// Path-MTU probe; the payload is padding up to the probed size.
    PmtuProbe = 2,
    /// Path-MTU acknowledgement; the payload is the probed size.
    PmtuAck = 3,
    /// An Ethernet frame with the kernel's offload metadata: the payload is a
    /// [`VnetHeader`](super::offload::VnetHeader) followed by the frame, which may be a TCP or
    /// UDP super-segment of up to 64 KiB still to be segmented, or carry a partial checksum.
    Offloaded = 4,
    /// A piece of an `Offloaded` payload too large for one datagram: a
    /// [`FragmentHeader`](super::fragment::FragmentHeader) and a chunk. The destination peer
    /// reassembles; relays forward pieces like any frame.
    Fragment = 5,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Ethernet),
            1 => Some(Self::Heartbeat),
            2 => Some(Self::PmtuProbe),
            3 => Some(Self::PmtuAck),
            4 => Some(Self::Offloaded),
            5 => Some(Self::Fragment),
            _ => None,
        }
    }
}

/// One frame inside a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    /// The peer where the frame entered the mesh (broadcast trees are rooted there).
    pub src: PeerId,
    /// The destination peer, or [`BROADCAST`].
    pub dst: PeerId,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes this frame takes in a datagram; for packing frames up to the path MTU.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN.saturating_add(self.payload.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    #[error("datagram of {len} bytes exceeds the limit of {max_len}")]
    TooBig { len: usize, max_len: usize },
    #[error("frame payload of {0} bytes does not fit the 16-bit length field")]
    FrameTooLong(usize),
    #[error("all 65536 key epochs of this connection are used up; it must be re-established")]
    EpochsExhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    #[error("datagram header cut short")]
    Truncated,
    /// A datagram kind (from `decapsulate`) or frame kind (from [`Frames`]) this build does
    /// not know.
    #[error("unknown kind {0:#04x}")]
    UnknownKind(u8),
    #[error("datagram names another sender than this connection's peer")]
    WrongSender,
    #[error("datagram failed authentication")]
    Authentication,
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Older than the previous epoch, or more than one ahead of the current one.
    #[error("datagram from an epoch whose key is no longer (or not yet) held")]
    StaleEpoch,
    #[error("frame length runs past the end of the datagram")]
    MalformedFrame,
    #[error("plaintext datagram on an encrypted connection")]
    PlaintextOnSealedConnection,
    #[error("sealed datagram on a plaintext connection")]
    SealedOnPlainConnection,
}

impl DecapError {
    /// Whether the datagram was proven to come from the peer its header names: only then may
    /// the failure be held against that peer's link. On a sealed link that is a replay (the
    /// window is consulted only after authentication) or a malformed frame inside an opened
    /// datagram; everything else — failed authentication above all — may be a forgery naming
    /// any peer, and is counted globally as unauthenticated. On a plaintext link (a mesh
    /// without password) nothing is ever proven.
    pub fn is_authenticated(&self, sealed: bool) -> bool {
        sealed && matches!(self, DecapError::Replay(_) | DecapError::MalformedFrame)
    }
}

fn nonce(epoch: u16, counter: u32) -> Nonce {
    Nonce::from_counter(
        SLEEVE_NONCE_DOMAIN,
        (u64::from(epoch) << 32) | u64::from(counter),
    )
}

/// Sending side of one peer connection in one direction.
pub struct Encapsulator {
    sender: PeerId,
    sealing: Option<Sealing>,
}

struct Sealing {
    key_for_epoch: KeySchedule,
    cipher: SecretBox,
    epoch: u16,
    /// Counter of the next datagram.
    counter: u32,
    rekey_after: u32,
}

impl Encapsulator {
    /// For a mesh without a password: datagrams are neither sealed nor numbered.
    pub fn plain(sender: PeerId) -> Self {
        Self {
            sender,
            sealing: None,
        }
    }

    /// `key_for_epoch(epoch)` derives the key of an epoch; it runs once per epoch.
    pub fn sealed(sender: PeerId, key_for_epoch: KeySchedule) -> Self {
        let cipher = SecretBox::new(key_for_epoch(0));
        Self {
            sender,
            sealing: Some(Sealing {
                key_for_epoch,
                cipher,
                epoch: 0,
                counter: 0,
                rekey_after: DEFAULT_REKEY_AFTER,
            }),
        }
    }

    /// For tests: rekey after `n` datagrams (at least 1) instead of [`DEFAULT_REKEY_AFTER`].
    pub fn with_rekey_after(mut self, n: u32) -> Self {
        if let Some(sealing) = &mut self.sealing {
            sealing.rekey_after = n.max(1);
        }
        self
    }

    /// Epoch of the next datagram; always 0 for a plaintext connection.
    pub fn epoch(&self) -> u16 {
        self.sealing.as_ref().map_or(0, |sealing| sealing.epoch)
    }

    /// Counter of the next datagram within its epoch (it may roll into the next epoch when
    /// sent); always 0 for a plaintext connection.
    pub fn counter(&self) -> u32 {
        self.sealing.as_ref().map_or(0, |sealing| sealing.counter)
    }

    /// Bytes before the frames of every datagram this encapsulator builds.
    pub fn header_len(&self) -> usize {
        if self.sealing.is_some() {
            SEALED_HEADER_LEN
        } else {
            PLAIN_HEADER_LEN
        }
    }

    /// Builds one datagram carrying `frames` into `out` (cleared first; its capacity is
    /// reused) and returns its length.
    ///
    /// Fails without consuming a counter if a payload exceeds 65535 bytes or the datagram
    /// would exceed `max_len`. [`EncapError::EpochsExhausted`] comes after 2^48 datagrams on
    /// one connection: nine years at a million datagrams per second, beyond what a userspace
    /// datapath sends; the router then re-establishes the connection, with fresh session keys.
    pub fn encapsulate(
        &mut self,
        frames: &[Frame<'_>],
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncapError> {
        let mut len = self.header_len();
        for frame in frames {
            if u16::try_from(frame.payload.len()).is_err() {
                return Err(EncapError::FrameTooLong(frame.payload.len()));
            }
            len = len.saturating_add(frame.encoded_len());
        }
        if len > max_len {
            return Err(EncapError::TooBig { len, max_len });
        }

        out.clear();
        out.reserve(len);
        self.begin(out);
        for frame in frames {
            write_frame(out, frame.kind, frame.src, frame.dst, &[frame.payload]);
        }
        if let Err(e) = self.finish(out) {
            out.clear();
            return Err(e);
        }
        Ok(out.len())
    }

    /// Starts a datagram at the end of `out` (which may already hold earlier datagrams of a
    /// batch) by appending its header, and returns where it starts. Append frames with
    /// [`write_frame`], then call [`finish`](Self::finish) on the datagram's bytes. The caller
    /// keeps the datagram within the path MTU: at most `header_len()` plus the frames.
    pub fn begin(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        match self.sealing {
            None => {
                out.push(KIND_PLAIN);
                out.extend_from_slice(&self.sender);
            }
            Some(_) => {
                out.push(KIND_SEALED);
                out.extend_from_slice(&self.sender);
                // Epoch, counter and tag are filled in by `finish`.
                out.extend_from_slice(&[0; EPOCH_LEN + COUNTER_LEN + TAG_LEN]);
            }
        }
        start
    }

    /// Completes a datagram that [`begin`](Self::begin) started (`datagram` runs from its
    /// first byte to its last frame): numbers and seals it in place; nothing to do for a
    /// plaintext connection. On [`EncapError::EpochsExhausted`] the datagram must not be sent.
    pub fn finish(&mut self, datagram: &mut [u8]) -> Result<(), EncapError> {
        let Some(sealing) = &mut self.sealing else {
            return Ok(());
        };
        let (epoch, counter) = sealing.next_nonce()?;
        let Some((header, body)) = datagram.split_at_mut_checked(SEALED_HEADER_LEN) else {
            return Ok(());
        };
        header[EPOCH_AT..COUNTER_AT].copy_from_slice(&epoch.to_be_bytes());
        header[COUNTER_AT..TAG_AT].copy_from_slice(&counter.to_be_bytes());
        let tag = sealing.cipher.seal_in_place(&nonce(epoch, counter), body);
        header[TAG_AT..].copy_from_slice(&tag);
        Ok(())
    }
}

impl Sealing {
    /// Takes the (epoch, counter) of the next datagram, moving to a fresh epoch first when
    /// this one has sent its share.
    fn next_nonce(&mut self) -> Result<(u16, u32), EncapError> {
        if self.counter >= self.rekey_after {
            let epoch = self
                .epoch
                .checked_add(1)
                .ok_or(EncapError::EpochsExhausted)?;
            self.cipher = SecretBox::new((self.key_for_epoch)(epoch));
            self.epoch = epoch;
            self.counter = 0;
        }
        let counter = self.counter;
        // Cannot overflow: counter < rekey_after <= u32::MAX.
        self.counter += 1;
        Ok((self.epoch, counter))
    }
}

/// Appends one frame whose payload is the concatenation of `parts` (so a header and a chunk
/// need not be copied together first). The caller keeps the payload within 65535 bytes: a
/// longer one would not decode, so it is cut at that length.
pub fn write_frame(out: &mut Vec<u8>, kind: FrameKind, src: PeerId, dst: PeerId, parts: &[&[u8]]) {
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let len = u16::try_from(total).unwrap_or(u16::MAX);
    out.push(kind as u8);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&len.to_be_bytes());
    let mut left = usize::from(len);
    for part in parts {
        let take = part.len().min(left);
        out.extend_from_slice(&part[..take]);
        left -= take;
    }
}

impl fmt::Debug for Encapsulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encapsulator")
            .field("sender", &self.sender)
            .field("sealed", &self.sealing.is_some())
            .field("epoch", &self.epoch())
            .field("counter", &self.counter())
            .finish()
    }
}

/// Receiving side of one peer connection in one direction.
pub struct Decapsulator {
    sender: PeerId,
    opening: Option<Opening>,
}

struct Opening {
    key_for_epoch: KeySchedule,
    current: EpochKeys,
    previous: Option<EpochKeys>,
    /// The key of `current.epoch + 1`, derived ahead of time so that forged datagrams claiming
    /// the next epoch cost no key derivation; `None` once the epochs run out.
    next: Option<SecretBox>,
}

struct EpochKeys {
    epoch: u16,
    cipher: SecretBox,
    replay: ReplayWindow,
}

impl EpochKeys {
    fn new(epoch: u16, cipher: SecretBox) -> Self {
        Self {
            epoch,
            cipher,
            replay: ReplayWindow::new(),
        }
    }
}

/// Which kept epoch a sealed datagram belongs to.
#[derive(Clone, Copy)]
enum Slot {
    Current,
    Previous,
    Next,
}

impl Opening {
    fn new(key_for_epoch: KeySchedule) -> Self {
        let current = EpochKeys::new(0, SecretBox::new(key_for_epoch(0)));
        let next = Some(SecretBox::new(key_for_epoch(1)));
        Self {
            key_for_epoch,
            current,
            previous: None,
            next,
        }
    }

    fn slot(&self, epoch: u16) -> Result<Slot, DecapError> {
        if epoch == self.current.epoch {
            Ok(Slot::Current)
        } else if self
            .previous
            .as_ref()
            .is_some_and(|keys| keys.epoch == epoch)
        {
            Ok(Slot::Previous)
        } else if self.next.is_some() && self.current.epoch.checked_add(1) == Some(epoch) {
            Ok(Slot::Next)
        } else {
            Err(DecapError::StaleEpoch)
        }
    }

    /// Authenticates and decrypts `body` in place, then records `counter` as seen.
    fn open(
        &mut self,
        epoch: u16,
        counter: u32,
        tag: &[u8; TAG_LEN],
        body: &mut [u8],
    ) -> Result<(), DecapError> {
        let nonce = nonce(epoch, counter);
        match self.slot(epoch)? {
            Slot::Current => Self::open_with(&mut self.current, &nonce, counter, tag, body),
            Slot::Previous => match &mut self.previous {
                Some(keys) => Self::open_with(keys, &nonce, counter, tag, body),
                None => Err(DecapError::StaleEpoch),
            },
            Slot::Next => {
                let Some(cipher) = &self.next else {
                    return Err(DecapError::StaleEpoch);
                };
                // A fresh window accepts any counter, so only authentication can fail here.
                cipher
                    .open_in_place(&nonce, body, tag)
                    .map_err(|_| DecapError::Authentication)?;
                self.advance(epoch);
                self.current.replay.accept(u64::from(counter))?;
                Ok(())
            }
        }
    }

    fn open_with(
        keys: &mut EpochKeys,
        nonce: &Nonce,
        counter: u32,
        tag: &[u8; TAG_LEN],
        body: &mut [u8],
    ) -> Result<(), DecapError> {
        // The window is consulted only once the datagram authenticated: a forgery is always
        // reported as one, whatever counter it claims, and can never move the window.
        keys.cipher
            .open_in_place(nonce, body, tag)
            .map_err(|_| DecapError::Authentication)?;
        keys.replay.accept(u64::from(counter))?;
        Ok(())
    }

    /// Makes `epoch` (= current + 1, whose key is `next`) current; the old current becomes
    /// previous and the one before is dropped.
    fn advance(&mut self, epoch: u16) {
        let Some(cipher) = self.next.take() else {
            return;
        };
        let old = std::mem::replace(&mut self.current, EpochKeys::new(epoch, cipher));
        self.previous = Some(old);
        self.next = epoch
            .checked_add(1)
            .map(|next| SecretBox::new((self.key_for_epoch)(next)));
    }
}

impl Decapsulator {
    /// For a mesh without a password: accepts plaintext datagrams from `sender`.
    pub fn plain(sender: PeerId) -> Self {
        Self {
            sender,
            opening: None,
        }
    }

    /// `key_for_epoch(epoch)` derives the key of an epoch; it runs once per epoch.
    pub fn sealed(sender: PeerId, key_for_epoch: KeySchedule) -> Self {
        Self {
            sender,
            opening: Some(Opening::new(key_for_epoch)),
        }
    }

    /// The newest epoch seen authenticated; always 0 for a plaintext connection.
    pub fn epoch(&self) -> u16 {
        self.opening
            .as_ref()
            .map_or(0, |opening| opening.current.epoch)
    }

    /// Authenticates and decrypts `datagram` in place and returns its frames, borrowed from
    /// it. On error nothing was recorded, and the datagram's contents are unspecified.
    ///
    /// A malformed frame inside an authenticated datagram surfaces from the iterator, not
    /// here: the datagram itself was genuine and its counter is spent.
    pub fn decapsulate<'a>(&mut self, datagram: &'a mut [u8]) -> Result<Frames<'a>, DecapError> {
        let kind = *datagram.first().ok_or(DecapError::Truncated)?;
        match (kind, &mut self.opening) {
            (KIND_PLAIN, None) => {
                let frames = plain_frames(datagram, self.sender)?;
                Ok(Frames { rest: frames })
            }
            (KIND_SEALED, Some(opening)) => {
                let header = sealed_header(datagram, self.sender)?;
                let Some((_, body)) = datagram.split_at_mut_checked(SEALED_HEADER_LEN) else {
                    return Err(DecapError::Truncated);
                };
                opening.open(header.epoch, header.counter, &header.tag, body)?;
                Ok(Frames { rest: body })
            }
            (KIND_PLAIN, Some(_)) => Err(DecapError::PlaintextOnSealedConnection),
            (KIND_SEALED, None) => Err(DecapError::SealedOnPlainConnection),
            (other, _) => Err(DecapError::UnknownKind(other)),
        }
    }
}

impl fmt::Debug for Decapsulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decapsulator")
            .field("sender", &self.sender)
            .field("sealed", &self.opening.is_some())
            .field("epoch", &self.epoch())
            .finish()
    }
}

struct SealedHeader {
    epoch: u16,
    counter: u32,
    tag: [u8; TAG_LEN],
}

/// Reads the sender field of a datagram of known kind, checking the whole header is there.
fn header_sender(datagram: &[u8]) -> Result<PeerId, DecapError> {
    let header_len = match datagram.first() {
        None => return Err(DecapError::Truncated),
        Some(&KIND_PLAIN) => PLAIN_HEADER_LEN,
        Some(&KIND_SEALED) => SEALED_HEADER_LEN,
        Some(&other) => return Err(DecapError::UnknownKind(other)),
    };
    if datagram.len() < header_len {
        return Err(DecapError::Truncated);
    }
    datagram
        .get(KIND_LEN..)
        .and_then(|rest| rest.first_chunk::<SENDER_LEN>())
        .copied()
        .ok_or(DecapError::Truncated)
}

fn check_sender(datagram: &[u8], expected: PeerId) -> Result<(), DecapError> {
    if header_sender(datagram)? == expected {
        Ok(())
    } else {
        Err(DecapError::WrongSender)
    }
}

fn plain_frames(datagram: &[u8], expected: PeerId) -> Result<&[u8], DecapError> {
    check_sender(datagram, expected)?;
    datagram
        .get(PLAIN_HEADER_LEN..)
        .ok_or(DecapError::Truncated)
}

fn sealed_header(datagram: &[u8], expected: PeerId) -> Result<SealedHeader, DecapError> {
    check_sender(datagram, expected)?;
    let field = |at: usize| datagram.get(at..).ok_or(DecapError::Truncated);
    let epoch = field(EPOCH_AT)?
        .first_chunk::<EPOCH_LEN>()
        .ok_or(DecapError::Truncated)?;
    let counter = field(COUNTER_AT)?
        .first_chunk::<COUNTER_LEN>()
        .ok_or(DecapError::Truncated)?;
    let tag = field(TAG_AT)?
        .first_chunk::<TAG_LEN>()
        .ok_or(DecapError::Truncated)?;
    Ok(SealedHeader {
        epoch: u16::from_be_bytes(*epoch),
        counter: u32::from_be_bytes(*counter),
        tag: *tag,
    })
}

/// Peeks at the sender name of a datagram to pick its [`Decapsulator`], without decrypting.
/// The name is not authenticated yet: the decapsulator it picks will reject a forgery.
pub fn datagram_sender(datagram: &[u8]) -> Result<PeerId, DecapError> {
    header_sender(datagram)
}

/// The frames of a decapsulated datagram, in order. Stops after the first error.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// The undecoded rest of the datagram.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    fn parse(&mut self) -> Result<Frame<'a>, DecapError> {
        let (header, after) = self
            .rest
            .split_first_chunk::<FRAME_HEADER_LEN>()
            .ok_or(DecapError::MalformedFrame)?;
        let [
            kind,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            len_hi,
            len_lo,
        ] = *header;
        let kind = FrameKind::from_byte(kind).ok_or(DecapError::UnknownKind(kind))?;
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        let (payload, rest) = after
            .split_at_checked(len)
            .ok_or(DecapError::MalformedFrame)?;
        self.rest = rest;
        Ok(Frame {
            kind,
            src: [s0, s1, s2, s3, s4, s5],
            dst: [d0, d1, d2, d3, d4, d5],
            payload,
        })
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let frame = self.parse();
        if frame.is_err() {
            self.rest = &[];
        }
        Some(frame)
    }
}

impl FusedIterator for Frames<'_> {}

#[cfg(test)]
mod authenticated_tests {
    use super::*;

    #[test]
    fn only_failures_after_authentication_are_held_against_a_link() {
        assert!(DecapError::Replay(ReplayError::Duplicate).is_authenticated(true));
        assert!(DecapError::MalformedFrame.is_authenticated(true));
        for forged in [
            DecapError::Authentication,
            DecapError::Truncated,
            DecapError::UnknownKind(9),
            DecapError::WrongSender,
            DecapError::StaleEpoch,
            DecapError::PlaintextOnSealedConnection,
            DecapError::SealedOnPlainConnection,
        ] {
            assert!(!forged.is_authenticated(true), "{forged}");
        }
        assert!(!DecapError::Replay(ReplayError::Duplicate).is_authenticated(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALICE: PeerId = [0x02, 0, 0, 0, 0, 0xa1];
    const BOB: PeerId = [0x02, 0, 0, 0, 0, 0xb0];
    const MTU: usize = 1500;

    /// A deterministic key schedule standing in for `SecureChannel::derive_key`.
    fn schedule(secret: u8) -> KeySchedule {
        Box::new(move |epoch| {
            let mut bytes = [secret; 32];
            bytes[..2].copy_from_slice(&epoch.to_be_bytes());
            SecretKey::from_bytes(bytes)
        })
    }

    fn sealed_pair() -> (Encapsulator, Decapsulator) {
        (
            Encapsulator::sealed(ALICE, schedule(7)),
            Decapsulator::sealed(ALICE, schedule(7)),
        )
    }

    fn ethernet(payload: &[u8]) -> Frame<'_> {
        Frame {
            kind: FrameKind::Ethernet,
            src: ALICE,
            dst: BOB,
            payload,
        }
    }

    fn seal(encap: &mut Encapsulator, frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        encap.encapsulate(frames, usize::MAX, &mut out).unwrap();
        out
    }

    /// Decapsulates a copy of `datagram` and compares its frames with `expected`.
    fn assert_delivers(decap: &mut Decapsulator, datagram: &[u8], expected: &[Frame<'_>]) {
        let mut copy = datagram.to_vec();
        let frames: Vec<_> = decap
            .decapsulate(&mut copy)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames, expected);
    }

    fn decap_err(decap: &mut Decapsulator, datagram: &[u8]) -> DecapError {
        let mut copy = datagram.to_vec();
        decap.decapsulate(&mut copy).expect_err("rejected")
    }

    /// (epoch, counter) of a sealed datagram.
    fn sequence(datagram: &[u8]) -> (u16, u32) {
        let header = sealed_header(datagram, ALICE).unwrap();
        (header.epoch, header.counter)
    }

    fn many_frames() -> Vec<Frame<'static>> {
        vec![
            ethernet(b"first frame"),
            Frame {
                kind: FrameKind::Heartbeat,
                src: BOB,
                dst: BROADCAST,
                payload: &[1, 2, 3, 4, 5, 6, 7, 8],
            },
            Frame {
                kind: FrameKind::PmtuProbe,
                src: ALICE,
                dst: BOB,
                payload: &[0; 300],
            },
            Frame {
                kind: FrameKind::PmtuAck,
                src: BOB,
                dst: ALICE,
                payload: &[0x05, 0x78], // 1400
            },
            ethernet(b""),
        ]
    }

    #[test]
    fn round_trips_plain_and_sealed() {
        let many = many_frames();
        let cases: [&[Frame<'_>]; 4] = [&[ethernet(b"hello")], &many, &[ethernet(b"")], &[]];
        for frames in cases {
            let mut encap = Encapsulator::plain(ALICE);
            let mut decap = Decapsulator::plain(ALICE);
            let datagram = seal(&mut encap, frames);
            assert_eq!(datagram.first(), Some(&KIND_PLAIN));
            assert_delivers(&mut decap, &datagram, frames);
            // Plaintext datagrams carry no counter: the same one is delivered again.
            assert_delivers(&mut decap, &datagram, frames);

            let (mut encap, mut decap) = sealed_pair();
            let datagram = seal(&mut encap, frames);
            assert_eq!(datagram.first(), Some(&KIND_SEALED));
            let encoded: usize = frames.iter().map(Frame::encoded_len).sum();
            assert_eq!(datagram.len(), SEALED_HEADER_LEN + encoded);
            assert_delivers(&mut decap, &datagram, frames);
        }
    }

    #[test]
    fn a_batch_of_datagrams_built_in_one_buffer_opens_one_by_one() {
        for sealed in [false, true] {
            let (mut encap, mut decap) = if sealed {
                sealed_pair()
            } else {
                (Encapsulator::plain(ALICE), Decapsulator::plain(ALICE))
            };
            let mut out = b"earlier bytes".to_vec();
            let mut bounds = Vec::new();
            for payload in [&b"one"[..], b"two", b"three"] {
                let start = encap.begin(&mut out);
                write_frame(&mut out, FrameKind::Ethernet, ALICE, BOB, &[payload, b"!"]);
                encap.finish(&mut out[start..]).unwrap();
                bounds.push((start, out.len()));
            }
            assert_eq!(&out[..13], b"earlier bytes");
            for ((start, end), expected) in
                bounds.into_iter().zip([&b"one!"[..], b"two!", b"three!"])
            {
                assert_delivers(&mut decap, &out[start..end], &[ethernet(expected)]);
            }
        }
    }

    #[test]
    fn sealing_hides_the_payload() {
        let (mut encap, _) = sealed_pair();
        let secret = b"a very recognisable pod payload";
        let datagram = seal(&mut encap, &[ethernet(secret)]);
        assert!(!datagram.windows(secret.len()).any(|w| w == secret));
    }

    #[test]
    fn max_len_is_exact_and_too_big_consumes_no_counter() {
        for sealed in [false, true] {
            let (mut encap, mut decap) = if sealed {
                sealed_pair()
            } else {
                (Encapsulator::plain(ALICE), Decapsulator::plain(ALICE))
            };
            let payload = [0x5a; 1000];
            let frames = [ethernet(&payload), ethernet(b"tail")];
            let len = encap.header_len() + frames.iter().map(Frame::encoded_len).sum::<usize>();
            let mut out = Vec::new();
            assert_eq!(
                encap.encapsulate(&frames, len - 1, &mut out),
                Err(EncapError::TooBig {
                    len,
                    max_len: len - 1
                })
            );
            assert_eq!(encap.counter(), 0);
            assert_eq!(encap.encapsulate(&frames, len, &mut out), Ok(len));
            assert_eq!(out.len(), len);
            assert_delivers(&mut decap, &out, &frames);
        }
    }

    #[test]
    fn rejects_payloads_beyond_the_length_field() {
        let (mut encap, _) = sealed_pair();
        let huge = vec![0; usize::from(u16::MAX) + 1];
        let mut out = Vec::new();
        assert_eq!(
            encap.encapsulate(&[ethernet(&huge)], usize::MAX, &mut out),
            Err(EncapError::FrameTooLong(huge.len()))
        );
        let largest = &huge[1..];
        let mut decap = Decapsulator::sealed(ALICE, schedule(7));
        let datagram = seal(&mut encap, &[ethernet(largest)]);
        assert_delivers(&mut decap, &datagram, &[ethernet(largest)]);
    }

    #[test]
    fn encapsulate_reuses_the_callers_buffer() {
        let (mut encap, _) = sealed_pair();
        let payload = [0u8; 1400];
        let mut out = Vec::new();
        encap
            .encapsulate(&[ethernet(&payload)], MTU, &mut out)
            .unwrap();
        let (capacity, address) = (out.capacity(), out.as_ptr());
        for _ in 0..100 {
            encap
                .encapsulate(&[ethernet(&payload)], MTU, &mut out)
                .unwrap();
            assert_eq!((out.capacity(), out.as_ptr()), (capacity, address));
        }
    }

    #[test]
    fn every_bit_flip_is_rejected_without_moving_state() {
        let (mut encap, mut decap) = sealed_pair();
        let frames = many_frames();
        let datagram = seal(&mut encap, &frames);
        for bit in 0..datagram.len() * 8 {
            let mut flipped = datagram.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let error = decap_err(&mut decap, &flipped);
            let expected = match bit / 8 {
                0 => matches!(error, DecapError::UnknownKind(_)),
                1..EPOCH_AT => error == DecapError::WrongSender,
                EPOCH_AT..COUNTER_AT => {
                    matches!(error, DecapError::Authentication | DecapError::StaleEpoch)
                }
                _ => error == DecapError::Authentication,
            };
            assert!(expected, "bit {bit}: {error:?}");
        }
        // No forgery moved the epoch or marked a counter as seen.
        assert_eq!(decap.epoch(), 0);
        assert_delivers(&mut decap, &datagram, &frames);
    }

    #[test]
    fn truncated_datagrams_fail_cleanly() {
        let (mut encap, mut decap) = sealed_pair();
        let frames = many_frames();
        let datagram = seal(&mut encap, &frames);
        for len in 0..datagram.len() {
            let error = decap_err(&mut decap, &datagram[..len]);
            let expected = if len < SEALED_HEADER_LEN {
                DecapError::Truncated
            } else {
                DecapError::Authentication
            };
            assert_eq!(error, expected, "length {len}");
            assert!(len < SEALED_HEADER_LEN || datagram_sender(&datagram[..len]).is_ok());
        }
        assert_delivers(&mut decap, &datagram, &frames);

        // Plaintext has no tag: a cut datagram yields a prefix of the frames, then an error
        // if the cut falls inside a frame.
        let mut encap = Encapsulator::plain(ALICE);
        let mut decap = Decapsulator::plain(ALICE);
        let datagram = seal(&mut encap, &frames);
        for len in 0..datagram.len() {
            let mut cut = datagram[..len].to_vec();
            match decap.decapsulate(&mut cut) {
                Err(error) => {
                    assert!(len < PLAIN_HEADER_LEN, "length {len}: {error:?}");
                    assert_eq!(error, DecapError::Truncated);
                }
                Ok(parsed) => {
                    let parsed: Vec<_> = parsed.collect();
                    let (good, bad) =
                        parsed.split_at(parsed.iter().take_while(|f| f.is_ok()).count());
                    assert!(bad.len() <= 1);
                    assert!(bad.iter().all(|f| *f == Err(DecapError::MalformedFrame)));
                    for (got, want) in good.iter().zip(&frames) {
                        assert_eq!(got.as_ref().ok(), Some(want));
                    }
                }
            }
        }
    }

    #[test]
    fn replays_are_rejected_and_fresh_datagrams_still_pass() {
        let (mut encap, mut decap) = sealed_pair();
        let first = seal(&mut encap, &[ethernet(b"one")]);
        assert_delivers(&mut decap, &first, &[ethernet(b"one")]);
        assert_eq!(
            decap_err(&mut decap, &first),
            DecapError::Replay(ReplayError::Duplicate)
        );
        let second = seal(&mut encap, &[ethernet(b"two")]);
        assert_delivers(&mut decap, &second, &[ethernet(b"two")]);
        assert_eq!(
            decap_err(&mut decap, &second),
            DecapError::Replay(ReplayError::Duplicate)
        );
    }

    #[test]
    fn reordering_within_the_window_is_accepted() {
        let (mut encap, mut decap) = sealed_pair();
        let datagrams: Vec<_> = (0..20u8)
            .map(|i| seal(&mut encap, &[ethernet(&[i])]))
            .collect();
        for i in [
            19, 0, 5, 4, 18, 1, 2, 3, 17, 6, 7, 8, 9, 10, 16, 15, 14, 13, 12, 11,
        ] {
            assert_delivers(&mut decap, &datagrams[i], &[ethernet(&[i as u8])]);
        }
        for datagram in &datagrams {
            assert_eq!(
                decap_err(&mut decap, datagram),
                DecapError::Replay(ReplayError::Duplicate)
            );
        }
    }

    #[test]
    fn wrong_key_or_sender_is_rejected() {
        let mut encap = Encapsulator::sealed(ALICE, schedule(7));
        let datagram = seal(&mut encap, &[ethernet(b"x")]);
        let mut other_key = Decapsulator::sealed(ALICE, schedule(8));
        assert_eq!(
            decap_err(&mut other_key, &datagram),
            DecapError::Authentication
        );
        let mut other_sender = Decapsulator::sealed(BOB, schedule(7));
        assert_eq!(
            decap_err(&mut other_sender, &datagram),
            DecapError::WrongSender
        );
        let mut plain = Encapsulator::plain(ALICE);
        let datagram = seal(&mut plain, &[ethernet(b"x")]);
        assert_eq!(
            decap_err(&mut Decapsulator::plain(BOB), &datagram),
            DecapError::WrongSender
        );
    }

    #[test]
    fn plaintext_and_sealed_do_not_mix() {
        let plain = seal(&mut Encapsulator::plain(ALICE), &[ethernet(b"x")]);
        let sealed = seal(
            &mut Encapsulator::sealed(ALICE, schedule(7)),
            &[ethernet(b"x")],
        );
        assert_eq!(
            decap_err(&mut Decapsulator::sealed(ALICE, schedule(7)), &plain),
            DecapError::PlaintextOnSealedConnection
        );
        assert_eq!(
            decap_err(&mut Decapsulator::plain(ALICE), &sealed),
            DecapError::SealedOnPlainConnection
        );
    }

    #[test]
    fn nonces_never_repeat_across_rekeys() {
        const PER_EPOCH: u32 = 5;
        let mut encap = Encapsulator::sealed(ALICE, schedule(7)).with_rekey_after(PER_EPOCH);
        let datagrams: Vec<_> = (0..50u8)
            .map(|i| seal(&mut encap, &[ethernet(&[i])]))
            .collect();
        let sequences: Vec<_> = datagrams.iter().map(|d| sequence(d)).collect();
        let distinct: std::collections::BTreeSet<_> = sequences.iter().collect();
        assert_eq!(distinct.len(), datagrams.len());
        for (i, &(epoch, counter)) in sequences.iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            assert_eq!((u32::from(epoch), counter), (i / PER_EPOCH, i % PER_EPOCH));
        }
        assert_eq!(encap.epoch(), 9);

        // In order.
        let mut decap = Decapsulator::sealed(ALICE, schedule(7));
        for (i, datagram) in datagrams.iter().enumerate() {
            assert_delivers(&mut decap, datagram, &[ethernet(&[i as u8])]);
        }
        assert_eq!(decap.epoch(), 9);

        // Each epoch's last two datagrams arrive after the next epoch has begun.
        let mut decap = Decapsulator::sealed(ALICE, schedule(7));
        let mut order = Vec::new();
        for epoch in 0..=10 {
            let start = epoch * 5;
            order.extend((start..start + 3).filter(|&i| i < 50));
            if epoch > 0 {
                order.extend(start - 2..start);
            }
        }
        assert_eq!(order.len(), 50);
        for i in order {
            assert_delivers(&mut decap, &datagrams[i], &[ethernet(&[i as u8])]);
        }
        // Two epochs old: the key is gone.
        assert_eq!(
            decap_err(&mut decap, &datagrams[35]),
            DecapError::StaleEpoch
        );
        assert_eq!(
            decap_err(&mut decap, &datagrams[40]),
            DecapError::Replay(ReplayError::Duplicate)
        );
    }

    #[test]
    fn epochs_outside_previous_to_next_are_stale() {
        let mut encap = Encapsulator::sealed(ALICE, schedule(7)).with_rekey_after(1);
        let datagrams: Vec<_> = (0..4u8)
            .map(|i| seal(&mut encap, &[ethernet(&[i])]))
            .collect();
        let mut decap = Decapsulator::sealed(ALICE, schedule(7));
        // Epoch 2 while at 0: more than one ahead.
        assert_eq!(decap_err(&mut decap, &datagrams[2]), DecapError::StaleEpoch);
        assert_delivers(&mut decap, &datagrams[1], &[ethernet(&[1])]);
        assert_delivers(&mut decap, &datagrams[2], &[ethernet(&[2])]);
        assert_eq!(decap.epoch(), 2);
        // Epoch 0 is two behind now.
        assert_eq!(decap_err(&mut decap, &datagrams[0]), DecapError::StaleEpoch);
        assert_delivers(&mut decap, &datagrams[3], &[ethernet(&[3])]);
    }

    #[test]
    fn epochs_run_out_instead_of_reusing_a_nonce() {
        let mut encap = Encapsulator::sealed(ALICE, schedule(7)).with_rekey_after(1);
        let mut out = Vec::new();
        for _ in 0..=u16::MAX {
            encap.encapsulate(&[], MTU, &mut out).unwrap();
        }
        assert_eq!(encap.epoch(), u16::MAX);
        assert_eq!(
            encap.encapsulate(&[], MTU, &mut out),
            Err(EncapError::EpochsExhausted)
        );
    }

    #[test]
    fn unknown_frame_kinds_and_overlong_frames_are_errors() {
        let mut encap = Encapsulator::plain(ALICE);
        let mut decap = Decapsulator::plain(ALICE);
        let mut datagram = seal(&mut encap, &[ethernet(b"abc"), ethernet(b"def")]);
        let second = PLAIN_HEADER_LEN + FRAME_HEADER_LEN + 3;
        datagram[second] = 9;
        let mut unknown_kind = datagram.clone();
        let frames: Vec<_> = decap.decapsulate(&mut unknown_kind).unwrap().collect();
        assert_eq!(
            frames,
            [Ok(ethernet(b"abc")), Err(DecapError::UnknownKind(9))]
        );
        datagram[second] = 0;
        datagram[second + FRAME_HEADER_LEN - 1] = 4;
        let frames: Vec<_> = decap.decapsulate(&mut datagram).unwrap().collect();
        assert_eq!(
            frames,
            [Ok(ethernet(b"abc")), Err(DecapError::MalformedFrame)]
        );
    }

    #[test]
    fn datagram_sender_rejects_garbage() {
        assert_eq!(datagram_sender(&[]), Err(DecapError::Truncated));
        assert_eq!(
            datagram_sender(&[0x00; 40]),
            Err(DecapError::UnknownKind(0))
        );
        assert_eq!(
            datagram_sender(&[0xff; 40]),
            Err(DecapError::UnknownKind(0xff))
        );
        assert_eq!(
            datagram_sender(&[KIND_PLAIN, 1, 2]),
            Err(DecapError::Truncated)
        );
        assert_eq!(
            datagram_sender(&[KIND_SEALED, 1, 2, 3, 4, 5, 6, 0, 0]),
            Err(DecapError::Truncated)
        );
        let plain = seal(&mut Encapsulator::plain(ALICE), &[]);
        assert_eq!(datagram_sender(&plain), Ok(ALICE));
        let sealed = seal(&mut Encapsulator::sealed(BOB, schedule(1)), &[]);
        assert_eq!(datagram_sender(&sealed), Ok(BOB));
    }

    fn frame_kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::Ethernet),
            Just(FrameKind::Heartbeat),
            Just(FrameKind::PmtuProbe),
            Just(FrameKind::PmtuAck),
            Just(FrameKind::Offloaded),
            Just(FrameKind::Fragment),
        ]
    }

    fn owned_frames() -> impl Strategy<Value = Vec<(FrameKind, PeerId, PeerId, Vec<u8>)>> {
        prop::collection::vec(
            (
                frame_kind(),
                any::<PeerId>(),
                any::<PeerId>(),
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn random_frames_round_trip(owned in owned_frames(), sealed in any::<bool>()) {
            let frames: Vec<_> = owned
                .iter()
                .map(|(kind, src, dst, payload)| Frame {
                    kind: *kind,
                    src: *src,
                    dst: *dst,
                    payload,
                })
                .collect();
            let (mut encap, mut decap) = if sealed {
                sealed_pair()
            } else {
                (Encapsulator::plain(ALICE), Decapsulator::plain(ALICE))
            };
            let mut out = Vec::new();
            let len = encap.encapsulate(&frames, usize::MAX, &mut out).unwrap();
            prop_assert_eq!(len, out.len());
            let decoded: Vec<_> = decap
                .decapsulate(&mut out)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn random_bytes_never_panic(
            mut bytes in prop::collection::vec(any::<u8>(), 0..200),
            kind in prop_oneof![Just(KIND_PLAIN), Just(KIND_SEALED), any::<u8>()],
            named in any::<bool>(),
        ) {
            // Steer some inputs past the kind and sender checks, into the deeper paths.
            if let Some(first) = bytes.first_mut() {
                *first = kind;
            }
            if named && bytes.len() >= PLAIN_HEADER_LEN {
                bytes[1..PLAIN_HEADER_LEN].copy_from_slice(&ALICE);
            }
            let _ = datagram_sender(&bytes);
            for mut decap in [
                Decapsulator::plain(ALICE),
                Decapsulator::sealed(ALICE, schedule(7)),
            ] {
                let mut copy = bytes.clone();
                if let Ok(frames) = decap.decapsulate(&mut copy) {
                    prop_assert!(frames.count() <= bytes.len() / FRAME_HEADER_LEN + 1);
                }
            }
        }
    }
}
