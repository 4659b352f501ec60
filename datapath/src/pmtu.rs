//! Path-MTU discovery for one peer's UDP path.
//!
//! The router sends probe datagrams with DF set, padded so that the whole IP packet has the
//! size [`PmtuProber::next_probe`] asks for, and the peer acknowledges each probe with the size
//! it received ([`PmtuProber::on_ack`]). Sizes here are always whole underlay IP packets (path
//! MTUs): the router subtracts the IP and UDP headers to get the probe's payload, and derives the
//! overlay MTU with [`crate::DatapathKind::overlay_mtu`].
//!
//! # The search
//!
//! The prober keeps the largest size known to pass and the smallest known to fail, and probes
//! one size at a time in between: first the largest candidate (the ceiling: most paths carry
//! the interface MTU, so one probe usually settles it), then the midpoint, halving the range
//! each time, so from 576 to 1500 it settles within 11 sizes. A probe unanswered for
//! `probe_timeout` is lost and sent again; after `losses_per_size` losses its size counts as too
//! big. Acknowledgements of any other size than the probe in flight are ignored: they answer
//! probes already written off, and the path may have changed since.
//!
//! # What is in use meanwhile
//!
//! [`PmtuProber::path_mtu`] starts at the floor, which every path must carry (576 bytes for
//! IPv4, 1280 for IPv6), and rises only as the peer acknowledges larger probes. Starting from
//! the ceiling, or a guess, would black-hole every datagram above the real path MTU until the
//! search caught up, and on paths where ICMP is filtered nothing would ever tell the router;
//! starting low costs only a little efficiency for the first round trip.
//!
//! When the kernel refuses a datagram as too big (`EMSGSIZE`) and reports a smaller path MTU
//! (from an ICMP error it validated), [`PmtuProber::on_too_big`] takes that MTU at once, since
//! the kernel refuses anything larger anyway, and probes it to confirm; if that probe fails
//! too, the search restarts from the floor.
//!
//! # Growing back
//!
//! Once the search settles below the ceiling, the prober looks again after
//! `reprobe_interval`, starting at the ceiling, so the MTU grows back when the path does. The
//! confirmed MTU stays in use while it looks. A path that shrinks silently (no ICMP reaches
//! the kernel) is not noticed here; heartbeats and the data's own loss show that.
//!
//! Pure: time comes in as arguments. Call [`PmtuProber::next_probe`] on every timer tick (the
//! heartbeat's will do) and after every acknowledgement or too-big report.

use std::fmt;
use std::time::{Duration, Instant};

/// Every IPv4 path carries 576-byte packets (RFC 791: every host accepts them; RFC 1122).
pub const IPV4_FLOOR: u16 = 576;
/// Every IPv6 path carries 1280-byte packets (RFC 8200).
pub const IPV6_FLOOR: u16 = 1280;
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_LOSSES_PER_SIZE: u32 = 3;
pub const DEFAULT_REPROBE_INTERVAL: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtuConfig {
    /// Assumed to pass without probing; the MTU in use until a probe confirms more.
    pub floor: u16,
    /// The largest size worth probing: the underlay interface's MTU.
    pub ceiling: u16,
    /// A probe unanswered this long is lost.
    pub probe_timeout: Duration,
    /// Lost probes after which a size counts as too big (at least 1).
    pub losses_per_size: u32,
    /// How long after settling below the ceiling to look for a larger MTU again.
    pub reprobe_interval: Duration,
}

impl PmtuConfig {
    /// Default timings for a path between `floor` and `ceiling`.
    pub fn new(floor: u16, ceiling: u16) -> Self {
        Self {
            floor,
            ceiling,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            losses_per_size: DEFAULT_LOSSES_PER_SIZE,
            reprobe_interval: DEFAULT_REPROBE_INTERVAL,
        }
    }
}

/// Whether the prober is still searching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmtuPhase {
    /// Sizes between `largest_ok` and `smallest_failed` (or the ceiling) are untested; `probe`
    /// is the size in flight, if any.
    Probing {
        probe: Option<u16>,
        largest_ok: u16,
        smallest_failed: Option<u16>,
    },
    /// The path MTU is known; nothing is in flight.
    Confirmed,
}

