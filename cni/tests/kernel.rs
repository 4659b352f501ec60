//! The real binary against the real kernel: each test makes its own "host" and pod network
//! namespaces (unique names, removed on drop, so even a failing test cleans up), a bridge in the
//! host namespace, and a tiny fake router serving the protocol on a temp unix socket. The binary
//! runs inside the host namespace (`ip netns exec`). Needs root; skipped otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");

/// Returns from the test (saying why) unless it can build network namespaces.
macro_rules! require_root {
    () => {
        if !weft_tests::require_root() {
            return;
        }
    };
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = unique("wcni");
        sh(&["ip", "netns", "add", &name]);
        Self { name }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn exec_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Names of the veth interfaces in this namespace.
    fn veths(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap().to_string())
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A host namespace with bridge `weft` holding the gateway address.
fn host_with_bridge(gateway_cidr: &str) -> Netns {
    let host = Netns::new();
    host.ip(&["link", "add", "weft", "type", "bridge"]);
    host.ip(&["addr", "add", gateway_cidr, "dev", "weft"]);
    host.ip(&["link", "set", "weft", "up"]);
    // learn neighbours from gratuitous ARP, so the test can see the pod's announcement
    assert!(host.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.weft.arp_accept=1"]));
    host
}

/// Where the fake router's sockets go: a root-owned 0755 directory, since the plugin refuses a
/// socket in a directory others can write (such as /tmp itself).
fn socket_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join("weft-cni-tests");
    std::fs::create_dir_all(&dir).expect("create the socket directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the socket directory");
    dir
}

type Handler = dyn Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync;

/// The router side of the protocol, on a temp unix socket, answering through `handler`.
struct FakeRouter {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRouter {
    fn new(handler: Box<Handler>) -> Self {
        let socket = socket_dir().join(format!("{}.sock", unique("weft-cni-test-")));
        let listener = UnixListener::bind(&socket).expect("bind fake router");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stopping) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                reqs.lock().unwrap().push((path.clone(), body.clone()));
                let (status, answer) = handler(&method, &path, &body);
                let answer = answer.to_string();
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Self {
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Allocates `address` (prefix of the range) with `gateway` on bridge `weft`.
    fn allocating(address: &'static str, gateway: &'static str) -> Self {
        Self::new(Box::new(move |_, path, _| match path {
            "/cni/add" | "/cni/check" => (
                200,
                json!({"address": address, "gateway": gateway, "mtu": 1414, "bridge": "weft"}),
            ),
            "/cni/status" => (200, json!({"ready": true})),
            "/cni/gc" => (200, json!({"released": 1})),
            _ => (200, json!({})),
        }))
    }

    fn paths(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "weft", "type": "weft-cni", "socket": self.socket})
    }
}

impl Drop for FakeRouter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Exit 0 and nothing on stdout: what a successful CHECK, DEL, STATUS or GC prints.
    #[track_caller]
    fn assert_quiet_ok(&self) {
        assert_eq!(
            (self.code, self.stdout.as_str()),
            (0, ""),
            "{}",
            self.stderr
        );
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout {:?}: {e}", self.stdout))
    }

    /// The CNI error code on stdout (and a non-zero exit).
    fn error_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {:?}", self.stdout);
        self.json()["code"].as_u64().expect("error code")
    }
}

