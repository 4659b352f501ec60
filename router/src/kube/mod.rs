//! Peers and reclaim from the Kubernetes API (`--kube-peers`).
//!
//! One task talks to the API; the router actor stays the only owner of the mesh and IPAM:
//! - it watches Nodes ([`nodes`]) and hands the router the other Nodes' InternalIPs as connect
//!   targets, and the addresses of Nodes that are gone to forget ([`KubeEvent::Targets`]).
//!   Until the first list has arrived the router creates no IPAM ring (the list is the set of
//!   initial peers of the ring agreement, see `docs/ipam.md`);
//! - it records this router's peer name on its Node (annotation `weft.dev/peer-name`, merge
//!   patch) and, once the data path is up, sets the Node's `NetworkUnavailable` condition to
//!   False (strategic merge patch on `nodes/status`), again whenever the Node says otherwise;
//! - it takes part in the election of the reclaim leader ([`lease`]); the leader reclaims the
//!   address space of the peers of Nodes that are gone ([`reclaim`]) through the router's
//!   `weft rmpeer` path.
//!
//! API errors (403 from RBAC, 401, 5xx, no connection) are counted
//! (`weft_kube_api_errors_total{op,reason}`), logged at most a few times a minute per kind,
//! shown in `/report` (`kube.error`), and retried with backoff; none ends the router.

pub mod api;
pub mod lease;
pub mod nodes;
pub mod reclaim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use weft_gossip::PeerName;

use self::api::{ApiError, KubeApi, Op, Reason};
use self::lease::{Decision, Elector, LEASE_DURATION, Outcome, RETRY_PERIOD, Transition};
use self::nodes::{NodeChange, NodeEvent, NodeSet};
use self::reclaim::{Departed, MeshView};
use crate::log_limit::{LogLimiter, LogVerdict};
use crate::metrics::Metrics;
use crate::report::{KubeNodeReport, KubeReport, Report};
use crate::router::{ApiRequest, Event};

/// How often the task looks at the router and the Node (the Lease: [`RETRY_PERIOD`]).
const ROUND: Duration = Duration::from_secs(2);
/// Retries of a failed call: from this, doubling, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Log lines per kind of API error per minute.
const LOG_BURST: u32 = 3;
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the router is told.
#[derive(Debug)]
pub enum KubeEvent {
    /// Addresses to dial and to forget; `listed`: the first Node list has arrived.
    Targets {
        connect: Vec<String>,
        forget: Vec<String>,
        listed: bool,
    },
}

/// `--kube-*` settings.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub node_name: String,
    pub namespace: String,
    pub kubeconfig: Option<PathBuf>,
    /// The mesh port (the port of every target).
    pub port: u16,
    pub peer_name: PeerName,
}

/// The `kube` section of `/report`, written by the task, read by the router.
#[derive(Debug, Clone, Default)]
pub struct KubeShared(Arc<Mutex<KubeReport>>);

impl KubeShared {
    pub fn report(&self) -> KubeReport {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, report: KubeReport) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }
}

/// Starts the task: a client from the configuration (retried until there is one), then the
/// watch and the rounds.
pub fn spawn(
    options: KubeOptions,
    events: mpsc::Sender<Event>,
    shared: KubeShared,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        let mut task = Task::new(options, events, shared, metrics);
        task.publish();
        let mut retry = Retry::default();
        let client = loop {
            match api::client(task.options.kubeconfig.as_deref()).await {
                Ok(client) => break client,
                Err(e) => {
                    task.failed(&e);
                    task.publish();
                    retry.failed(Instant::now());
                    tokio::time::sleep_until(retry.next.into()).await;
                }
            }
        };
        task.cleared(Op::Connect);
        let api = api::Kube::new(client, &task.options.namespace);
        task.run(&api).await;
    });
}

/// A call's retry schedule: due at once, then backing off while it fails.
#[derive(Debug, Clone)]
struct Retry {
    next: Instant,
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            next: Instant::now(),
            backoff: FIRST_BACKOFF,
        }
    }
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    fn failed(&mut self, now: Instant) {
        self.next = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self, now: Instant) {
        self.next = now;
        self.backoff = FIRST_BACKOFF;
    }
}

/// What the task needs from the router, read from its report.
#[derive(Debug, Clone, Default)]
pub struct RouterView {
    pub mesh: MeshView,
    /// The data plane runs and its links are up.
    pub datapath_up: bool,
}

