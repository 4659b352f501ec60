//! A fake Kubernetes API server for weft's tests: no kube-apiserver can be installed on the
//! test machines, so this serves exactly the endpoints weft uses, with the real semantics
//! (resourceVersions, list + watch with bookmarks and `410 Expired`, merge / strategic merge /
//! JSON patches of Nodes and their status, Leases with optimistic concurrency, bearer tokens
//! and RBAC 403s from the chart's rendered rules). See "Fake Kubernetes API server" in
//! `tests/clients/README.md`.
//!
//! The deciding parts are sans-IO ([`store`], [`patch`], [`rbac`], [`api`]); [`http`] is the
//! HTTP(S) edge, run by the `weft-fake-apiserver` binary; [`FakeApi`] starts that binary for a
//! test (on loopback, or in a namespace of its own on a [`Net`]'s switch so every host reaches
//! it), writes a kubeconfig and a service-account directory for it, and drives its control
//! surface (a unix socket: add and delete Nodes, compact, read objects and the request log).

pub mod api;
pub mod http;
pub mod patch;
mod pki;
pub mod rbac;
pub mod resource;
pub mod selector;
pub mod status;
pub mod store;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Net;
use crate::cmd;

/// One API request as the fake served it (the control surface's request log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged {
    /// Position in the log (time order).
    pub seq: u64,
    /// Milliseconds since the server started.
    pub millis: u64,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// The authenticated user; `None` for a missing or unknown token (401).
    pub user: Option<String>,
    /// The request's `Content-Type` (which patch format a PATCH used).
    pub content_type: Option<String>,
    pub status: u16,
}

/// How to start a [`FakeApi`].
#[derive(Debug, Clone)]
pub struct FakeApiOpts {
    /// Rendered RBAC manifests (`helm template` output); `None` allows everything.
    pub rbac: Option<PathBuf>,
    /// HTTPS with a fresh CA (in-cluster config needs it); else plain HTTP.
    pub tls: bool,
    /// The service account the token belongs to: `system:serviceaccount:NAMESPACE:NAME`.
    pub namespace: String,
    pub service_account: String,
    /// Between two BOOKMARK events of a watch that asked for them.
    pub bookmark_interval: Duration,
}

impl Default for FakeApiOpts {
    fn default() -> FakeApiOpts {
        FakeApiOpts {
            rbac: None,
            tls: true,
            namespace: "kube-system".to_owned(),
            service_account: "weft".to_owned(),
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// The address the fake API takes on a Net's switch (hosts count up from `.1`).
pub const NET_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
/// Its port there (the real apiserver's usual one).
pub const NET_PORT: u16 = 6443;
/// The user the admin token authenticates as: allowed everything, like `system:masters`.
pub const ADMIN_USER: &str = "system:admin";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running `weft-fake-apiserver`. Dropping it stops the server and removes its namespace and
/// directory (`WEFT_TEST_KEEP=1` keeps the directory: log, certificates, kubeconfig).
pub struct FakeApi {
    child: Child,
    /// The server exits when this closes (`--exit-on-stdin-eof`), also if the test is killed.
    stdin: Option<std::process::ChildStdin>,
    dir: PathBuf,
    netns: Option<String>,
    address: IpAddr,
    port: u16,
    tls: bool,
    token: String,
    admin_token: String,
    user: String,
    namespace: String,
}

/// The `weft-fake-apiserver` binary next to the running test executable (cargo puts every
/// workspace binary in `target/<profile>/`), or `$WEFT_FAKE_APISERVER`. Integration tests of
/// the tests crate can use `env!("CARGO_BIN_EXE_weft-fake-apiserver")` instead; other crates'
/// tests need `cargo build -p weft-tests --bin weft-fake-apiserver` first (`cargo test
/// --workspace` builds it).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_FAKE_APISERVER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("weft-fake-apiserver"))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no weft-fake-apiserver binary in {candidates:?}: run `cargo build -p weft-tests --bin weft-fake-apiserver` (or set WEFT_FAKE_APISERVER)"
        )
    })
}

impl FakeApi {
    /// Starts the fake on `127.0.0.1` (a free port) in this namespace: for tests without a
    /// [`Net`] (or routers not in namespaces).
    pub fn start(binary: impl Into<PathBuf>, opts: FakeApiOpts) -> anyhow::Result<FakeApi> {
        FakeApi::launch(binary.into(), opts, None)
    }

    /// Starts the fake in a namespace of its own on `net`'s switch, at
    /// [`NET_ADDRESS`]:[`NET_PORT`], so every host of `net` reaches it.
    pub fn start_on(
        net: &Net,
        binary: impl Into<PathBuf>,
        opts: FakeApiOpts,
    ) -> anyhow::Result<FakeApi> {
        let ns = net.add_service_namespace("api", NET_ADDRESS)?;
        FakeApi::launch(binary.into(), opts, Some(ns))
    }

