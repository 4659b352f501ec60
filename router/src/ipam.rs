//! IPAM as the router runs it: the gossiped [`IpamChannel`] (one handle hosted by the mesh, one
//! here), its persistence, the bridge's gateway address, and the CNI plugin's requests, some of
//! which wait for address space.
//!
//! Everything runs on the router actor, once per event, in [`IpamHost::step`]:
//! 1. timed channel work ([`IpamChannel::tick`]) and the gateway address (none while there is no
//!    agreed ring: see `weft_gossip::ipam::agreement`; a new one if a ring merge made it a
//!    duplicate);
//! 2. waiting ADDs are tried again (a donation or the ring may have just arrived);
//! 3. the channel's outbox is taken, the snapshot is **persisted if it changed**, and only then
//!    are ADD answers given; the router passes the outbox to the mesh and sends everything the
//!    mesh queued during the event after the step. So nothing leaves this host — an address to
//!    a container, a donation to a peer — before the state that explains it is on disk.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use weft_cni::error as code;
use weft_cni::ip::IpNet;
use weft_cni::protocol::{AddRequest, Allocation, Attachment, ErrorBody, GcRequest, GcResponse};
use weft_gossip::PeerName;
use weft_gossip::ipam::{
    AllocKey, Cidr, InitialPeer, IpamChannel, IpamConfig, IpamError, IpamSnapshot, IpamStatus,
    Outbox, SharedIpam, compare_views,
};
use weft_gossip::peer::PeerUid;
use weft_gossip::topology::Topology;

use crate::report::nickname_of;
use crate::store::Store;

/// The allocation key of the host's own address on the bridge (CRI container ids are hex, so
/// this never collides with a pod's).
pub const GATEWAY_CONTAINER: &str = "weft:gateway";
/// How often the channel's timed work runs.
const TICK: Duration = Duration::from_secs(1);
/// How long an ADD may wait for the ring or for space before it fails with "try again later".
/// The plugin waits 60 s for an answer.
pub const ADD_WAIT: Duration = Duration::from_secs(30);
/// How long after a hard failure (no space at all, the kernel refusing the address) the bridge
/// address is tried again.
const GATEWAY_RETRY: Duration = Duration::from_secs(5);

/// How long `weft ipam check` waits for peers' views.
const CHECK_WAIT: Duration = Duration::from_secs(3);

/// A `weft ipam check` round waiting for answers.
struct PendingCheck {
    deadline: Instant,
    reply: oneshot::Sender<IpamCheckReport>,
}

/// The answer to `weft ipam check` (`GET /ipam/check`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamCheckReport {
    /// Every view compared, this peer's first.
    pub peers: Vec<PeerViewReport>,
    /// Reachable peers that did not answer in time.
    pub missing: Vec<String>,
    /// Where the views differ, in words; empty when they all agree.
    pub differences: Vec<String>,
    /// The same, structured (`kind`: range, ring, owner, versions, conflicts).
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerViewReport {
    pub peer: String,
    pub nickname: String,
    pub ring: Option<String>,
    pub ring_hash: String,
    pub allocated: u64,
    pub conflicts: u64,
}

/// A CNI request that failed: the HTTP status and the CNI error the plugin passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniFailure {
    pub status: u16,
    pub body: ErrorBody,
}

impl CniFailure {
    pub fn new(status: u16, code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniFailure {
            status,
            body: ErrorBody {
                code,
                msg: msg.into(),
                details: details.into(),
            },
        }
    }

    fn try_later(details: impl Into<String>) -> Self {
        Self::new(
            503,
            code::TRY_AGAIN_LATER,
            "weft IPAM is not ready yet",
            details,
        )
    }
}

/// What an IPAM error means to the plugin.
fn failure(e: &IpamError) -> CniFailure {
    match e {
        IpamError::Exhausted(_) | IpamError::Unreachable { .. } => CniFailure::new(
            503,
            code::NO_ADDRESSES,
            "no address available",
            e.to_string(),
        ),
        IpamError::InvalidKey => CniFailure::new(
            400,
            code::INVALID_ENV,
            "invalid environment variables: CNI_CONTAINERID or CNI_IFNAME",
            e.to_string(),
        ),
        _ => CniFailure::try_later(e.to_string()),
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, CniFailure>>;

/// An ADD waiting for the ring, for space, or for the gateway address.
struct PendingAdd {
    key: AllocKey,
    deadline: Instant,
    reply: Reply<Allocation>,
    /// Why it waits, for the answer if it times out.
    waiting_for: String,
}

/// The bridge pods attach to, when a dataplane runs.
#[derive(Debug, Clone)]
pub struct BridgeInfo {
    pub name: String,
    pub mtu: u32,
}

/// Sets an address on the bridge, removing the one it replaces if any (the real one drives the
/// kernel; tests record).
pub type SetAddress = Box<dyn FnMut(&str, IpNet, Option<IpNet>) -> std::io::Result<()> + Send>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IpamCounters {
    pub adds: u64,
    pub add_failures: u64,
    pub dels: u64,
    pub released: u64,
    pub gc_released: u64,
    pub persist_failures: u64,
    /// Bridge addresses given up because a ring merge made them duplicates.
    pub gateway_moves: u64,
}

pub struct IpamHost {
    channel: SharedIpam,
    range: Cidr,
    store: Arc<Store>,
    bridge: Option<BridgeInfo>,
    set_address: SetAddress,
    /// The bridge's address, once allocated, and whether it is on the bridge.
    gateway: Option<Ipv4Addr>,
    gateway_applied: bool,
    /// A bridge address given up (a duplicate after a ring merge), removed from the bridge
    /// once the new one is set.
    stale_gateway: Option<Ipv4Addr>,
    /// The last such move, in words, for the report.
    gateway_moved: Option<String>,
    /// Not before this instant after a hard failure (see [`IpamHost::ensure_gateway`]).
    gateway_retry_at: Instant,
    pending: Vec<PendingAdd>,
    check: Option<PendingCheck>,
    /// The snapshot last written.
    saved: Vec<u8>,
    next_tick: Instant,
    pub counters: IpamCounters,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the data directory holds IPAM state for range {saved}, but --ipalloc-range is {configured}; use the same range on every peer (or move the data directory away to start over)"
    )]
    RangeChanged { saved: Cidr, configured: Cidr },
    #[error(
        "the data directory holds IPAM state of peer {saved}, but this router is {current}; keep the peer name with its data directory"
    )]
    NameChanged { saved: PeerName, current: PeerName },
    #[error("cannot read the persisted IPAM state: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Restores the channel from the store, or makes a fresh one.
