//! The chart on test hosts, the way a cluster runs it: `helm template` renders it, and
//! `tests/clients/kubelet.py` (a mini kubelet) runs each host's DaemonSet pod through that
//! host's containerd (CRI), from the image `scripts/image.sh` builds, pull-free.
//!
//! - [`image`] builds the image once per test process (`scripts/image.sh`: warm, a few seconds),
//!   unless `WEFT_IMAGE_ARCHIVE` names an archive already built (scripts/test.sh's image stage).
//! - [`render_chart`] runs `helm template` on `charts/weft` (helm from the tool cache, fetched by
//!   `scripts/check-chart.sh` when missing).
//! - [`Node`] is one test host as a Kubernetes node: a host root (`host{i}/root`, where its
//!   hostPath volumes live: the host namespaces share one filesystem; `/dev`, `/proc` and
//!   `/sys` stay real) with a machine id and the distribution's `loopback`/`portmap` plugins in
//!   `opt/cni/bin`, a containerd whose CNI dirs are that root's `opt/cni/bin` and
//!   `etc/cni/net.d`, and a kubelet running the rendered DaemonSet. Dropping it deletes the pod
//!   (gracefully, through the CRI) and stops containerd. Declare it after the `Net`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::cmd::{self, Output};
use crate::cni::{CniHost, Containerd, clients, clients_dir};
use crate::net::{HostId, Net};

/// How long `scripts/image.sh` may take: a fresh clone builds weft in release (~8 min on 2 cores).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a kubelet control command (a graceful pod deletion: 30 s grace) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// The distribution's plugins a node has in its CNI bin dir (containerd runs `loopback` for
/// every pod; `weft install-cni` chains `portmap` when it is there).
const NODE_PLUGINS: [&str; 2] = ["loopback", "portmap"];

/// The image `scripts/image.sh` built.
#[derive(Debug, Clone)]
pub struct Image {
    /// `localhost/weft:<version>`: what the chart's `image.repository`/`image.tag` name.
    pub repository: String,
    pub tag: String,
    /// The OCI archive, imported into each host's containerd.
    pub archive: PathBuf,
}

/// The repository's root (the tests crate is `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn workspace_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// Builds the image once per test process with `scripts/image.sh` (so it holds the code under
/// test), or takes `WEFT_IMAGE_ARCHIVE` when set. Later calls return the same answer.
pub fn image() -> anyhow::Result<&'static Image> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn build_image() -> anyhow::Result<Image> {
    let version = workspace_version();
    let image = Image {
        repository: "localhost/weft".to_owned(),
        tag: version.clone(),
        archive: repo_root().join(format!("target/image/weft-{version}.oci.tar")),
    };
    if let Some(archive) = std::env::var_os("WEFT_IMAGE_ARCHIVE") {
        let archive = PathBuf::from(archive);
        ensure!(
            archive.is_file(),
            "WEFT_IMAGE_ARCHIVE={} does not exist",
            archive.display()
        );
        return Ok(Image { archive, ..image });
    }
    let started = Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts/image.sh"))
        .current_dir(repo_root());
    let out = cmd::run_with_timeout(&mut command, IMAGE_TIMEOUT)?;
    ensure!(
        out.success(),
        "scripts/image.sh failed ({}): {}",
        out.status,
        crate::wait::log_tail(&out.stderr, 40)
    );
    eprintln!(
        "image: scripts/image.sh in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(image.archive.is_file(), "no {}", image.archive.display());
    Ok(image)
}

/// The `weft-fake-apiserver` binary (`weft_tests::fakeapi::binary`), built once when missing
/// (other crates' test targets do not build the tests crate's binaries).
pub fn fake_apiserver() -> anyhow::Result<PathBuf> {
    if let Ok(path) = crate::fakeapi::binary() {
        return Ok(path);
    }
    let mut command = Command::new(env!("CARGO"));
    command
        .args(["build", "-p", "weft-tests", "--bin", "weft-fake-apiserver"])
        .current_dir(repo_root());
    let out = cmd::run_with_timeout(&mut command, IMAGE_TIMEOUT)?;
    ensure!(
        out.success(),
        "cargo build weft-fake-apiserver: {}",
        out.stderr
    );
    crate::fakeapi::binary()
}