    fn launch(
        binary: PathBuf,
        opts: FakeApiOpts,
        netns: Option<String>,
    ) -> anyhow::Result<FakeApi> {
        ensure!(
            binary.is_file(),
            "fake API server binary {} does not exist",
            binary.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "weft-fakeapi-{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (address, port) = match netns {
            Some(_) => (IpAddr::V4(NET_ADDRESS), NET_PORT),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        };
        let user = format!(
            "system:serviceaccount:{}:{}",
            opts.namespace, opts.service_account
        );
        let token = pki::random_hex()?;
        let admin_token = pki::random_hex()?;
        let mut command = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command
            .arg("--listen")
            .arg(format!("{address}:{port}"))
            .arg("--address-file")
            .arg(dir.join("address"))
            .arg("--control")
            .arg(dir.join("control.sock"))
            .arg("--token")
            .arg(format!("{token}={user}"))
            .arg("--token")
            .arg(format!("{admin_token}={ADMIN_USER}"))
            .arg("--exit-on-stdin-eof")
            .arg("--bookmark-interval-ms")
            .arg(opts.bookmark_interval.as_millis().to_string());
        if let Some(rbac) = &opts.rbac {
            command.arg("--rbac").arg(rbac);
        }
        if opts.tls {
            pki::make_certificates(&dir, address)?;
            command
                .arg("--tls-cert")
                .arg(dir.join("server.crt"))
                .arg("--tls-key")
                .arg(dir.join("server.key"));
        }
        let log = std::fs::File::create(dir.join("server.log"))?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", cmd::describe(&command)))?;
        let stdin = child.stdin.take();
        let mut api = FakeApi {
            child,
            stdin,
            dir,
            netns,
            address,
            port,
            tls: opts.tls,
            token,
            admin_token,
            user,
            namespace: opts.namespace.clone(),
        };
        api.wait_ready()?;
        api.write_client_files()?;
        Ok(api)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "weft-fake-apiserver exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                );
            }
            let address = std::fs::read_to_string(self.dir.join("address")).unwrap_or_default();
            if let Ok(address) = address.trim().parse::<std::net::SocketAddr>()
                && self.control("GET", "/healthz", None).is_ok()
            {
                self.port = address.port();
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "weft-fake-apiserver did not come up within 30s: {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_client_files(&self) -> anyhow::Result<()> {
        let namespace = &self.namespace;
        let ca = match self.ca_path() {
            Some(ca) => format!(
                "    certificate-authority-data: {}\n",
                pki::base64(&std::fs::read(ca)?)
            ),
            None => String::new(),
        };
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n{ca}\
             users:\n- name: weft\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: weft\n    namespace: {namespace}\ncurrent-context: fake\n",
            url = self.url(),
            token = self.token,
        );
        std::fs::write(self.kubeconfig_path(), kubeconfig)?;
        let sa = self.service_account_dir();
        std::fs::create_dir_all(&sa)?;
        std::fs::write(sa.join("token"), &self.token)?;
        std::fs::write(sa.join("namespace"), namespace)?;
        if let Some(ca) = self.ca_path() {
            std::fs::copy(ca, sa.join("ca.crt"))?;
        }
        Ok(())
    }

    /// `https://10.77.0.250:6443` (or `http://127.0.0.1:PORT`, …).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.address, self.port)
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The namespace the server runs in (`start_on`), `None` for the root namespace.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The service account's bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `system:serviceaccount:NS:NAME`, who the token authenticates as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A token for [`ADMIN_USER`], whom RBAC allows everything.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The CA that signed the server's certificate (PEM), with TLS.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.join("ca.crt"))
    }

    /// A kubeconfig (server URL, inline CA, token, namespace) for the router's `--kubeconfig`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// What kubelet mounts at `/var/run/secrets/kubernetes.io/serviceaccount`: `token`,
    /// `ca.crt`, `namespace`; use with [`FakeApi::in_cluster_env`].
    pub fn service_account_dir(&self) -> PathBuf {
        self.dir.join("serviceaccount")
    }

    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, as kubelet sets them.
    pub fn in_cluster_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "KUBERNETES_SERVICE_HOST".to_owned(),
                self.address.to_string(),
            ),
            ("KUBERNETES_SERVICE_PORT".to_owned(), self.port.to_string()),
        ]
    }

    /// The service account's namespace (where the router's reclaim Lease lives).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The router flags for a router on Node `node_name` that uses this API through the
    /// kubeconfig (HELPERS' shared interface): `--kube-peers=true --kubeconfig PATH
    /// --kube-node-name NAME --kube-namespace NS`.
    pub fn router_args(&self, node_name: &str) -> Vec<String> {
        vec![
            "--kube-peers=true".to_owned(),
            "--kubeconfig".to_owned(),
            self.kubeconfig_path().to_string_lossy().into_owned(),
            "--kube-node-name".to_owned(),
            node_name.to_owned(),
            "--kube-namespace".to_owned(),
            self.namespace.clone(),
        ]
    }

    /// The server's directory (log, certificates, kubeconfig).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Registers (or replaces) a Ready Node with one InternalIP, as kubelet would.
    pub fn add_node(&self, name: &str, ip: impl Into<IpAddr>) -> anyhow::Result<Value> {
        self.put_node(node_object(name, &[ip.into()], true))
    }

    /// Creates or replaces a Node whatever its resourceVersion (spec, status, labels and
    /// annotations all come from `node`); watchers see ADDED or MODIFIED.
    pub fn put_node(&self, node: Value) -> anyhow::Result<Value> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .context("a Node needs metadata.name")?
            .to_owned();
        self.control_json("PUT", &format!("/nodes/{name}"), Some(&node))
    }

    /// Sets the Node's `Ready` condition (kubelet's heartbeat), keeping the rest.
    pub fn set_node_ready(&self, name: &str, ready: bool) -> anyhow::Result<Value> {
        let mut node = self.node(name)?;
        let conditions = node
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
            .context("the Node has no conditions")?;
        conditions.retain(|c| c["type"] != "Ready");
        conditions.push(ready_condition(ready));
        self.put_node(node)
    }

    /// Deletes a Node (watchers see DELETED).
    pub fn delete_node(&self, name: &str) -> anyhow::Result<()> {
        self.control_json("DELETE", &format!("/nodes/{name}"), None)
            .map(drop)
    }

    /// The Node as stored.
    pub fn node(&self, name: &str) -> anyhow::Result<Value> {
        self.control_json("GET", &format!("/nodes/{name}"), None)
    }

    /// Every Node.
    pub fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_value(
            self.control_json("GET", "/nodes", None)?,
        )?)
    }

    /// The Lease, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let (code, body) = self.control("GET", &format!("/leases/{namespace}/{name}"), None)?;
        match code {
            200 => Ok(Some(serde_json::from_slice(&body)?)),
            404 => Ok(None),
            _ => bail!(
                "control GET lease: {code} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Every Lease in every namespace.
    pub fn leases(&self) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_value(
            self.control_json("GET", "/leases", None)?,
        )?)
    }

    /// Makes every resourceVersion handed out so far too old: open watches end with an
    /// `ERROR` event (410 Expired), and clients must re-list. Returns the new resourceVersion.
    pub fn compact(&self) -> anyhow::Result<u64> {
        let answer = self.control_json("POST", "/compact", None)?;
        answer["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("compact: no resourceVersion in the answer")
    }

    /// The API requests served so far, in time order.
    pub fn requests(&self) -> anyhow::Result<Vec<Logged>> {
        Ok(serde_json::from_value(self.control_json(
            "GET",
            "/requests",
            None,
        )?)?)
    }

    /// Makes the next `count` API requests fail with `code` (500, 503 or 429 with
    /// `Retry-After: 1`), whatever they are.
    pub fn fail_next(&self, count: u32, code: u16) -> anyhow::Result<()> {
        self.control_json(
            "POST",
            "/fail",
            Some(&json!({"count": count, "code": code})),
        )
        .map(drop)
    }

    /// An API outage: while `on`, every API request fails with 503 and open watches are cut
    /// (the stream just ends, like a dropped connection); off again, service resumes with the
    /// same objects and resourceVersions.
    pub fn set_outage(&self, on: bool) -> anyhow::Result<()> {
        self.control_json("POST", "/outage", Some(&json!({"on": on})))
            .map(drop)
    }

    fn control_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (code, answer) = self.control(method, path, body)?;
        ensure!(
            code == 200,
            "control {method} {path}: {code} {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(serde_json::from_slice(&answer)?)
    }

    /// One HTTP/1.1 request on the control socket: the status code and body.
    fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let socket = self.dir.join("control.sock");
        let mut stream = UnixStream::connect(&socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(cmd::COMMAND_TIMEOUT))?;
        let body = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: control\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("control: no HTTP header in the answer")?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("control: bad status line in {head:?}"))?;
        ensure!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "control: chunked answers are not expected"
        );
        Ok((code, answer[split + 4..].to_vec()))
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(ns) = &self.netns {
            crate::net::kill_processes_in(ns);
            if let Err(e) = cmd::run_ok(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("fake API cleanup: {e:#}");
            }
        }
        if std::env::var_os("WEFT_TEST_KEEP").is_some() {
            eprintln!("fake API: kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Node as kubelet registers it: hostname and OS labels, InternalIPs and a Hostname
/// address, a Ready condition.
pub fn node_object(name: &str, internal_ips: &[IpAddr], ready: bool) -> Value {
    let mut addresses: Vec<Value> = internal_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": name}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {
            "addresses": addresses,
            "conditions": [ready_condition(ready)],
        },
    })
}

fn ready_condition(ready: bool) -> Value {
    let now = http::rfc3339(std::time::SystemTime::now());
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
        "message": if ready { "kubelet is posting ready status" } else { "kubelet stopped posting node status" },
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_look_like_kubelets() {
        let node = node_object("n1", &["10.77.0.1".parse().unwrap()], true);
        assert_eq!(node["status"]["addresses"][0]["address"], "10.77.0.1");
        assert_eq!(node["status"]["conditions"][0]["status"], "True");
    }
}