pub fn open_channel(
    store: &Store,
    range: Cidr,
    local: PeerName,
    uid: PeerUid,
    now: Instant,
) -> Result<IpamChannel, OpenError> {
    let config = IpamConfig::new(range);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let Some(bytes) = store.ipam_snapshot()? else {
        return Ok(IpamChannel::new(config, local, uid, now, unix_ms));
    };
    let snapshot =
        IpamSnapshot::from_bytes(&bytes).map_err(|e| OpenError::Corrupt(e.to_string()))?;
    if snapshot.range != range {
        return Err(OpenError::RangeChanged {
            saved: snapshot.range,
            configured: range,
        });
    }
    if snapshot.local != local {
        return Err(OpenError::NameChanged {
            saved: snapshot.local,
            current: local,
        });
    }
    IpamChannel::restore(config, snapshot, uid, now, unix_ms)
        .map_err(|e| OpenError::Corrupt(e.to_string()))
}

impl IpamHost {
    pub fn new(
        channel: SharedIpam,
        store: Arc<Store>,
        bridge: Option<BridgeInfo>,
        set_address: SetAddress,
        now: Instant,
    ) -> Self {
        let range = channel.lock().range();
        let saved = channel.lock().snapshot().to_bytes();
        IpamHost {
            channel,
            range,
            store,
            bridge,
            set_address,
            gateway: None,
            gateway_applied: false,
            stale_gateway: None,
            gateway_moved: None,
            gateway_retry_at: now,
            pending: Vec::new(),
            check: None,
            saved,
            next_tick: now,
            counters: IpamCounters::default(),
        }
    }

    pub fn channel(&self) -> &SharedIpam {
        &self.channel
    }

    /// The peers the mesh can reach now (call when routes change). A bridge address that
    /// failed for want of a reachable donor is tried again at once: a host that just joined
    /// has the ring before it has the routes to the owners of the space.
    pub fn set_reachable(&mut self, peers: Vec<PeerName>, now: Instant) {
        self.channel.lock().set_reachable(peers);
        self.gateway_retry_at = self.gateway_retry_at.min(now);
    }

    /// Whether there is no ring yet, so the agreement needs the initial peers.
    pub fn needs_ring(&self) -> bool {
        self.channel.lock().ring_id().is_none()
    }

    /// The peers this router was told about and their state now.
    pub fn set_initial_peers(&mut self, peers: Vec<InitialPeer>) {
        self.channel.lock().set_initial_peers(peers);
    }

    /// `weft ipam force-ring`: creates a ring now, for when the initial peers are gone for good.
    pub fn force_ring(&mut self, now: Instant) -> Result<String, String> {
        let mut channel = self.channel.lock();
        let waited_for = channel.ring_wait_reason().map(|r| r.to_string());
        let id = channel.force_ring(now).map_err(|e| e.to_string())?;
        tracing::warn!(ring = %id, waited_for = waited_for.as_deref().unwrap_or(""), "IPAM ring forced by the operator");
        Ok(format!("created ring {id}"))
    }

    /// What the router waits for before it has a ring, in words.
    fn ring_wait(&self) -> Option<String> {
        self.channel
            .lock()
            .ring_wait_reason()
            .map(|r| r.to_string())
    }

    /// When [`IpamHost::step`] must run next even without an event.
    pub fn next_wakeup(&self) -> Instant {
        self.pending
            .iter()
            .map(|p| p.deadline)
            .chain(self.check.as_ref().map(|c| c.deadline))
            .fold(self.next_tick, Instant::min)
    }

    /// `weft ipam check`: asks every reachable peer for its view (answered by
    /// [`IpamHost::finish_check`]). A newer check replaces one in flight.
    pub fn start_check(&mut self, id: u64, reply: oneshot::Sender<IpamCheckReport>, now: Instant) {
        self.channel.lock().request_views(id);
        self.check = Some(PendingCheck {
            deadline: now + CHECK_WAIT,
            reply,
        });
    }

