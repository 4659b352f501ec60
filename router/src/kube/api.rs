//! The Kubernetes API edge (`--kube-peers`): the few calls weft makes, behind [`KubeApi`] so
//! the task loop can be tested with a recording fake. Everything here is thin: it turns API
//! objects into the sans-IO types of [`super::nodes`] and [`super::lease`] and back.
//!
//! What is called, and the RBAC the chart grants for it:
//! - Nodes: list + watch (kube-runtime's watcher, which re-lists after `410 Gone`), merge
//!   patch of the `weft.dev/peer-name` annotation (`nodes: get, list, watch, patch`);
//! - `nodes/status`: strategic merge patch of the `NetworkUnavailable` condition (`patch`);
//! - the Lease `weft-reclaim` in the router's namespace: get, create, update (a PUT naming the
//!   `resourceVersion` read, so a race is a `409`).

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, Patch, PatchParams, PostParams};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::lease::{LEASE_NAME, LeaseRecord, LeaseWrite};
use super::nodes::{NodeEvent, NodeInfo, PEER_NAME_ANNOTATION};

/// The operations, as the `op` label of `weft_kube_api_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    WatchNodes,
    PatchNode,
    PatchNodeStatus,
    GetLease,
    CreateLease,
    UpdateLease,
    Connect,
    /// Not an API call: the router refused a reclaim (only a log key).
    Reclaim,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::WatchNodes => "watch_nodes",
            Op::PatchNode => "patch_node",
            Op::PatchNodeStatus => "patch_node_status",
            Op::GetLease => "get_lease",
            Op::CreateLease => "create_lease",
            Op::UpdateLease => "update_lease",
            Op::Connect => "connect",
            Op::Reclaim => "reclaim",
        }
    }
}

/// Why a call failed, as the `reason` label of `weft_kube_api_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 401: no or bad credentials.
    Unauthorized,
    /// 403: RBAC does not grant it.
    Forbidden,
    NotFound,
    /// 409: another writer was first (a lost Lease race).
    Conflict,
    /// 410: the watch's resourceVersion was compacted away (the watcher re-lists).
    Gone,
    /// Any other 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No answer: refused, reset, TLS, DNS.
    Connect,
    Timeout,
    /// No usable configuration (no kubeconfig, not in a cluster).
    Config,
    Other,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::NotFound => "not_found",
            Reason::Conflict => "conflict",
            Reason::Gone => "gone",
            Reason::ClientError => "client_error",
            Reason::ServerError => "server_error",
            Reason::Connect => "connect",
            Reason::Timeout => "timeout",
            Reason::Config => "config",
            Reason::Other => "other",
        }
    }

    fn of_code(code: u16) -> Reason {
        match code {
            401 => Reason::Unauthorized,
            403 => Reason::Forbidden,
            404 => Reason::NotFound,
            409 => Reason::Conflict,
            410 => Reason::Gone,
            400..=499 => Reason::ClientError,
            500..=599 => Reason::ServerError,
            _ => Reason::Other,
        }
    }
}

/// A failed API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", op.label())]
pub struct ApiError {
    pub op: Op,
    pub reason: Reason,
    pub message: String,
}

impl ApiError {
    pub fn new(op: Op, reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            op,
            reason,
            message: message.into(),
        }
    }

    fn from_kube(op: Op, e: &::kube::Error) -> Self {
        let reason = match e {
            ::kube::Error::Api(status) => Reason::of_code(status.code),
            ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => {
                let text = format!("{e:?}").to_lowercase();
                if text.contains("timed out") || text.contains("timeout") {
                    Reason::Timeout
                } else {
                    Reason::Connect
                }
            }
            ::kube::Error::Auth(_) => Reason::Unauthorized,
            _ => Reason::Other,
        };
        ApiError::new(op, reason, e.to_string())
    }

    fn from_watcher(e: &watcher::Error) -> Self {
        match e {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => ApiError::from_kube(Op::WatchNodes, e),
            watcher::Error::WatchError(status) => ApiError::new(
                Op::WatchNodes,
                Reason::of_code(status.code),
                format!("{} ({})", status.message, status.code),
            ),
            watcher::Error::NoResourceVersion => {
                ApiError::new(Op::WatchNodes, Reason::Other, e.to_string())
            }
        }
    }
}

