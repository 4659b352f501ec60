//! The task against a recording fake API and a fake router (a channel).

use std::net::IpAddr;
use std::sync::Mutex as StdMutex;

use futures::stream::BoxStream;

use std::collections::BTreeSet;

use super::api::{ApiError, KubeApi, Op, Reason};
use super::lease::{LeaseRecord, LeaseWrite};
use super::nodes::{NodeEvent, NodeInfo};
use super::*;

#[derive(Default)]
struct Recorded {
    calls: Vec<String>,
    lease: Option<LeaseRecord>,
    version: u64,
    /// Lease calls fail with this (e.g. 403 without lease rights).
    lease_fails: Option<Reason>,
    annotate_fails: Option<Reason>,
}

#[derive(Default)]
struct FakeApi(StdMutex<Recorded>);

impl FakeApi {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }

    fn record(&self, call: String) {
        self.0.lock().unwrap().calls.push(call);
    }
}

impl KubeApi for FakeApi {
    fn node_events(&self) -> BoxStream<'static, Result<NodeEvent, ApiError>> {
        futures::stream::pending().boxed()
    }

    async fn annotate_node(&self, node: &str, peer_name: &str) -> Result<(), ApiError> {
        self.record(format!("annotate {node} {peer_name}"));
        match self.0.lock().unwrap().annotate_fails {
            Some(reason) => Err(ApiError::new(Op::PatchNode, reason, "refused")),
            None => Ok(()),
        }
    }

    async fn set_network_available(&self, node: &str, _now: SystemTime) -> Result<(), ApiError> {
        self.record(format!("network-available {node}"));
        Ok(())
    }

    async fn get_lease(&self) -> Result<Option<LeaseRecord>, ApiError> {
        self.record("get-lease".into());
        let r = self.0.lock().unwrap();
        match r.lease_fails {
            Some(reason) => Err(ApiError::new(Op::GetLease, reason, "leases is forbidden")),
            None => Ok(r.lease.clone()),
        }
    }

    async fn write_lease(&self, write: &LeaseWrite) -> Result<Option<String>, ApiError> {
        self.record(format!("write-lease {}", write.holder));
        let mut r = self.0.lock().unwrap();
        let current = r.lease.as_ref().and_then(|l| l.resource_version.clone());
        if write.resource_version != current {
            return Err(ApiError::new(Op::UpdateLease, Reason::Conflict, "conflict"));
        }
        r.version += 1;
        let version = r.version.to_string();
        r.lease = Some(LeaseRecord {
            holder: Some(write.holder.clone()),
            acquire_time: Some(write.acquire_time),
            renew_time: Some(write.renew_time),
            duration: Some(write.duration),
            transitions: write.transitions,
            resource_version: Some(version.clone()),
        });
        Ok(Some(version))
    }
}

fn peer(i: u8) -> PeerName {
    format!("aa:00:00:00:00:{i:02x}").parse().unwrap()
}

fn node(name: &str, addr: &str, p: u8) -> NodeInfo {
    let mut n = NodeInfo::new(name, &[addr.parse::<IpAddr>().unwrap()]);
    n.peer_annotation = Some(peer(p).to_string());
    n
}

fn task() -> (Task, mpsc::Receiver<Event>, Arc<Metrics>) {
    let (tx, rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::default());
    let options = KubeOptions {
        node_name: "a".into(),
        namespace: "weft".into(),
        kubeconfig: None,
        port: 6783,
        peer_name: peer(1),
    };
    (
        Task::new(options, tx, KubeShared::default(), metrics.clone()),
        rx,
        metrics,
    )
}

fn view(reachable: &[u8], owners: &[u8], datapath_up: bool) -> RouterView {
    RouterView {
        mesh: MeshView {
            local: Some(peer(1)),
            reachable: reachable.iter().map(|i| peer(*i)).collect(),
            owners: owners.iter().map(|i| peer(*i)).collect(),
            has_ring: true,
        },
        datapath_up,
    }
}

fn targets(event: Event) -> (Vec<String>, Vec<String>, bool) {
    match event {
        Event::Kube(KubeEvent::Targets {
            connect,
            forget,
            listed,
        }) => (connect, forget, listed),
        _ => panic!("not a Targets event"),
    }
}

async fn list(task: &mut Task, nodes: &[NodeInfo]) {
    task.node_event(NodeEvent::InitStart).await;
    for n in nodes {
        task.node_event(NodeEvent::InitNode(n.clone())).await;
    }
    task.node_event(NodeEvent::InitDone).await;
}

#[tokio::test]
async fn the_first_list_tells_the_router_its_peers_and_that_it_listed() {
    let (mut task, mut rx, metrics) = task();
    assert_eq!(
        task.shared.report().error,
        None,
        "nothing published before the first round"
    );
    task.publish();
    assert!(task.shared.report().error.unwrap().contains("not arrived"));
    list(
        &mut task,
        &[node("a", "10.0.0.1", 1), node("b", "10.0.0.2", 2)],
    )
    .await;
    assert_eq!(
        targets(rx.try_recv().unwrap()),
        (vec!["10.0.0.2:6783".to_owned()], vec![], true)
    );
    assert!(rx.try_recv().is_err(), "one event for the whole list");
    assert_eq!(metrics.kube.nodes.get(), 2);
    task.publish();
    let report = task.shared.report();
    assert!(report.watching && report.error.is_none());
    assert_eq!(report.nodes.len(), 2);
    assert_eq!(report.nodes[1].internal_ips, vec!["10.0.0.2".to_owned()]);
}