/// The last thing that changed the prober's knowledge, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmtuReason {
    /// No probe has been answered yet.
    Started,
    /// The peer acknowledged a probe of this size.
    Acknowledged(u16),
    /// Probes of this size went unanswered `losses` times, so it counts as too big.
    Unanswered { size: u16, losses: u32 },
    /// The kernel refused a datagram as too big, reporting this path MTU if it knew one.
    KernelReported(Option<u16>),
    /// The re-probe interval passed: looking for a larger MTU again.
    Reprobing,
}

impl fmt::Display for PmtuReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Started => write!(f, "no probe answered yet"),
            Self::Acknowledged(size) => write!(f, "the peer acknowledged a {size}-byte probe"),
            Self::Unanswered { size, losses } => {
                write!(f, "{losses} probes of {size} bytes went unanswered")
            }
            Self::KernelReported(Some(mtu)) => {
                write!(f, "the kernel reported a path MTU of {mtu}")
            }
            Self::KernelReported(None) => write!(f, "the kernel refused a datagram as too big"),
            Self::Reprobing => write!(f, "looking for a larger path MTU again"),
        }
    }
}

/// Status: the MTU in use, the phase and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtuState {
    pub path_mtu: u16,
    pub phase: PmtuPhase,
    pub reason: PmtuReason,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    size: u16,
    sent_at: Instant,
    losses: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Searching,
    Confirmed { since: Instant },
}

/// Path-MTU discovery state of one peer's UDP path.
#[derive(Debug, Clone)]
pub struct PmtuProber {
    config: PmtuConfig,
    /// Largest size acknowledged since the path last shrank, or the floor.
    largest_ok: u16,
    /// Smallest size known to fail; None: none up to the ceiling.
    smallest_failed: Option<u16>,
    /// An MTU the kernel reported, used while its probe confirms it.
    kernel_hint: Option<u16>,
    probe: Option<Probe>,
    phase: Phase,
    reason: PmtuReason,
}

impl PmtuProber {
    /// Starts searching, with the floor in use. A floor above the ceiling is lowered to it.
    pub fn new(config: PmtuConfig) -> Self {
        let config = PmtuConfig {
            floor: config.floor.min(config.ceiling),
            losses_per_size: config.losses_per_size.max(1),
            ..config
        };
        Self {
            config,
            largest_ok: config.floor,
            smallest_failed: None,
            kernel_hint: None,
            probe: None,
            phase: Phase::Searching,
            reason: PmtuReason::Started,
        }
    }

    pub fn config(&self) -> &PmtuConfig {
        &self.config
    }

    /// The path MTU to use now: the largest size the peer acknowledged (the floor until one
    /// is), or a smaller one the kernel reported while a probe confirms it.
    pub fn path_mtu(&self) -> u16 {
        self.kernel_hint.unwrap_or(self.largest_ok)
    }

    /// The size of probe to send now, if any. Also where lost probes are noticed: a probe in
    /// flight longer than the timeout is sent again (the same size is returned) or, after
    /// enough losses, written off.
    pub fn next_probe(&mut self, now: Instant) -> Option<u16> {
        if let Some(probe) = &mut self.probe {
            if now.saturating_duration_since(probe.sent_at) < self.config.probe_timeout {
                return None;
            }
            probe.losses = probe.losses.saturating_add(1);
            if probe.losses < self.config.losses_per_size {
                probe.sent_at = now;
                return Some(probe.size);
            }
            let Probe { size, losses, .. } = *probe;
            self.probe = None;
            self.reason = PmtuReason::Unanswered { size, losses };
            self.failed(size);
        }
        if let Phase::Confirmed { since } = self.phase {
            let reprobe_due = now.saturating_duration_since(since) >= self.config.reprobe_interval;
            if !reprobe_due || self.largest_ok >= self.config.ceiling {
                return None;
            }
            // Forget what failed: the path may have grown since.
            self.smallest_failed = None;
            self.phase = Phase::Searching;
            self.reason = PmtuReason::Reprobing;
        }
        match self.candidate() {
            Some(size) => {
                self.probe = Some(Probe {
                    size,
                    sent_at: now,
                    losses: 0,
                });
                Some(size)
            }
            None => {
                self.phase = Phase::Confirmed { since: now };
                None
            }
        }
    }

    /// The peer acknowledged a probe of `size` bytes. Only the probe in flight counts.
    pub fn on_ack(&mut self, size: u16, now: Instant) {
        if self.probe.is_none_or(|probe| probe.size != size) {
            return;
        }
        self.probe = None;
        self.largest_ok = self.largest_ok.max(size);
        if self.kernel_hint.is_some_and(|hint| hint <= size) {
            self.kernel_hint = None;
        }
        self.reason = PmtuReason::Acknowledged(size);
        self.settle_if_done(now);
    }

