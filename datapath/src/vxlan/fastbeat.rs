//! Fast-path heartbeats: whether one connection's VXLAN path works, both ways and at full
//! size. Pure: the frame codec writes into the caller's buffer, and [`FastLiveness`] decides
//! when to send which beat and what the path's health is, from times the caller passes.
//!
//! # The frame
//! An Ethernet frame sent through the VXLAN device, so the kernel encapsulates it exactly like
//! pod traffic (same UDP port, DF set, same MTU):
//! ```text
//! [dst heartbeat_mac(receiver) 6][src heartbeat_mac(sender) 6][ethertype 0x88B5 2]
//! [magic "wfHB" 4][version 1][flags 1][sender PeerId 6][receiver PeerId 6]
//! [conn u64 BE][seq u32 BE][echo u32 BE][zero padding to the requested size]
//! ```
//! `seq` counts this connection's beats from 1; `echo` is the highest `seq` the sender has
//! heard from the receiver on this connection (0: none yet). Flags: [`FLAG_FULL`] (a full-size
//! beat: the frame carries a whole device-MTU packet) and [`FLAG_SENDER_OK`] (the sender's own
//! checks pass: it hears us, we echo its beats, its full-size beats are answered).
//!
//! # Liveness
//! - A small beat (the 48-byte header alone: it travels inside VXLAN, so no wire minimum
//!   applies) every [`SMALL_INTERVAL`] (2 s).
//! - A full-size beat (the device MTU as inner packet: 1450 on a 1500 underlay) every
//!   [`CONFIRM_FULL_INTERVAL`] (1 s) while the path is not confirmed (at start, after a check
//!   failed, or while a full-size beat is unanswered), else every [`FULL_INTERVAL`] (120 s).
//!   The rates are chosen so that an idle connection on the fast path costs no more than a
//!   sleeve connection did before it (one small heartbeat a second each way): see
//!   `docs/datapaths.md`, "Liveness cost".
//! - A path not heard for [`STANDBY_AFTER`] (30 s) is a standby: one small beat every
//!   [`STANDBY_INTERVAL`] (5 s) and no full-size one until the peer is heard again (then the
//!   confirming rate), so a dead path costs little and a healed one is back within about 5 s
//!   plus the selector's hold-down.
//! - A path heard but failing its checks for more than [`SLOW_CONFIRM_AFTER`] (10 s), an MTU
//!   black hole say, sends its full-size beats every [`SLOW_CONFIRM_INTERVAL`] (10 s) only.
//! - A full-size beat is answered at once with a small beat echoing it, so its confirmation
//!   does not wait for the peer's next interval.
//! - The path is **up** when all of these hold:
//!   - we heard a beat from the peer within [`HEAR_TIMEOUT`] (5 s: two intervals and a half);
//!   - the peer echoed a beat of ours sent within [`ECHO_TIMEOUT`] (7.5 s: the hear timeout
//!     plus one interval and a little, since an echo rides on the peer's next beat, so a dead
//!     path is first reported as unheard); an old echo repeated proves nothing, so the time
//!     that counts is when the echoed beat was *sent*;
//!   - a full-size beat of ours has been echoed, and fewer than [`FULL_LOSSES`] (3) full-size
//!     beats sent since the last echoed one went unanswered for [`FULL_ANSWER_WAIT`] (2 s);
//!   - the peer's latest beat says its own checks pass ([`FLAG_SENDER_OK`]), so both ends see
//!     the same path (an MTU black hole in one direction moves both).
//! - Until the path is first up, for [`START_GRACE`] (5 s) after the connection started, the
//!   health is `Starting`; else `Down` with the first failing check as the reason.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ETHERNET_HEADER_LEN;
use crate::PeerId;
use crate::select::FastHealth;
use crate::vxlan::plan::heartbeat_mac;