impl RouterView {
    pub fn of(report: &Report) -> Self {
        let parse = |s: &str| s.parse::<PeerName>().ok();
        let ipam = report.ipam.as_ref();
        let datapath_ok = crate::readiness::decide(report)
            .checks
            .iter()
            .any(|c| c.name == "datapath" && c.ok);
        RouterView {
            mesh: MeshView {
                local: parse(&report.name),
                reachable: report
                    .routes
                    .iter()
                    .filter_map(|r| parse(&r.peer))
                    .collect(),
                owners: ipam
                    .into_iter()
                    .flat_map(|i| &i.owners)
                    .filter(|o| o.addresses > 0)
                    .filter_map(|o| parse(&o.peer))
                    .collect(),
                has_ring: ipam.is_some_and(|i| i.ring.is_some()),
            },
            datapath_up: report.datapath.is_some() && datapath_ok,
        }
    }
}

struct Task {
    options: KubeOptions,
    nodes: NodeSet,
    elector: Elector,
    departed: Departed,
    events: mpsc::Sender<Event>,
    shared: KubeShared,
    metrics: Arc<Metrics>,
    logs: LogLimiter<(Op, Reason)>,
    /// The last error of each operation, until it succeeds again.
    errors: BTreeMap<&'static str, String>,
    /// A watch error since the last complete list.
    last_watch_error: Option<Instant>,
    /// After a watch error the watch is started again (a new list) when this is due.
    watch_retry: Retry,
    restart_watch: bool,
    annotated: bool,
    annotate_retry: Retry,
    network_set: bool,
    status_retry: Retry,
    lease_retry: Retry,
    /// A Node list was started (a later one is a watch restart).
    listing_seen: bool,
}

impl Task {
    fn new(
        options: KubeOptions,
        events: mpsc::Sender<Event>,
        shared: KubeShared,
        metrics: Arc<Metrics>,
    ) -> Self {
        Task {
            nodes: NodeSet::new(&options.node_name, options.port),
            elector: Elector::new(&options.node_name, LEASE_DURATION),
            departed: Departed::default(),
            options,
            events,
            shared,
            metrics,
            logs: LogLimiter::new(LOG_BURST, LOG_INTERVAL, 32),
            errors: BTreeMap::new(),
            last_watch_error: None,
            watch_retry: Retry::default(),
            restart_watch: false,
            annotated: false,
            annotate_retry: Retry::default(),
            network_set: false,
            status_retry: Retry::default(),
            lease_retry: Retry::default(),
            listing_seen: false,
        }
    }

