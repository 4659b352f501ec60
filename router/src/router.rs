//! The router actor: one task owns the [`Mesh`] state machine and carries out its actions.
//! Connection tasks, the accept loop and the HTTP API talk to it through [`Event`]s.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use weft_cni::error as code;
use weft_cni::protocol::{AddRequest, Allocation, Attachment, GcRequest, GcResponse, Status};
use weft_datapath::mac::Mac;
use weft_gossip::PeerName;
use weft_gossip::ipam::AllocKey;
use weft_gossip::ipam::IPAM_CHANNEL;
use weft_gossip::ipam::agreement::{InitialPeer, initial_peers};
use weft_gossip::macs::{DEFAULT_TOMBSTONE_KEEP, MAC_CHANNEL};
use weft_gossip::maker::Retry;
use weft_gossip::mesh::{Action, ConnKey, Mesh, MeshConfig, NewConnection, RegisterError};
use weft_gossip::routes::LinkSet;
use weft_gossip::wire::ControlMsg;

use crate::conn::{self, ConnParams};
use crate::dataplane::{Dataplane, DataplaneEvent, LinkKeys};
use crate::fastpath::{FastEvent, FastPath};
use crate::ipam::{CniFailure, IpamHost, Reply};
use crate::kube::{KubeEvent, KubeShared};
use crate::metrics::Metrics;
use crate::portguard::{self, AttachmentKey, PortGuard};
use crate::report::{self, Report};
use crate::store::Store;

/// How long `weft ping` waits for the echo.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Event {
    Handshaken {
        key: ConnKey,
        new: NewConnection,
        tx: mpsc::Sender<ControlMsg>,
        /// `Err(reason)` refuses the connection; the reason is sent to the peer.
        reply: oneshot::Sender<Result<(), String>>,
        /// The sleeve's sealing keys for this connection (None without a password).
        link_keys: Option<LinkKeys>,
    },
    HandshakeFailed {
        target: Option<String>,
        remote: Option<SocketAddr>,
        error: String,
        retry: Retry,
    },
    Message {
        key: ConnKey,
        msg: ControlMsg,
    },
    Closed {
        key: ConnKey,
        reason: String,
    },
    Api(ApiRequest),
    Dataplane(DataplaneEvent),
    /// The fast path changed a connection's datapath.
    Fast(FastEvent),
    Cni(CniRequest),
    /// From the Kubernetes API task (`--kube-peers`).
    Kube(KubeEvent),
}

/// The CNI plugin's requests (`cni_api`).
pub enum CniRequest {
    Add {
        request: AddRequest,
        reply: Reply<Allocation>,
    },
    Del {
        attachment: Attachment,
        reply: Reply<()>,
    },
    Check {
        attachment: Attachment,
        reply: Reply<Allocation>,
    },
    Status {
        reply: Reply<Status>,
    },
    Gc {
        request: GcRequest,
        reply: Reply<GcResponse>,
    },
    /// Internal: IPAM answered an ADD whose plugin names its veth; guard the port, then
    /// answer the plugin (see `portguard`).
    Guard {
        key: AttachmentKey,
        host_veth: String,
        mac: Mac,
        allocation: Allocation,
        reply: Reply<Allocation>,
    },
}