/// Runs the plugin inside `host` with exactly these `CNI_*` variables.
fn plugin(host: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.name, BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn verb(host: &Netns, verb: &str, id: &str, pod: &Netns, conf: &Value) -> Run {
    let netns = pod.path();
    plugin(
        host,
        &[
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ],
        conf.to_string().as_bytes(),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn add_check_del_round_trip() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let pod = Netns::new();
    let router = FakeRouter::allocating("10.32.0.5/12", "10.32.0.1");
    let conf = router.conf("1.1.0");

    let add = verb(&host, "ADD", "round-trip", &pod, &conf);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let result = add.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(
        result["ips"],
        json!([{"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}])
    );
    let veth = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let pod_mac = result["interfaces"][1]["mac"].as_str().unwrap().to_string();
    assert_eq!(result["interfaces"][1]["sandbox"], pod.path());
    assert_eq!(router.requests.lock().unwrap()[0].1["pod_name"], "web-0");

    // the pod side
    let addr = pod.ip(&["addr", "show", "dev", "eth0"]);
    assert!(
        addr.contains("inet 10.32.0.5/12") && addr.contains("mtu 1414") && addr.contains(&pod_mac),
        "{addr}"
    );
    assert!(
        pod.ip(&["route"])
            .contains("default via 10.32.0.1 dev eth0")
    );
    // the host side: on the bridge, hairpin, MTU
    let link = host.ip(&["-d", "link", "show", "dev", &veth]);
    assert!(
        link.contains("master weft") && link.contains("hairpin on") && link.contains("mtu 1414"),
        "{link}"
    );
    // the gratuitous ARP reached the host before any traffic from the pod
    wait_for("the pod's gratuitous ARP", || {
        host.ip(&["neigh", "show", "10.32.0.5", "dev", "weft"])
            .contains(&pod_mac)
    });
    assert!(
        pod.exec_ok(&["ping", "-c1", "-W2", "10.32.0.1"]),
        "ping the gateway"
    );

    let check = verb(&host, "CHECK", "round-trip", &pod, &conf);
    check.assert_quiet_ok();

    for _ in 0..2 {
        let del = verb(&host, "DEL", "round-trip", &pod, &conf);
        del.assert_quiet_ok();
    }
    assert!(host.veths().is_empty());
    assert!(!pod.ip(&["link"]).contains("eth0"));
    assert_eq!(
        router.paths(),
        ["/cni/add", "/cni/check", "/cni/del", "/cni/del"]
    );

    // CHECK after DEL fails
    let check = verb(&host, "CHECK", "round-trip", &pod, &conf);
    assert_eq!(check.error_code(), 102);
}

#[test]
fn result_in_old_versions() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let router = FakeRouter::allocating("10.32.0.6/12", "10.32.0.1");
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let pod = Netns::new();
        let add = verb(&host, "ADD", "old", &pod, &router.conf(version));
        assert_eq!(add.code, 0, "{}", add.stderr);
        let r = add.json();
        assert_eq!(r["cniVersion"], version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version.starts_with("0.")
        );
        assert_eq!(
            verb(&host, "DEL", "old", &pod, &router.conf(version)).code,
            0
        );
    }
}

#[test]
fn del_after_the_netns_is_gone() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let router = FakeRouter::allocating("10.32.0.7/12", "10.32.0.1");
    let pod = Netns::new();
    let path = pod.path();
    assert_eq!(
        verb(&host, "ADD", "gone", &pod, &router.conf("1.1.0")).code,
        0
    );
    drop(pod);
    let del = plugin(
        &host,
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "gone"),
            ("CNI_NETNS", &path),
            ("CNI_IFNAME", "eth0"),
        ],
        router.conf("1.1.0").to_string().as_bytes(),
    );
    del.assert_quiet_ok();
    assert!(host.veths().is_empty());
    assert_eq!(router.paths(), ["/cni/add", "/cni/del"]);
}