/// helm from the tool cache (`scripts/check-chart.sh` fetches it: run it once when missing).
pub fn helm() -> anyhow::Result<&'static Path> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| find_helm().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(|p| p.as_path())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn find_helm() -> anyhow::Result<PathBuf> {
    let tools = PathBuf::from(
        clients()?
            .vars
            .get("WEFT_TOOLS_DIR")
            .context("setup.sh reported no WEFT_TOOLS_DIR")?,
    );
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&tools)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("helm")))
            .filter(|p| {
                p.is_file()
                    && p.parent()
                        .and_then(|d| d.file_name())
                        .is_some_and(|n| n.to_string_lossy().starts_with("helm-"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(helm) = find() {
        return Ok(helm);
    }
    let mut command = Command::new("bash");
    command.arg(repo_root().join("scripts/check-chart.sh"));
    let out = cmd::run_with_timeout(&mut command, Duration::from_secs(900))?;
    ensure!(
        out.success(),
        "scripts/check-chart.sh (which fetches helm) failed: {}",
        out.stderr
    );
    find().with_context(|| format!("no helm-*/helm in {} after check-chart.sh", tools.display()))
}

/// `helm template RELEASE charts/weft -n NAMESPACE -f VALUES --set K=V...` into `out`.
pub fn render_chart(
    out: &Path,
    namespace: &str,
    values_yaml: Option<&str>,
    set: &[(&str, &str)],
) -> anyhow::Result<PathBuf> {
    let helm = helm()?;
    let tools = clients()?
        .vars
        .get("WEFT_TOOLS_DIR")
        .cloned()
        .unwrap_or_default();
    let mut command = Command::new(helm);
    command
        .env("HELM_CONFIG_HOME", format!("{tools}/helm-home/config"))
        .env("HELM_CACHE_HOME", format!("{tools}/helm-home/cache"))
        .env("HELM_DATA_HOME", format!("{tools}/helm-home/data"))
        .args(["template", "weft"])
        .arg(repo_root().join("charts/weft"))
        .args(["--namespace", namespace]);
    if let Some(values) = values_yaml {
        let path = out.with_extension("values.yaml");
        std::fs::write(&path, values)?;
        command.arg("--values").arg(&path);
    }
    for (k, v) in set {
        command.args(["--set", &format!("{k}={v}")]);
    }
    let rendered = cmd::run_ok(&mut command).context("helm template")?;
    std::fs::write(out, rendered)?;
    Ok(out.to_path_buf())
}

/// How a [`Node`]'s kubelet runs the pod.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// The rendered chart.
    pub manifest: PathBuf,
    /// The node's name (the pod's `spec.nodeName`); default `node-<i>`.
    pub node_name: Option<String>,
    /// Secrets that are not in the manifest (e.g. `password.existingSecret`): name, key, value.
    pub secrets: Vec<(String, String, String)>,
    /// The service account volume's files (`token`, `ca.crt`, `namespace`), e.g. the fake API's.
    pub service_account_dir: Option<PathBuf>,
    /// `HOST:PORT` for `KUBERNETES_SERVICE_HOST/PORT`.
    pub api_server: Option<String>,
    /// Probe periods, initial delays and back-offs are multiplied by this (1.0: as written).
    pub time_scale: f64,
}

impl NodeOpts {
    pub fn new(manifest: &Path) -> NodeOpts {
        NodeOpts {
            manifest: manifest.to_path_buf(),
            node_name: None,
            secrets: Vec::new(),
            service_account_dir: None,
            api_server: None,
            time_scale: 0.2,
        }
    }
}

/// One test host as a Kubernetes node running the chart's DaemonSet pod (see the module doc).
pub struct Node {
    pub host: HostId,
    pub name: String,
    /// Where the node's hostPath volumes are (`/opt/cni/bin` is `root/opt/cni/bin`).
    pub root: PathBuf,
    /// This node's containerd; `cni.bin_dir`/`cni.conf_dir` are the root's CNI dirs.
    pub cni: CniHost,
    pub state_dir: PathBuf,
    kubelet: Option<Child>,
    python: PathBuf,
    node_ip: String,
    log: PathBuf,
    // Dropped after the kubelet has deleted its pod (fields drop in declaration order).
    containerd: Option<Containerd>,
}

impl Node {
    /// Makes host `i` a node and starts its kubelet (the pod comes up in the background: wait
    /// for it with [`Node::wait_container`]).
    pub fn start(net: &Net, i: HostId, opts: &NodeOpts) -> anyhow::Result<Node> {
        let image = image()?;
        let clients = clients()?;
        let name = opts
            .node_name
            .clone()
            .unwrap_or_else(|| format!("node-{i}"));
        let dir = net.host_dir(i);
        let root = dir.join("root");
        let bin_dir = root.join("opt/cni/bin");
        let conf_dir = root.join("etc/cni/net.d");
        std::fs::create_dir_all(&bin_dir)?;
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::create_dir_all(root.join("etc"))?;
        // A machine id of its own: it seeds the router's peer name.
        std::fs::write(
            root.join("etc/machine-id"),
            format!(
                "{:032x}\n",
                (std::process::id() as u128) << 64 | (i as u128) << 8 | 0xaa
            ),
        )?;
        for p in NODE_PLUGINS {
            let to = bin_dir.join(p);
            if !to.exists() {
                std::fs::copy(clients.ref_cni_dir.join(p), &to)
                    .with_context(|| format!("cannot copy the {p} plugin"))?;
            }
        }
        let cni = CniHost {
            host: i,
            ns: net.ns(i).to_owned(),
            bin_dir: bin_dir.clone(),
            conf_dir: conf_dir.clone(),
            socket: root.join("run/weft/cni.sock"),
            plugin: bin_dir.join(crate::cni::PLUGIN_TYPE),
            cnitool: clients.cnitool.clone(),
        };
        // The plugin (run by containerd) finds the router at the conflist's default socket,
        // /run/weft/cni.sock: in containerd's mount namespace that is this node's.
        let run_weft = root.join("run/weft");
        std::fs::create_dir_all(&run_weft)?;
        let binds = format!("{}:/run/weft", run_weft.display());
        let containerd = Containerd::start_with_env(
            net,
            &cni,
            &conf_dir,
            &[("WEFT_CONTAINERD_BINDS", binds.as_str())],
        )?;
        let state_dir = dir.join("kubelet");
        std::fs::create_dir_all(&state_dir)?;
        let mut node = Node {
            host: i,
            name: name.clone(),
            root: root.clone(),
            cni,
            state_dir: state_dir.clone(),
            kubelet: None,
            python: clients.cri_python.clone(),
            node_ip: net.address(i).to_string(),
            log: dir.join("kubelet.log"),
            containerd: Some(containerd),
        };
        let mut args: Vec<String> = vec![
            "run".into(),
            "--socket".into(),
            node.address().display().to_string(),
            "--manifest".into(),
            opts.manifest.display().to_string(),
            "--node".into(),
            name,
            "--node-ip".into(),
            net.address(i).to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--host-root".into(),
            root.display().to_string(),
            "--image-archive".into(),
            image.archive.display().to_string(),
            "--time-scale".into(),
            opts.time_scale.to_string(),
        ];
        let secrets_dir = state_dir.join("secrets");
        for (secret, key, value) in &opts.secrets {
            let d = secrets_dir.join(secret);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(key), value)?;
            args.push("--secret".into());
            args.push(format!("{secret}={}", d.display()));
        }
        if let Some(sa) = &opts.service_account_dir {
            args.push("--service-account-dir".into());
            args.push(sa.display().to_string());
        }
        if let Some(api) = &opts.api_server {
            args.push("--api-server".into());
            args.push(api.clone());
        }
        let log = std::fs::File::create(&node.log)?;
        // nsenter, not `ip netns exec`: the kubelet probes from the host's network namespace
        // and must see the same mounts as everyone else.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.ns(i)))
            .arg(&node.python)
            .arg(clients_dir().join("kubelet.py"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start kubelet.py")?;
        node.kubelet = Some(child);
        Ok(node)
    }

    /// The containerd socket (for `cri-client.py` and the kubelet).
    pub fn address(&self) -> &Path {
        &self
            .containerd
            .as_ref()
            .expect("containerd runs while the node exists")
            .address
    }

    /// This node's containerd (to create pods through the CRI).
    pub fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd runs")
    }

    /// The kubelet's state (`state.json`): the pod, its containers (state, restart count,
    /// readiness, probe results, last state with the log tail), events.
    pub fn state(&self) -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(self.state_dir.join("state.json"))
            .context("no kubelet state yet")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// One container's state in the current pod.
    pub fn container(&self, name: &str) -> anyhow::Result<Value> {
        let state = self.state()?;
        let pod = &state["pod"];
        pod["init_containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(pod["containers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .cloned()
            .with_context(|| format!("no container {name} in {pod}"))
    }

    /// Fails if the kubelet process has exited (with its log).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.kubelet.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "node {}: kubelet.py exited ({status}): {}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The kubelet's own log, last lines.
    pub fn log_tail(&self) -> String {
        crate::wait::log_tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    /// `kubelet.py COMMAND --state-dir DIR ARGS...` (status, restart-container, delete-pod,
    /// create-pod, exec, logs): its output, whatever the exit code.
    pub fn kubelet(&self, command: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut c = Command::new(&self.python);
        c.arg(clients_dir().join("kubelet.py"))
            .arg(command)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env("CONTAINERD_ADDRESS", self.address())
            .args(args);
        cmd::run_with_timeout(&mut c, CONTROL_TIMEOUT)
    }

    /// A control command that must succeed; its JSON answer.
    pub fn control(&self, command: &str, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.kubelet(command, args)?;
        ensure!(
            out.success(),
            "node {}: kubelet {command} {}: {}{}",
            self.name,
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(serde_json::from_str(out.stdout.trim())?)
    }

    /// `kubectl exec`: runs `argv` in the pod's container `container` (CRI ExecSync).
    pub fn exec(&self, container: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec![container, "--"];
        args.extend_from_slice(argv);
        self.kubelet("exec", &args)
    }

    /// The container's log (current attempt).
    pub fn logs(&self, container: &str) -> anyhow::Result<String> {
        Ok(self.kubelet("logs", &[container])?.stdout)
    }

    /// Polls until container `container`'s state satisfies `check` (the kubelet must stay
    /// alive); returns the state that did.
    pub fn wait_container(
        &mut self,
        net: &Net,
        container: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Value) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let name = self.name.clone();
        let result = net.wait_until(&format!("{name}: {what}"), timeout, || {
            self.check_alive()?;
            let c = self.container(container)?;
            last = c.clone();
            check(&c)
        });
        if let Err(e) = result {
            bail!(
                "{e:#}\nnode {name}, container {container}: {}\nkubelet log:\n{}",
                summary(&last),
                self.log_tail()
            );
        }
        Ok(last)
    }

    /// Runs a run-to-completion workload of `manifest` (`kind` `Job` or `Pod`, the one for this
    /// node) on this node through the same containerd, the way kubelet runs a Job's pod (e.g.
    /// the chart's uninstall hook), and waits for it: the container's exit code and the pod's
    /// final state (its containers' `last_state.log_tail` has the log).
    pub fn run_to_completion(
        &self,
        manifest: &Path,
        kind: &str,
        timeout: Duration,
    ) -> anyhow::Result<(i32, Value)> {
        let image = image()?;
        let state_dir = self
            .state_dir
            .with_file_name(format!("kubelet-{}", kind.to_lowercase()));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir)?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.cni.ns))
            .arg(&self.python)
            .arg(clients_dir().join("kubelet.py"))
            .arg("run")
            .arg("--socket")
            .arg(self.address())
            .arg("--manifest")
            .arg(manifest)
            .args(["--kind", kind, "--node", &self.name, "--node-ip"])
            .arg(&self.node_ip)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--host-root")
            .arg(&self.root)
            .arg("--image-archive")
            .arg(&image.archive)
            .args(["--time-scale", "0.2"]);
        let out = cmd::run_with_timeout(&mut command, timeout)?;
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(state_dir.join("state.json")).unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        let code = out.status.code().unwrap_or(-1);
        ensure!(
            state["pod"]["phase"] == "Deleted" || code == 0,
            "node {}: kubelet run --kind {kind} ({}): {}",
            self.name,
            out.status,
            crate::wait::log_tail(&out.stderr, 20)
        );
        Ok((code, state))
    }

    /// Stops the kubelet: the pod is deleted gracefully through the CRI, then the process ends.
    pub fn stop_kubelet(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.kubelet.take() else {
            return Ok(());
        };
        let out = self.kubelet("stop", &[]);
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "node {}: kubelet.py did not stop: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = out?;
        ensure!(
            out.success(),
            "node {}: kubelet stop: {}{}",
            self.name,
            out.stdout,
            out.stderr
        );
        Ok(())
    }

    /// Stops and removes, through the CRI, every pod sandbox but the kubelet's own (the test's
    /// pods): CNI DEL needs this node's router, so this comes before the kubelet stops.
    pub fn remove_other_pods(&self) -> anyhow::Result<()> {
        let Some(containerd) = self.containerd.as_ref() else {
            return Ok(());
        };
        let own = self
            .state()
            .ok()
            .and_then(|s| s["pod"]["sandbox_id"].as_str().map(str::to_owned));
        for pod in containerd.cri(&["list"])?.as_array().into_iter().flatten() {
            let id = pod["id"].as_str().context("a pod without id")?;
            if Some(id) != own.as_deref() {
                containerd.cri(&["stop", id])?;
                containerd.cri(&["remove", id])?;
            }
        }
        Ok(())
    }

    /// Removes the test's pods, stops the kubelet (its pod deleted) and containerd, checking
    /// that all went cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.remove_other_pods()?;
        self.stop_kubelet()?;
        if let Some(c) = self.containerd.take() {
            c.stop()?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.kubelet.is_some()
            && let Err(e) = self.remove_other_pods()
        {
            eprintln!("harness cleanup: {e:#}");
        }
        if let Err(e) = self.stop_kubelet() {
            eprintln!("harness cleanup: {e:#}");
        }
        // containerd.sh stop (through Containerd's Drop) removes whatever is left.
        self.containerd.take();
    }
}

/// A container's kubelet state in a few lines (probe messages and log tail shortened).
fn summary(c: &Value) -> String {
    let short = |v: &Value| {
        let text = v.as_str().unwrap_or_default();
        let cut: String = text.chars().take(400).collect();
        if cut.len() < text.len() {
            format!("{cut}…")
        } else {
            cut
        }
    };
    let mut out = format!(
        "state {} ({}), ready {}, started {}, restarts {}",
        c["state"], c["reason"], c["ready"], c["started"], c["restart_count"]
    );
    if let Some(probes) = c["probes"].as_object() {
        for (kind, p) in probes {
            out += &format!(
                "\n  {kind}: {} ok / {} failed in a row, last: {}",
                p["successes"],
                p["failures"],
                short(&p["message"])
            );
        }
    }
    if !c["last_state"].is_null() {
        out += &format!(
            "\n  last state: {} exit {}, log tail: {}",
            c["last_state"]["reason"],
            c["last_state"]["exit_code"],
            short(&c["last_state"]["log_tail"])
        );
    }
    out
}