pub enum ApiRequest {
    /// `weft connect`: refused (with the reason) when the direct targets would pass their cap.
    Connect {
        hosts: Vec<String>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Forget {
        hosts: Vec<String>,
        reply: oneshot::Sender<Vec<bool>>,
    },
    Ping {
        peer: String,
        reply: oneshot::Sender<Result<PingResult, String>>,
    },
    Report {
        reply: oneshot::Sender<Report>,
    },
    /// `weft ipam check`: every reachable peer's view of the ring, compared.
    IpamCheck {
        reply: oneshot::Sender<crate::ipam::IpamCheckReport>,
    },
    /// `weft rmpeer`: reclaim a departed peer's address space.
    Rmpeer {
        peer: String,
        force: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `weft ipam force-ring`: create the IPAM ring without the initial peers.
    ForceRing {
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `/healthz`: the event loop answers (nothing else is looked at).
    Alive {
        reply: oneshot::Sender<()>,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PingResult {
    pub peer: String,
    pub nickname: String,
    /// First hop of the route the echo took.
    pub via: String,
    pub rtt_ms: f64,
}

/// Static facts the report needs.
pub struct RouterInfo {
    pub encryption: bool,
    pub port: u16,
    pub conn_limit: usize,
    pub mesh_id: String,
    /// The open files limit (`RLIMIT_NOFILE`) after raising it at start.
    pub open_files_limit: Option<u64>,
    /// `--datapath` as given.
    pub datapath_mode: String,
}

/// What the router runs besides the mesh: the data plane (whose MAC channel the mesh hosts) and
/// IPAM.
pub struct Planes {
    pub dataplane: Option<Dataplane>,
    pub ipam: IpamHost,
    /// The pods' bridge-port guards (with a dataplane).
    pub ports: Option<PortGuard>,
    /// With `--kube-peers`: the API task's view, for the report.
    pub kube: Option<KubeShared>,
    /// The kernel fast path (with a dataplane).
    pub fast: Option<FastPath>,
}

/// What the router keeps of the Kubernetes API task (`--kube-peers`).
struct KubePeers {
    shared: KubeShared,
    /// The first Node list has arrived: until then no IPAM ring may be created.
    listed: bool,
    /// The targets the Node list added (not persisted: the API names them at every start).
    targets: BTreeSet<String>,
}

/// The initial peers of the ring agreement: the operator-named targets (with `--kube-peers`
/// those include the other Nodes), and, until the first Node list arrived, the list itself as
/// one more peer not reached yet, so that no ring is created before the router knows the
/// Nodes.
fn ring_initial_peers(mesh: &Mesh, kube: Option<&KubePeers>, now: Instant) -> Vec<InitialPeer> {
    let mut initial = initial_peers(mesh.name(), &mesh.targets(now), |a| mesh.target_peer(a));
    if let Some(kube) = kube.filter(|k| !k.listed) {
        let why = kube
            .shared
            .report()
            .error
            .unwrap_or_else(|| "not listed yet".to_owned());
        initial.push(InitialPeer::unreached("the Kubernetes Node list", why));
    }
    initial
}

/// An echo in flight: when it left, to whom, and who waits for the answer.
struct PendingPing {
    sent: Instant,
    peer: PeerName,
    reply: oneshot::Sender<Result<PingResult, String>>,
}

/// A registered connection as the actor keeps it.
struct ConnEntry {
    tx: mpsc::Sender<ControlMsg>,
    peer: PeerName,
}

pub struct Router {
    mesh: Mesh,
    conns: HashMap<ConnKey, ConnEntry>,
    /// With the MAC-to-peer gossip channel (hosted by the mesh): `Dataplane::gossip_macs`.
    dataplane: Option<Dataplane>,
    /// The mesh routes version last handed to the dataplane and IPAM.
    routes_seen: u64,
    fast: Option<FastPath>,
    /// The MAC table version (`MacChannel::changes`) last handed to the fast path.
    macs_seen: Option<u64>,
    ipam: IpamHost,
    ports: Option<PortGuard>,
    params: Arc<ConnParams>,
    events: mpsc::Receiver<Event>,
    store: Arc<Store>,
    info: RouterInfo,
    pings: HashMap<u64, PendingPing>,
    metrics: Arc<Metrics>,
    /// Mesh counters already pushed to Prometheus.
    terminations_seen: u64,
    kube: Option<KubePeers>,
}

impl Router {
    pub fn new(
        config: MeshConfig,
        params: ConnParams,
        events: mpsc::Receiver<Event>,
        store: Arc<Store>,
        info: RouterInfo,
        initial_targets: Vec<String>,
        Planes {
            dataplane,
            ipam,
            ports,
            kube,
            fast,
        }: Planes,
    ) -> Self {
        let now = Instant::now();
        let mut mesh = Mesh::new(config, now);
        mesh.add_channel(IPAM_CHANNEL, Box::new(ipam.channel().clone()));
        let mut out = Vec::new();
        if let Some(dataplane) = &dataplane {
            mesh.add_channel(MAC_CHANNEL, Box::new(dataplane.gossip_macs().clone()));
            // The MACs of attachments guarded before a restart are pinned again.
            for port in ports.iter().flat_map(PortGuard::ports) {
                dataplane.pin_mac(port.mac);
                let change = dataplane.gossip_macs().lock().pin_local(port.mac, now);
                if let Some(change) = change
                    && let Err(e) = mesh.publish(MAC_CHANNEL, &change, &mut out)
                {
                    tracing::warn!(error = %e, "cannot publish a MAC claim");
                }
            }
        }
        mesh.add_direct(&initial_targets, now, &mut out);
        // Before anything can ask IPAM for an address: a router told about peers must not look
        // like a lone host even for one step.
        let kube = kube.map(|shared| KubePeers {
            shared,
            listed: false,
            targets: BTreeSet::new(),
        });
        let mut ipam = ipam;
        ipam.set_initial_peers(ring_initial_peers(&mesh, kube.as_ref(), now));
        let metrics = params.metrics.clone();
        let mut router = Router {
            mesh,
            conns: HashMap::new(),
            dataplane,
            routes_seen: 0,
            fast,
            macs_seen: None,
            ipam,
            ports,
            params: Arc::new(params),
            events,
            store,
            info,
            pings: HashMap::new(),
            metrics,
            terminations_seen: 0,
            kube,
        };
        router.execute(out);
        router
    }

    /// Accepts connections and runs the actor until the process ends.
    pub async fn run(mut self, listener: TcpListener) {
        tokio::spawn(crate::mesh_port::accept_loop(listener, self.params.clone()));
        self.update_known_addresses();
        loop {
            let mut wake = self.mesh.next_wakeup();
            if let Some(deadline) = self.pings.values().map(|p| p.sent + PING_TIMEOUT).min() {
                wake = wake.min(deadline);
            }
            wake = wake.min(self.ipam.next_wakeup());
            let event = tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => Some(event),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => None,
            };
            let now = Instant::now();
            let mut out = Vec::new();
            let ipam_touched = event.as_ref().is_some_and(touches_ipam);
            match event {
                Some(event) => self.handle(event, now, &mut out),
                None => {
                    self.update_known_addresses();
                    if let Some(dataplane) = &self.dataplane {
                        // `prune_tombstones` moves the channel's clock to `now` itself.
                        dataplane
                            .gossip_macs()
                            .lock()
                            .prune_tombstones(now, DEFAULT_TOMBSTONE_KEEP);
                    }
                    self.mesh.tick(now, &mut out);
                    self.expire_pings(now);
                }
            }
            if self.mesh.routes_version() != self.routes_seen {
                self.routes_seen = self.mesh.routes_version();
                if let Some(dataplane) = &self.dataplane {
                    dataplane.set_routes(self.mesh.routes().clone());
                }
                self.ipam
                    .set_reachable(self.mesh.routes().reachable(LinkSet::All), now);
                if let Some(fast) = &self.fast {
                    let routes = self.mesh.routes();
                    fast.set_reachable(routes.reachable(LinkSet::EstablishedSymmetric));
                    // The sleeve's broadcast tree (same link set): see `forward`.
                    fast.set_group_candidates(
                        routes.broadcast_leaves(LinkSet::EstablishedSymmetric),
                    );
                }
                self.update_known_addresses();
            }
            self.sync_fast_macs();
            // Persists IPAM state before anything queued in `out` is sent.
            self.ipam_step(now, ipam_touched, &mut out);
            self.execute(out);
            self.sync_metrics();
        }
    }

    fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Handshaken {
                key,
                new,
                tx,
                reply,
                link_keys,
            } => {
                let peer = new.features.name;
                let nickname = new.features.nickname.clone();
                let remote = new.remote_tcp;
                let offer = new.features.datapaths.clone();
                let uid = new.conn_uid;
                // The sleeve uses the same port number for UDP as the peer's mesh port.
                let udp_addr = SocketAddr::new(remote.ip(), new.features.listen_port);
                match self.mesh.register(key, new, now, out) {
                    Ok(()) => {
                        tracing::info!(%peer, %nickname, %remote, "connection established");
                        self.conns.insert(key, ConnEntry { tx, peer });
                        if let Some(dataplane) = &self.dataplane {
                            dataplane.add_peer(peer, key, udp_addr, link_keys);
                        }
                        if let Some(fast) = &self.fast {
                            fast.add_connection(peer, key, uid, remote, offer.as_ref());
                        }
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        tracing::info!(%peer, %remote, reason = %e, "connection refused");
                        let label = match e {
                            RegisterError::Duplicate(_) => "duplicate",
                            _ => "refused",
                        };
                        self.metrics.handshake_failure(label);
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Event::HandshakeFailed {
                target,
                remote,
                error,
                retry,
            } => match (target, remote) {
                (Some(target), _) => self.mesh.dial_failed(&target, error, retry, now),
                (None, Some(remote)) => self.mesh.inbound_failed(remote, error, now),
                (None, None) => {}
            },
            Event::Message { key, msg } => self.mesh.on_message(key, msg, now, out),
            Event::Closed { key, reason } => {
                if let Some(conn) = self.conns.remove(&key) {
                    tracing::info!(conn = key, %reason, "connection closed");
                    if let Some(dataplane) = &self.dataplane {
                        dataplane.remove_peer(conn.peer, key);
                    }
                    if let Some(fast) = &self.fast {
                        fast.remove_connection(conn.peer, key);
                    }
                }
                self.mesh.connection_closed(key, &reason, now);
            }
            Event::Api(request) => self.api(request, now, out),
            Event::Dataplane(event) => self.dataplane_event(event, now, out),
            Event::Fast(event) => self.fast_event(event),
            Event::Cni(request) => self.cni(request, now, out),
            Event::Kube(event) => self.kube_event(event, now, out),
        }
    }

    /// The Node list changed: dial the new Nodes, forget the ones that are gone (only targets
    /// the list added: an operator's `--peers` or `weft connect` stay).
    fn kube_event(&mut self, event: KubeEvent, now: Instant, out: &mut Vec<Action>) {
        let Some(kube) = self.kube.as_mut() else {
            return;
        };
        match event {
            KubeEvent::Targets {
                connect,
                forget,
                listed,
            } => {
                let direct = self.mesh.direct_targets();
                let new: Vec<String> = connect
                    .into_iter()
                    .filter(|t| !direct.contains(t))
                    .collect();
                for target in &forget {
                    if kube.targets.remove(target) {
                        self.mesh.forget(target, out);
                    }
                }
                if !new.is_empty() {
                    tracing::info!(targets = ?new, "peers from the Node list");
                    kube.targets.extend(new.iter().cloned());
                    self.mesh.add_direct(&new, now, out);
                    self.mesh.tick(now, out);
                }
                kube.listed |= listed;
            }
        }
    }

    fn cni(&mut self, request: CniRequest, now: Instant, out: &mut Vec<Action>) {
        match request {
            CniRequest::Add { request, reply } => self.add(request, reply, now),
            CniRequest::Guard {
                key,
                host_veth,
                mac,
                allocation,
                reply,
            } => {
                let answer = self.guard(key, host_veth, mac, allocation, now, out);
                let _ = reply.send(answer);
            }
            CniRequest::Del { attachment, reply } => {
                self.ipam.del(&attachment, now);
                self.unguard_released(now, out);
                let _ = reply.send(Ok(()));
            }
            CniRequest::Check { attachment, reply } => {
                let _ = reply.send(self.ipam.check(&attachment));
            }
            CniRequest::Status { reply } => {
                // The same decision over the same report as `/readyz`.
                let _ = reply.send(crate::readiness::cni_status(&self.report(now)));
            }
            CniRequest::Gc { request, reply } => {
                let answer = self.ipam.gc(&request, now);
                self.unguard_released(now, out);
                let _ = reply.send(Ok(answer));
            }
        }
    }

    /// `POST /cni/add`. A plugin that names its veth gets a MAC for the pod and a guarded
    /// port: IPAM's answer comes back as [`CniRequest::Guard`] before the plugin sees it.
    fn add(&mut self, request: AddRequest, reply: Reply<Allocation>, now: Instant) {
        let Some(host_veth) = request.host_veth.clone() else {
            return self.ipam.add(request, reply, now);
        };
        if self.ports.is_none() {
            // No dataplane: IPAM answers that itself.
            return self.ipam.add(request, reply, now);
        }
        if !portguard::valid_port_name(&host_veth) {
            let _ = reply.send(Err(CniFailure::new(
                400,
                code::INVALID_ENV,
                "invalid host veth name",
                format!("{host_veth:?} is not an interface name weft can guard"),
            )));
            return;
        }
        let key: AttachmentKey = (request.container_id.clone(), request.ifname.clone());
        // A repeated ADD keeps the MAC it was given.
        let mac = self
            .ports
            .as_ref()
            .and_then(|ports| ports.port(&key))
            .map(|port| port.mac)
            .unwrap_or_else(|| {
                let [a, b, c, d, e, f, ..] = weft_crypto::random_u64().to_le_bytes();
                portguard::attachment_mac([a, b, c, d, e, f])
            });
        let (ipam_reply, answered) = oneshot::channel();
        self.ipam.add(request, ipam_reply, now);
        let events = self.params.events.clone();
        let mut reply = reply;
        tokio::spawn(async move {
            let answer = tokio::select! {
                answer = answered => answer,
                // The plugin gave up: dropping `answered` tells IPAM to stop waiting for it.
                () = reply.closed() => return,
            };
            match answer {
                Ok(Ok(allocation)) => {
                    let guard = CniRequest::Guard {
                        key,
                        host_veth,
                        mac,
                        allocation,
                        reply,
                    };
                    if let Err(tokio::sync::mpsc::error::SendError(Event::Cni(
                        CniRequest::Guard { reply, .. },
                    ))) = events.send(Event::Cni(guard)).await
                    {
                        let _ = reply.send(Err(CniFailure::new(
                            503,
                            code::TRY_AGAIN_LATER,
                            "the weft router is shutting down",
                            "",
                        )));
                    }
                }
                Ok(Err(failure)) => {
                    let _ = reply.send(Err(failure));
                }
                Err(_) => {}
            }
        });
    }

    /// Guards the port of an ADD IPAM has answered, pins its MAC, and returns the answer for
    /// the plugin (with the MAC), or a failure after releasing the address.
    fn guard(
        &mut self,
        key: AttachmentKey,
        host_veth: String,
        mac: Mac,
        mut allocation: Allocation,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<Allocation, CniFailure> {
        let attachment = Attachment {
            container_id: key.0.clone(),
            ifname: key.1.clone(),
        };
        let IpAddr::V4(ipv4) = allocation.address.addr else {
            return Ok(allocation);
        };
        // A DEL may have come in between: then there is nothing to guard.
        let held = self.ipam.check(&attachment).ok().map(|a| a.address);
        if held != Some(allocation.address) {
            return Err(CniFailure::new(
                503,
                code::TRY_AGAIN_LATER,
                "the attachment was deleted while its ADD was answered",
                "",
            ));
        }
        let (Some(ports), Some(dataplane)) = (self.ports.as_mut(), self.dataplane.as_ref()) else {
            return Ok(allocation);
        };
        let port = portguard::PortSpec {
            host_veth,
            mac,
            ipv4,
        };
        match ports.attach(&key, port) {
            Ok(previous) => {
                if let Some(previous) = previous.filter(|p| p.mac != mac) {
                    dataplane.unpin_mac(&previous.mac);
                    let change = dataplane
                        .gossip_macs()
                        .lock()
                        .unpin_local(previous.mac, now);
                    self.publish_macs(change, out);
                }
                let Some(dataplane) = self.dataplane.as_ref() else {
                    return Ok(allocation);
                };
                dataplane.pin_mac(mac);
                let change = dataplane.gossip_macs().lock().pin_local(mac, now);
                self.publish_macs(change, out);
                allocation.mac = Some(weft_datapath::mac::format_mac(&mac));
                tracing::info!(container = %key.0, ifname = %key.1, mac = %weft_datapath::mac::format_mac(&mac), address = %ipv4, "bridge port guarded");
                Ok(allocation)
            }
            Err(e) => {
                tracing::error!(container = %key.0, ifname = %key.1, error = %e, "cannot guard the bridge port; ADD failed");
                self.ipam.del(&attachment, now);
                Err(CniFailure::new(
                    500,
                    code::IO_FAILURE,
                    "weft cannot guard the pod's bridge port",
                    e,
                ))
            }
        }
    }

    /// Stops guarding the ports of attachments IPAM no longer holds (after a DEL or GC) and
    /// withdraws their MACs.
    fn unguard_released(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(ports) = self.ports.as_mut() else {
            return;
        };
        let channel = self.ipam.channel().clone();
        let released = ports.detach_unallocated(|(container, ifname)| {
            channel
                .lock()
                .address_of(&AllocKey::new(container.clone(), ifname.clone()))
        });
        for port in released {
            let change = self.dataplane.as_ref().and_then(|dataplane| {
                dataplane.unpin_mac(&port.mac);
                dataplane.gossip_macs().lock().unpin_local(port.mac, now)
            });
            self.publish_macs(change, out);
        }
    }

    /// IPAM's step, then its outbox into the mesh (see `ipam`).
    fn ipam_step(&mut self, now: Instant, touched: bool, out: &mut Vec<Action>) {
        if self.ipam.needs_ring() {
            // Whether a ring may be created depends on the peers we were told about.
            let initial = ring_initial_peers(&self.mesh, self.kube.as_ref(), now);
            self.ipam.set_initial_peers(initial);
        }
        let outbox = self.ipam.step(now, touched);
        self.ipam.finish_check(self.mesh.topology(), now);
        if let Some(update) = outbox.publish
            && let Err(e) = self.mesh.publish(IPAM_CHANNEL, &update, out)
        {
            tracing::warn!(error = %e, "cannot publish an IPAM update");
        }
        for (peer, payload) in outbox.unicasts {
            if let Err(e) = self.mesh.unicast(IPAM_CHANNEL, peer, payload, out) {
                tracing::debug!(%peer, error = %e, "cannot send an IPAM message");
            }
        }
    }

    /// `weft rmpeer`: the peer by name or nickname (nicknames only while it is in the topology).
    fn rmpeer(&mut self, peer: &str, force: bool, now: Instant) -> Result<String, String> {
        // A departed peer may have left the topology already: a name is taken as it is.
        let name = match peer.parse::<PeerName>() {
            Ok(name) => name,
            Err(_) => report::find_peer(self.mesh.topology(), peer).ok_or_else(|| {
                format!("unknown peer {peer}: give its name (aa:bb:cc:dd:ee:ff), see `weft ipam`")
            })?,
        };
        let taken = self
            .ipam
            .reclaim(name, force, now)
            .map_err(|e| e.to_string())?;
        tracing::info!(peer = %name, addresses = taken, force, "address space reclaimed");
        Ok(format!("reclaimed {taken} addresses from {name}"))
    }

    fn dataplane_event(&mut self, event: DataplaneEvent, now: Instant, out: &mut Vec<Action>) {
        match event {
            DataplaneEvent::LocalMac(mac) => {
                let change = self
                    .dataplane
                    .as_ref()
                    .and_then(|d| d.gossip_macs().lock().claim_local(mac, now));
                tracing::debug!(mac = %weft_datapath::mac::format_mac(&mac), claimed = change.is_some(), "local MAC seen");
                self.publish_macs(change, out);
            }
            DataplaneEvent::LocalMacsGone(macs) => {
                for mac in macs {
                    let change = self
                        .dataplane
                        .as_ref()
                        .and_then(|d| d.gossip_macs().lock().withdraw_local(mac, now));
                    self.publish_macs(change, out);
                }
            }
            DataplaneEvent::LinkHealth {
                peer,
                conn,
                up,
                reason,
            } => {
                // Only the connection the link was made for; a newer one has its own link.
                if self.conns.get(&conn).is_some_and(|c| c.peer == peer) {
                    tracing::debug!(%peer, up, reason = reason.as_deref().unwrap_or(""), "data path changed");
                    self.mesh.set_data_path(conn, up, now);
                }
            }
        }
    }

    fn fast_event(&mut self, event: FastEvent) {
        let FastEvent::Selected {
            peer,
            uid,
            kind,
            reason,
        } = event;
        let Some(conn) = self.fast.as_ref().and_then(|f| f.key_of(uid)) else {
            return;
        };
        if self.conns.get(&conn).is_none_or(|c| c.peer != peer) {
            return;
        }
        tracing::info!(%peer, conn, datapath = ?kind, %reason, "connection datapath changed");
        let to = kind.as_str();
        self.metrics
            .datapath
            .transitions
            .get_or_create(&crate::metrics::ToLabels { to })
            .inc();
        if let Some(dataplane) = &self.dataplane {
            // The sleeve link of a connection on the fast path is a standby: probed slowly.
            dataplane.set_standby(peer, kind != weft_datapath::DatapathKind::Sleeve);
        }
    }

    /// Hands the MAC-to-peer table to the fast path when it changed.
    fn sync_fast_macs(&mut self) {
        let (Some(fast), Some(dataplane)) = (&self.fast, &self.dataplane) else {
            return;
        };
        let channel = dataplane.gossip_macs().lock();
        let changes = channel.changes();
        if self.macs_seen == Some(changes) {
            return;
        }
        self.macs_seen = Some(changes);
        let entries = channel.live_entries();
        drop(channel);
        fast.set_macs(self.mesh.name(), entries);
    }

    fn publish_macs(&mut self, change: Option<Vec<u8>>, out: &mut Vec<Action>) {
        if let Some(change) = change
            && let Err(e) = self.mesh.publish(MAC_CHANNEL, &change, out)
        {
            tracing::warn!(error = %e, "cannot publish a MAC claim");
        }
    }

    fn api(&mut self, request: ApiRequest, now: Instant, out: &mut Vec<Action>) {
        match request {
            ApiRequest::Connect { hosts, reply } => {
                let hosts: Vec<String> = hosts
                    .iter()
                    .map(|h| crate::config::with_default_port(h, self.info.port))
                    .collect();
                let admitted = crate::targets::admit(
                    &self.mesh.direct_targets(),
                    &hosts,
                    crate::targets::MAX_DIRECT_TARGETS,
                );
                if admitted.is_ok() {
                    self.mesh.add_direct(&hosts, now, out);
                    self.mesh.tick(now, out);
                }
                let _ = reply.send(admitted);
            }
            ApiRequest::Forget { hosts, reply } => {
                let known = hosts
                    .iter()
                    .map(|h| {
                        self.mesh
                            .forget(&crate::config::with_default_port(h, self.info.port), out)
                    })
                    .collect();
                let _ = reply.send(known);
            }
            ApiRequest::Ping { peer, reply } => {
                let Some(name) = report::find_peer(self.mesh.topology(), &peer) else {
                    let _ = reply.send(Err(format!("unknown peer {peer}")));
                    return;
                };
                let id = weft_crypto::random_u64();
                match self.mesh.echo(name, id, out) {
                    Ok(()) => {
                        self.pings.insert(
                            id,
                            PendingPing {
                                sent: now,
                                peer: name,
                                reply,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            ApiRequest::Report { reply } => {
                let _ = reply.send(self.report(now));
            }
            ApiRequest::IpamCheck { reply } => {
                self.ipam.start_check(weft_crypto::random_u64(), reply, now);
            }
            ApiRequest::Rmpeer { peer, force, reply } => {
                let _ = reply.send(self.rmpeer(&peer, force, now));
            }
            ApiRequest::ForceRing { reply } => {
                let _ = reply.send(self.ipam.force_ring(now));
            }
            ApiRequest::Alive { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// The status report (`/report`), which `/readyz` and CNI STATUS decide from too.
    fn report(&self, now: Instant) -> Report {
        let mut datapath = self.dataplane.as_ref().map(Dataplane::report);
        if let (Some(datapath), Some(ports)) = (datapath.as_mut(), self.ports.as_ref()) {
            datapath.port_guard = Some(ports.report());
        }
        let mut links = self
            .dataplane
            .as_ref()
            .map(Dataplane::links)
            .unwrap_or_default();
        if let Some(fast) = &self.fast {
            fast.annotate(&mut links);
            if let Some(datapath) = datapath.as_mut() {
                datapath.mode = self.info.datapath_mode.clone();
                datapath.vxlan = fast.device_report();
            }
        }
        let ipam = self.ipam.report(self.mesh.topology(), now);
        let mut report = report::build(&self.mesh, &self.info, datapath, links, ipam, now);
        for c in &mut report.connections {
            // A connection that never changed datapath has been on it since it started (the
            // engine says so itself; without a fast path nothing else does).
            if let (Some(link), Some(up)) = (c.datapath.as_mut(), c.up_secs)
                && link.datapath_transitions == 0
            {
                link.datapath_secs = link.datapath_secs.max(up);
            }
        }
        report.mesh_admission = self.params.mesh_port.report();
        report.store = Some(self.store.report(now));
        report.kube = self.kube.as_ref().map(|k| k.shared.report());
        report
    }

    fn expire_pings(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pings
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) >= PING_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(PendingPing { peer, reply, .. }) = self.pings.remove(&id) {
                let _ = reply.send(Err(format!(
                    "no echo from {peer} within {}s",
                    PING_TIMEOUT.as_secs()
                )));
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { conn, msg } => {
                    if let Some(entry) = self.conns.get(&conn)
                        && entry.tx.try_send(msg).is_err()
                    {
                        self.metrics.send_queue_drop();
                    }
                }
                Action::Close { conn, reason } => {
                    tracing::info!(conn, %reason, "closing connection");
                    // The writer sends the goodbye, then finds the queue closed and ends.
                    if let Some(entry) = self.conns.remove(&conn) {
                        let _ = entry.tx.try_send(ControlMsg::Goodbye { reason });
                    }
                }
                Action::Dial { address } => {
                    tokio::spawn(conn::dial(address, self.params.clone()));
                }
                Action::EchoReply { id, from } => {
                    if let Some(PendingPing { sent, peer, reply }) = self.pings.remove(&id)
                        && peer == from
                    {
                        let via = self
                            .mesh
                            .routes()
                            .unicast(LinkSet::All, peer)
                            .map(|hop| report::peer_label(self.mesh.topology(), hop))
                            .unwrap_or_default();
                        let nickname = report::nickname_of(self.mesh.topology(), peer);
                        let _ = reply.send(Ok(PingResult {
                            peer: peer.to_string(),
                            nickname,
                            via,
                            rtt_ms: sent.elapsed().as_secs_f64() * 1000.0,
                        }));
                    }
                }
                Action::TargetsChanged => {
                    self.update_known_addresses();
                    // The Node list's targets are not persisted: the API names them again.
                    let mut targets = self.mesh.direct_targets();
                    if let Some(kube) = &self.kube {
                        targets.retain(|t| !kube.targets.contains(t));
                    }
                    if let Err(e) = self.store.set_targets(&targets) {
                        tracing::warn!(error = %e, "cannot persist peer list");
                    }
                }
            }
        }
    }

    /// Tells the mesh port which addresses the mesh knows: every address in the gossiped
    /// topology (where peers accept connections) and the dial targets (`--peers`, `weft
    /// connect`, discovered) given as addresses. They keep reserved admission slots during a flood.
    fn update_known_addresses(&self) {
        let mut known: HashSet<IpAddr> = self
            .mesh
            .topology()
            .peers()
            .flat_map(|p| p.connections.values())
            .filter_map(|c| c.remote_addr.map(|a| a.ip()))
            .collect();
        // Direct targets and those discovered by gossip; host names are not resolved here.
        known.extend(self.mesh.targets(Instant::now()).iter().filter_map(|t| {
            t.address
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| t.address.parse::<IpAddr>())
                .ok()
        }));
        self.params.mesh_port.set_known(known);
    }

    fn sync_metrics(&mut self) {
        let terminated = self.mesh.counters.connections_terminated;
        self.metrics
            .terminations
            .inc_by(terminated - self.terminations_seen);
        self.terminations_seen = terminated;
    }
}

/// Whether `event` may change IPAM state: a CNI or rmpeer request, or a message of the IPAM
/// channel (merged by the mesh while it handles the event).
fn touches_ipam(event: &Event) -> bool {
    match event {
        Event::Cni(_)
        | Event::Api(ApiRequest::Rmpeer { .. })
        | Event::Api(ApiRequest::ForceRing { .. }) => true,
        Event::Message { msg, .. } => matches!(
            msg,
            ControlMsg::Gossip { channel, .. }
                | ControlMsg::Broadcast { channel, .. }
                | ControlMsg::Unicast { channel, .. } if *channel == IPAM_CHANNEL
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_gossip::ipam::agreement::InitialPeerState;

    fn mesh(now: Instant) -> Mesh {
        Mesh::new(
            MeshConfig {
                name: "aa:00:00:00:00:01".parse().unwrap(),
                nickname: "one".into(),
                uid: 1,
                conn_limit: 10,
                gossip_interval: Duration::from_secs(30),
                confirm_data_path: false,
            },
            now,
        )
    }

    #[test]
    fn no_ring_before_the_node_list_then_the_other_nodes_are_the_initial_peers() {
        let now = Instant::now();
        let mut mesh = mesh(now);
        // Without --kube-peers and without peers: a lone host.
        assert!(ring_initial_peers(&mesh, None, now).is_empty());
        let mut kube = KubePeers {
            shared: KubeShared::default(),
            listed: false,
            targets: BTreeSet::new(),
        };
        let initial = ring_initial_peers(&mesh, Some(&kube), now);
        assert_eq!(initial.len(), 1);
        assert_eq!(initial[0].address, "the Kubernetes Node list");
        assert!(matches!(initial[0].state, InitialPeerState::Unreached(_)));
        // Listed, alone in the cluster: a lone host again.
        kube.listed = true;
        assert!(ring_initial_peers(&mesh, Some(&kube), now).is_empty());
        // Listed with another Node: that Node's address is the initial peer.
        let mut out = Vec::new();
        mesh.add_direct(&["10.0.0.2:6783".to_owned()], now, &mut out);
        let initial = ring_initial_peers(&mesh, Some(&kube), now);
        assert_eq!(initial.len(), 1);
        assert_eq!(initial[0].address, "10.0.0.2:6783");
    }
}
