//! The mesh port's accept loop and the shared state its connections consult: admission of
//! unauthenticated connections (decided by [`Admission`]) and the rate limit on the warnings
//! they cause (decided by [`LogLimiter`]). Every connection is accepted at once, so none waits
//! in the kernel's backlog; a refused one is closed at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use weft_gossip::handshake::Role;

use crate::admission::{Admission, AdmissionLimits, AdmissionReport, Decision, Refusal, Ticket};
use crate::conn::{self, ConnParams};
use crate::log_limit::{LogLimiter, LogVerdict, Suppressed};

/// Lines per kind of failure per interval before the rest are summarized.
const LOG_BURST: u32 = 5;
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Kinds of failure tracked separately (the keys are a role and a reason label: few).
const LOG_KEYS: usize = 64;

/// What a warning about a failed connection is keyed by: `(role, reason)`.
pub type LogKey = (&'static str, &'static str);

struct PortState {
    admission: Admission,
    /// How to tell each pending connection it was evicted.
    evictions: HashMap<Ticket, oneshot::Sender<()>>,
    logs: LogLimiter<LogKey>,
}

/// Shared by the accept loop, the connection tasks and the router actor (which keeps the set
/// of known addresses up to date).
pub struct MeshPort {
    limits: AdmissionLimits,
    state: Mutex<PortState>,
}

/// An admitted connection's slot; dropping it frees the slot.
pub struct Pass {
    port: Arc<MeshPort>,
    ticket: Ticket,
    /// Fires when a newcomer took this connection's slot (taken by the connection task).
    evicted: Option<oneshot::Receiver<()>>,
    pub accepted: Instant,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.port.lock();
        state.admission.release(self.ticket);
        state.evictions.remove(&self.ticket);
    }
}

impl Pass {
    /// What fires when a newcomer took this connection's slot (once; then `None`).
    pub fn take_evicted(&mut self) -> Option<oneshot::Receiver<()>> {
        self.evicted.take()
    }

    /// The peer's hello arrived: this connection is evicted only after silent ones.
    pub fn hello_received(&self) {
        self.port.lock().admission.progressed(self.ticket);
    }
}

impl MeshPort {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(MeshPort {
            state: Mutex::new(PortState {
                admission: Admission::new(limits.clone()),
                evictions: HashMap::new(),
                logs: LogLimiter::new(LOG_BURST, LOG_INTERVAL, LOG_KEYS),
            }),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, PortState> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Replaces the addresses the mesh knows (preferred when the port is busy).
    pub fn set_known(&self, known: HashSet<IpAddr>) {
        self.lock().admission.set_known(known);
    }

    pub fn report(&self) -> AdmissionReport {
        self.lock().admission.report()
    }

    /// Counts a connection cut for missing a deadline.
    pub fn count(&self, refusal: Refusal) {
        self.lock().admission.count(refusal);
    }

    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Pass, Refusal> {
        let mut state = self.lock();
        match state.admission.admit(source) {
            Decision::Refuse(refusal) => Err(refusal),
            Decision::Admit { ticket, evicted } => {
                if let Some(victim) = evicted
                    && let Some(tx) = state.evictions.remove(&victim)
                {
                    let _ = tx.send(());
                }
                let (tx, rx) = oneshot::channel();
                state.evictions.insert(ticket, tx);
                Ok(Pass {
                    port: self.clone(),
                    ticket,
                    evicted: Some(rx),
                    accepted: Instant::now(),
                })
            }
        }
    }

    /// Whether to log an event of kind `key` now; `log` gets the summary of what was left out
    /// before, if anything.
    pub fn log_limited(&self, key: LogKey, log: impl FnOnce(Option<Suppressed>)) {
        let verdict = self.lock().logs.check(&key, Instant::now());
        if let LogVerdict::Log { summary } = verdict {
            log(summary);
        }
    }

    /// Logs the summaries of kinds of failure that went quiet.
    fn flush_logs(&self) {
        let summaries = self.lock().logs.flush(Instant::now());
        for s in summaries {
            let (role, reason) = s.key.unwrap_or(("", "other"));
            tracing::warn!(
                role,
                reason,
                suppressed = s.suppressed.count,
                "mesh connections failed {}",
                s.suppressed
            );
        }
    }
}

/// Accepts mesh connections until the router stops.
pub async fn accept_loop(listener: TcpListener, params: Arc<ConnParams>) {
    let port = params.mesh_port.clone();
    let flusher = tokio::spawn({
        let port = port.clone();
        async move {
            let mut tick = tokio::time::interval(LOG_INTERVAL);
            loop {
                tick.tick().await;
                port.flush_logs();
            }
        }
    });
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => match port.admit(remote.ip()) {
                Ok(pass) => {
                    let key = params.new_key();
                    tokio::spawn(conn::run(
                        stream,
                        Role::Listener,
                        None,
                        key,
                        params.clone(),
                        Some(pass),
                    ));
                }
                Err(refusal) => {
                    drop(stream);
                    port.log_limited(("inbound", refusal.label()), |summary| {
                        tracing::warn!(
                            %remote,
                            reason = refusal.label(),
                            earlier = summary.as_ref().map(tracing::field::display),
                            "mesh connection refused before its handshake"
                        );
                    });
                }
            },
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be freed.
                port.log_limited(("inbound", "accept"), |summary| {
                    tracing::warn!(
                        error = %e,
                        earlier = summary.as_ref().map(tracing::field::display),
                        "accept failed"
                    );
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if params.events.is_closed() {
            break;
        }
    }
    flusher.abort();
}