    async fn run<A: KubeApi>(&mut self, api: &A) {
        let mut stream = api.node_events();
        let mut round = tokio::time::interval(ROUND);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let restart_at = self.watch_retry.next;
            tokio::select! {
                event = stream.next(), if !self.restart_watch => match event {
                    Some(Ok(event)) => self.node_event(event).await,
                    Some(Err(e)) => self.watch_failed(&e),
                    // The watcher never ends by itself; start it again if it does.
                    None => self.restart_watch = true,
                },
                _ = tokio::time::sleep_until(restart_at.into()), if self.restart_watch => {
                    // A new watcher: it lists first, so the Node set is exact again and a
                    // complete list says the watch is back.
                    self.restart_watch = false;
                    stream = api.node_events();
                },
                _ = round.tick() => {
                    let view = self.router_view().await;
                    self.round(api, view.as_ref()).await;
                }
            }
            self.publish();
        }
    }

    /// One Node watch event: the Node set, the router's targets, the departed peers.
    async fn node_event(&mut self, event: NodeEvent) {
        match &event {
            NodeEvent::InitStart => {
                if self.listing_seen {
                    self.metrics.kube.watch_restarts.inc();
                    tracing::info!("listing the Nodes again");
                }
                self.listing_seen = true;
            }
            NodeEvent::InitDone => {
                self.last_watch_error = None;
                self.watch_retry.succeeded(Instant::now());
                self.cleared(Op::WatchNodes);
            }
            NodeEvent::Applied(node) | NodeEvent::InitNode(node)
                if node.name == self.options.node_name =>
            {
                // Someone else's change (or a re-created Node): write them again.
                let ours = self.options.peer_name.to_string();
                if node.peer_annotation.as_deref() != Some(ours.as_str()) {
                    self.annotated = false;
                }
                if node.network_unavailable != Some(false) {
                    self.network_set = false;
                }
            }
            _ => {}
        }
        let change = self.nodes.apply(event);
        self.metrics.kube.nodes.set(self.nodes.len() as i64);
        self.changed(change).await;
    }

    async fn changed(&mut self, change: NodeChange) {
        for node in &change.gone {
            tracing::info!(node = %node.name, peer = node.peer_annotation.as_deref().unwrap_or(""), "Node gone");
        }
        self.departed.nodes_gone(&change.gone);
        if change.first_list {
            tracing::info!(
                nodes = self.nodes.len(),
                targets = ?self.nodes.targets(),
                "Node list received: the other Nodes are this router's peers"
            );
        }
        if change.connect.is_empty() && change.forget.is_empty() && !change.first_list {
            return;
        }
        let event = Event::Kube(KubeEvent::Targets {
            connect: change.connect,
            forget: change.forget,
            listed: self.nodes.listed(),
        });
        if self.events.send(event).await.is_err() {
            tracing::debug!("the router is gone");
        }
    }

    fn watch_failed(&mut self, e: &ApiError) {
        self.last_watch_error = Some(Instant::now());
        if e.reason == Reason::Gone {
            // Routine (etcd compaction): counted, not shown as an error; the watcher re-lists.
            tracing::info!("the Node watch expired (410 Gone): listing again");
            self.count(e);
            return;
        }
        self.failed(e);
        // Started again after a backoff, with a new list: until that list is complete the
        // watch is not established (which `/report` and `/readyz` say).
        self.watch_retry.failed(Instant::now());
        self.restart_watch = true;
    }

    /// Whether the watch is established: listed, and no error since the last complete list.
    fn watching(&self) -> bool {
        self.nodes.listed() && self.last_watch_error.is_none()
    }

    /// The router's report, as the view the decisions need.
    async fn router_view(&self) -> Option<RouterView> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Api(ApiRequest::Report { reply }))
            .await
            .ok()?;
        let report = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .ok()?
            .ok()?;
        Some(RouterView::of(&report))
    }

    /// Annotation, condition, Lease and reclaim, each when due.
    async fn round<A: KubeApi>(&mut self, api: &A, view: Option<&RouterView>) {
        let now = Instant::now();
        for summary in self.logs.flush(now) {
            let what = summary
                .key
                .map(|(op, reason)| format!("{} {}", op.label(), reason.label()))
                .unwrap_or_default();
            tracing::warn!(kind = %what, "Kubernetes API errors: {}", summary.suppressed);
        }
        if !self.annotated && self.annotate_retry.due(now) {
            let peer = self.options.peer_name.to_string();
            match api.annotate_node(&self.options.node_name, &peer).await {
                Ok(()) => {
                    tracing::info!(node = %self.options.node_name, %peer, "peer name recorded on the Node");
                    self.annotated = true;
                    self.annotate_retry.succeeded(now);
                    self.cleared(Op::PatchNode);
                }
                Err(e) => {
                    self.annotate_retry.failed(now);
                    self.failed(&e);
                }
            }
        }
        if !self.network_set && view.is_some_and(|v| v.datapath_up) && self.status_retry.due(now) {
            match api
                .set_network_available(&self.options.node_name, SystemTime::now())
                .await
            {
                Ok(()) => {
                    tracing::info!(node = %self.options.node_name, "Node condition NetworkUnavailable set to False");
                    self.network_set = true;
                    self.status_retry.succeeded(now);
                    self.cleared(Op::PatchNodeStatus);
                }
                Err(e) => {
                    self.status_retry.failed(now);
                    self.failed(&e);
                }
            }
        }
        if self.lease_retry.due(now) {
            self.lease_round(api).await;
        }
        self.metrics
            .kube
            .leader
            .set(i64::from(self.elector.is_leader(SystemTime::now())));
        if let Some(view) = view {
            self.reclaim(&view.mesh).await;
        }
    }

    async fn lease_round<A: KubeApi>(&mut self, api: &A) {
        let now = Instant::now();
        let lease = match api.get_lease().await {
            Ok(lease) => {
                self.cleared(Op::GetLease);
                lease
            }
            Err(e) => {
                self.failed(&e);
                self.lease_retry.failed(now);
                return;
            }
        };
        let sent = SystemTime::now();
        let write = match self.elector.decide(lease.as_ref(), sent) {
            Decision::Wait { holder } => {
                tracing::debug!(%holder, "the reclaim Lease is held by another router");
                self.lease_retry.next = now + RETRY_PERIOD;
                return;
            }
            Decision::Write(write) => write,
        };
        let op = if write.resource_version.is_none() {
            Op::CreateLease
        } else {
            Op::UpdateLease
        };
        let (outcome, version) = match api.write_lease(&write).await {
            Ok(version) => {
                self.cleared(op);
                (Outcome::Written, version)
            }
            Err(e) if e.reason == Reason::Conflict => {
                // Lost the race: counted, not an error to show.
                self.count(&e);
                (Outcome::Conflict, None)
            }
            Err(e) => {
                self.failed(&e);
                (Outcome::Failed, None)
            }
        };
        match self.elector.written(&write, outcome, version, sent) {
            Transition::Acquired => {
                tracing::info!(
                    lease = lease::LEASE_NAME,
                    "this router is the reclaim leader"
                )
            }
            Transition::Lost => {
                tracing::info!(
                    lease = lease::LEASE_NAME,
                    "this router lost the reclaim Lease"
                )
            }
            Transition::Unchanged => {}
        }
        match outcome {
            Outcome::Failed => self.lease_retry.failed(now),
            _ => {
                self.lease_retry.succeeded(now);
                self.lease_retry.next = now + RETRY_PERIOD;
            }
        }
    }

    /// Forgets departed peers that need nothing any more; the leader reclaims the rest.
    async fn reclaim(&mut self, view: &MeshView) {
        let live = self.nodes.live_peer_names();
        self.departed.prune(&live, view);
        if !self.elector.is_leader(SystemTime::now()) {
            return;
        }
        for peer in self.departed.to_reclaim(&live, view) {
            let node = self.departed.node_of(&peer).unwrap_or("").to_owned();
            let (reply, answer) = oneshot::channel();
            let request = Event::Api(ApiRequest::Rmpeer {
                peer: peer.to_string(),
                force: false,
                reply,
            });
            if self.events.send(request).await.is_err() {
                return;
            }
            match answer.await {
                Ok(Ok(said)) => {
                    self.departed.reclaimed(&peer);
                    self.metrics.kube.reclaims.inc();
                    tracing::info!(%peer, %node, result = %said, "reclaimed the address space of a deleted Node's peer");
                }
                Ok(Err(why)) => {
                    self.metrics.kube.reclaim_failures.inc();
                    let key = (Op::Reclaim, Reason::Other);
                    if matches!(
                        self.logs.check(&key, Instant::now()),
                        LogVerdict::Log { .. }
                    ) {
                        tracing::warn!(%peer, %node, reason = %why, "cannot reclaim a deleted Node's peer yet");
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Counts an API error, logs it (rate-limited) and shows it in the report.
    fn failed(&mut self, e: &ApiError) {
        self.count(e);
        self.errors.insert(e.op.label(), e.to_string());
        if let LogVerdict::Log { summary } = self.logs.check(&(e.op, e.reason), Instant::now()) {
            if let Some(summary) = summary {
                tracing::warn!(
                    op = e.op.label(),
                    reason = e.reason.label(),
                    "Kubernetes API errors: {summary}"
                );
            }
            tracing::warn!(op = e.op.label(), reason = e.reason.label(), error = %e.message, "Kubernetes API call failed; retrying");
        }
    }

    fn count(&self, e: &ApiError) {
        self.metrics.kube.api_error(e.op.label(), e.reason.label());
    }

    fn cleared(&mut self, op: Op) {
        self.errors.remove(op.label());
    }

    /// Writes the `kube` section of the report.
    fn publish(&self) {
        let error = (!self.errors.is_empty())
            .then(|| self.errors.values().cloned().collect::<Vec<_>>().join("; "));
        let error = match (error, self.nodes.listed()) {
            (None, false) => Some("the Node list has not arrived yet".to_owned()),
            (error, _) => error,
        };
        self.shared.set(KubeReport {
            node_name: self.options.node_name.clone(),
            watching: self.watching(),
            error,
            leader: self.elector.is_leader(SystemTime::now()),
            nodes: self
                .nodes
                .nodes()
                .map(|n| KubeNodeReport {
                    name: n.name.clone(),
                    internal_ips: n.internal_ips.iter().map(ToString::to_string).collect(),
                    peer_name: n.peer_annotation.clone(),
                    network_unavailable: n.network_unavailable,
                    ready: n.ready,
                })
                .collect(),
        });
    }
}

#[cfg(test)]
mod tests;