#[tokio::test]
async fn a_round_annotates_sets_the_condition_once_the_data_path_is_up_and_leads() {
    let (mut task, _rx, metrics) = task();
    let api = FakeApi::default();
    task.round(&api, Some(&view(&[], &[1], false))).await;
    assert_eq!(
        api.calls(),
        vec![
            format!("annotate a {}", peer(1)),
            "get-lease".to_owned(),
            "write-lease a".to_owned()
        ]
    );
    assert_eq!(metrics.kube.leader.get(), 1);
    task.round(&api, Some(&view(&[], &[1], true))).await;
    assert_eq!(api.calls()[3], "network-available a");
    assert_eq!(
        api.calls().len(),
        4,
        "the Lease is renewed every 5 s, not every round"
    );
    // Someone set the condition back: it is written again.
    let mut a = node("a", "10.0.0.1", 1);
    a.network_unavailable = Some(true);
    task.node_event(NodeEvent::Applied(a)).await;
    task.round(&api, Some(&view(&[], &[1], true))).await;
    assert_eq!(api.calls()[4], "network-available a");
    task.publish();
    assert!(task.shared.report().leader);
}

#[tokio::test]
async fn the_leader_reclaims_a_deleted_nodes_peer_once() {
    let (mut task, mut rx, metrics) = task();
    let api = FakeApi::default();
    list(
        &mut task,
        &[
            node("a", "10.0.0.1", 1),
            node("b", "10.0.0.2", 2),
            node("c", "10.0.0.3", 3),
        ],
    )
    .await;
    let _ = rx.try_recv();
    task.node_event(NodeEvent::Deleted(node("c", "10.0.0.3", 3)))
        .await;
    assert_eq!(
        targets(rx.try_recv().unwrap()),
        (vec![], vec!["10.0.0.3:6783".to_owned()], true)
    );
    // The fake router: answers the rmpeer, then the peer owns nothing any more.
    let router = tokio::spawn(async move {
        let mut asked = Vec::new();
        while let Some(event) = rx.recv().await {
            if let Event::Api(ApiRequest::Rmpeer { peer, force, reply }) = event {
                assert!(!force);
                asked.push(peer);
                let _ = reply.send(Ok("reclaimed 100 addresses".into()));
            }
        }
        asked
    });
    task.round(&api, Some(&view(&[2], &[1, 2, 3], true))).await;
    assert_eq!(metrics.kube.reclaims.get(), 1);
    // Gossip has moved the space: nothing more to do.
    task.round(&api, Some(&view(&[2], &[1, 2], true))).await;
    assert_eq!(metrics.kube.reclaims.get(), 1);
    drop(task);
    assert_eq!(router.await.unwrap(), vec![peer(3).to_string()]);
}

#[tokio::test]
async fn a_follower_does_not_reclaim_and_a_reachable_peer_is_never_reclaimed() {
    let (mut task, mut rx, metrics) = task();
    let api = FakeApi::default();
    api.0.lock().unwrap().lease = Some(LeaseRecord {
        holder: Some("b".into()),
        resource_version: Some("9".into()),
        duration: Some(Duration::from_secs(15)),
        ..Default::default()
    });
    api.0.lock().unwrap().version = 9;
    list(
        &mut task,
        &[node("a", "10.0.0.1", 1), node("c", "10.0.0.3", 3)],
    )
    .await;
    task.node_event(NodeEvent::InitStart).await;
    task.node_event(NodeEvent::InitNode(node("a", "10.0.0.1", 1)))
        .await;
    task.node_event(NodeEvent::InitDone).await;
    assert_eq!(
        metrics.kube.watch_restarts.get(),
        1,
        "a re-list is a watch restart"
    );
    while rx.try_recv().is_ok() {}
    task.round(&api, Some(&view(&[], &[1, 3], true))).await;
    assert_eq!(metrics.kube.leader.get(), 0);
    assert_eq!(metrics.kube.reclaims.get(), 0);
    assert!(rx.try_recv().is_err(), "no rmpeer from a follower");
    assert_eq!(
        task.departed
            .to_reclaim(&BTreeSet::new(), &view(&[3], &[1, 3], true).mesh),
        vec![]
    );
}

#[tokio::test]
async fn api_errors_are_counted_shown_and_retried_with_backoff() {
    let (mut task, _rx, metrics) = task();
    let api = FakeApi::default();
    api.0.lock().unwrap().lease_fails = Some(Reason::Forbidden);
    api.0.lock().unwrap().annotate_fails = Some(Reason::ServerError);
    task.round(&api, None).await;
    task.publish();
    let report = task.shared.report();
    let error = report.error.unwrap();
    assert!(
        error.contains("get_lease") && error.contains("forbidden"),
        "{error}"
    );
    assert!(error.contains("patch_node"), "{error}");
    assert!(!report.leader);
    let count = |op, reason| {
        metrics
            .kube
            .api_errors
            .get_or_create(&crate::metrics::OpReasonLabels { op, reason })
            .get()
    };
    assert_eq!(count("get_lease", "forbidden"), 1);
    assert_eq!(count("patch_node", "server_error"), 1);
    // Backing off: the next round (at once) does not call again.
    task.round(&api, None).await;
    assert_eq!(api.calls().len(), 2);
    // A broken watch is started again (a new list) after a backoff.
    task.watch_failed(&ApiError::new(Op::WatchNodes, Reason::ServerError, "503"));
    assert!(task.restart_watch);
    assert!(task.shared.report().error.is_some());
    // A watch 410 is shown until the re-list completes.
    task.watch_failed(&ApiError::new(
        Op::WatchNodes,
        Reason::Gone,
        "too old resource version",
    ));
    assert!(!task.watching());
    list(&mut task, &[node("a", "10.0.0.1", 1)]).await;
    assert!(task.watching());
    assert_eq!(count("watch_nodes", "gone"), 1);
}