/// IEEE 802 local experimental ethertype 1.
pub const ETHERTYPE: u16 = 0x88B5;
pub const MAGIC: [u8; 4] = *b"wfHB";
pub const VERSION: u8 = 1;
/// The Ethernet header and every field before the padding.
pub const HEADER_LEN: usize = ETHERNET_HEADER_LEN + 4 + 1 + 1 + 6 + 6 + 8 + 4 + 4;
/// The size of a small beat: the header alone (inside VXLAN, Ethernet's 60-byte minimum does
/// not apply).
pub const SMALL_FRAME_LEN: usize = HEADER_LEN;
/// This beat is full-size.
pub const FLAG_FULL: u8 = 0x01;
/// The sender's own checks pass (see the module docs).
pub const FLAG_SENDER_OK: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_FULL | FLAG_SENDER_OK;

pub const SMALL_INTERVAL: Duration = Duration::from_secs(2);
pub const FULL_INTERVAL: Duration = Duration::from_secs(120);
pub const CONFIRM_FULL_INTERVAL: Duration = Duration::from_secs(1);
pub const HEAR_TIMEOUT: Duration = Duration::from_secs(5);
pub const ECHO_TIMEOUT: Duration = Duration::from_millis(7500);
pub const FULL_ANSWER_WAIT: Duration = Duration::from_secs(2);
pub const FULL_LOSSES: usize = 3;
pub const START_GRACE: Duration = Duration::from_secs(5);
/// A path that has not been heard for this long is a standby: probed every
/// [`STANDBY_INTERVAL`] only.
pub const STANDBY_AFTER: Duration = Duration::from_secs(30);
pub const STANDBY_INTERVAL: Duration = Duration::from_secs(5);
/// A path failing its checks this long confirms at [`SLOW_CONFIRM_INTERVAL`] only.
pub const SLOW_CONFIRM_AFTER: Duration = Duration::from_secs(10);
pub const SLOW_CONFIRM_INTERVAL: Duration = Duration::from_secs(10);
/// Beats of ours remembered for matching echoes (more than [`ECHO_TIMEOUT`] worth).
const SENT_LOG: usize = 32;

/// One heartbeat's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub sender: PeerId,
    pub receiver: PeerId,
    pub conn: u64,
    pub seq: u32,
    pub echo: u32,
    pub full: bool,
    pub sender_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a heartbeat frame needs at least {HEADER_LEN} bytes, {0} requested")]
    TooShort(usize),
    #[error("a {need}-byte heartbeat does not fit a {have}-byte buffer")]
    BufferTooSmall { need: usize, have: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is too short for a heartbeat")]
    Short(usize),
    #[error("ethertype {0:#06x} is not a heartbeat")]
    Ethertype(u16),
    #[error("bad magic")]
    Magic,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("the Ethernet addresses are not the heartbeat MACs of the peers it names")]
    Addresses,
    #[error("sequence number 0")]
    ZeroSeq,
    #[error("padding is not zero")]
    Padding,
}

/// Writes `beat` as a frame of exactly `len` bytes into `buf`; returns `len`.
pub fn encode(beat: &Beat, len: usize, buf: &mut [u8]) -> Result<usize, EncodeError> {
    if len < HEADER_LEN {
        return Err(EncodeError::TooShort(len));
    }
    let have = buf.len();
    let Some(out) = buf.get_mut(..len) else {
        return Err(EncodeError::BufferTooSmall { need: len, have });
    };
    let mut flags = 0;
    if beat.full {
        flags |= FLAG_FULL;
    }
    if beat.sender_ok {
        flags |= FLAG_SENDER_OK;
    }
    let (header, padding) = out.split_at_mut(HEADER_LEN);
    let mut w = Writer { buf: header, at: 0 };
    w.put(&heartbeat_mac(beat.receiver));
    w.put(&heartbeat_mac(beat.sender));
    w.put(&ETHERTYPE.to_be_bytes());
    w.put(&MAGIC);
    w.put(&[VERSION, flags]);
    w.put(&beat.sender);
    w.put(&beat.receiver);
    w.put(&beat.conn.to_be_bytes());
    w.put(&beat.seq.to_be_bytes());
    w.put(&beat.echo.to_be_bytes());
    padding.fill(0);
    Ok(len)
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// Reads a heartbeat frame; strict: anything but a well-formed beat is an error, never a panic.
pub fn decode(frame: &[u8]) -> Result<Beat, DecodeError> {
    let Some((header, padding)) = frame.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Short(frame.len()));
    };
    let mut r = Reader { buf: header, at: 0 };
    let dst: [u8; 6] = r.take();
    let src: [u8; 6] = r.take();
    let ethertype = u16::from_be_bytes(r.take());
    if ethertype != ETHERTYPE {
        return Err(DecodeError::Ethertype(ethertype));
    }
    if r.take::<4>() != MAGIC {
        return Err(DecodeError::Magic);
    }
    let [version, flags] = r.take();
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let sender: PeerId = r.take();
    let receiver: PeerId = r.take();
    if dst != heartbeat_mac(receiver) || src != heartbeat_mac(sender) {
        return Err(DecodeError::Addresses);
    }
    let conn = u64::from_be_bytes(r.take());
    let seq = u32::from_be_bytes(r.take());
    let echo = u32::from_be_bytes(r.take());
    if seq == 0 {
        return Err(DecodeError::ZeroSeq);
    }
    if padding.iter().any(|b| *b != 0) {
        return Err(DecodeError::Padding);
    }
    Ok(Beat {
        sender,
        receiver,
        conn,
        seq,
        echo,
        full: flags & FLAG_FULL != 0,
        sender_ok: flags & FLAG_SENDER_OK != 0,
    })
}