#[test]
fn bad_inputs_get_the_right_codes_and_leave_nothing() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let pod = Netns::new();
    let router = FakeRouter::allocating("10.32.0.8/12", "10.32.0.1");
    let netns = pod.path();
    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "bad"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let conf = router.conf("1.1.0").to_string();

    assert_eq!(plugin(&host, &full, b"{\"cniVersion\": ").error_code(), 6);
    let r = plugin(
        &host,
        &full,
        br#"{"cniVersion": "0.2.0", "name": "w", "type": "weft-cni"}"#,
    );
    assert_eq!(r.error_code(), 1);
    for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let env: Vec<_> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let r = plugin(&host, &env, conf.as_bytes());
        assert_eq!(r.error_code(), 4, "{missing}");
        assert!(
            r.json()["msg"].as_str().unwrap().contains(missing),
            "{missing}: {}",
            r.stdout
        );
    }
    let mut env = full.to_vec();
    env[2] = ("CNI_NETNS", "/var/run/netns/does-not-exist");
    let r = plugin(&host, &env, conf.as_bytes());
    assert_eq!(r.error_code(), 4);
    assert!(r.stdout.contains("CNI_NETNS"));
    let r = plugin(
        &host,
        &full,
        br#"{"cniVersion": "1.1.0", "name": "w", "type": "weft-cni", "mtu": "big"}"#,
    );
    assert_eq!(r.error_code(), 7);

    assert!(host.veths().is_empty());
    assert!(!pod.ip(&["link"]).contains("eth0"));
    assert!(
        router.paths().is_empty(),
        "no allocation for bad input: {:?}",
        router.paths()
    );
}

#[test]
fn router_down() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let pod = Netns::new();
    let socket = socket_dir().join(format!("{}.sock", unique("weft-cni-absent-")));
    let conf = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "socket": socket});
    let r = verb(&host, "ADD", "down", &pod, &conf);
    assert_eq!(r.error_code(), 11);
    let msg = r.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!(
            "cannot reach the weft router at {}",
            socket.display()
        )) && msg.contains("is weft running?"),
        "{msg}"
    );
    assert!(host.veths().is_empty());
    let r = plugin(
        &host,
        &[("CNI_COMMAND", "STATUS")],
        conf.to_string().as_bytes(),
    );
    assert_eq!(r.error_code(), 50);
}

#[test]
fn exhausted_range_leaves_nothing() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let pod = Netns::new();
    let router = FakeRouter::new(Box::new(|_, _, _| {
        (
            507,
            json!({"code": 110, "msg": "range 10.32.0.0/12 is exhausted", "details": "0 of 1048574 free"}),
        )
    }));
    let r = verb(&host, "ADD", "full", &pod, &router.conf("1.1.0"));
    assert_eq!(r.error_code(), 110);
    assert_eq!(r.json()["msg"], "range 10.32.0.0/12 is exhausted");
    assert!(host.veths().is_empty());
    assert!(!pod.ip(&["link"]).contains("eth0"));
}

#[test]
fn kernel_failure_after_the_veth_is_undone() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let pod = Netns::new();
    // a default route already in the pod: ours cannot be added
    pod.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    pod.ip(&["link", "set", "other0", "up"]);
    pod.ip(&["addr", "add", "192.168.77.2/24", "dev", "other0"]);
    pod.ip(&["route", "add", "default", "via", "192.168.77.1"]);
    let router = FakeRouter::allocating("10.32.0.9/12", "10.32.0.1");
    let r = verb(&host, "ADD", "undo", &pod, &router.conf("1.1.0"));
    assert_eq!(r.error_code(), 100, "{}", r.stdout);
    assert!(
        r.stdout.contains("default") || r.stdout.contains("0.0.0.0/0"),
        "{}",
        r.stdout
    );
    assert!(
        host.veths().is_empty(),
        "veth left behind: {:?}",
        host.veths()
    );
    assert!(!pod.ip(&["link"]).contains("eth0"));
    assert_eq!(pod.veths().len(), 2, "the pod's own interfaces stay");
    assert_eq!(
        router.paths(),
        ["/cni/add", "/cni/del"],
        "address not released"
    );
}

