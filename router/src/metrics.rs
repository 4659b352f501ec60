//! Prometheus metrics. Counters are updated where things happen (connection tasks, the
//! actor); gauges describing current state are set from the report at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_gossip::wire::{ChannelId, ControlMsg};

use crate::report::Report;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    pub direction: &'static str,
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirectionLabels {
    pub peer: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerReasonLabels {
    pub peer: String,
    pub reason: &'static str,
}

/// The data plane's counters and state, mirrored from the report at scrape time.
#[derive(Default)]
pub struct DatapathMetrics {
    pub frames: Family<DirectionLabels, Counter>,
    pub datagrams: Family<DirectionLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub relayed: Counter,
    pub drops: Family<ReasonLabels, Counter>,
    pub macs: Gauge,
    pub link_up: Family<PeerLabels, Gauge>,
    pub link_path_mtu: Family<PeerLabels, Gauge>,
    pub link_bytes: Family<PeerDirectionLabels, Counter>,
    pub link_datagrams: Family<PeerDirectionLabels, Counter>,
    pub link_drops: Family<PeerReasonLabels, Counter>,
    /// Frames from guarded pod ports dropped by the anti-spoofing rules, by kind.
    pub pod_spoofed: Family<KindLabels, Counter>,
    pub port_guard_failures: Counter,
    pub guarded_ports: Gauge,
    pub macs_pinned: Gauge,
    /// MACs not learned or claimed, by reason (`unattached_cap`, `conflict`, `gossip_rate`,
    /// `gossip_conflict`).
    pub mac_refusals: Family<ReasonLabels, Counter>,
    /// The datapath each connection uses (1 for the one in use) and its changes so far.
    pub connection_datapath: Family<PeerDatapathLabels, Gauge>,
    pub connection_transitions: Family<PeerLabels, Gauge>,
    /// Changes of datapath on any connection, by the datapath changed to (counted as they
    /// happen, so they survive the connection).
    pub transitions: Family<ToLabels, Counter>,
    /// The VXLAN fast path: heartbeats, forwarding entries, their changes and failures.
    pub fast_heartbeats: Family<DirectionLabels, Counter>,
    pub fdb_entries: Family<TableLabels, Gauge>,
    pub fdb_ops: Counter,
    pub fdb_errors: Counter,
    /// The Open vSwitch datapath: flows, and packets looked up by result (hit, missed, lost).
    pub ovs_flows: Gauge,
    pub ovs_lookups: Family<ResultLabels, Counter>,
    /// Misses that came up, by what became of them (answered, rate_limited, failed, or why
    /// not answered), and flows deleted for idleness.
    pub ovs_upcalls: Family<UpcallLabels, Counter>,
    pub ovs_flows_expired: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpcallLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDatapathLabels {
    pub peer: String,
    pub datapath: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToLabels {
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

/// Moves a mirrored counter up to `value` (counters only grow; the source's do too).
fn mirror(counter: &Counter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    pub peer: String,
    pub nickname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// IPAM state and the CNI requests served, mirrored from the report at scrape time.
#[derive(Default)]
pub struct IpamMetrics {
    pub range_addresses: Gauge,
    pub owned: Family<OwnerLabels, Gauge>,
    pub used: Family<OwnerLabels, Gauge>,
    pub allocations: Gauge,
    pub unreachable_owners: Gauge,
    pub conflicts: Gauge,
    pub waiting_adds: Gauge,
    pub adds: Family<ResultLabels, Counter>,
    pub released: Family<ReasonLabels, Counter>,
    pub persist_failures: Counter,
    /// 1 while there is no agreed ring (see `weft ipam`): no bridge address, ADDs wait.
    pub waiting_for_ring: Gauge,
    /// Bridge addresses moved because a ring merge made them duplicates.
    pub gateway_moves: Counter,
    /// Plugin requests the router could not decode (counted where they arrive).
    pub rejected_requests: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// The HTTP listeners (`listener` = `status` or `cni`): connection caps, deadlines and the
/// status endpoint's request guard.
#[derive(Default)]
pub struct HttpMetrics {
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_refused: Family<ListenerReasonLabels, Counter>,
    pub connections_timed_out: Family<ListenerReasonLabels, Counter>,
    pub requests_refused: Family<ListenerReasonLabels, Counter>,
    /// `weft connect` requests refused because the persisted targets are at their cap.
    pub connect_targets_refused: Counter,
}

impl HttpMetrics {
    pub fn open(&self, listener: &'static str) -> Gauge {
        self.connections_open
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// Counts a refused connection; returns how many this listener has refused for `reason`.
    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) -> u64 {
        let counter = self
            .connections_refused
            .get_or_create(&ListenerReasonLabels { listener, reason });
        counter.inc() + 1
    }

    /// Counts a connection or request ended by a deadline.
    pub fn timed_out(&self, listener: &'static str, reason: &'static str) -> u64 {
        let counter = self
            .connections_timed_out
            .get_or_create(&ListenerReasonLabels { listener, reason });
        counter.inc() + 1
    }

    /// Counts a request refused by the status endpoint's guard.
    pub fn request_refused(&self, listener: &'static str, reason: &'static str) -> u64 {
        let counter = self
            .requests_refused
            .get_or_create(&ListenerReasonLabels { listener, reason });
        counter.inc() + 1
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_connections_open",
            "Connections open on each HTTP listener (status endpoint, CNI socket)",
            self.connections_open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections closed at accept: a cap was reached (local_limit, remote_limit, per_source_limit) or accept failed (accept_error)",
            self.connections_refused.clone(),
        );
        registry.register(
            "http_connections_timed_out",
            "Connections closed by a deadline (header: no complete request head in time, idle keep-alive included; lifetime: the whole-connection deadline) and requests answered 503/504 by the request deadline (request)",
            self.connections_timed_out.clone(),
        );
        registry.register(
            "http_requests_refused",
            "Requests the status endpoint refused: foreign Host (host), foreign Origin (origin), a change without the X-Weft-Client header (client_header) or from another host (remote)",
            self.requests_refused.clone(),
        );
        registry.register(
            "connect_targets_refused",
            "weft connect requests refused because the persisted connect targets are at their cap",
            self.connect_targets_refused.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpReasonLabels {
    pub op: &'static str,
    pub reason: &'static str,
}

/// The Kubernetes API task (`--kube-peers`), updated where things happen.
#[derive(Default)]
pub struct KubeMetrics {
    pub api_errors: Family<OpReasonLabels, Counter>,
    pub watch_restarts: Counter,
    pub reclaims: Counter,
    pub reclaim_failures: Counter,
    pub leader: Gauge,
    pub nodes: Gauge,
}

impl KubeMetrics {
    pub fn api_error(&self, op: &'static str, reason: &'static str) {
        self.api_errors
            .get_or_create(&OpReasonLabels { op, reason })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_api_errors",
            "Failed Kubernetes API calls (--kube-peers), by op (watch_nodes, patch_node, patch_node_status, get_lease, create_lease, update_lease, connect) and reason (unauthorized, forbidden, not_found, conflict, gone, client_error, server_error, connect, timeout, config, other); all are retried with backoff",
            self.api_errors.clone(),
        );
        registry.register(
            "kube_watch_restarts",
            "Re-lists of the Node watch (after 410 Gone or a broken watch)",
            self.watch_restarts.clone(),
        );
        registry.register(
            "kube_reclaims",
            "Departed peers whose address space this router reclaimed as the reclaim leader (their Node was deleted)",
            self.reclaims.clone(),
        );
        registry.register(
            "kube_reclaim_failures",
            "Reclaims of a deleted Node's peer that the router refused (retried on the next round)",
            self.reclaim_failures.clone(),
        );
        registry.register(
            "kube_leader",
            "1 while this router holds the reclaim Lease",
            self.leader.clone(),
        );
        registry.register(
            "kube_nodes",
            "Nodes the Kubernetes API lists",
            self.nodes.clone(),
        );
    }
}

/// The state store's health, mirrored from the report at scrape time.
#[derive(Default)]
pub struct StoreMetrics {
    pub write_failures: Counter,
    pub reopens: Family<ResultLabels, Counter>,
    pub persistence_failing: Gauge,
}

/// A host sysctl the router sets ([`crate::sysctl`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SysctlLabels {
    pub sysctl: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    /// 1 for each host sysctl the router wanted but could not set (set once at start).
    pub sysctl_unset: Family<SysctlLabels, Gauge>,
    pub datapath: DatapathMetrics,
    pub ipam: IpamMetrics,
    pub http: HttpMetrics,
    pub store: StoreMetrics,
    pub kube: KubeMetrics,
    pub peers: Gauge,
    pub connections: Family<StateLabels, Gauge>,
    pub terminations: Counter,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub gossip_messages: Family<GossipLabels, Counter>,
    pub gossip_bytes: Family<GossipLabels, Counter>,
    pub frames_rejected: Counter,
    pub send_queue_drops: Counter,
    pub admission: AdmissionMetrics,
}

/// The mesh port's admission of unauthenticated connections, mirrored from the report at
/// scrape time.
#[derive(Default)]
pub struct AdmissionMetrics {
    pub refused: Family<ReasonLabels, Counter>,
    pub admitted: Counter,
    pub pending: Gauge,
    pub pending_known: Gauge,
}

const CONNECTION_STATES: [&str; 5] = ["established", "connecting", "waiting", "retrying", "failed"];

fn channel_label(msg: &ControlMsg) -> &'static str {
    let channel = match msg {
        ControlMsg::Heartbeat => return "heartbeat",
        ControlMsg::Goodbye { .. } => return "goodbye",
        ControlMsg::Gossip { channel, .. }
        | ControlMsg::Broadcast { channel, .. }
        | ControlMsg::Unicast { channel, .. } => *channel,
    };
    match channel {
        ChannelId::TOPOLOGY => "topology",
        ChannelId::ECHO => "echo",
        _ => "other",
    }
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("weft");
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version label says which weft runs",
            build_info,
        );
        registry.register(
            "peers",
            "Peers in the topology, this one included",
            self.peers.clone(),
        );
        registry.register(
            "connections",
            "Connections and targets by state",
            self.connections.clone(),
        );
        registry.register(
            "connection_terminations",
            "Established connections that ended",
            self.terminations.clone(),
        );
        registry.register(
            "handshake_failures",
            "Connections that failed before being established, by reason",
            self.handshake_failures.clone(),
        );
        registry.register(
            "gossip_messages",
            "Control messages by direction and channel",
            self.gossip_messages.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Control message bytes (before sealing)",
            self.gossip_bytes.clone(),
        );
        registry.register(
            "frames_rejected",
            "Sealed frames that failed to open (forged, replayed or corrupted); each closes its connection",
            self.frames_rejected.clone(),
        );
        registry.register(
            "send_queue_drops",
            "Messages dropped because a peer's send queue was full (anti-entropy repairs them)",
            self.send_queue_drops.clone(),
        );
        registry.register(
            "sysctl_unset",
            "1 for each host sysctl the router wanted but could not set at start (net.bridge.bridge-nf-call-iptables: br_netfilter not loaded, or a read-only /proc/sys)",
            self.sysctl_unset.clone(),
        );
        let a = &self.admission;
        registry.register(
            "mesh_admission_refused",
            "Unauthenticated mesh connections refused or cut before their handshake ended, by reason (per_source, total, evicted, intro_timeout, handshake_timeout)",
            a.refused.clone(),
        );
        registry.register(
            "mesh_admission_admitted",
            "Mesh connections admitted to a handshake",
            a.admitted.clone(),
        );
        registry.register(
            "mesh_admission_pending",
            "Mesh connections in their handshake now",
            a.pending.clone(),
        );
        registry.register(
            "mesh_admission_pending_known",
            "Mesh connections in their handshake now from addresses the mesh knows",
            a.pending_known.clone(),
        );
        let d = &self.datapath;
        registry.register(
            "datapath_frames",
            "Ethernet frames sent to peers (out) and delivered to the bridge (in); a super-segment counts once",
            d.frames.clone(),
        );
        registry.register(
            "datapath_datagrams",
            "Sleeve UDP datagrams sent (out) and received and authenticated (in)",
            d.datagrams.clone(),
        );
        registry.register(
            "datapath_bytes",
            "Sleeve UDP payload bytes sent (out) and received and authenticated (in)",
            d.bytes.clone(),
        );
        registry.register(
            "datapath_relayed",
            "Frames relayed for other peers",
            d.relayed.clone(),
        );
        registry.register(
            "datapath_drops",
            "Frames or datagrams dropped by the data plane, by reason",
            d.drops.clone(),
        );
        registry.register("datapath_macs", "Entries in the MAC table", d.macs.clone());
        registry.register(
            "datapath_link_up",
            "Whether the data path to each connected peer works (UDP heartbeats heard)",
            d.link_up.clone(),
        );
        registry.register(
            "datapath_link_path_mtu",
            "Path MTU to each connected peer (bytes, IP packet)",
            d.link_path_mtu.clone(),
        );
        registry.register(
            "datapath_link_bytes",
            "Sleeve UDP bytes per peer and direction",
            d.link_bytes.clone(),
        );
        registry.register(
            "datapath_link_datagrams",
            "Sleeve UDP datagrams per peer and direction",
            d.link_datagrams.clone(),
        );
        registry.register(
            "datapath_link_drops",
            "Datagrams from each peer dropped, by reason",
            d.link_drops.clone(),
        );
        registry.register(
            "connection_datapath",
            "The datapath each connection's pod traffic uses now (1 for the one in use: vxlan or sleeve)",
            d.connection_datapath.clone(),
        );
        registry.register(
            "connection_datapath_transitions",
            "How many times each connection changed datapath (fallback to the sleeve and return)",
            d.connection_transitions.clone(),
        );
        registry.register(
            "datapath_transitions",
            "Connections that changed datapath, by the one changed to (to=sleeve: a fallback, to=vxlan: a return)",
            d.transitions.clone(),
        );
        registry.register(
            "fast_heartbeats",
            "Fast-path heartbeats sent, received, and received but rejected (direction sent|received|rejected)",
            d.fast_heartbeats.clone(),
        );
        registry.register(
            "fdb_entries",
            "Forwarding entries weft keeps for the fast path (table vxlan: on the VXLAN device; bridge: remote MACs steered to the VXLAN or TAP port)",
            d.fdb_entries.clone(),
        );
        registry.register(
            "fdb_ops",
            "Forwarding-entry changes made for the fast path",
            d.fdb_ops.clone(),
        );
        registry.register(
            "fdb_errors",
            "Forwarding-entry changes the kernel refused",
            d.fdb_errors.clone(),
        );
        registry.register(
            "ovs_flows",
            "Flows in weft's Open vSwitch datapath (outbound per remote MAC, inbound per peer)",
            d.ovs_flows.clone(),
        );
        registry.register(
            "ovs_lookups",
            "Packets the Open vSwitch datapath looked up, by result (hit: a flow matched; missed: none did, sent up; lost: missed and dropped)",
            d.ovs_lookups.clone(),
        );
        registry.register(
            "ovs_upcalls",
            "Misses the Open vSwitch datapath sent up, by result (answered: flow put and packet sent on; rate_limited; failed: the put or execute was refused; unknown_mac, unknown_peer, wrong_vni, unknown_port, incomplete, not_a_miss, other_datapath: not answered)",
            d.ovs_upcalls.clone(),
        );
        registry.register(
            "ovs_flows_expired",
            "Open vSwitch flows deleted after carrying no packet for the idle timeout (the next packet's miss puts them back)",
            d.ovs_flows_expired.clone(),
        );
        registry.register(
            "pod_spoofed_frames",
            "Frames from pods' bridge ports dropped because they carried another MAC or address, by kind (mac, arp, nd, ip, ethertype)",
            d.pod_spoofed.clone(),
        );
        registry.register(
            "port_guard_failures",
            "nftables transactions of the bridge-port guard that failed (each failed its ADD)",
            d.port_guard_failures.clone(),
        );
        registry.register(
            "port_guard_ports",
            "Pod bridge ports guarded against spoofing",
            d.guarded_ports.clone(),
        );
        registry.register(
            "datapath_macs_pinned",
            "MACs of CNI attachments pinned as local in the MAC table",
            d.macs_pinned.clone(),
        );
        registry.register(
            "datapath_mac_refusals",
            "MACs not learned or not gossiped, by reason: unattached_cap (too many local MACs that are not attachments), conflict (a frame from the mesh with an attachment's MAC), gossip_rate (new local MACs claimed too fast), gossip_conflict (another peer claimed an attachment's MAC)",
            d.mac_refusals.clone(),
        );
        let i = &self.ipam;
        registry.register(
            "ipam_range_addresses",
            "Addresses in the cluster range (--ipalloc-range)",
            i.range_addresses.clone(),
        );
        registry.register(
            "ipam_owned_addresses",
            "Addresses of the range owned by each peer, as this peer sees the ring",
            i.owned.clone(),
        );
        registry.register(
            "ipam_used_addresses",
            "Addresses in use in each peer's space (owned minus free, as last announced)",
            i.used.clone(),
        );
        registry.register(
            "ipam_allocations",
            "Addresses allocated on this host (pods and the bridge)",
            i.allocations.clone(),
        );
        registry.register(
            "ipam_unreachable_owners",
            "Peers owning address space that this peer cannot reach",
            i.unreachable_owners.clone(),
        );
        registry.register(
            "ipam_conflicts",
            "Addresses known to be held twice (see weft ipam)",
            i.conflicts.clone(),
        );
        registry.register(
            "ipam_waiting_adds",
            "CNI ADDs waiting for the ring or for address space",
            i.waiting_adds.clone(),
        );
        registry.register("ipam_adds", "CNI ADDs answered, by result", i.adds.clone());
        registry.register(
            "ipam_released",
            "Addresses released, by reason (del, gc)",
            i.released.clone(),
        );
        registry.register(
            "cni_requests_rejected",
            "Requests on the CNI socket that could not be decoded",
            i.rejected_requests.clone(),
        );
        registry.register(
            "ipam_persist_failures",
            "Failed writes of the IPAM state (each failed the ADDs it carried)",
            i.persist_failures.clone(),
        );
        registry.register(
            "ipam_waiting_for_ring",
            "1 while this router has no IPAM ring and may not create one yet (weft ipam says why)",
            i.waiting_for_ring.clone(),
        );
        registry.register(
            "ipam_gateway_moves",
            "Bridge addresses moved because a ring merge made them duplicates",
            i.gateway_moves.clone(),
        );
        self.http.register(&mut registry);
        self.kube.register(&mut registry);
        registry.register(
            "store_write_failures",
            "Writes of the state store that failed (including retries while persistence fails)",
            self.store.write_failures.clone(),
        );
        registry.register(
            "store_reopens",
            "Re-opens of the state store after a failed write, by result (ok, failed)",
            self.store.reopens.clone(),
        );
        registry.register(
            "store_persistence_failing",
            "1 while the state store cannot persist (ADDs refused, CNI STATUS and /readyz fail)",
            self.store.persistence_failing.clone(),
        );
        registry
    }

    pub fn message_sent(&self, msg: &ControlMsg, bytes: usize) {
        self.count(msg, bytes, "sent");
    }

    pub fn message_received(&self, msg: &ControlMsg, bytes: usize) {
        self.count(msg, bytes, "received");
    }

    fn count(&self, msg: &ControlMsg, bytes: usize, direction: &'static str) {
        let labels = GossipLabels {
            direction,
            channel: channel_label(msg),
        };
        self.gossip_messages.get_or_create(&labels).inc();
        self.gossip_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    pub fn handshake_failure(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn frame_rejected(&self) {
        self.frames_rejected.inc();
    }

    pub fn send_queue_drop(&self) {
        self.send_queue_drops.inc();
    }

    /// Sets the state gauges from a fresh report.
    pub fn observe(&self, report: &Report) {
        self.peers.set(report.peers.len() as i64);
        for state in CONNECTION_STATES {
            let n = report
                .connections
                .iter()
                .filter(|c| c.state == state)
                .count();
            self.connections
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
        if let Some(dp) = &report.datapath {
            self.observe_datapath(report, dp);
        }
        self.observe_admission(&report.mesh_admission);
        if let Some(ipam) = &report.ipam {
            self.observe_ipam(ipam);
        }
        if let Some(store) = &report.store {
            let m = &self.store;
            mirror(&m.write_failures, store.write_failures);
            mirror(
                &m.reopens.get_or_create(&ResultLabels { result: "ok" }),
                store.reopens,
            );
            mirror(
                &m.reopens.get_or_create(&ResultLabels { result: "failed" }),
                store.reopen_failures,
            );
            m.persistence_failing
                .set(i64::from(store.persistence != "ok"));
        }
    }

    fn observe_admission(&self, r: &crate::admission::AdmissionReport) {
        let a = &self.admission;
        for refusal in crate::admission::Refusal::ALL {
            let reason = refusal.label();
            let value = r.refused.get(reason).copied().unwrap_or(0);
            mirror(&a.refused.get_or_create(&ReasonLabels { reason }), value);
        }
        mirror(&a.admitted, r.admitted);
        a.pending.set(i64::try_from(r.pending).unwrap_or(i64::MAX));
        a.pending_known
            .set(i64::try_from(r.pending_known).unwrap_or(i64::MAX));
    }

    fn observe_ipam(&self, ipam: &crate::ipam::IpamReport) {
        let i = &self.ipam;
        i.range_addresses
            .set(i64::try_from(ipam.range_size).unwrap_or(i64::MAX));
        i.owned.clear();
        i.used.clear();
        for o in &ipam.owners {
            let labels = OwnerLabels {
                peer: o.peer.clone(),
                nickname: o.nickname.clone(),
            };
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            i.owned.get_or_create(&labels).set(gauge(o.addresses));
            i.used
                .get_or_create(&labels)
                .set(gauge(o.addresses.saturating_sub(o.free)));
        }
        i.allocations.set(ipam.allocated as i64);
        i.unreachable_owners
            .set(ipam.unreachable_owners.len() as i64);
        i.conflicts.set(ipam.conflicts.len() as i64);
        i.waiting_adds.set(ipam.waiting_adds as i64);
        let c = &ipam.counters;
        mirror(
            &i.adds.get_or_create(&ResultLabels { result: "ok" }),
            c.adds,
        );
        mirror(
            &i.adds.get_or_create(&ResultLabels { result: "error" }),
            c.add_failures,
        );
        mirror(
            &i.released.get_or_create(&ReasonLabels { reason: "del" }),
            c.released,
        );
        mirror(
            &i.released.get_or_create(&ReasonLabels { reason: "gc" }),
            c.gc_released,
        );
        mirror(&i.persist_failures, c.persist_failures);
        i.waiting_for_ring
            .set(i64::from(ipam.waiting_for_ring.is_some()));
        mirror(&i.gateway_moves, c.gateway_moves);
    }

    fn observe_datapath(&self, report: &Report, dp: &crate::dataplane::DatapathReport) {
        let d = &self.datapath;
        let dir = |direction| DirectionLabels { direction };
        mirror(&d.frames.get_or_create(&dir("out")), dp.frames_out);
        mirror(&d.frames.get_or_create(&dir("in")), dp.frames_in);
        mirror(&d.datagrams.get_or_create(&dir("out")), dp.datagrams_out);
        mirror(&d.datagrams.get_or_create(&dir("in")), dp.datagrams_in);
        mirror(&d.bytes.get_or_create(&dir("out")), dp.bytes_out);
        mirror(&d.bytes.get_or_create(&dir("in")), dp.bytes_in);
        mirror(&d.relayed, dp.relayed);
        for (reason, value) in dp.drops.by_reason() {
            mirror(&d.drops.get_or_create(&ReasonLabels { reason }), value);
        }
        d.macs.set(dp.macs as i64);
        let g = &dp.mac_guard;
        d.macs_pinned.set(g.pinned as i64);
        for (reason, value) in [
            ("unattached_cap", g.refused_unattached),
            ("conflict", g.conflicts),
            ("gossip_rate", g.gossip_rate_limited),
            ("gossip_conflict", g.gossip_conflicts),
        ] {
            mirror(
                &d.mac_refusals.get_or_create(&ReasonLabels { reason }),
                value,
            );
        }
        if let Some(ports) = &dp.port_guard {
            for (kind, value) in ports.spoofed.by_kind() {
                mirror(&d.pod_spoofed.get_or_create(&KindLabels { kind }), value);
            }
            mirror(&d.port_guard_failures, ports.apply_failures);
            d.guarded_ports.set(ports.ports as i64);
        }
        // Links come and go with connections (and a new link counts from zero): per-peer
        // series show the links of now, and Prometheus reads a restart as a counter reset.
        d.link_up.clear();
        d.link_path_mtu.clear();
        d.link_bytes.clear();
        d.link_datagrams.clear();
        d.link_drops.clear();
        d.connection_datapath.clear();
        d.connection_transitions.clear();
        if let Some(v) = &dp.vxlan {
            let dir = |direction| DirectionLabels { direction };
            mirror(
                &d.fast_heartbeats.get_or_create(&dir("sent")),
                v.heartbeats_sent,
            );
            mirror(
                &d.fast_heartbeats.get_or_create(&dir("received")),
                v.heartbeats_received,
            );
            mirror(
                &d.fast_heartbeats.get_or_create(&dir("rejected")),
                v.heartbeats_rejected,
            );
            let table = |table| TableLabels { table };
            d.fdb_entries
                .get_or_create(&table("vxlan"))
                .set(v.fdb_vxlan as i64);
            d.fdb_entries
                .get_or_create(&table("bridge"))
                .set(v.fdb_bridge as i64);
            mirror(&d.fdb_ops, v.fdb_ops);
            mirror(&d.fdb_errors, v.fdb_errors);
            if let Some(details) = &v.details {
                d.ovs_flows.set(details.flows as i64);
                for (result, value) in [
                    ("hit", details.hits),
                    ("missed", details.misses),
                    ("lost", details.lost),
                ] {
                    mirror(
                        &d.ovs_lookups.get_or_create(&ResultLabels { result }),
                        value,
                    );
                }
                let upcalls = [
                    ("answered", details.upcalls_answered),
                    ("rate_limited", details.upcalls_rate_limited),
                    ("failed", details.upcalls_failed),
                ];
                let unanswered = details
                    .upcalls_unanswered
                    .iter()
                    .map(|(reason, n)| (reason.as_str(), *n));
                for (result, value) in upcalls.into_iter().chain(unanswered) {
                    let labels = UpcallLabels {
                        result: result.to_owned(),
                    };
                    mirror(&d.ovs_upcalls.get_or_create(&labels), value);
                }
                mirror(&d.ovs_flows_expired, details.flows_expired);
            }
        }
        for link in report
            .connections
            .iter()
            .filter_map(|c| c.datapath.as_ref())
        {
            let peer = PeerLabels {
                peer: link.peer.clone(),
            };
            d.link_up
                .get_or_create(&peer)
                .set(i64::from(link.health == "up"));
            d.connection_datapath
                .get_or_create(&PeerDatapathLabels {
                    peer: link.peer.clone(),
                    datapath: link.datapath.clone(),
                })
                .set(1);
            d.connection_transitions
                .get_or_create(&peer)
                .set(link.datapath_transitions as i64);
            d.link_path_mtu
                .get_or_create(&peer)
                .set(i64::from(link.path_mtu));
            let pd = |direction| PeerDirectionLabels {
                peer: link.peer.clone(),
                direction,
            };
            mirror(&d.link_bytes.get_or_create(&pd("out")), link.bytes_out);
            mirror(&d.link_bytes.get_or_create(&pd("in")), link.bytes_in);
            mirror(
                &d.link_datagrams.get_or_create(&pd("out")),
                link.datagrams_out,
            );
            mirror(
                &d.link_datagrams.get_or_create(&pd("in")),
                link.datagrams_in,
            );
            for (reason, value) in link.drops.by_reason() {
                let labels = PeerReasonLabels {
                    peer: link.peer.clone(),
                    reason,
                };
                mirror(&d.link_drops.get_or_create(&labels), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::cluster::tests::{FOUR, TWO, mesh};

    /// The samples (not the metadata) that carry `peer="PEER"`.
    fn series_of(metrics: &Metrics, peer: &str) -> Vec<String> {
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        let label = format!("peer=\"{peer}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    fn observe(metrics: &Metrics, report: &serde_json::Value) {
        metrics.observe(&serde_json::from_value(report.clone()).unwrap());
    }

    #[test]
    fn the_ovs_miss_path_is_counted() {
        let metrics = Metrics::default();
        observe(&metrics, &crate::report::tests::with_ovs());
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        for sample in [
            "weft_ovs_upcalls_total{result=\"answered\"} 5",
            "weft_ovs_upcalls_total{result=\"unknown_mac\"} 2",
            "weft_ovs_upcalls_total{result=\"rate_limited\"} 1",
            "weft_ovs_upcalls_total{result=\"failed\"} 0",
            "weft_ovs_flows_expired_total 3",
            "weft_ovs_flows 3",
        ] {
            assert!(text.lines().any(|l| l == sample), "no {sample} in\n{text}");
        }
    }

    #[test]
    fn per_peer_series_are_those_of_the_links_and_owners_of_now() {
        let metrics = Metrics::default();
        let mut report = mesh();
        observe(&metrics, &report);
        // two: a data path link (10 series, and 2 for the connection's datapath) and an IPAM
        // share (2); four: a share only.
        let two = series_of(&metrics, TWO);
        assert_eq!(two.len(), 14, "{two:#?}");
        assert_eq!(series_of(&metrics, FOUR).len(), 2);

        // two's connection closes; four's space is reclaimed: their series go with them.
        report["connections"].as_array_mut().unwrap().remove(0);
        report["ipam"]["owners"].as_array_mut().unwrap().remove(3);
        observe(&metrics, &report);
        let two = series_of(&metrics, TWO);
        assert_eq!(two.len(), 2, "only its IPAM share is left: {two:#?}");
        assert!(two.iter().all(|s| s.starts_with("weft_ipam_")), "{two:#?}");
        assert_eq!(series_of(&metrics, FOUR), Vec::<String>::new());
    }
}
