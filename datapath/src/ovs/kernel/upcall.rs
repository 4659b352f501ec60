//! The miss path of [`super::OvsKernel`]: the state the engine's thread and the upcall thread
//! share, the handler that answers one upcall (decide, put the flow, execute the packet), and
//! the thread that reads the upcall socket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::OvsOps;
use crate::mac::Mac;
use crate::ovs::flows::{self, FlowOp, FlowParams};
use crate::ovs::miss::{self, IdleExpiry, MissLimiter, Unanswered};
use crate::ovs::{Flow, Upcall, UpcallSocket};

/// Misses answered, not answered (by why), over the limit, failed; flows expired for idleness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissCounters {
    pub answered: u64,
    pub unanswered: BTreeMap<Unanswered, u64>,
    pub rate_limited: u64,
    /// Answered, but the flow's put or the packet's execute failed.
    pub failed: u64,
    /// Flows deleted because they carried no packet for the idle timeout.
    pub expired: u64,
}

/// What both threads see, behind one mutex. Each holds it for the whole of a decision and the
/// netlink calls that carry it out, so the upcall thread never puts a flow for a MAC the engine
/// has just removed from the table and whose flow it is deleting.
#[derive(Debug, Default)]
pub struct Shared {
    /// The datapath's ifindex and its flows' parameters, once it is made or adopted.
    pub target: Option<(i32, FlowParams)>,
    /// The authority: MAC → the underlay address of its owner, as the engine last set it.
    pub table: BTreeMap<Mac, Ipv4Addr>,
    /// The cache: the flows the datapath holds, as last dumped or written.
    pub flows: BTreeSet<Flow>,
    /// The peers the group flow replicates to ([`crate::vxlan::kernel::VxlanKernel::set_group_dsts`]).
    pub group: BTreeSet<Ipv4Addr>,
    pub limiter: MissLimiter,
    pub expiry: IdleExpiry,
    pub counters: MissCounters,
}

pub type SharedState = Arc<Mutex<Shared>>;

/// The state, even if a thread panicked while holding it (each update is a whole step).
pub fn lock(shared: &SharedState) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// What became of one upcall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissOutcome {
    /// The flow was put and the packet sent on with its actions.
    Answered(Flow),
    Unanswered(Unanswered),
    RateLimited,
    /// Answered, but the kernel refused the put or the execute.
    Failed(Flow),
}

/// Answers upcalls with its own generic-netlink socket (the engine's is on another thread).
pub struct MissHandler {
    shared: SharedState,
    ops: Box<dyn OvsOps>,
}

impl MissHandler {
    pub fn new(shared: SharedState, ops: Box<dyn OvsOps>) -> Self {
        Self { shared, ops }
    }

    /// Decides on one upcall and carries the decision out.
    pub fn handle(&mut self, upcall: &Upcall, now: Instant) -> MissOutcome {
        let mut guard = lock(&self.shared);
        let s = &mut *guard;
        let decided = match s.target {
            Some((dp, params)) if dp == upcall.dp_ifindex => {
                miss::answer(&params, &s.table, &s.group, upcall).map(|flow| (dp, flow))
            }
            _ => Err(Unanswered::OtherDatapath),
        };
        let (dp, flow) = match decided {
            Ok(answer) => answer,
            Err(why) => {
                *s.counters.unanswered.entry(why).or_default() += 1;
                tracing::debug!(
                    reason = why.as_str(),
                    packet = %describe(upcall),
                    "ovs miss not answered"
                );
                return MissOutcome::Unanswered(why);
            }
        };
        // The limiter bounds the expensive part (two netlink round trips); deciding is a
        // table lookup, and the kernel's socket buffer bounds how many come up at all.
        if !s.limiter.allow(now) {
            s.counters.rate_limited += 1;
            if s.counters.rate_limited.is_power_of_two() {
                tracing::warn!(
                    rate_limited = s.counters.rate_limited,
                    per_sec = miss::MISS_RATE_PER_SEC,
                    "ovs misses over the limit are dropped"
                );
            }
            return MissOutcome::RateLimited;
        }
        let put = self.ops.put_flow(dp, &flow);
        if put.is_ok() {
            flows::apply(&[FlowOp::Put(flow.clone())], &mut s.flows);
        }
        // The packet is sent on even if the put failed: the decision is the table's either way.
        let executed = match upcall.in_port {
            Some(in_port) => self.ops.execute(dp, &upcall.packet, in_port, &flow.actions),
            None => Ok(()),
        };
        match (put, executed) {
            (Ok(()), Ok(())) => {
                s.counters.answered += 1;
                tracing::debug!(flow = %crate::ovs::key::describe(&flow.matching), "ovs miss answered");
                MissOutcome::Answered(flow)
            }
            (put, executed) => {
                s.counters.failed += 1;
                let error = put.err().or(executed.err()).map(|e| e.to_string());
                if s.counters.failed.is_power_of_two() {
                    tracing::warn!(
                        failed = s.counters.failed,
                        error = error.as_deref().unwrap_or(""),
                        "answering an ovs miss failed"
                    );
                }
                MissOutcome::Failed(flow)
            }
        }
    }
}

/// `in_port(0),eth_dst(33:33:00:00:00:16)`: what a missed packet's key says, as flows are
/// described.
fn describe(upcall: &Upcall) -> String {
    crate::ovs::key::describe(&crate::ovs::FlowMatch {
        in_port: upcall.in_port.unwrap_or(u32::MAX),
        eth_src: None,
        eth_dst: upcall.eth_dst.map(crate::ovs::MacMatch::exact),
        tunnel: upcall.tunnel,
    })
}

/// How long the upcall thread waits for an upcall before it looks at its stop flag: the
/// longest a drop of the kernel edge waits for it.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// After a receive error (other than a timeout), before the next read: no busy loop on a
/// socket that keeps failing.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// The largest upcall: a 64 KiB packet and its key.
const UPCALL_BUF_LEN: usize = 128 * 1024;

/// The thread reading the upcall socket; stopped and joined on drop.
pub struct UpcallThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UpcallThread {
    pub fn spawn(socket: UpcallSocket, mut handler: MissHandler) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("weft-ovs-upcalls".into())
            .spawn(move || {
                let mut buf = vec![0; UPCALL_BUF_LEN];
                let mut errors = 0u64;
                while !stopping.load(Ordering::Relaxed) {
                    match socket.recv_timeout(&mut buf, POLL_INTERVAL) {
                        Ok(Some(upcall)) => {
                            handler.handle(&upcall, Instant::now());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // ENOBUFS: the kernel dropped upcalls (counted as lost); or a
                            // datagram that does not decode.
                            errors += 1;
                            if errors.is_power_of_two() {
                                tracing::warn!(error = %e, errors, "reading ovs upcalls");
                            }
                            std::thread::sleep(ERROR_PAUSE);
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for UpcallThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("the ovs upcall thread panicked");
        }
    }
}
