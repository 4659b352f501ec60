//! The fake Kubernetes API server over HTTPS, driven with curl as any client would: list,
//! get, patch, a watch stream with bookmarks, 410 after compaction, Leases with optimistic
//! concurrency, tokens and RBAC, and reachability from a host namespace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use weft_tests::fakeapi::{FakeApi, FakeApiOpts, NET_ADDRESS, NET_PORT};

const BINARY: &str = env!("CARGO_BIN_EXE_weft-fake-apiserver");

/// What curl got: status code and body.
struct Got {
    code: u16,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl` against `api` with `token` (None: no Authorization header).
fn curl(
    api: &FakeApi,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
) -> Got {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "20",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("{}{path}", api.url()));
    if let Some(ca) = api.ca_path() {
        command.arg("--cacert").arg(ca);
    }
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
    }
    if let Some((content_type, body)) = body {
        command
            .arg("-H")
            .arg(format!("Content-Type: {content_type}"))
            .arg("--data-binary")
            .arg(body.to_string());
    }
    let out = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    Got {
        code: code.trim().parse().expect("a status code"),
        body: body.to_owned(),
    }
}

/// A watch left running: curl writes the stream to a file.
struct Stream {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Stream {
    fn start(api: &FakeApi, path: &str, name: &str) -> Stream {
        let out = api.dir().join(format!("{name}.watch"));
        let mut command = Command::new("curl");
        command
            .args(["-sSN", "--max-time", "30"])
            .arg(format!("{}{path}", api.url()))
            .arg("--cacert")
            .arg(api.ca_path().expect("TLS"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", api.token()))
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null());
        Stream {
            child: command.spawn().expect("curl runs"),
            out,
        }
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
            })
            .collect()
    }

    /// Polls until `check` holds for the events so far.
    fn wait_for(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events();
            if check(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events: {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for curl to end (the server closed the stream).
    fn wait_closed(mut self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the stream stayed open: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.events()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {object}"))
}

fn fast_bookmarks() -> FakeApiOpts {
    FakeApiOpts {
        bookmark_interval: Duration::from_millis(200),
        ..FakeApiOpts::default()
    }
}

#[test]
fn list_watch_and_patch_over_https() {
    let api = FakeApi::start(BINARY, fast_bookmarks()).unwrap();
    assert!(api.url().starts_with("https://127.0.0.1:"), "{}", api.url());
    api.add_node("n1", [10, 77, 0, 1]).unwrap();
    let token = Some(api.token());

    // kube-rs's watcher, default config: a list with limit=500, then a watch from its RV.
    let list = curl(&api, token, "GET", "/api/v1/nodes?limit=500", None);
    assert_eq!(list.code, 200, "{}", list.body);
    let list = list.json();
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["items"][0]["metadata"]["name"], "n1");
    let listed = rv(&list);
    let get = curl(&api, token, "GET", "/api/v1/nodes/n1", None);
    assert_eq!(rv(&get.json()), listed);
    assert_eq!(
        curl(&api, token, "GET", "/api/v1/nodes/nope", None).code,
        404
    );

    let watch = Stream::start(
        &api,
        &format!(
            "/api/v1/nodes?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={listed}"
        ),
        "nodes",
    );
    // The annotation (merge patch) and the condition (strategic merge on /status).
    let patched = curl(
        &api,
        token,
        "PATCH",
        "/api/v1/nodes/n1",
        Some((
            "application/merge-patch+json",
            json!({"metadata": {"annotations": {"weft.dev/peer-name": "aa:bb:cc:dd:ee:ff"}},
                   "status": {"conditions": []}}),
        )),
    );
    assert_eq!(patched.code, 200, "{}", patched.body);
    let patched = patched.json();
    assert!(rv(&patched) > listed);
    assert_eq!(
        patched["status"]["conditions"][0]["type"], "Ready",
        "the main resource ignores status"
    );
    let condition = json!({"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp", "message": "weft is up"}
    ]}});
    let status = curl(
        &api,
        token,
        "PATCH",
        "/api/v1/nodes/n1/status",
        Some(("application/strategic-merge-patch+json", condition.clone())),
    );
    assert_eq!(status.code, 200, "{}", status.body);
    let status = status.json();
    let types: Vec<&str> = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "NetworkUnavailable"]);
    assert_eq!(
        status["metadata"]["annotations"]["weft.dev/peer-name"],
        "aa:bb:cc:dd:ee:ff"
    );
    // The same patch again changes nothing: no new resourceVersion, no event.
    let again = curl(
        &api,
        token,
        "PATCH",
        "/api/v1/nodes/n1/status",
        Some(("application/strategic-merge-patch+json", condition)),
    );
    assert_eq!(rv(&again.json()), rv(&status));
    let bad = curl(
        &api,
        token,
        "PATCH",
        "/api/v1/nodes/n1",
        Some(("application/json", json!({}))),
    );
    assert_eq!(bad.code, 415);
    let json_patch = curl(
        &api,
        token,
        "PATCH",
        "/api/v1/nodes/n1",
        Some((
            "application/json-patch+json",
            json!([{"op": "add", "path": "/metadata/labels/extra", "value": "1"}]),
        )),
    );
    assert_eq!(json_patch.code, 200, "{}", json_patch.body);

    api.add_node("n2", [10, 77, 0, 2]).unwrap();
    api.delete_node("n2").unwrap();
    let events = watch.wait_for("MODIFIED x3, ADDED, DELETED and a bookmark", |events| {
        events.iter().filter(|e| e["type"] != "BOOKMARK").count() >= 5
            && events.last().is_some_and(|e| e["type"] == "BOOKMARK")
    });
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| *t != "BOOKMARK")
        .collect();
    assert_eq!(
        kinds,
        ["MODIFIED", "MODIFIED", "MODIFIED", "ADDED", "DELETED"]
    );
    let rvs: Vec<u64> = events.iter().map(|e| rv(&e["object"])).collect();
    assert!(
        rvs.windows(2).all(|w| w[0] <= w[1]),
        "resourceVersions go up: {rvs:?}"
    );
    let bookmark = events.last().unwrap();
    assert_eq!(bookmark["object"]["kind"], "Node");
    let deleted = events.iter().find(|e| e["type"] == "DELETED").unwrap();
    assert_eq!(
        rv(&bookmark["object"]),
        rv(&deleted["object"]),
        "a bookmark carries the newest resourceVersion"
    );

    // A watch ends at timeoutSeconds.
    let short = Stream::start(&api, "/api/v1/nodes?watch=1&timeoutSeconds=1", "short");
    let events = short.wait_closed();
    assert_eq!(events.len(), 1, "the synthetic ADDED of n1: {events:#?}");
    assert_eq!(events[0]["type"], "ADDED");

    let log = api.requests().unwrap();
    assert!(log.iter().any(|r| r.method == "PATCH"
        && r.path == "/api/v1/nodes/n1/status"
        && r.status == 200
        && r.content_type.as_deref() == Some("application/strategic-merge-patch+json")
        && r.user.as_deref() == Some("system:serviceaccount:kube-system:weft")));
    assert!(
        log.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].millis <= w[1].millis)
    );
}

#[test]
fn compaction_expires_old_resource_versions() {
    let api = FakeApi::start(BINARY, fast_bookmarks()).unwrap();
    let token = Some(api.token());
    api.add_node("n1", [10, 77, 0, 1]).unwrap();
    let old = rv(&curl(&api, token, "GET", "/api/v1/nodes", None).json());
    let open = Stream::start(
        &api,
        &format!("/api/v1/nodes?watch=1&resourceVersion={old}"),
        "open",
    );
    // The open watch is established (it gets a bookmark-free stream: wait for the request).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api
        .requests()
        .unwrap()
        .iter()
        .any(|r| r.path.contains("watch=1"))
    {
        assert!(Instant::now() < deadline, "the watch never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let compacted = api.compact().unwrap();
    assert!(compacted > old);

    // The open watch ends with 410 Expired.
    let events = open.wait_closed();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    // A new watch from the old version: HTTP 200 and one ERROR event, then the end.
    let watch = curl(
        &api,
        token,
        "GET",
        &format!(
            "/api/v1/nodes?watch=true&resourceVersion={old}&allowWatchBookmarks=true&timeoutSeconds=290"
        ),
        None,
    );
    assert_eq!(watch.code, 200);
    let event = watch.json();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["kind"], "Status");
    assert_eq!(event["object"]["code"], 410);
    // An exact list at the old version: HTTP 410.
    let list = curl(
        &api,
        token,
        "GET",
        &format!("/api/v1/nodes?resourceVersion={old}&resourceVersionMatch=Exact"),
        None,
    );
    assert_eq!(list.code, 410, "{}", list.body);
    assert_eq!(list.json()["reason"], "Expired");
    // Re-listing works and a watch from the new version sees later changes.
    let relisted = curl(&api, token, "GET", "/api/v1/nodes?limit=500", None).json();
    assert_eq!(rv(&relisted), compacted);
    let watch = Stream::start(
        &api,
        &format!("/api/v1/nodes?watch=1&resourceVersion={compacted}"),
        "after",
    );
    api.add_node("n2", [10, 77, 0, 2]).unwrap();
    watch.wait_for("n2 ADDED", |events| {
        events
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "n2")
    });
}

#[test]
fn streaming_list_sends_initial_events_then_a_bookmark() {
    let api = FakeApi::start(BINARY, fast_bookmarks()).unwrap();
    api.add_node("n1", [10, 77, 0, 1]).unwrap();
    api.add_node("n2", [10, 77, 0, 2]).unwrap();
    let watch = Stream::start(
        &api,
        "/api/v1/nodes?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        "streaming",
    );
    let events = watch.wait_for("two ADDED and the initial-events-end bookmark", |e| {
        e.len() >= 3
    });
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "ADDED");
    assert_eq!(events[2]["type"], "BOOKMARK");
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let wrong = curl(
        &api,
        Some(api.token()),
        "GET",
        "/api/v1/nodes?watch=true&sendInitialEvents=true",
        None,
    );
    assert_eq!(wrong.code, 422, "{}", wrong.body);
}

#[test]
fn leases_have_optimistic_concurrency() {
    let api = FakeApi::start(BINARY, FakeApiOpts::default()).unwrap();
    let token = Some(api.token());
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "weft-reclaim", "namespace": "kube-system"},
                       "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 15}});
    let created = curl(
        &api,
        token,
        "POST",
        leases,
        Some(("application/json", lease.clone())),
    );
    assert_eq!(created.code, 201, "{}", created.body);
    let created = created.json();
    let again = curl(
        &api,
        token,
        "POST",
        leases,
        Some(("application/json", lease.clone())),
    );
    assert_eq!(again.code, 409);
    assert_eq!(again.json()["reason"], "AlreadyExists");

    let path = format!("{leases}/weft-reclaim");
    let mut update = created.clone();
    update["spec"]["holderIdentity"] = json!("n2");
    let ok = curl(
        &api,
        token,
        "PUT",
        &path,
        Some(("application/json", update.clone())),
    );
    assert_eq!(ok.code, 200, "{}", ok.body);
    assert!(rv(&ok.json()) > rv(&created));
    // The same update again carries a stale resourceVersion now.
    let stale = curl(
        &api,
        token,
        "PUT",
        &path,
        Some(("application/json", update.clone())),
    );
    assert_eq!(stale.code, 409);
    assert_eq!(stale.json()["reason"], "Conflict");
    let mut unversioned = update.clone();
    unversioned["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let missing = curl(
        &api,
        token,
        "PUT",
        &path,
        Some(("application/json", unversioned)),
    );
    assert_eq!(missing.code, 422, "{}", missing.body);

    let stored = api.lease("kube-system", "weft-reclaim").unwrap().unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "n2");
    assert_eq!(api.leases().unwrap().len(), 1);
    assert_eq!(curl(&api, token, "GET", &path, None).json(), stored);
    assert_eq!(curl(&api, token, "DELETE", &path, None).code, 200);
    assert!(api.lease("kube-system", "weft-reclaim").unwrap().is_none());
    assert_eq!(curl(&api, token, "GET", &path, None).code, 404);
}

/// The chart's RBAC as `helm template` prints it (comments, `---` separators).
const CHART_RBAC: &str = r#"---
# Source: weft/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: weft
  namespace: kube-system
---
# Source: weft/templates/rbac.yaml
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: weft
rules:
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: [""]
    resources: ["nodes/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: weft
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: weft
subjects:
  - kind: ServiceAccount
    name: weft
    namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: weft
  namespace: kube-system
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: weft
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: weft
subjects:
  - kind: ServiceAccount
    name: weft
    namespace: kube-system
"#;

#[test]
fn tokens_and_rbac_from_rendered_manifests() {
    let dir = std::env::temp_dir().join(format!("weft-fakeapi-rbac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rbac = dir.join("rbac.yaml");
    std::fs::write(&rbac, CHART_RBAC).unwrap();
    let api = FakeApi::start(
        BINARY,
        FakeApiOpts {
            rbac: Some(rbac.clone()),
            ..FakeApiOpts::default()
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    api.add_node("x", [10, 77, 0, 1]).unwrap();
    let token = Some(api.token());

    assert_eq!(curl(&api, None, "GET", "/api/v1/nodes", None).code, 401);
    let version = curl(&api, None, "GET", "/version", None);
    assert_eq!(version.code, 200);
    assert_eq!(version.json()["major"], "1");
    assert_eq!(
        curl(&api, Some("wrong"), "GET", "/api/v1/nodes", None).code,
        401
    );
    assert_eq!(curl(&api, token, "GET", "/api/v1/nodes", None).code, 200);
    let merge = Some((
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"a": "b"}}}),
    ));
    assert_eq!(
        curl(&api, token, "PATCH", "/api/v1/nodes/x", merge.clone()).code,
        200
    );
    assert_eq!(
        curl(&api, token, "PATCH", "/api/v1/nodes/x/status", merge).code,
        200
    );
    let create = Some(("application/json", json!({"metadata": {"name": "new"}})));
    assert_eq!(
        curl(&api, token, "POST", "/api/v1/nodes", create.clone()).code,
        403,
        "creating Nodes is kubelet's business"
    );
    assert_eq!(
        curl(
            &api,
            Some(api.admin_token()),
            "POST",
            "/api/v1/nodes",
            create
        )
        .code,
        201
    );
    let denied = curl(&api, token, "DELETE", "/api/v1/nodes/x", None);
    assert_eq!(denied.code, 403);
    assert_eq!(
        denied.json()["message"],
        "nodes \"x\" is forbidden: User \"system:serviceaccount:kube-system:weft\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let put_status = curl(
        &api,
        token,
        "PUT",
        "/api/v1/nodes/x/status",
        Some(("application/json", api.node("x").unwrap())),
    );
    assert_eq!(put_status.code, 403, "update nodes/status is not granted");
    // Leases: in the release namespace only.
    let lease = |ns: &str| json!({"metadata": {"name": "weft-reclaim", "namespace": ns}, "spec": {"holderIdentity": "x"}});
    let mine = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    assert_eq!(
        curl(
            &api,
            token,
            "POST",
            mine,
            Some(("application/json", lease("kube-system")))
        )
        .code,
        201
    );
    assert_eq!(
        curl(&api, token, "GET", &format!("{mine}/weft-reclaim"), None).code,
        200
    );
    assert_eq!(
        curl(&api, token, "GET", mine, None).code,
        403,
        "list is not granted"
    );
    let other = curl(
        &api,
        token,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        Some(("application/json", lease("default"))),
    );
    assert_eq!(other.code, 403);
    assert!(
        other.json()["message"]
            .as_str()
            .unwrap()
            .ends_with("cannot create resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"default\""),
        "{}",
        other.body
    );
    // The admin token may do anything.
    assert_eq!(
        curl(
            &api,
            Some(api.admin_token()),
            "DELETE",
            "/api/v1/nodes/x",
            None
        )
        .code,
        200
    );
    // An outage cuts open watches and fails everything until it ends.
    api.add_node("y", [10, 77, 0, 2]).unwrap();
    let watch = Stream::start(&api, "/api/v1/nodes?watch=1&timeoutSeconds=60", "outage");
    watch.wait_for("the synthetic ADDED", |e| !e.is_empty());
    api.set_outage(true).unwrap();
    watch.wait_closed();
    assert_eq!(curl(&api, token, "GET", "/api/v1/nodes", None).code, 503);
    api.set_outage(false).unwrap();
    assert_eq!(curl(&api, token, "GET", "/api/v1/nodes", None).code, 200);
    // Injected failures, then normal service again.
    api.fail_next(2, 429).unwrap();
    assert_eq!(curl(&api, token, "GET", "/api/v1/nodes", None).code, 429);
    assert_eq!(curl(&api, token, "GET", "/api/v1/nodes", None).code, 429);
    assert_eq!(curl(&api, token, "GET", "/api/v1/nodes", None).code, 200);
}

#[test]
fn kubeconfig_and_service_account_files() {
    let api = FakeApi::start(BINARY, FakeApiOpts::default()).unwrap();
    let kubeconfig = std::fs::read_to_string(api.kubeconfig_path()).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: {}", api.url())),
        "{kubeconfig}"
    );
    assert!(kubeconfig.contains(&format!("token: {}", api.token())));
    assert!(kubeconfig.contains("certificate-authority-data: "));
    let sa = api.service_account_dir();
    assert_eq!(
        std::fs::read_to_string(sa.join("token")).unwrap(),
        api.token()
    );
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).unwrap(),
        "kube-system"
    );
    // The certificate is for the IP address (SAN), from the CA in ca.crt.
    let ca = sa.join("ca.crt");
    check_tls(&api, &ca).unwrap();
    let env = api.in_cluster_env();
    assert_eq!(
        env[0],
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned())
    );
}

fn check_tls(api: &FakeApi, ca: &Path) -> anyhow::Result<()> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", api.token()))
        .arg(format!("{}/api/v1/nodes", api.url()))
        .output()
        .context("curl")?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn reachable_from_every_host_of_a_net() {
    if !weft_tests::require_root() {
        return;
    }
    // No router runs here: the Net only needs some binary to exist.
    let net = weft_tests::Net::new(BINARY, 2).unwrap();
    let api = FakeApi::start_on(&net, BINARY, FakeApiOpts::default()).unwrap();
    assert_eq!(api.url(), format!("https://{NET_ADDRESS}:{NET_PORT}"));
    api.add_node("host1", net.address(1)).unwrap();
    let ca = api.ca_path().unwrap();
    for host in net.host_ids() {
        let out = net
            .exec(
                host,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                    "--cacert",
                    &ca.to_string_lossy(),
                    "-H",
                    &format!("Authorization: Bearer {}", api.token()),
                    &format!("{}/api/v1/nodes", api.url()),
                ],
            )
            .unwrap();
        let list: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            list["items"][0]["metadata"]["name"], "host1",
            "from host{host}"
        );
    }
    let ns = api.netns().unwrap().to_owned();
    drop(api);
    assert!(
        !Path::new("/run/netns").join(ns).exists(),
        "the namespace is gone"
    );
}