    /// Answers the check in flight once every asked peer answered or the wait is over.
    pub fn finish_check(&mut self, topology: &Topology, now: Instant) {
        let Some(check) = &self.check else {
            return;
        };
        let channel = self.channel.lock();
        let missing = channel.views_missing();
        if !missing.is_empty() && now < check.deadline {
            return;
        }
        let views: Vec<_> = std::iter::once(channel.view())
            .chain(channel.views())
            .collect();
        drop(channel);
        let differences = compare_views(&views);
        let report = IpamCheckReport {
            peers: views
                .iter()
                .map(|v| PeerViewReport {
                    peer: v.peer.to_string(),
                    nickname: nickname_of(topology, v.peer),
                    ring: v.ring.map(|r| r.to_string()),
                    ring_hash: format!("{:016x}", v.ring_hash),
                    allocated: v.allocated,
                    conflicts: v.conflicts,
                })
                .collect(),
            missing: missing.iter().map(|p| p.to_string()).collect(),
            differences: differences.iter().map(|d| d.to_string()).collect(),
            details: serde_json::to_value(&differences).unwrap_or_default(),
        };
        if let Some(check) = self.check.take() {
            let _ = check.reply.send(report);
        }
    }

    fn gateway_key(&self) -> Option<AllocKey> {
        self.bridge
            .as_ref()
            .map(|b| AllocKey::new(GATEWAY_CONTAINER, b.name.clone()))
    }

    fn allocation(&self, addr: Ipv4Addr) -> Result<Allocation, CniFailure> {
        let (Some(bridge), Some(gateway)) = (&self.bridge, self.gateway) else {
            return Err(no_datapath());
        };
        let address = IpNet::new(IpAddr::V4(addr), self.range.prefix)
            .ok_or_else(|| CniFailure::try_later("bad range prefix"))?;
        Ok(Allocation {
            address,
            gateway: IpAddr::V4(gateway),
            mtu: bridge.mtu,
            bridge: bridge.name.clone(),
            mac: None,
        })
    }

    /// `POST /cni/add`: answered in this or a later [`IpamHost::step`].
    pub fn add(&mut self, request: AddRequest, reply: Reply<Allocation>, now: Instant) {
        if self.bridge.is_none() {
            let _ = reply.send(Err(no_datapath()));
            return;
        }
        self.pending.push(PendingAdd {
            key: AllocKey::new(request.container_id, request.ifname),
            deadline: now + ADD_WAIT,
            reply,
            waiting_for: "the IP allocation ring".to_owned(),
        });
    }