    /// The kernel refused a datagram to this peer as too big (`EMSGSIZE`), or reports a path
    /// MTU (`mtu_hint`, from `IP_MTU`) below the one in use.
    ///
    /// With a hint, every size above it fails: a probe in flight above it is written off, and
    /// if the MTU in use is larger it drops to the hint at once and the hint is probed to
    /// confirm it. Without one, the probe in flight failed, or if none is, the MTU in use did:
    /// the search restarts from the floor.
    pub fn on_too_big(&mut self, mtu_hint: Option<u16>, now: Instant) {
        self.reason = PmtuReason::KernelReported(mtu_hint);
        match mtu_hint {
            Some(hint) => {
                let hint = hint.clamp(self.config.floor, self.config.ceiling);
                let shrinks = self.path_mtu() > hint;
                if self.probe.is_some_and(|probe| probe.size > hint) {
                    self.probe = None;
                }
                if hint < self.config.ceiling {
                    self.failed(hint + 1);
                }
                if shrinks {
                    self.largest_ok = self.config.floor;
                    self.kernel_hint = (hint > self.config.floor).then_some(hint);
                    self.phase = Phase::Searching;
                }
            }
            None => match self.probe.take() {
                Some(probe) => self.failed(probe.size),
                None => {
                    let in_use = self.path_mtu();
                    if in_use > self.config.floor {
                        self.failed(in_use);
                        self.largest_ok = self.config.floor;
                        self.kernel_hint = None;
                        self.phase = Phase::Searching;
                    }
                }
            },
        }
        self.settle_if_done(now);
    }

    /// Status: the MTU in use, whether it is confirmed, and the last reason it changed.
    pub fn state(&self) -> PmtuState {
        let phase = match self.phase {
            Phase::Confirmed { .. } => PmtuPhase::Confirmed,
            Phase::Searching => PmtuPhase::Probing {
                probe: self.probe.map(|probe| probe.size),
                largest_ok: self.largest_ok,
                smallest_failed: self.smallest_failed,
            },
        };
        PmtuState {
            path_mtu: self.path_mtu(),
            phase,
            reason: self.reason,
        }
    }

    /// `size` does not pass: nothing from it upwards is a candidate any more.
    fn failed(&mut self, size: u16) {
        self.smallest_failed = Some(self.smallest_failed.map_or(size, |old| old.min(size)));
        if self.kernel_hint.is_some_and(|hint| hint >= size) {
            // The kernel's MTU did not hold up: back to what is known.
            self.kernel_hint = None;
        }
        if self.largest_ok >= size {
            // Acknowledged before, failing now: the path shrank.
            self.largest_ok = self.config.floor;
            self.phase = Phase::Searching;
        }
    }

    /// The exclusive upper end of the untested range.
    fn upper(&self) -> u32 {
        self.smallest_failed
            .map_or(u32::from(self.config.ceiling) + 1, u32::from)
    }

    /// The next size to probe: the largest candidate while nothing below the ceiling has failed
    /// (or to confirm the kernel's MTU), else the middle of the untested range.
    fn candidate(&self) -> Option<u16> {
        let lower = u32::from(self.largest_ok);
        let upper = self.upper();
        if upper <= lower + 1 {
            return None;
        }
        let size = if self.smallest_failed.is_none() || self.kernel_hint.is_some() {
            upper - 1
        } else {
            lower + (upper - lower) / 2
        };
        // Strictly between lower and upper, and upper - 1 <= ceiling: fits u16.
        u16::try_from(size).ok()
    }