#[test]
fn status_and_gc() {
    require_root!();
    let host = host_with_bridge("10.32.0.1/12");
    let ready = Arc::new(AtomicBool::new(true));
    let r2 = ready.clone();
    let router = FakeRouter::new(Box::new(move |method, path, _| match (method, path) {
        ("GET", "/cni/status") if r2.load(Ordering::SeqCst) => (200, json!({"ready": true})),
        ("GET", "/cni/status") => (
            503,
            json!({"code": 50, "msg": "IPAM is not ready", "details": "waiting for quorum"}),
        ),
        ("POST", "/cni/gc") => (200, json!({"released": 3})),
        _ => (404, json!({"code": 3, "msg": "unknown"})),
    }));
    let status = plugin(
        &host,
        &[("CNI_COMMAND", "STATUS")],
        router.conf("1.1.0").to_string().as_bytes(),
    );
    status.assert_quiet_ok();
    ready.store(false, Ordering::SeqCst);
    let status = plugin(
        &host,
        &[("CNI_COMMAND", "STATUS")],
        router.conf("1.1.0").to_string().as_bytes(),
    );
    assert_eq!(status.error_code(), 50);
    assert_eq!(status.json()["msg"], "IPAM is not ready");

    let mut conf = router.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc = plugin(
        &host,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        conf.to_string().as_bytes(),
    );
    gc.assert_quiet_ok();
    let reqs = router.requests.lock().unwrap();
    assert_eq!(
        reqs.last().unwrap(),
        &(
            "/cni/gc".to_string(),
            json!({"valid": [{"container_id": "keep", "ifname": "eth0"}]})
        )
    );
}

#[test]
fn version_verb() {
    require_root!();
    let host = Netns::new();
    let r = plugin(
        &host,
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert_eq!(r.code, 0);
    assert_eq!(
        r.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn delegated_host_local_ipam() {
    require_root!();
    if !std::path::Path::new("/usr/lib/cni/host-local").exists() {
        eprintln!("skipped: /usr/lib/cni/host-local not installed");
        return;
    }
    let host = host_with_bridge("10.99.0.1/24");
    let pod = Netns::new();
    let data_dir = std::env::temp_dir().join(unique("weft-cni-hostlocal-"));
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RmDir(data_dir.clone());
    // no router at all: delegated IPAM does not need it
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weft-hl", "type": "weft-cni",
        "socket": "/nonexistent/weft.sock",
        "ipam": {"type": "host-local", "subnet": "10.99.0.0/24", "dataDir": data_dir}
    });
    let add = verb(&host, "ADD", "hostlocal", &pod, &conf);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let r = add.json();
    assert_eq!(r["ips"][0]["address"], "10.99.0.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.99.0.1");
    assert!(
        pod.ip(&["addr", "show", "dev", "eth0"])
            .contains("inet 10.99.0.2/24")
    );
    assert!(
        pod.ip(&["route"])
            .contains("default via 10.99.0.1 dev eth0")
    );
    assert!(pod.exec_ok(&["ping", "-c1", "-W2", "10.99.0.1"]));
    let reservation = data_dir.join("weft-hl").join("10.99.0.2");
    assert!(reservation.exists(), "host-local reserved the address");

    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r;
    let check = verb(&host, "CHECK", "hostlocal", &pod, &check_conf);
    check.assert_quiet_ok();

    for _ in 0..2 {
        let del = verb(&host, "DEL", "hostlocal", &pod, &conf);
        assert_eq!(del.code, 0, "{} {}", del.stdout, del.stderr);
    }
    assert!(!reservation.exists(), "host-local released the address");
    assert!(host.veths().is_empty());

    // a delegate failure (exhausted range) leaves nothing
    let tiny = json!({
        "cniVersion": "1.0.0", "name": "weft-hl", "type": "weft-cni",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/30"}]], "dataDir": data_dir}
    });
    let first = verb(&host, "ADD", "hl-a", &pod, &tiny);
    assert_eq!(first.code, 0, "{}", first.stdout);
    let pod2 = Netns::new();
    let second = verb(&host, "ADD", "hl-b", &pod2, &tiny);
    assert_ne!(second.code, 0);
    assert!(
        second.stdout.contains("no IP addresses available"),
        "{}",
        second.stdout
    );
    assert_eq!(host.veths().len(), 1);
    assert_eq!(verb(&host, "DEL", "hl-a", &pod, &tiny).code, 0);
    assert!(host.veths().is_empty());
}