    /// `POST /cni/del`: idempotent.
    pub fn del(&mut self, attachment: &Attachment, now: Instant) {
        let key = AllocKey::new(attachment.container_id.clone(), attachment.ifname.clone());
        self.counters.dels += 1;
        let (deleted, waiting) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.key == key);
        self.pending = waiting;
        for p in deleted {
            let _ = p.reply.send(Err(CniFailure::try_later(
                "the attachment was deleted while its ADD waited for an address",
            )));
        }
        let mut channel = self.channel.lock();
        channel.cancel(&key);
        if let Some(addr) = channel.release(&key, now) {
            self.counters.released += 1;
            tracing::info!(container = %key.container, ifname = %key.ifname, %addr, "address released");
        }
    }

    /// `POST /cni/check`: the attachment's allocation, if we hold one.
    pub fn check(&self, attachment: &Attachment) -> Result<Allocation, CniFailure> {
        let key = AllocKey::new(attachment.container_id.clone(), attachment.ifname.clone());
        let Some(addr) = self.channel.lock().address_of(&key) else {
            return Err(CniFailure::new(
                404,
                code::UNKNOWN_CONTAINER,
                "weft holds no address for this container",
                format!("no allocation for container {key}"),
            ));
        };
        self.allocation(addr)
    }

    /// CNI STATUS as the router answers it ([`readiness::cni_status`]) when IPAM and the state
    /// store are the only news in the report.
    #[cfg(test)]
    pub fn status_check(&self, now: Instant) -> Result<weft_cni::protocol::Status, CniFailure> {
        use crate::readiness;

        if self.bridge.is_none() {
            return Err(no_datapath());
        }
        let topology = Topology::new(weft_gossip::topology::PeerEntry {
            name: PeerName::from_bytes([0; 6]),
            nickname: String::new(),
            uid: 0,
            version: 1,
            connections: Default::default(),
        });
        let checks = vec![
            readiness::ipam_check(Some(&self.report(&topology, now)), true),
            readiness::persistence_check(Some(&self.store.report(now))),
        ];
        readiness::cni_answer(&readiness::Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        })
    }

    /// `POST /cni/gc`: releases every pod allocation not listed (the gateway stays).
    pub fn gc(&mut self, request: &GcRequest, now: Instant) -> GcResponse {
        let mut valid: BTreeSet<AllocKey> = request
            .valid
            .iter()
            .map(|a| AllocKey::new(a.container_id.clone(), a.ifname.clone()))
            .collect();
        valid.extend(self.gateway_key());
        let released = self.channel.lock().gc(&valid, now);
        for (key, addr) in &released {
            tracing::info!(container = %key.container, ifname = %key.ifname, %addr, "address released by GC");
        }
        self.counters.gc_released += released.len() as u64;
        GcResponse {
            released: u32::try_from(released.len()).unwrap_or(u32::MAX),
        }
    }

    /// `weft rmpeer`: reclaims a departed peer's space; returns the addresses taken.
    pub fn reclaim(&mut self, peer: PeerName, force: bool, now: Instant) -> Result<u64, IpamError> {
        self.channel.lock().reclaim(peer, force, now)
    }

    /// One step (see the module docs). `touched`: the event may have changed the channel (a
    /// CNI or rmpeer request, an IPAM message). Returns what the router must hand to the mesh.
    pub fn step(&mut self, now: Instant, touched: bool) -> Outbox {
        // Encoding the snapshot costs ~0.2 ms for a full ring: only when something may have
        // changed, not on every event of the router.
        let mut dirty = touched || !self.pending.is_empty();
        if now >= self.next_tick {
            self.channel.lock().tick(now);
            self.next_tick = now + TICK;
            dirty = true;
        }
        if self.move_duplicate_gateway(now) {
            dirty = true;
        }
        if self.bridge.is_some() && !self.gateway_applied && now >= self.gateway_retry_at {
            self.ensure_gateway(now);
            dirty = true;
        }
        // Attachments asked again that hold an address already: it is on disk (an address
        // whose write failed is released), so a failed write now must not release it.
        let on_disk: BTreeSet<AllocKey> = {
            let channel = self.channel.lock();
            self.pending
                .iter()
                .filter(|p| channel.address_of(&p.key).is_some())
                .map(|p| p.key.clone())
                .collect()
        };
        let answers = self.try_pending(now);
        let outbox = self.channel.lock().take_outbox();
        let persisted = if dirty { self.persist() } else { Ok(()) };
        for (reply, key, result) in answers {
            let result = match (result, &persisted) {
                (Ok(alloc), Err(_)) if on_disk.contains(&key) => Ok(alloc),
                (Ok(_), Err(e)) => {
                    // Not on disk: a restart could hand the address out again. Undo it.
                    self.channel.lock().release(&key, now);
                    Err(CniFailure::new(
                        500,
                        code::IO_FAILURE,
                        "weft cannot persist its IPAM state",
                        e.clone(),
                    ))
                }
                (result, _) => result,
            };
            match &result {
                Ok(alloc) => {
                    self.counters.adds += 1;
                    tracing::info!(container = %key.container, ifname = %key.ifname, address = %alloc.address, "address allocated");
                }
                Err(f) => {
                    self.counters.add_failures += 1;
                    tracing::warn!(container = %key.container, ifname = %key.ifname, code = f.body.code, error = %f.body.details, "ADD failed");
                }
            }
            let _ = reply.send(result);
        }
        outbox
    }

    /// Writes the snapshot if it changed since the last write.
    fn persist(&mut self) -> Result<(), String> {
        let bytes = self.channel.lock().snapshot().to_bytes();
        if bytes == self.saved {
            // On disk already. While the store fails, this is the probe whose success clears
            // the failure (the store re-opens the database first when it must); its failure
            // is the store's to count and log.
            if self.store.persistence_failing().is_some() {
                let _ = self.store.set_ipam_snapshot(&bytes);
            }
            return Ok(());
        }
        match self.store.set_ipam_snapshot(&bytes) {
            Ok(()) => {
                self.saved = bytes;
                Ok(())
            }
            Err(e) => {
                self.counters.persist_failures += 1;
                tracing::error!(error = %e, "cannot persist IPAM state");
                Err(e.to_string())
            }
        }
    }

    /// If a ring merge made the bridge's address a duplicate (the winner handed it out), gives
    /// it up and takes a new one from our own space (or waits for space); the old address
    /// leaves the bridge once the new one is on it. Returns whether anything changed.
    fn move_duplicate_gateway(&mut self, now: Instant) -> bool {
        let (Some(key), Some(_)) = (self.gateway_key(), self.gateway) else {
            return false;
        };
        let Some((old, new)) = self.channel.lock().reallocate_conflicting(&key, now) else {
            return false;
        };
        self.counters.gateway_moves += 1;
        if self.gateway_applied {
            self.stale_gateway = Some(old);
        }
        self.gateway_applied = false;
        self.gateway = new.as_ref().ok().copied();
        let note = match &new {
            Ok(addr) => format!(
                "bridge address {old} was also handed out by the ring that won a merge; moved to {addr}"
            ),
            Err(e) => format!(
                "bridge address {old} was also handed out by the ring that won a merge; waiting for a new one ({e})"
            ),
        };
        tracing::warn!(%old, new = ?new.as_ref().ok(), "{note}");
        self.gateway_moved = Some(note);
        true
    }

    /// Allocates the bridge's address and sets it. A failure other than waiting for the ring or
    /// for space is retried after [`GATEWAY_RETRY`], not on every event.
    fn ensure_gateway(&mut self, now: Instant) {
        let Some(key) = self.gateway_key() else {
            return;
        };
        if self.gateway.is_none() {
            match self.channel.lock().allocate(&key, now) {
                Ok(addr) => self.gateway = Some(addr),
                Err(e) if e.is_retryable() => return,
                Err(e) => {
                    tracing::warn!(error = %e, "no address for the bridge yet");
                    self.gateway_retry_at = now + GATEWAY_RETRY;
                    return;
                }
            }
        }
        if let (false, Some(addr), Some(bridge)) =
            (self.gateway_applied, self.gateway, &self.bridge)
        {
            let Some(net) = IpNet::new(IpAddr::V4(addr), self.range.prefix) else {
                return;
            };
            let stale = self
                .stale_gateway
                .and_then(|old| IpNet::new(IpAddr::V4(old), self.range.prefix));
            match (self.set_address)(&bridge.name, net, stale) {
                Ok(()) => {
                    tracing::info!(bridge = %bridge.name, address = %net, "bridge address set");
                    self.gateway_applied = true;
                    self.stale_gateway = None;
                }
                Err(e) => {
                    tracing::warn!(bridge = %bridge.name, error = %e, "cannot set the bridge address (retrying)");
                    self.gateway_retry_at = now + GATEWAY_RETRY;
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_pending(
        &mut self,
        now: Instant,
    ) -> Vec<(Reply<Allocation>, AllocKey, Result<Allocation, CniFailure>)> {
        let mut answers = Vec::new();
        let ring_wait = self.ring_wait();
        for mut p in std::mem::take(&mut self.pending) {
            if p.reply.is_closed() {
                // The plugin gave up (and will retry or DEL): stop asking for space for it.
                self.channel.lock().cancel(&p.key);
                continue;
            }
            let result = if let Some(why) = &ring_wait {
                p.waiting_for = format!("the IP allocation ring ({why})");
                Err(None)
            } else if self.gateway.is_none() {
                p.waiting_for = "this host's bridge address".to_owned();
                Err(None)
            } else {
                match self.channel.lock().allocate(&p.key, now) {
                    Ok(addr) => Ok(addr),
                    Err(e) if e.is_retryable() => {
                        p.waiting_for = e.to_string();
                        Err(None)
                    }
                    Err(e) => Err(Some(failure(&e))),
                }
            };
            match result {
                Ok(addr) => {
                    let alloc = self.allocation(addr);
                    answers.push((p.reply, p.key, alloc));
                }
                Err(Some(f)) => answers.push((p.reply, p.key, Err(f))),
                Err(None) if now >= p.deadline => {
                    self.channel.lock().cancel(&p.key);
                    let f = CniFailure::try_later(format!(
                        "waited {}s for {}",
                        ADD_WAIT.as_secs(),
                        p.waiting_for
                    ));
                    answers.push((p.reply, p.key, Err(f)));
                }
                Err(None) => self.pending.push(p),
            }
        }
        answers
    }

    /// The IPAM section of the report.
    pub fn report(&self, topology: &Topology, now: Instant) -> IpamReport {
        let channel = self.channel.lock();
        let status = channel.status(now);
        let allocations = channel
            .allocations()
            .into_iter()
            .map(|(key, addr)| AllocationReport {
                container_id: key.container,
                ifname: key.ifname,
                address: addr.to_string(),
            })
            .collect();
        drop(channel);
        IpamReport::new(status, topology, self, allocations)
    }
}

pub(crate) fn no_datapath() -> CniFailure {
    CniFailure::new(
        503,
        code::NOT_AVAILABLE,
        "weft runs without a datapath",
        "the router was started with --datapath none: pods cannot attach",
    )
}

/// `ipam` in `/report` (field names are an interface, like the rest of the report).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamReport {
    /// The cluster range (`--ipalloc-range`).
    pub range: String,
    /// Addresses in the range.
    pub range_size: u64,
    /// `no ring`, `waiting for ring`, `ready`, `waiting for space`.
    pub state: String,
    /// With no ring: exactly what this router waits for (initial peers not reached and why,
    /// peers that have not answered, or the peer expected to create the ring).
    pub waiting_for_ring: Option<String>,
    /// The ring's id `(created, genesis peer, uid)`, once there is one.
    pub ring: Option<String>,
    /// Equal on two peers iff their rings are equal.
    pub ring_hash: String,
    /// The bridge's address (the pods' gateway), once allocated.
    pub gateway: Option<String>,
    /// The last time a ring merge made the bridge's address a duplicate and it was moved.
    pub gateway_moved: Option<String>,
    pub owners: Vec<OwnerReport>,
    /// Addresses in chunks reclaimed and not adopted yet.
    pub unowned: u64,
    /// Owners we cannot reach (their free space is out of reach until they return or are
    /// removed with `weft rmpeer`).
    pub unreachable_owners: Vec<String>,
    pub unreachable_fraction: f64,
    /// A request for space in flight.
    pub pending: Option<PendingReport>,
    /// ADDs waiting for the ring or for space.
    pub waiting_adds: usize,
    /// Local allocations (pods and the gateway).
    pub allocated: usize,
    pub orphans: usize,
    pub reserved_for_peers: usize,
    pub conflicts: Vec<ConflictReport>,
    pub incompatible_updates: u64,
    pub allocations: Vec<AllocationReport>,
    pub counters: IpamCounters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerReport {
    pub peer: String,
    pub nickname: String,
    pub reachable: bool,
    /// Runs of consecutive addresses owned, `first-last`.
    pub ranges: Vec<String>,
    pub addresses: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingReport {
    pub donor: String,
    pub waiting_secs: u64,
    pub waiting: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictReport {
    pub addr: String,
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocationReport {
    pub container_id: String,
    pub ifname: String,
    pub address: String,
}

impl IpamReport {
    fn new(
        status: IpamStatus,
        topology: &Topology,
        host: &IpamHost,
        allocations: Vec<AllocationReport>,
    ) -> Self {
        let unreachable_owners = status
            .owners
            .iter()
            .filter(|o| !o.reachable)
            .map(|o| o.peer.to_string())
            .collect();
        IpamReport {
            range: status.range,
            range_size: host.range.size(),
            state: status.state.to_owned(),
            waiting_for_ring: status.waiting_for_ring,
            ring: status.ring,
            ring_hash: status.ring_hash,
            gateway: host.gateway.map(|g| g.to_string()),
            gateway_moved: host.gateway_moved.clone(),
            owners: status
                .owners
                .into_iter()
                .map(|o| OwnerReport {
                    peer: o.peer.to_string(),
                    nickname: nickname_of(topology, o.peer),
                    reachable: o.reachable,
                    ranges: o.ranges,
                    addresses: o.addresses,
                    free: o.free,
                })
                .collect(),
            unowned: status.unowned,
            unreachable_owners,
            unreachable_fraction: status.unreachable_fraction,
            pending: status.pending.map(|p| PendingReport {
                donor: p.donor.to_string(),
                waiting_secs: p.waiting_secs,
                waiting: p.waiting,
            }),
            waiting_adds: host.pending.len(),
            allocated: status.allocated,
            orphans: status.orphans,
            reserved_for_peers: status.reserved_for_peers,
            conflicts: status
                .conflicts
                .into_iter()
                .map(|c| ConflictReport {
                    addr: c.addr.to_string(),
                    peer: c.peer.to_string(),
                })
                .collect(),
            incompatible_updates: status.incompatible_updates,
            allocations,
            counters: host.counters.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn local() -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, 1])
    }

    fn topology() -> Topology {
        Topology::new(weft_gossip::topology::PeerEntry {
            name: local(),
            nickname: "me".into(),
            uid: 7,
            version: 1,
            connections: Default::default(),
        })
    }

    struct Fixture {
        dir: std::path::PathBuf,
        store: Arc<Store>,
        set: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("weft-ipam-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = Arc::new(Store::open(&dir).unwrap());
            Fixture {
                dir,
                store,
                set: Arc::default(),
            }
        }

        /// `told`: the router was told about a peer (10.0.0.9:6783, not reached).
        fn host(&self, range: &str, told: bool, now: Instant) -> IpamHost {
            let channel =
                open_channel(&self.store, range.parse().unwrap(), local(), 7, now).unwrap();
            let set = self.set.clone();
            let mut host = IpamHost::new(
                SharedIpam::new(channel),
                self.store.clone(),
                Some(BridgeInfo {
                    name: "weft".into(),
                    mtu: 1414,
                }),
                Box::new(move |dev: &str, net: IpNet, old: Option<IpNet>| {
                    set.lock().unwrap().push((dev.to_owned(), net.to_string()));
                    if let Some(old) = old {
                        set.lock()
                            .unwrap()
                            .push((dev.to_owned(), format!("-{old}")));
                    }
                    Ok(())
                }),
                now,
            );
            if told {
                host.set_initial_peers(vec![InitialPeer::unreached(
                    "10.0.0.9:6783",
                    "connection refused",
                )]);
            }
            host
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn add_request(container: &str) -> AddRequest {
        AddRequest {
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            host_veth: None,
        }
    }

    fn attachment(container: &str) -> Attachment {
        Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
        }
    }

    type AddAnswer = Result<Allocation, CniFailure>;

    /// Sends an ADD and runs one step; the answer, if one was given.
    fn add(
        host: &mut IpamHost,
        container: &str,
        now: Instant,
    ) -> (Option<AddAnswer>, oneshot::Receiver<AddAnswer>) {
        let (tx, mut rx) = oneshot::channel();
        host.add(add_request(container), tx, now);
        host.step(now, true);
        (rx.try_recv().ok(), rx)
    }

    #[test]
    fn an_add_gets_an_address_beside_the_gateway_and_it_is_on_disk_before_the_answer() {
        let f = Fixture::new("add");
        let now = Instant::now();
        let mut host = f.host("10.32.0.0/12", false, now);
        let (answer, _rx) = add(&mut host, "c1", now);
        let alloc = answer.unwrap().unwrap();
        assert_eq!(alloc.address.prefix, 12);
        assert_eq!(alloc.mtu, 1414);
        assert_eq!(alloc.bridge, "weft");
        assert_ne!(alloc.address.addr, alloc.gateway);
        assert_eq!(
            *f.set.lock().unwrap(),
            vec![("weft".to_owned(), format!("{}/12", alloc.gateway))]
        );
        let saved = IpamSnapshot::from_bytes(&f.store.ipam_snapshot().unwrap().unwrap()).unwrap();
        assert!(
            saved
                .allocations
                .iter()
                .any(|(k, a)| k.container == "c1" && IpAddr::V4(*a) == alloc.address.addr)
        );
        // The same attachment asked again gets the same address.
        let (again, _rx) = add(&mut host, "c1", now);
        assert_eq!(again.unwrap().unwrap(), alloc);
        assert_eq!(host.check(&attachment("c1")).unwrap(), alloc);
    }

    #[test]
    fn del_is_idempotent_and_check_of_the_unknown_is_code_3() {
        let f = Fixture::new("del");
        let now = Instant::now();
        let mut host = f.host("10.32.0.0/12", false, now);
        let (answer, _rx) = add(&mut host, "c1", now);
        answer.unwrap().unwrap();
        host.del(&attachment("c1"), now);
        host.del(&attachment("c1"), now);
        host.del(&attachment("never-added"), now);
        host.step(now, true);
        let err = host.check(&attachment("c1")).unwrap_err();
        assert_eq!((err.status, err.body.code), (404, code::UNKNOWN_CONTAINER));
        assert_eq!(host.counters.released, 1);
    }

    #[test]
    fn gc_releases_what_is_not_valid_and_keeps_the_gateway() {
        let f = Fixture::new("gc");
        let now = Instant::now();
        let mut host = f.host("10.32.0.0/12", false, now);
        for c in ["a", "b", "c"] {
            add(&mut host, c, now).0.unwrap().unwrap();
        }
        let answer = host.gc(
            &GcRequest {
                valid: vec![attachment("b")],
            },
            now,
        );
        assert_eq!(answer.released, 2);
        assert!(host.check(&attachment("b")).is_ok());
        assert!(host.check(&attachment("a")).is_err());
        let report = host.report(&topology(), now);
        assert_eq!(report.allocated, 2, "b and the gateway");
    }

    #[test]
    fn an_exhausted_range_is_code_105_and_status_says_not_ready() {
        let f = Fixture::new("full");
        let now = Instant::now();
        // A /29 has 6 usable addresses: the gateway and five pods.
        let mut host = f.host("10.99.0.0/29", false, now);
        for i in 0..5 {
            add(&mut host, &format!("c{i}"), now).0.unwrap().unwrap();
        }
        let err = add(&mut host, "one-too-many", now).0.unwrap().unwrap_err();
        assert_eq!(err.body.code, code::NO_ADDRESSES);
        assert!(
            err.body.details.contains("exhausted"),
            "{}",
            err.body.details
        );
        let status = host.status_check(now).unwrap_err();
        assert_eq!(status.body.code, code::NOT_AVAILABLE);
        host.del(&attachment("c0"), now);
        host.step(now, true);
        let after = host.status_check(now);
        assert!(after.is_ok(), "{after:?}");
    }

    #[test]
    fn an_add_waits_for_the_ring_and_fails_with_code_11_saying_what_it_waits_for() {
        let f = Fixture::new("wait");
        let now = Instant::now();
        // Told about 10.0.0.9:6783, which is not reached: no ring, no bridge address.
        let mut host = f.host("10.32.0.0/12", true, now);
        let (answer, mut rx) = add(&mut host, "c1", now);
        assert!(answer.is_none(), "the ADD waits");
        let why = "no ring yet: 0 of 1 initial peers reachable: 10.0.0.9:6783 (connection refused)";
        let status = host.status_check(now).unwrap_err();
        assert_eq!(status.body.code, code::NOT_AVAILABLE);
        assert_eq!(status.body.details, format!("ipam: {why}"));
        let report = host.report(&topology(), now);
        assert_eq!(report.state, "waiting for ring");
        assert_eq!(report.waiting_for_ring.as_deref(), Some(why));
        assert_eq!(report.gateway, None);
        host.step(now + Duration::from_secs(2), true);
        assert!(rx.try_recv().is_err(), "still waiting");
        let later = now + ADD_WAIT + Duration::from_secs(1);
        host.step(later, true);
        let failure = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(failure.body.code, code::TRY_AGAIN_LATER);
        assert!(
            failure.body.details.contains(why),
            "{}",
            failure.body.details
        );
        assert!(f.set.lock().unwrap().is_empty(), "no address on the bridge");
        // The operator forces a ring: the bridge gets its address and ADDs are served.
        assert!(host.force_ring(later).unwrap().starts_with("created ring"));
        assert!(
            host.force_ring(later)
                .unwrap_err()
                .contains("there is a ring already")
        );
        let (answer, _rx) = add(&mut host, "c2", later);
        answer.unwrap().unwrap();
        assert_eq!(f.set.lock().unwrap().len(), 1);
        assert!(host.status_check(later).is_ok());
    }

    #[test]
    fn a_bridge_address_the_kernel_refused_is_set_again_later_not_on_every_event() {
        let f = Fixture::new("gwretry");
        let now = Instant::now();
        let channel =
            open_channel(&f.store, "10.32.0.0/12".parse().unwrap(), local(), 7, now).unwrap();
        let calls = Arc::new(Mutex::new(0u32));
        let seen = calls.clone();
        let mut host = IpamHost::new(
            SharedIpam::new(channel),
            f.store.clone(),
            Some(BridgeInfo {
                name: "weft".into(),
                mtu: 1414,
            }),
            Box::new(move |_: &str, _: IpNet, _: Option<IpNet>| {
                let mut n = seen.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    Err(std::io::Error::other("refused"))
                } else {
                    Ok(())
                }
            }),
            now,
        );
        host.step(now, false);
        host.step(now, false);
        host.step(now + Duration::from_secs(1), false);
        assert_eq!(*calls.lock().unwrap(), 1, "no retry before GATEWAY_RETRY");
        host.step(now + GATEWAY_RETRY, false);
        assert_eq!(*calls.lock().unwrap(), 2);
        assert!(host.status_check(now + GATEWAY_RETRY).is_ok());
    }

    #[test]
    fn a_del_answers_the_add_still_waiting_for_the_same_attachment() {
        let f = Fixture::new("delwait");
        let now = Instant::now();
        let mut host = f.host("10.32.0.0/12", true, now);
        host.set_reachable(vec![PeerName::from_bytes([2, 0, 0, 0, 0, 9])], now);
        let (answer, mut rx) = add(&mut host, "c1", now);
        assert!(answer.is_none(), "the ADD waits for the ring");
        host.del(&attachment("c1"), now);
        let err = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(err.body.code, code::TRY_AGAIN_LATER);
        assert!(err.body.details.contains("deleted"), "{}", err.body.details);
        assert_eq!(host.report(&topology(), now).waiting_adds, 0);
    }

    /// Delivers what `from` must send (its step's outbox) to `to`, and `to`'s answers back,
    /// the way the mesh would between two connected routers.
    fn exchange(from: &mut IpamHost, to: &mut IpamHost, now: Instant) {
        use weft_gossip::channel::GossipChannel;
        let (a, b) = (
            from.channel().lock().local_name(),
            to.channel().lock().local_name(),
        );
        let out = from.step(now, true);
        if let Some(update) = out.publish {
            let _ = to.channel().lock().merge(a, &update);
        }
        for (dst, payload) in out.unicasts {
            if dst != b {
                continue;
            }
            let replies = to.channel().lock().on_unicast(a, &payload).unwrap();
            for (_, reply) in replies {
                from.channel().lock().on_unicast(b, &reply).unwrap();
            }
        }
    }

    #[test]
    fn a_bridge_address_duplicated_by_a_ring_merge_moves_to_a_new_one() {
        use weft_gossip::channel::GossipChannel;
        let winner = Fixture::new("merge-a");
        let loser = Fixture::new("merge-b");
        let now = Instant::now();
        let mut a = winner.host("10.32.0.0/12", false, now);
        a.step(now, true);
        std::thread::sleep(Duration::from_millis(5));
        // b was told about a peer it cannot reach; its operator forces a ring.
        let b_name = PeerName::from_bytes([2, 0, 0, 0, 0, 2]);
        let channel = open_channel(
            &loser.store,
            "10.32.0.0/12".parse().unwrap(),
            b_name,
            8,
            now,
        )
        .unwrap();
        let set = loser.set.clone();
        let mut b = IpamHost::new(
            SharedIpam::new(channel),
            loser.store.clone(),
            Some(BridgeInfo {
                name: "weft".into(),
                mtu: 1414,
            }),
            Box::new(move |_: &str, net: IpNet, old: Option<IpNet>| {
                set.lock().unwrap().push((
                    net.to_string(),
                    old.map(|o| o.to_string()).unwrap_or_default(),
                ));
                Ok(())
            }),
            now,
        );
        b.set_initial_peers(vec![InitialPeer::unreached("10.0.0.1:6783", "refused")]);
        b.step(now, true);
        assert_eq!(b.report(&topology(), now).gateway, None);
        b.force_ring(now).unwrap();
        b.step(now, true);
        let gw_a = a.report(&topology(), now).gateway.unwrap();
        let gw_b = b.report(&topology(), now).gateway.unwrap();
        assert_eq!(gw_a, gw_b, "two rings, one first address");
        // They meet: a's older ring wins, b's bridge address is an orphan held by a too.
        a.set_reachable(vec![b_name], now);
        b.set_reachable(vec![local()], now);
        for part in a.channel().lock().full_state(1 << 16) {
            b.channel().lock().merge(local(), &part).unwrap();
        }
        let mut t = now;
        for _ in 0..6 {
            t += Duration::from_secs(6);
            exchange(&mut b, &mut a, t);
            exchange(&mut a, &mut b, t);
        }
        let report = b.report(&topology(), t);
        let moved = report.gateway.clone().unwrap();
        assert_ne!(moved, gw_a, "b's bridge has a new address");
        assert_eq!(
            a.report(&topology(), t).gateway.unwrap(),
            gw_a,
            "a keeps its own"
        );
        assert_eq!(report.counters.gateway_moves, 1);
        assert!(
            report.gateway_moved.unwrap().contains(&gw_b),
            "the report says what moved"
        );
        assert_eq!(
            *loser.set.lock().unwrap().last().unwrap(),
            (format!("{moved}/12"), format!("{gw_b}/12")),
            "the new address is set and the duplicate removed from the bridge"
        );
        assert!(report.conflicts.is_empty());
        assert!(a.report(&topology(), t).conflicts.is_empty());
    }

    #[test]
    fn a_reopened_store_keeps_every_allocation_and_refuses_another_range() {
        let f = Fixture::new("reopen");
        let now = Instant::now();
        let alloc = {
            let mut host = f.host("10.32.0.0/12", false, now);
            add(&mut host, "c1", now).0.unwrap().unwrap()
        };
        let mut host = f.host("10.32.0.0/12", false, now);
        host.step(now, true);
        assert_eq!(host.check(&attachment("c1")).unwrap(), alloc);
        let (next, _rx) = add(&mut host, "c2", now);
        assert_ne!(next.unwrap().unwrap().address, alloc.address);
        let err = open_channel(&f.store, "10.40.0.0/16".parse().unwrap(), local(), 8, now)
            .err()
            .unwrap();
        assert!(matches!(err, OpenError::RangeChanged { .. }), "{err}");
        let other = PeerName::from_bytes([2, 0, 0, 0, 0, 2]);
        let err = open_channel(&f.store, "10.32.0.0/12".parse().unwrap(), other, 8, now)
            .err()
            .unwrap();
        assert!(matches!(err, OpenError::NameChanged { .. }), "{err}");
    }

    #[test]
    fn without_a_datapath_adds_and_status_say_not_available() {
        let f = Fixture::new("nodp");
        let now = Instant::now();
        let channel =
            open_channel(&f.store, "10.32.0.0/12".parse().unwrap(), local(), 7, now).unwrap();
        let mut host = IpamHost::new(
            SharedIpam::new(channel),
            f.store.clone(),
            None,
            Box::new(|_: &str, _: IpNet, _: Option<IpNet>| Ok(())),
            now,
        );
        let (answer, _rx) = add(&mut host, "c1", now);
        assert_eq!(answer.unwrap().unwrap_err().body.code, code::NOT_AVAILABLE);
        assert_eq!(
            host.status_check(now).unwrap_err().body.code,
            code::NOT_AVAILABLE
        );
    }
}