    fn settle_if_done(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Searching)
            && self.probe.is_none()
            && self.candidate().is_none()
        {
            self.phase = Phase::Confirmed { since: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const TICK: Duration = Duration::from_millis(250);

    fn config() -> PmtuConfig {
        PmtuConfig::new(IPV4_FLOOR, 1500)
    }

    /// A simulated path: probes up to `mtu` bytes arrive unless `lose` says otherwise (it is
    /// asked once per probe sent, in order), and are acknowledged at once.
    struct Path<L> {
        mtu: u16,
        lose: L,
        sent: u32,
        sizes: BTreeSet<u16>,
        /// The lowest MTU the prober had in use at any tick.
        lowest_in_use: u16,
    }

    impl<L: FnMut(u32) -> bool> Path<L> {
        fn new(mtu: u16, lose: L) -> Self {
            Self {
                mtu,
                lose,
                sent: 0,
                sizes: BTreeSet::new(),
                lowest_in_use: u16::MAX,
            }
        }

        /// Ticks until the prober confirms or `limit` passes; returns the time it took.
        fn run(&mut self, prober: &mut PmtuProber, now: &mut Instant, limit: Duration) -> Duration {
            let start = *now;
            while now.duration_since(start) < limit {
                if let Some(size) = prober.next_probe(*now) {
                    assert!(size > prober.config.floor && size <= prober.config.ceiling);
                    self.sent += 1;
                    self.sizes.insert(size);
                    let lost = (self.lose)(self.sent);
                    if size <= self.mtu && !lost {
                        prober.on_ack(size, *now);
                    }
                }
                self.lowest_in_use = self.lowest_in_use.min(prober.path_mtu());
                if prober.state().phase == PmtuPhase::Confirmed {
                    break;
                }
                *now += TICK;
            }
            now.duration_since(start)
        }
    }

    #[test]
    fn a_clean_full_size_path_is_confirmed_with_one_probe() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        assert_eq!(
            prober.path_mtu(),
            576,
            "the floor until a probe is answered"
        );
        assert_eq!(prober.state().reason, PmtuReason::Started);
        let mut path = Path::new(1500, |_| false);
        path.run(&mut prober, &mut now, Duration::from_secs(60));
        assert_eq!(prober.path_mtu(), 1500);
        assert_eq!(path.sent, 1);
        assert_eq!(
            prober.state(),
            PmtuState {
                path_mtu: 1500,
                phase: PmtuPhase::Confirmed,
                reason: PmtuReason::Acknowledged(1500)
            }
        );
        // Nothing more to look for at the ceiling, ever.
        now += Duration::from_secs(3600);
        assert_eq!(prober.next_probe(now), None);
    }

    #[test]
    fn a_smaller_path_is_found_by_halving() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        let mut path = Path::new(1420, |_| false);
        assert_eq!(prober.next_probe(now), Some(1500));
        path.sent = 1;
        path.sizes.insert(1500);
        // Three timeouts write 1500 off, then 576..1500 is halved.
        for _ in 0..2 {
            assert_eq!(prober.next_probe(now + Duration::from_millis(999)), None);
            now += Duration::from_secs(1);
            assert_eq!(prober.next_probe(now), Some(1500), "sent again");
        }
        now += Duration::from_secs(1);
        assert_eq!(prober.next_probe(now), Some(1038));
        assert_eq!(
            prober.state().reason,
            PmtuReason::Unanswered {
                size: 1500,
                losses: 3
            }
        );
        prober.on_ack(1038, now);
        assert_eq!(prober.path_mtu(), 1038, "in use as soon as acknowledged");
        path.run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.path_mtu(), 1420);
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
        assert!(path.sizes.len() <= 11, "{:?}", path.sizes);
    }

    #[test]
    fn the_kernels_report_is_taken_at_once_and_confirmed() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        Path::new(1500, |_| false).run(&mut prober, &mut now, Duration::from_secs(10));
        assert_eq!(prober.path_mtu(), 1500);

        // The path shrinks; a send fails with EMSGSIZE and IP_MTU says 1400.
        now += Duration::from_secs(5);
        prober.on_too_big(Some(1400), now);
        assert_eq!(prober.path_mtu(), 1400);
        assert_eq!(
            prober.state().reason.to_string(),
            "the kernel reported a path MTU of 1400"
        );
        assert!(matches!(prober.state().phase, PmtuPhase::Probing { .. }));
        assert_eq!(prober.next_probe(now), Some(1400));
        prober.on_ack(1400, now);
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
        assert_eq!(prober.path_mtu(), 1400);
    }

    #[test]
    fn a_kernel_report_that_does_not_hold_up_restarts_the_search() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        Path::new(1500, |_| false).run(&mut prober, &mut now, Duration::from_secs(10));
        prober.on_too_big(Some(1450), now);
        assert_eq!(prober.path_mtu(), 1450);
        // The real path is 1300: probes of 1450 are lost, the search goes on from the floor.
        let mut path = Path::new(1300, |_| false);
        path.run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.path_mtu(), 1300);
        assert!(path.sizes.len() <= 11, "{:?}", path.sizes);
    }

    #[test]
    fn emsgsize_without_a_hint_fails_the_probe_or_the_mtu_in_use() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        assert_eq!(prober.next_probe(now), Some(1500));
        // The probe itself was refused: no need to wait for timeouts.
        prober.on_too_big(None, now);
        assert_eq!(prober.path_mtu(), 576);
        assert_eq!(prober.next_probe(now), Some(1038));
        prober.on_ack(1038, now);
        Path::new(1200, |_| false).run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.path_mtu(), 1200);

        // Now data at 1200 is refused: back to the floor, and search below 1200.
        prober.on_too_big(None, now);
        assert_eq!(prober.path_mtu(), 576);
        let mut path = Path::new(1000, |_| false);
        path.run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.path_mtu(), 1000);
        assert!(path.sizes.iter().all(|size| *size < 1200));
    }

    #[test]
    fn hints_outside_the_range_are_clamped() {
        let now = Instant::now();
        let mut prober = PmtuProber::new(config());
        prober.on_too_big(Some(200), now);
        assert_eq!(prober.path_mtu(), 576);
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
        assert_eq!(prober.state().reason, PmtuReason::KernelReported(Some(200)));

        let mut prober = PmtuProber::new(config());
        prober.on_too_big(Some(9000), now);
        assert_eq!(prober.next_probe(now), Some(1500));
    }

    #[test]
    fn stale_and_unsolicited_acks_are_ignored() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        prober.on_ack(1500, now);
        assert_eq!(prober.path_mtu(), 576);
        assert_eq!(prober.next_probe(now), Some(1500));
        for _ in 0..3 {
            now += Duration::from_secs(1);
            prober.next_probe(now);
        }
        // 1500 was written off and 1038 is in flight; a late ack of 1500 changes nothing.
        prober.on_ack(1500, now);
        prober.on_ack(60000, now);
        assert_eq!(prober.path_mtu(), 576);
        assert_eq!(
            prober.state().phase,
            PmtuPhase::Probing {
                probe: Some(1038),
                largest_ok: 576,
                smallest_failed: Some(1500)
            }
        );
    }

    #[test]
    fn the_mtu_grows_back_after_the_reprobe_interval() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        Path::new(1400, |_| false).run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.path_mtu(), 1400);
        let settled = now;

        // The path grows; nothing is probed before the interval.
        while now < settled + DEFAULT_REPROBE_INTERVAL - TICK {
            now += Duration::from_secs(1).min(settled + DEFAULT_REPROBE_INTERVAL - TICK - now);
            assert_eq!(prober.next_probe(now), None);
        }
        now = settled + DEFAULT_REPROBE_INTERVAL;
        assert_eq!(prober.next_probe(now), Some(1500));
        assert_eq!(prober.state().reason, PmtuReason::Reprobing);
        assert_eq!(prober.path_mtu(), 1400, "the confirmed MTU stays in use");
        prober.on_ack(1500, now);
        assert_eq!(prober.path_mtu(), 1500);
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
    }

    #[test]
    fn a_reprobe_that_finds_nothing_larger_keeps_the_mtu_in_use() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        let mut path = Path::new(1400, |_| false);
        path.run(&mut prober, &mut now, Duration::from_secs(120));
        now += DEFAULT_REPROBE_INTERVAL;
        path.sizes.clear();
        path.lowest_in_use = u16::MAX;
        path.run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
        assert_eq!(path.lowest_in_use, 1400, "never lower while looking");
        assert_eq!(prober.path_mtu(), 1400);
        assert!(
            path.sizes.iter().all(|size| *size > 1400),
            "{:?}",
            path.sizes
        );
        assert!(path.sizes.contains(&1500) && path.sizes.contains(&1401));
    }

    #[test]
    fn a_path_at_the_floor_and_a_floor_above_the_ceiling() {
        let mut now = Instant::now();
        let mut prober = PmtuProber::new(config());
        let mut path = Path::new(576, |_| false);
        path.run(&mut prober, &mut now, Duration::from_secs(120));
        assert_eq!(prober.path_mtu(), 576);
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);

        let mut prober = PmtuProber::new(PmtuConfig::new(IPV6_FLOOR, 1200));
        assert_eq!(prober.path_mtu(), 1200);
        assert_eq!(prober.next_probe(now), None);
        assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
    }

    #[test]
    fn time_running_backwards_neither_panics_nor_times_out() {
        let now = Instant::now() + Duration::from_secs(100);
        let mut prober = PmtuProber::new(config());
        assert_eq!(prober.next_probe(now), Some(1500));
        assert_eq!(prober.next_probe(now - Duration::from_secs(50)), None);
        prober.on_ack(1500, now - Duration::from_secs(60));
        assert_eq!(prober.path_mtu(), 1500);
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(PmtuReason::Started.to_string(), "no probe answered yet");
        assert_eq!(
            PmtuReason::Acknowledged(1400).to_string(),
            "the peer acknowledged a 1400-byte probe"
        );
        assert_eq!(
            PmtuReason::Unanswered {
                size: 1500,
                losses: 3
            }
            .to_string(),
            "3 probes of 1500 bytes went unanswered"
        );
        assert_eq!(
            PmtuReason::KernelReported(None).to_string(),
            "the kernel refused a datagram as too big"
        );
        assert_eq!(
            PmtuReason::Reprobing.to_string(),
            "looking for a larger path MTU again"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Tick(Duration),
        Ack(u16),
        TooBig(Option<u16>),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..3000).prop_map(|ms| Op::Tick(Duration::from_millis(ms))),
            1 => (0u64..1_000_000).prop_map(|s| Op::Tick(Duration::from_secs(s))),
            2 => any::<u16>().prop_map(Op::Ack),
            1 => any::<Option<u16>>().prop_map(Op::TooBig),
        ]
    }

    proptest! {
        /// Any true MTU between floor and ceiling is found exactly within 11 sizes, even when
        /// a couple of probes are lost (fewer than it takes to write a size off).
        #[test]
        fn converges_to_the_true_mtu_despite_a_few_losses(
            floor in prop_oneof![Just(IPV4_FLOOR), Just(IPV6_FLOOR), 68u16..1500],
            ceiling in prop_oneof![Just(1500u16), Just(9000), 1280u16..10000],
            true_mtu_at in any::<prop::sample::Index>(),
            losses in prop::collection::btree_set(1u32..30, 0..3),
        ) {
            let floor = floor.min(ceiling);
            let true_mtu = floor + true_mtu_at.index(usize::from(ceiling - floor) + 1) as u16;
            let mut prober = PmtuProber::new(PmtuConfig::new(floor, ceiling));
            let mut now = Instant::now();
            let mut path = Path::new(true_mtu, |sent| losses.contains(&sent));
            let took = path.run(&mut prober, &mut now, Duration::from_secs(600));
            prop_assert_eq!(prober.state().phase, PmtuPhase::Confirmed, "took {:?}", took);
            prop_assert_eq!(prober.path_mtu(), true_mtu);
            prop_assert!(path.sizes.len() <= 15, "{:?}", path.sizes);
            if ceiling - floor <= 1500 - 576 {
                prop_assert!(path.sizes.len() <= 11, "{:?}", path.sizes);
            }
        }

        /// However many probes are lost, the MTU in use never exceeds what the path carries.
        #[test]
        fn never_settles_above_the_path(
            true_mtu in 576u16..=1500,
            loss_percent in 0u32..90,
            seed in any::<u64>(),
        ) {
            let mut prober = PmtuProber::new(config());
            let mut now = Instant::now();
            let mut state = seed | 1;
            let mut path = Path::new(true_mtu, move |_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % 100 < u64::from(loss_percent)
            });
            path.run(&mut prober, &mut now, Duration::from_secs(600));
            prop_assert!(prober.path_mtu() <= true_mtu);
            prop_assert_eq!(prober.state().phase, PmtuPhase::Confirmed);
        }

        /// Acks of any size (the peer's bytes) and any kernel reports keep the prober sane.
        #[test]
        fn arbitrary_events_keep_the_invariants(ops in prop::collection::vec(arb_op(), 0..80)) {
            let mut prober = PmtuProber::new(config());
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Tick(after) => {
                        now += after;
                        if let Some(size) = prober.next_probe(now) {
                            prop_assert!(size > 576 && size <= 1500);
                        }
                    }
                    Op::Ack(size) => prober.on_ack(size, now),
                    Op::TooBig(hint) => prober.on_too_big(hint, now),
                }
                let state = prober.state();
                prop_assert!((576..=1500).contains(&state.path_mtu));
                if let PmtuPhase::Probing { probe, largest_ok, smallest_failed } = state.phase {
                    prop_assert!(largest_ok <= state.path_mtu);
                    if let (Some(probe), Some(failed)) = (probe, smallest_failed) {
                        prop_assert!(largest_ok < probe && probe < failed);
                    }
                }
            }
        }
    }
}