/// The calls weft makes. `node_events` yields the watch as [`NodeEvent`]s (and its errors; it
/// backs off and re-lists by itself).
pub trait KubeApi: Send + Sync + 'static {
    fn node_events(&self) -> BoxStream<'static, Result<NodeEvent, ApiError>>;
    fn annotate_node(
        &self,
        node: &str,
        peer_name: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn set_network_available(
        &self,
        node: &str,
        now: SystemTime,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn get_lease(&self) -> impl Future<Output = Result<Option<LeaseRecord>, ApiError>> + Send;
    /// Creates or replaces the Lease; returns its new resourceVersion.
    fn write_lease(
        &self,
        write: &LeaseWrite,
    ) -> impl Future<Output = Result<Option<String>, ApiError>> + Send;
}

/// A client configuration: the kubeconfig named, or `kube::Config::infer()` (`KUBECONFIG`,
/// `~/.kube/config`, then in-cluster: the service account's token and CA).
pub async fn client(kubeconfig: Option<&Path>) -> Result<::kube::Client, ApiError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = ::kube::config::Kubeconfig::read_from(path).map_err(|e| {
                ApiError::new(
                    Op::Connect,
                    Reason::Config,
                    format!("{}: {e}", path.display()),
                )
            })?;
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| {
                    ApiError::new(
                        Op::Connect,
                        Reason::Config,
                        format!("{}: {e}", path.display()),
                    )
                })?
        }
        None => ::kube::Config::infer()
            .await
            .map_err(|e| ApiError::new(Op::Connect, Reason::Config, e.to_string()))?,
    };
    // weft retries itself, with its own backoff, counting and rate-limited logs; the client's
    // retry of 429/503/504 (15 tries, up to minutes apart) would hold a call through an outage.
    let mut config = config;
    config.default_retry = false;
    ::kube::Client::try_from(config).map_err(|e| ApiError::from_kube(Op::Connect, &e))
}

/// How long a single call (not the watch) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn timed<T>(
    op: Op,
    call: impl Future<Output = Result<T, ::kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| ApiError::from_kube(op, &e)),
        Err(_) => Err(ApiError::new(
            op,
            Reason::Timeout,
            format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        )),
    }
}

/// The real API.
#[derive(Clone)]
pub struct Kube {
    nodes: Api<Node>,
    leases: Api<Lease>,
}

impl Kube {
    pub fn new(client: ::kube::Client, namespace: &str) -> Self {
        Kube {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client, namespace),
        }
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl KubeApi for Kube {
    fn node_events(&self) -> BoxStream<'static, Result<NodeEvent, ApiError>> {
        watcher(self.nodes.clone(), watcher::Config::default())
            .default_backoff()
            .map_ok(|event| match event {
                watcher::Event::Apply(node) => NodeEvent::Applied(node_info(&node)),
                watcher::Event::Delete(node) => NodeEvent::Deleted(node_info(&node)),
                watcher::Event::Init => NodeEvent::InitStart,
                watcher::Event::InitApply(node) => NodeEvent::InitNode(node_info(&node)),
                watcher::Event::InitDone => NodeEvent::InitDone,
            })
            .map_err(|e| ApiError::from_watcher(&e))
            .boxed()
    }

    async fn annotate_node(&self, node: &str, peer_name: &str) -> Result<(), ApiError> {
        let patch = serde_json::json!({
            "metadata": {"annotations": {PEER_NAME_ANNOTATION: peer_name}}
        });
        timed(
            Op::PatchNode,
            self.nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(drop)
    }

    async fn set_network_available(&self, node: &str, now: SystemTime) -> Result<(), ApiError> {
        let now = timestamp(now).to_string();
        let patch = serde_json::json!({
            "status": {"conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "WeftIsUp",
                "message": "weft is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]}
        });
        timed(
            Op::PatchNodeStatus,
            self.nodes
                .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch)),
        )
        .await
        .map(drop)
    }