struct Reader<'a> {
    buf: &'a [u8; HEADER_LEN],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        out
    }
}

/// What one connection's fast path needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastConfig {
    pub local: PeerId,
    pub peer: PeerId,
    pub conn: u64,
    /// The VXLAN UDP port, for reasons.
    pub port: u16,
    /// The VXLAN device's MTU: a full-size beat carries a packet of this size.
    pub mtu: u16,
}

impl FastConfig {
    /// The Ethernet frame length of a full-size beat.
    pub fn full_frame_len(&self) -> usize {
        (usize::from(self.mtu) + ETHERNET_HEADER_LEN).max(SMALL_FRAME_LEN)
    }
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u32,
    at: Instant,
    full: bool,
}

/// One connection's fast-path heartbeat state.
#[derive(Debug, Clone)]
pub struct FastLiveness {
    config: FastConfig,
    started: Instant,
    next_seq: u32,
    next_small: Instant,
    next_full: Instant,
    /// A full-size beat from the peer (its seq) waits for our answer, which echoes it.
    answer: Option<u32>,
    sent: VecDeque<Sent>,
    /// The peer's highest sequence number heard, and when.
    peer_seq: u32,
    last_heard: Option<Instant>,
    peer_ok: bool,
    /// When our latest echoed beat, and our latest echoed full-size beat, were sent.
    echoed_sent_at: Option<Instant>,
    full_echoed_sent_at: Option<Instant>,
    /// Full-size beats sent since the last echoed one (send times, oldest first).
    full_unanswered: VecDeque<Instant>,
    last_full_sent: Option<Instant>,
    /// The [`FLAG_SENDER_OK`] of our last beat.
    sent_ok: bool,
    /// Since when our own checks fail (None while they pass).
    failing_since: Option<Instant>,
    /// The path has been up (so a failure now is down, even within the grace period).
    was_up: bool,
    sent_count: u64,
    received_count: u64,
}

/// A beat [`FastLiveness::poll_send`] wants sent now: encode it with `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub beat: Beat,
    pub len: usize,
}

impl FastLiveness {
    pub fn new(config: FastConfig, now: Instant) -> Self {
        FastLiveness {
            config,
            started: now,
            next_seq: 1,
            next_small: now,
            next_full: now,
            answer: None,
            sent: VecDeque::with_capacity(SENT_LOG),
            peer_seq: 0,
            last_heard: None,
            peer_ok: false,
            echoed_sent_at: None,
            full_echoed_sent_at: None,
            full_unanswered: VecDeque::new(),
            last_full_sent: None,
            sent_ok: false,
            failing_since: None,
            was_up: false,
            sent_count: 0,
            received_count: 0,
        }
    }

    pub fn config(&self) -> &FastConfig {
        &self.config
    }

    pub fn sent_count(&self) -> u64 {
        self.sent_count
    }

    pub fn received_count(&self) -> u64 {
        self.received_count
    }

    /// How long since the peer was last heard.
    pub fn heartbeat_age(&self, now: Instant) -> Option<Duration> {
        self.last_heard.map(|at| now.saturating_duration_since(at))
    }

    /// The next beat due at `now`, if any; call until it returns `None`. Each beat returned
    /// counts as sent.
    pub fn poll_send(&mut self, now: Instant) -> Option<Outgoing> {
        let ok = self.own_checks(now).is_ok();
        let failing_for = if ok {
            self.failing_since = None;
            Duration::ZERO
        } else {
            now.saturating_duration_since(*self.failing_since.get_or_insert(now))
        };
        let standby = self.standby(now);
        let (small_every, confirm_every) = if standby {
            (STANDBY_INTERVAL, STANDBY_INTERVAL)
        } else if failing_for >= SLOW_CONFIRM_AFTER {
            (SMALL_INTERVAL, SLOW_CONFIRM_INTERVAL)
        } else {
            (SMALL_INTERVAL, CONFIRM_FULL_INTERVAL)
        };
        if self.full_overdue(now) {
            // A full-size beat went unanswered: try again at the confirming rate.
            let again = self.last_full_sent.map(|at| at + confirm_every);
            self.next_full = self.next_full.min(again.unwrap_or(now));
        }
        // A path not heard at all learns nothing from full-size beats.
        let full = if !standby && now >= self.next_full {
            if self.confirming(now) {
                // Small beats keep going too, so a lost full-size beat is told apart from a
                // dead path.
                self.next_full = now + confirm_every;
            } else {
                // In place of this interval's small beat.
                self.next_full = now + FULL_INTERVAL;
                self.next_small = now + SMALL_INTERVAL;
            }
            true
        } else if now >= self.next_small || self.answer.is_some() || ok != self.sent_ok {
            // Also at once when our own view changed, so the peer learns it within a tick.
            self.next_small = now + small_every;
            false
        } else {
            return None;
        };
        let echo = self.answer.take().unwrap_or(self.peer_seq);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        if self.sent.len() == SENT_LOG {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent { seq, at: now, full });
        self.sent_ok = ok;
        if full {
            self.last_full_sent = Some(now);
            self.full_unanswered.push_back(now);
            if self.full_unanswered.len() > SENT_LOG {
                self.full_unanswered.pop_front();
            }
        }
        self.sent_count += 1;
        let beat = Beat {
            sender: self.config.local,
            receiver: self.config.peer,
            conn: self.config.conn,
            seq,
            echo,
            full,
            sender_ok: ok,
        };
        let len = if full {
            self.config.full_frame_len()
        } else {
            SMALL_FRAME_LEN
        };
        Some(Outgoing { beat, len })
    }

    /// When [`poll_send`](Self::poll_send) will next have something (for sleeping).
    pub fn next_due(&self) -> Instant {
        self.next_small.min(self.next_full)
    }

    /// A beat from the peer for this connection arrived at `now`. Returns false (and changes
    /// nothing) for a beat that is not for this connection or not newer than the last one.
    pub fn on_receive(&mut self, beat: &Beat, now: Instant) -> bool {
        if beat.sender != self.config.peer
            || beat.receiver != self.config.local
            || beat.conn != self.config.conn
            || beat.seq <= self.peer_seq
        {
            return false;
        }
        self.received_count += 1;
        self.peer_seq = beat.seq;
        self.last_heard = Some(now);
        self.peer_ok = beat.sender_ok;
        if beat.full {
            self.answer = Some(beat.seq);
        }
        if let Some(sent) = self.sent.iter().find(|s| s.seq == beat.echo).copied() {
            if self.echoed_sent_at.is_none_or(|at| sent.at > at) {
                self.echoed_sent_at = Some(sent.at);
            }
            if sent.full && self.full_echoed_sent_at.is_none_or(|at| sent.at > at) {
                self.full_echoed_sent_at = Some(sent.at);
            }
            // Everything full-size sent up to the echoed beat is either answered or lost for
            // good; only lost ones sent after the last answered full-size beat count.
            if sent.full {
                self.full_unanswered.retain(|at| *at > sent.at);
            }
        }
        // Only a beat received can make the path up.
        if self.peer_ok && self.own_checks(now).is_ok() {
            self.was_up = true;
        }
        true
    }