    async fn get_lease(&self) -> Result<Option<LeaseRecord>, ApiError> {
        let lease = timed(Op::GetLease, self.leases.get_opt(LEASE_NAME)).await?;
        Ok(lease.map(|lease| lease_record(&lease)))
    }

    async fn write_lease(&self, write: &LeaseWrite) -> Result<Option<String>, ApiError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_owned()),
                resource_version: write.resource_version.clone(),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(write.holder.clone()),
                acquire_time: Some(MicroTime(timestamp(write.acquire_time))),
                renew_time: Some(MicroTime(timestamp(write.renew_time))),
                lease_duration_seconds: Some(
                    i32::try_from(write.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                lease_transitions: Some(write.transitions),
                ..Default::default()
            }),
        };
        let written = match &write.resource_version {
            None => {
                timed(
                    Op::CreateLease,
                    self.leases.create(&PostParams::default(), &lease),
                )
                .await?
            }
            Some(_) => {
                timed(
                    Op::UpdateLease,
                    self.leases
                        .replace(LEASE_NAME, &PostParams::default(), &lease),
                )
                .await?
            }
        };
        Ok(written.metadata.resource_version)
    }
}

/// A Node as the router needs it.
pub fn node_info(node: &Node) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.as_ref();
    let internal_ips: Vec<IpAddr> = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
        .collect();
    let condition = |kind: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .and_then(|c| match c.status.as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            })
    };
    let mut info = NodeInfo::new(&name, &internal_ips);
    info.peer_annotation = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PEER_NAME_ANNOTATION))
        .cloned();
    info.os = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"))
        .cloned();
    info.network_unavailable = condition("NetworkUnavailable");
    info.ready = condition("Ready");
    info
}

fn lease_record(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.as_ref();
    let time = |t: Option<&MicroTime>| t.map(|t| SystemTime::from(t.0));
    LeaseRecord {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        acquire_time: time(spec.and_then(|s| s.acquire_time.as_ref())),
        renew_time: time(spec.and_then(|s| s.renew_time.as_ref())),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
        transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        resource_version: lease.metadata.resource_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_object_becomes_node_info() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "annotations": {"weft.dev/peer-name": "aa:00:00:00:00:02"},
                         "labels": {"kubernetes.io/os": "linux"}},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "b"},
                    {"type": "InternalIP", "address": "10.0.0.2"},
                    {"type": "ExternalIP", "address": "1.2.3.4"},
                    {"type": "InternalIP", "address": "fd00::2"}
                ],
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "NetworkUnavailable", "status": "Unknown"}
                ]
            }
        }))
        .unwrap();
        let info = node_info(&node);
        assert_eq!(info.name, "b");
        assert_eq!(
            info.internal_ips,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(info.peer_annotation.as_deref(), Some("aa:00:00:00:00:02"));
        assert_eq!((info.ready, info.network_unavailable), (Some(true), None));
        assert_eq!(info.os.as_deref(), Some("linux"));
    }

    #[test]
    fn a_lease_object_becomes_a_record() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "weft-reclaim", "resourceVersion": "42"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 3,
                     "renewTime": "2026-01-01T00:00:00.000000Z"}
        }))
        .unwrap();
        let record = lease_record(&lease);
        assert_eq!(record.holder.as_deref(), Some("a"));
        assert_eq!(record.duration, Some(Duration::from_secs(15)));
        assert_eq!(record.transitions, 3);
        assert_eq!(record.resource_version.as_deref(), Some("42"));
        assert!(record.renew_time.is_some() && record.acquire_time.is_none());
    }

    #[test]
    fn status_codes_have_reasons() {
        assert_eq!(Reason::of_code(403), Reason::Forbidden);
        assert_eq!(Reason::of_code(401), Reason::Unauthorized);
        assert_eq!(Reason::of_code(409), Reason::Conflict);
        assert_eq!(Reason::of_code(410), Reason::Gone);
        assert_eq!(Reason::of_code(503), Reason::ServerError);
        assert_eq!(Reason::of_code(422), Reason::ClientError);
    }
}