    /// Whether full-size beats go at the confirming rate.
    fn confirming(&self, now: Instant) -> bool {
        self.own_checks(now).is_err() || !self.peer_ok || self.full_overdue(now)
    }

    /// Nothing heard for [`STANDBY_AFTER`]: probe slowly.
    fn standby(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard.unwrap_or(self.started)) >= STANDBY_AFTER
    }

    /// Whether a full-size beat has gone unanswered for [`FULL_ANSWER_WAIT`].
    fn full_overdue(&self, now: Instant) -> bool {
        self.full_unanswered
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= FULL_ANSWER_WAIT)
    }

    /// Our own view of both directions and of full-size beats.
    fn own_checks(&self, now: Instant) -> Result<(), String> {
        let port = self.config.port;
        let fresh = |at: Option<Instant>, timeout: Duration| {
            at.is_some_and(|at| now.saturating_duration_since(at) < timeout)
        };
        if !fresh(self.last_heard, HEAR_TIMEOUT) {
            let since = self.last_heard.unwrap_or(self.started);
            return Err(format!(
                "no heartbeat for {} s on udp/{port}",
                now.saturating_duration_since(since).as_secs()
            ));
        }
        if !fresh(self.echoed_sent_at, ECHO_TIMEOUT) {
            return Err(format!(
                "we hear the peer but it does not hear us on udp/{port}"
            ));
        }
        let lost = self
            .full_unanswered
            .iter()
            .filter(|at| now.saturating_duration_since(**at) >= FULL_ANSWER_WAIT)
            .count();
        if lost >= FULL_LOSSES {
            return Err(format!(
                "full-size heartbeats ({} bytes) not answered: MTU black hole on udp/{port}?",
                self.config.mtu
            ));
        }
        if self.full_echoed_sent_at.is_none() {
            return Err(format!(
                "no full-size heartbeat ({} bytes) answered yet on udp/{port}",
                self.config.mtu
            ));
        }
        Ok(())
    }

    /// The path's health now.
    pub fn health(&self, now: Instant) -> FastHealth {
        let port = self.config.port;
        let checks = self.own_checks(now).and_then(|()| {
            if self.peer_ok {
                Ok(())
            } else if self
                .echoed_sent_at
                .is_none_or(|at| now.saturating_duration_since(at) >= HEAR_TIMEOUT)
            {
                // Its beats still echo an old one of ours: it has stopped hearing us.
                Err(format!(
                    "we hear the peer but it does not hear us on udp/{port}"
                ))
            } else {
                Err(format!("the peer reports its fast path down on udp/{port}"))
            }
        });
        match checks {
            Ok(()) => FastHealth::Up,
            Err(_) if !self.was_up && now.saturating_duration_since(self.started) < START_GRACE => {
                FastHealth::Starting
            }
            Err(reason) => FastHealth::Down { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: PeerId = [0x02, 0, 0, 0, 0, 0xa];
    const B: PeerId = [0x02, 0, 0, 0, 0, 0xb];
    const PORT: u16 = 6784;
    const MTU: u16 = 1450;

    fn beat() -> Beat {
        Beat {
            sender: A,
            receiver: B,
            conn: 0x1122_3344_5566_7788,
            seq: 7,
            echo: 3,
            full: false,
            sender_ok: true,
        }
    }

    fn frame(beat: &Beat, len: usize) -> Vec<u8> {
        let mut buf = vec![0xee; 2000];
        assert_eq!(encode(beat, len, &mut buf), Ok(len));
        buf.truncate(len);
        buf
    }

    #[test]
    fn beats_round_trip_at_any_size() {
        for (full, len) in [(false, SMALL_FRAME_LEN), (true, 1464), (false, HEADER_LEN)] {
            let b = Beat { full, ..beat() };
            let f = frame(&b, len);
            assert_eq!(f.len(), len);
            assert_eq!(&f[..6], &heartbeat_mac(B));
            assert_eq!(&f[6..12], &heartbeat_mac(A));
            assert_eq!(&f[12..14], &[0x88, 0xb5]);
            assert!(f[HEADER_LEN..].iter().all(|b| *b == 0), "padding is zero");
            assert_eq!(decode(&f), Ok(b));
        }
    }

    #[test]
    fn encoding_refuses_sizes_that_do_not_fit() {
        let mut buf = [0u8; 100];
        assert_eq!(
            encode(&beat(), HEADER_LEN - 1, &mut buf),
            Err(EncodeError::TooShort(HEADER_LEN - 1))
        );
        assert_eq!(
            encode(&beat(), 101, &mut buf),
            Err(EncodeError::BufferTooSmall {
                need: 101,
                have: 100
            })
        );
    }

    #[test]
    fn decoding_is_strict() {
        // Padded, so that the padding checks below have bytes to look at.
        let good = frame(&beat(), 60);
        let with = |at: usize, value: u8| {
            let mut f = good.clone();
            f[at] = value;
            decode(&f)
        };
        assert_eq!(decode(&good[..HEADER_LEN - 1]), Err(DecodeError::Short(47)));
        assert_eq!(with(13, 0xb6), Err(DecodeError::Ethertype(0x88b6)));
        assert_eq!(with(14, b'x'), Err(DecodeError::Magic));
        assert_eq!(with(18, 2), Err(DecodeError::Version(2)));
        assert_eq!(with(19, 0x80), Err(DecodeError::Flags(0x80)));
        assert_eq!(with(0, 0x12), Err(DecodeError::Addresses));
        assert_eq!(
            with(25, 0xc),
            Err(DecodeError::Addresses),
            "sender vs src MAC"
        );
        assert_eq!(
            with(31, 0xc),
            Err(DecodeError::Addresses),
            "receiver vs dst MAC"
        );
        assert_eq!(with(59, 1), Err(DecodeError::Padding));
        let zero = Beat { seq: 0, ..beat() };
        assert_eq!(
            decode(&frame(&zero, SMALL_FRAME_LEN)),
            Err(DecodeError::ZeroSeq)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_what_it_accepts_encodes_back(
            data in prop::collection::vec(any::<u8>(), 0..200)
        ) {
            if let Ok(b) = decode(&data) {
                prop_assert_eq!(frame(&b, data.len()), data);
            }
        }

        #[test]
        fn a_flipped_header_bit_is_rejected_or_read_as_written(at in 0..HEADER_LEN, bit in 0..8u8) {
            let good = frame(&beat(), SMALL_FRAME_LEN);
            let mut f = good.clone();
            f[at] ^= 1 << bit;
            if let Ok(b) = decode(&f) {
                prop_assert_eq!(frame(&b, f.len()), f);
            }
        }
    }

    /// What happens to each beat on the way: delivered or lost.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Wire {
        Up,
        Down,
        /// Small beats pass, full-size ones are lost.
        BlackHole,
    }

    struct Sim {
        t0: Instant,
        now: Instant,
        a: FastLiveness,
        b: FastLiveness,
        /// Last delivery each way.
        last_ab: Option<Instant>,
        last_ba: Option<Instant>,
        sizes_ab: Vec<usize>,
    }

    impl Sim {
        fn new() -> Self {
            let t0 = Instant::now();
            let cfg = |local, peer| FastConfig {
                local,
                peer,
                conn: 42,
                port: PORT,
                mtu: MTU,
            };
            Sim {
                t0,
                now: t0,
                a: FastLiveness::new(cfg(A, B), t0),
                b: FastLiveness::new(cfg(B, A), t0),
                last_ab: None,
                last_ba: None,
                sizes_ab: Vec::new(),
            }
        }

        /// One 100 ms tick; `ab(full)` / `ba(full)` say whether a beat gets through.
        fn tick(&mut self, mut ab: impl FnMut(bool) -> bool, mut ba: impl FnMut(bool) -> bool) {
            self.now += Duration::from_millis(100);
            let now = self.now;
            // Two rounds, so an answer to a full-size beat goes out in the same tick.
            for _ in 0..2 {
                while let Some(out) = self.a.poll_send(now) {
                    self.sizes_ab.push(out.len);
                    if ab(out.beat.full) {
                        assert!(self.b.on_receive(&roundtrip(&out), now));
                        self.last_ab = Some(now);
                    }
                }
                while let Some(out) = self.b.poll_send(now) {
                    if ba(out.beat.full) {
                        assert!(self.a.on_receive(&roundtrip(&out), now));
                        self.last_ba = Some(now);
                    }
                }
            }
        }

        fn run(&mut self, secs: f64, ab: Wire, ba: Wire) {
            let pass = |w: Wire| move |full: bool| w == Wire::Up || (w == Wire::BlackHole && !full);
            let end = self.now + Duration::from_secs_f64(secs);
            while self.now < end {
                self.tick(pass(ab), pass(ba));
            }
        }

        fn elapsed(&self) -> Duration {
            self.now - self.t0
        }
    }

    fn roundtrip(out: &Outgoing) -> Beat {
        let mut buf = vec![0; out.len];
        encode(&out.beat, out.len, &mut buf).unwrap();
        decode(&buf).unwrap()
    }

    fn down_reason(h: FastHealth) -> String {
        match h {
            FastHealth::Down { reason } => reason,
            other => panic!("not down: {other:?}"),
        }
    }

    #[test]
    fn a_clean_path_comes_up_at_once_and_then_costs_a_small_beat_every_two_seconds() {
        let mut s = Sim::new();
        s.run(0.3, Wire::Up, Wire::Up);
        assert_eq!(s.a.health(s.now), FastHealth::Up, "{:?}", s.elapsed());
        assert_eq!(s.b.health(s.now), FastHealth::Up);
        s.run(10.0, Wire::Up, Wire::Up);
        s.sizes_ab.clear();
        s.run(240.0, Wire::Up, Wire::Up);
        assert_eq!(s.a.health(s.now), FastHealth::Up);
        let full = s.sizes_ab.iter().filter(|l| **l == 1464).count();
        let small = s.sizes_ab.iter().filter(|l| **l == SMALL_FRAME_LEN).count();
        assert_eq!(full, 2, "a full-size beat every 120 s");
        // One beat every 2 s, plus an answer to each of the peer's full-size beats.
        assert!((118..=123).contains(&small), "{small} small beats in 240 s");
        assert!(
            s.a.heartbeat_age(s.now)
                .is_some_and(|age| age < SMALL_INTERVAL)
        );
    }

    #[test]
    fn a_path_that_was_up_is_down_at_once_even_within_the_grace_period() {
        let mut s = Sim::new();
        s.run(0.5, Wire::Up, Wire::Up);
        assert_eq!(s.b.health(s.now), FastHealth::Up);
        s.run(5.5, Wire::Down, Wire::Up);
        assert!(matches!(s.b.health(s.now), FastHealth::Down { .. }));
    }

    #[test]
    fn a_silent_peer_is_starting_during_the_grace_period_then_down() {
        let mut s = Sim::new();
        s.run(4.0, Wire::Down, Wire::Down);
        assert_eq!(s.a.health(s.now), FastHealth::Starting);
        s.run(1.1, Wire::Down, Wire::Down);
        assert_eq!(
            down_reason(s.a.health(s.now)),
            "no heartbeat for 5 s on udp/6784"
        );
    }

    #[test]
    fn one_dead_direction_takes_both_ends_down_with_their_reasons() {
        let mut s = Sim::new();
        s.run(10.0, Wire::Up, Wire::Up);
        s.run(5.05, Wire::Down, Wire::Up);
        let reason = down_reason(s.b.health(s.now));
        assert!(
            reason.starts_with("no heartbeat for ") && reason.ends_with(" s on udp/6784"),
            "{reason}"
        );
        s.run(3.0, Wire::Down, Wire::Up);
        assert_eq!(
            down_reason(s.a.health(s.now)),
            "we hear the peer but it does not hear us on udp/6784"
        );
        // Back within a few seconds once it works again.
        s.run(4.5, Wire::Up, Wire::Up);
        assert_eq!(s.a.health(s.now), FastHealth::Up);
        assert_eq!(s.b.health(s.now), FastHealth::Up);
    }

    #[test]
    fn an_mtu_black_hole_one_way_is_named_and_moves_both_ends() {
        let mut s = Sim::new();
        s.run(5.5, Wire::BlackHole, Wire::Up);
        assert_eq!(
            down_reason(s.a.health(s.now)),
            "full-size heartbeats (1450 bytes) not answered: MTU black hole on udp/6784?"
        );
        assert_eq!(
            down_reason(s.b.health(s.now)),
            "the peer reports its fast path down on udp/6784"
        );

        // A hole that opens later is found within the full-size interval plus three tries.
        let mut s = Sim::new();
        s.run(20.0, Wire::Up, Wire::Up);
        assert_eq!(s.a.health(s.now), FastHealth::Up);
        let mut waited = 0;
        while s.a.health(s.now) == FastHealth::Up {
            s.run(1.0, Wire::BlackHole, Wire::Up);
            waited += 1;
            assert!(waited <= 120 + 5, "still up after {waited} s");
        }
        assert!(down_reason(s.a.health(s.now)).contains("MTU black hole"));
    }

    #[test]
    fn beats_for_other_connections_or_repeated_are_refused() {
        let mut s = Sim::new();
        let out = s.b.poll_send(s.now).unwrap();
        let beat = roundtrip(&out);
        assert!(!s.a.on_receive(&Beat { conn: 1, ..beat }, s.now));
        assert!(!s.a.on_receive(
            &Beat {
                sender: [9; 6],
                ..beat
            },
            s.now
        ));
        assert!(s.a.on_receive(&beat, s.now));
        assert!(!s.a.on_receive(&beat, s.now), "a repeat");
        assert_eq!(s.a.received_count(), 1);
    }

    #[test]
    fn a_dead_path_is_probed_slowly_and_found_again() {
        let mut s = Sim::new();
        s.run(10.0, Wire::Up, Wire::Up);
        s.run(40.0, Wire::Down, Wire::Down);
        let before = s.a.sent_count();
        s.run(20.0, Wire::Down, Wire::Down);
        let sent = s.a.sent_count() - before;
        assert!(sent <= 8, "{sent} beats in 20 s of standby");
        s.run(0.1, Wire::Up, Wire::Up);
        let mut waited = 0;
        while s.a.health(s.now) != FastHealth::Up || s.b.health(s.now) != FastHealth::Up {
            s.run(0.1, Wire::Up, Wire::Up);
            waited += 1;
            assert!(waited <= 70, "not up again after {waited} ticks");
        }
    }

    fn arb_wire() -> impl Strategy<Value = u8> {
        // 0: up, 1: down, 2: each beat lost with probability 1/2.
        prop_oneof![4 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With random loss per direction, changing every second: a path is up only while
        /// beats recently got through both ways, and it is up whenever both ways have worked
        /// for a few seconds.
        #[test]
        fn up_iff_recent_beats_both_ways(
            ab in prop::collection::vec(arb_wire(), 40),
            ba in prop::collection::vec(arb_wire(), 40),
            coin in prop::collection::vec(any::<bool>(), 1024),
        ) {
            let mut s = Sim::new();
            let mut coins = coin.iter().cycle().copied();
            let mut coins2 = coin.iter().rev().cycle().copied();
            for tick in 0..400usize {
                let (wab, wba) = (ab[tick / 10], ba[tick / 10]);
                s.tick(
                    |_| wab == 0 || (wab == 2 && coins.next().unwrap()),
                    |_| wba == 0 || (wba == 2 && coins2.next().unwrap()),
                );
                let now = s.now;
                for (live, heard, echoed) in [
                    (&s.a, s.last_ba, s.last_ab),
                    (&s.b, s.last_ab, s.last_ba),
                ] {
                    if live.health(now) == FastHealth::Up {
                        prop_assert!(heard.is_some_and(|at| now - at < HEAR_TIMEOUT));
                        prop_assert!(echoed.is_some_and(|at| now - at < ECHO_TIMEOUT));
                    }
                }
                // Both ways clean for the last 8 s (a standby path is probed every 5 s; past
                // the grace period): up.
                let second = tick / 10;
                if tick % 10 == 9 && second >= 7 {
                    let clean = (second - 7..=second).all(|i| ab[i] == 0 && ba[i] == 0);
                    if clean {
                        prop_assert_eq!(s.a.health(now), FastHealth::Up, "at {:?}", s.elapsed());
                        prop_assert_eq!(s.b.health(now), FastHealth::Up, "at {:?}", s.elapsed());
                    }
                }
            }
        }
    }
}
