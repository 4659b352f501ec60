//! Driving the `weft-cni` plugin with real CNI clients (`tests/clients/`): cnitool, the GC and
//! STATUS caller `cni-call.py`, containerd's CRI plugin, and the plugin binary called directly
//! with `CNI_*` variables and a config on stdin (which is the CNI plugin interface itself).
//!
//! - [`clients`] runs `tests/clients/setup.sh` once per test process and keeps its paths.
//! - [`plugin_binary`] finds (or builds, once) `weft-cni` next to the `weft` binary.
//! - [`CniHost`] is one host's CNI side: a plugin dir (`weft-cni` and the reference plugins),
//!   a conflist dir, and the verbs run inside the host's netns (cnitool, `cni-call.py`, the
//!   plugin directly).
//! - [`ContainerNs`] is a container: an empty named netns, removed (with anything running in
//!   it and cnitool's cached result for it) when dropped.
//! - [`Containerd`] is one containerd per host, stopped (pods removed through the CRI) when
//!   dropped. Declare it **after** the [`Net`]: locals drop in reverse order, and the Net's
//!   drop kills every process in the hosts, which would leave pods' mounts behind.
//! - [`SysctlGuard`] raises machine-wide sysctls (the neighbour table's size, for many pods)
//!   for one test and restores them when dropped.
//! - `Net::ipam*` read the router's `ipam` report and run `weft ipam check`.
//!
//! Everything a helper creates is named after its Net (the test process id and a counter), so
//! tests running in parallel never share a container, and removed even when a test fails.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::cmd::{self, COMMAND_TIMEOUT, Output};
use crate::net::{HostId, Net, add_namespace, ip_in, kill_processes_in};

/// How long `setup.sh` may take: cold, it installs packages and builds cnitool.
const SETUP_TIMEOUT: Duration = Duration::from_secs(900);
/// How long building `weft-cni` may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// How long one CNI verb may take (the plugin waits up to 60 s for the router's answer).
pub const VERB_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `containerd.sh start|stop` and one CRI call may take.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(120);
/// The reference plugins linked into every host's plugin dir next to `weft-cni`.
const REFERENCE_PLUGINS: [&str; 4] = ["portmap", "loopback", "host-local", "bridge"];
/// The plugin's `type` in conflists: the name it has in the plugin dir.
pub const PLUGIN_TYPE: &str = "weft-cni";
/// Where libcni (cnitool, containerd) caches ADD results.
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

/// Distinguishes the container namespaces of one Net.
static NEXT_CONTAINER: AtomicUsize = AtomicUsize::new(0);

/// `tests/clients/`: the scripts the helpers run.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// The tools `tests/clients/setup.sh` installed, from its `KEY=VALUE` output.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Every `KEY=VALUE` line, for tools without a field of their own.
    pub vars: BTreeMap<String, String>,
    /// `WEFT_CNITOOL`.
    pub cnitool: PathBuf,
    /// `WEFT_CRI_PYTHON`: the venv's python, with grpc, for `cri-client.py`.
    pub cri_python: PathBuf,
    /// `WEFT_REF_CNI_DIR`: Debian's reference plugins.
    pub ref_cni_dir: PathBuf,
    /// `WEFT_FPING`, when setup.sh reports it.
    pub fping: Option<PathBuf>,
}

/// Runs `tests/clients/setup.sh` the first time it is called in this process (idempotent and
/// cached: well under a second when warm, up to a minute or so cold) and returns its tools.
/// Later calls return the same answer, also a failure.
pub fn clients() -> anyhow::Result<&'static Clients> {
    static CLIENTS: OnceLock<Result<Clients, String>> = OnceLock::new();
    CLIENTS
        .get_or_init(|| load_clients().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("tests/clients/setup.sh: {e}"))
}

fn load_clients() -> anyhow::Result<Clients> {
    let script = clients_dir().join("setup.sh");
    let out = cmd::run_with_timeout(Command::new("bash").arg(&script), SETUP_TIMEOUT)?;
    ensure!(
        out.success(),
        "{} failed ({}):\n{}",
        script.display(),
        out.status,
        out.stderr.trim_end()
    );
    let vars: BTreeMap<String, String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let path = |key: &str| -> anyhow::Result<PathBuf> {
        let value = vars
            .get(key)
            .with_context(|| format!("setup.sh printed no {key}:\n{}", out.stdout))?;
        Ok(PathBuf::from(value))
    };
    Ok(Clients {
        cnitool: path("WEFT_CNITOOL")?,
        cri_python: path("WEFT_CRI_PYTHON")?,
        ref_cni_dir: path("WEFT_REF_CNI_DIR")?,
        fping: path("WEFT_FPING").ok().filter(|p| p.is_file()),
        vars,
    })
}

/// The `weft-cni` binary cargo built next to `weft` (`target/<profile>/weft-cni`). Cargo builds
/// it for `cargo test --workspace`, not for `cargo test -p weft-router`: when it is missing, or
/// older than a source file of `cni/`, it is built once per process with `cargo build -p
/// weft-cni` (`$CARGO`, else `cargo`) into the same target dir and profile.
pub fn plugin_binary(weft: &Path) -> anyhow::Result<PathBuf> {
    static PLUGIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| locate_or_build_plugin(weft).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_or_build_plugin(weft: &Path) -> anyhow::Result<PathBuf> {
    let profile_dir = weft
        .parent()
        .with_context(|| format!("{} has no parent dir", weft.display()))?;
    let plugin = profile_dir.join(PLUGIN_TYPE);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the harness crate is not in a workspace")?;
    if plugin.is_file() && !older_than_sources(&plugin, &workspace.join("cni"))? {
        return Ok(plugin);
    }
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("{} has no target dir", profile_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "weft-cni", "--bin", PLUGIN_TYPE])
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => bail!("cannot tell the profile of {}", weft.display()),
    }
    eprintln!(
        "harness: building {} ({})",
        plugin.display(),
        cmd::describe(&command)
    );
    let out = cmd::run_with_timeout(&mut command, BUILD_TIMEOUT)?;
    ensure!(
        out.success(),
        "{} failed ({}):\n{}",
        cmd::describe(&command),
        out.status,
        out.stderr.trim_end()
    );
    ensure!(
        plugin.is_file(),
        "cargo built weft-cni, but not at {}",
        plugin.display()
    );
    Ok(plugin)
}

/// Whether `binary` is older than any file under `dir`'s `src/` or its `Cargo.toml`.
fn older_than_sources(binary: &Path, dir: &Path) -> anyhow::Result<bool> {
    let built = std::fs::metadata(binary)?.modified()?;
    let mut pending = vec![dir.join("src"), dir.join("Cargo.toml")];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else if meta.modified()? > built {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `{"type": "weft-cni", "socket": SOCKET}`: a conflist entry for the plugin. The socket is
/// only needed because every test host's router listens on its own path.
pub fn weft_plugin(socket: &Path) -> Value {
    json!({"type": PLUGIN_TYPE, "socket": socket})
}

/// `{"type": "portmap", "capabilities": {"portMappings": true}}`.
pub fn portmap_plugin() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

/// A conflist document.
pub fn conflist(name: &str, cni_version: &str, plugins: &[Value]) -> Value {
    json!({"cniVersion": cni_version, "name": name, "plugins": plugins})
}

/// A stand-alone network config for calling the plugin directly (what a runtime puts on stdin
/// for one plugin of a list).
pub fn plugin_config(name: &str, cni_version: &str, socket: &Path) -> Value {
    let mut conf = weft_plugin(socket);
    conf["name"] = name.into();
    conf["cniVersion"] = cni_version.into();
    conf
}

/// One host's CNI side. It refers to the host by its netns name only, so it can be moved into
/// threads; commands run in the host's netns through `nsenter --net=`.
#[derive(Debug, Clone)]
pub struct CniHost {
    pub host: HostId,
    /// The host's network namespace (`/run/netns/<ns>`).
    pub ns: String,
    /// The plugin dir: `weft-cni` and the reference plugins (symlinks), for `CNI_PATH` and
    /// containerd's `bin_dir`.
    pub bin_dir: PathBuf,
    /// cnitool's `NETCONFPATH`: `*.conflist` found by their `name`.
    pub conf_dir: PathBuf,
    /// The router's CNI socket on this host.
    pub socket: PathBuf,
    /// The `weft-cni` binary itself.
    pub plugin: PathBuf,
    pub cnitool: PathBuf,
}

/// How one verb went: exit status, stdout, stderr, and the CNI error if one was printed.
#[derive(Debug, Clone)]
pub struct VerbRun {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl VerbRun {
    fn new(what: String, out: Output) -> Self {
        Self {
            what,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout as JSON (a result, or a CNI error document), if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The CNI error code printed on stdout, if any.
    pub fn error_code(&self) -> Option<u64> {
        self.json().and_then(|v| v["code"].as_u64())
    }

    /// The error's `msg` and `details`, joined (empty without an error document).
    pub fn error_text(&self) -> String {
        self.json()
            .map(|v| {
                format!(
                    "{} {}",
                    v["msg"].as_str().unwrap_or_default(),
                    v["details"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_default()
    }

    /// Fails unless the verb succeeded; returns stdout.
    pub fn ok(self) -> anyhow::Result<String> {
        ensure!(self.success(), "{} failed: {self}", self.what);
        Ok(self.stdout)
    }

    /// Fails unless the verb failed with CNI error `code`; returns the error's text.
    pub fn expect_error(&self, code: u64) -> anyhow::Result<String> {
        ensure!(
            !self.success() && self.error_code() == Some(code),
            "{}: expected CNI error {code}, got {self}",
            self.what
        );
        Ok(self.error_text())
    }
}

impl std::fmt::Display for VerbRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; stdout: {}; stderr: {}",
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

impl Net {
    /// Host `i`'s CNI side: makes `host{i}/cni-bin` (`weft-cni` from `plugin`, the reference
    /// plugins) and an empty `host{i}/net.d`. Idempotent.
    pub fn cni_host(&self, i: HostId, plugin: &Path) -> anyhow::Result<CniHost> {
        let clients = clients()?;
        let dir = self.host_dir(i);
        let bin_dir = dir.join("cni-bin");
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&bin_dir)?;
        std::fs::create_dir_all(&conf_dir)?;
        let links = std::iter::once((PLUGIN_TYPE, plugin.to_path_buf())).chain(
            REFERENCE_PLUGINS
                .iter()
                .map(|&p| (p, clients.ref_cni_dir.join(p))),
        );
        for (name, target) in links {
            let link = bin_dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(&target, &link).with_context(|| {
                    format!("cannot link {} to {}", link.display(), target.display())
                })?;
            }
        }
        Ok(CniHost {
            host: i,
            ns: self.ns(i).to_owned(),
            bin_dir,
            conf_dir,
            socket: self.cni_socket(i),
            plugin: plugin.to_path_buf(),
            cnitool: clients.cnitool.clone(),
        })
    }
}

impl CniHost {
    /// A command run inside this host's network namespace, with a clean environment (only
    /// `PATH`: plugins such as portmap run iptables).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(program)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command
    }

    /// Writes `conflist` as `<conf_dir>/<name>.conflist` (what cnitool finds by name);
    /// returns the file.
    pub fn write_conflist(&self, conflist: &Value) -> anyhow::Result<PathBuf> {
        self.write_conflist_in(&self.conf_dir, conflist)
    }

    /// Writes `conflist` as `<dir>/<name>.conflist`; returns the file.
    pub fn write_conflist_in(&self, dir: &Path, conflist: &Value) -> anyhow::Result<PathBuf> {
        let name = conflist["name"]
            .as_str()
            .context("a conflist needs a name")?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.conflist"));
        std::fs::write(&path, serde_json::to_vec_pretty(conflist)?)?;
        Ok(path)
    }

    /// `cnitool VERB NETWORK <container netns>` in this host, with `CAP_ARGS` (runtimeConfig
    /// JSON, e.g. port mappings; `None` = empty) and `CNI_IFNAME` `ifname`. Whatever the exit
    /// code.
    pub fn cnitool(
        &self,
        verb: &str,
        network: &str,
        container: &ContainerNs,
        cap_args: Option<&str>,
        ifname: &str,
    ) -> anyhow::Result<VerbRun> {
        let cni_path = format!("{}", self.bin_dir.display());
        let mut command = self.command(&self.cnitool);
        command
            .args([verb, network])
            .arg(container.path())
            .env("CNI_PATH", cni_path)
            .env("NETCONFPATH", &self.conf_dir)
            .env("CNI_IFNAME", ifname)
            .env("CAP_ARGS", cap_args.unwrap_or_default());
        let what = format!(
            "host{}: cnitool {verb} {network} {} ({ifname})",
            self.host,
            container.name()
        );
        let out = cmd::run_with_timeout(&mut command, VERB_TIMEOUT)?;
        Ok(VerbRun::new(what, out))
    }

    /// cnitool ADD of `container` (`eth0`) to `network`: the parsed result, or an error.
    pub fn add(
        &self,
        network: &str,
        container: &ContainerNs,
        cap_args: Option<&str>,
    ) -> anyhow::Result<Value> {
        let run = self.cnitool("add", network, container, cap_args, "eth0")?;
        let what = run.what.clone();
        let stdout = run.ok()?;
        serde_json::from_str(&stdout).with_context(|| format!("{what}: result {stdout:?}"))
    }

    /// cnitool CHECK of `container` (`eth0`): fails unless it exits 0 and prints nothing.
    pub fn check(
        &self,
        network: &str,
        container: &ContainerNs,
        cap_args: Option<&str>,
    ) -> anyhow::Result<()> {
        let run = self.cnitool("check", network, container, cap_args, "eth0")?;
        let what = run.what.clone();
        let stdout = run.ok()?;
        ensure!(stdout.trim().is_empty(), "{what} printed {stdout:?}");
        Ok(())
    }

    /// cnitool DEL of `container` (`eth0`): fails unless it exits 0.
    pub fn del(
        &self,
        network: &str,
        container: &ContainerNs,
        cap_args: Option<&str>,
    ) -> anyhow::Result<()> {
        self.cnitool("del", network, container, cap_args, "eth0")?
            .ok()
            .map(drop)
    }

    /// `cni-call.py VERB CONFLIST [--valid ID/IFNAME]...` (GC, STATUS or VERSION) in this
    /// host: exit status and its JSON list of plugin calls.
    pub fn cni_call(
        &self,
        verb: &str,
        conflist: &Path,
        valid: &[String],
    ) -> anyhow::Result<(bool, Value)> {
        let mut command = self.command("python3");
        command
            .arg(clients_dir().join("cni-call.py"))
            .args([verb])
            .arg(conflist)
            .arg("--cni-path")
            .arg(&self.bin_dir);
        for v in valid {
            command.args(["--valid", v]);
        }
        let out = cmd::run_with_timeout(&mut command, VERB_TIMEOUT)?;
        let calls: Value = serde_json::from_str(out.stdout.trim()).with_context(|| {
            format!(
                "host{}: cni-call.py {verb}: not JSON ({}): {} {}",
                self.host, out.status, out.stdout, out.stderr
            )
        })?;
        Ok((out.success(), calls))
    }

    /// Runs the plugin binary directly in this host: exactly `env` (plus `PATH`) and `stdin`.
    /// This is the CNI plugin interface itself; no runtime in between.
    pub fn call_plugin(&self, env: &[(&str, &str)], stdin: &[u8]) -> anyhow::Result<VerbRun> {
        let mut command = self.command(&self.plugin);
        for (k, v) in env {
            command.env(k, v);
        }
        let what = format!(
            "host{}: weft-cni with {}",
            self.host,
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = cmd::run_with_input(&mut command, Some(stdin), VERB_TIMEOUT)?;
        Ok(VerbRun::new(what, out))
    }

    /// The host ends of weft's veth pairs in this host (`vw…`, `plugin.rs`).
    pub fn weft_veths(&self) -> anyhow::Result<Vec<String>> {
        let json = ip_in(&self.ns, &["-j", "link", "show"])?;
        let links: Value = serde_json::from_str(&json)?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("vw"))
            .map(str::to_owned)
            .collect())
    }
}

/// A container: an empty named network namespace, as cnitool and runtimes want it. Dropping it
/// kills what runs in it, deletes it (which destroys any veth the plugin put there, and so the
/// host end too) and removes cnitool's cached result for it.
#[derive(Debug)]
pub struct ContainerNs {
    name: String,
    path: PathBuf,
    cnitool_id: String,
}

impl ContainerNs {
    /// A new empty netns named after `net` (`<net prefix>c<n>`), loopback up.
    pub fn new(net: &Net) -> anyhow::Result<ContainerNs> {
        let name = format!(
            "{}c{}",
            net.prefix,
            NEXT_CONTAINER.fetch_add(1, Ordering::Relaxed)
        );
        add_namespace(&name)?;
        let path = Path::new("/run/netns").join(&name);
        let container = ContainerNs {
            cnitool_id: cnitool_container_id(&path)?,
            name,
            path,
        };
        ip_in(&container.name, &["link", "set", "lo", "up"])?;
        Ok(container)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container id cnitool derives from the netns path: `cnitool-` and the first 10 bytes
    /// of its SHA-512, in hex.
    pub fn cnitool_id(&self) -> &str {
        &self.cnitool_id
    }

    /// Runs `argv` inside the container; whatever the exit code.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        nsenter_output(&self.path, argv)
    }

    /// The IPv4 addresses (without prefix) on `ifname`; empty if there is no such interface.
    pub fn ipv4_addrs(&self, ifname: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
        container_ipv4_addrs(&self.path, ifname)
    }

    /// Whether the container has an interface `ifname`.
    pub fn has_link(&self, ifname: &str) -> anyhow::Result<bool> {
        Ok(self.exec(&["ip", "link", "show", "dev", ifname])?.success())
    }
}

impl Drop for ContainerNs {
    fn drop(&mut self) {
        kill_processes_in(&self.name);
        if let Err(e) = cmd::run_ok(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("harness cleanup: {e:#}");
        }
        // `<network>-<container id>-<ifname>`, for every network and interface.
        let marker = format!("-{}-", self.cnitool_id);
        if let Ok(entries) = std::fs::read_dir(LIBCNI_RESULTS) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(&marker) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// cnitool 1.1's container id for a netns path: `cnitool-` + hex of the first 10 bytes of the
/// path's SHA-512.
pub fn cnitool_container_id(netns: &Path) -> anyhow::Result<String> {
    let path = netns.display().to_string();
    let out = cmd::run_with_input(
        &mut Command::new("sha512sum"),
        Some(path.as_bytes()),
        COMMAND_TIMEOUT,
    )?;
    ensure!(out.success(), "sha512sum failed: {}", out.stderr);
    let hex = out.stdout.get(..20).context("short sha512sum output")?;
    Ok(format!("cnitool-{hex}"))
}

/// Runs `argv` in the network namespace at `netns` (a named netns, or a pod's netns from the
/// CRI status) through `nsenter --net=`; whatever the exit code.
pub fn nsenter_output(netns: &Path, argv: &[&str]) -> anyhow::Result<Output> {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", netns.display())).args(argv);
    cmd::run_with_timeout(&mut command, COMMAND_TIMEOUT)
}

/// The IPv4 addresses (without prefix) on `ifname` in the netns at `netns`; empty if there is
/// no such interface (or netns).
pub fn container_ipv4_addrs(netns: &Path, ifname: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let out = nsenter_output(netns, &["ip", "-j", "-4", "addr", "show", "dev", ifname])?;
    if !out.success() {
        return Ok(Vec::new());
    }
    let links: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect())
}

/// One containerd (CRI) in a host's netns, started by `tests/clients/containerd.sh`. Dropping
/// it runs `containerd.sh stop` (pods removed through the CRI, then by force); call
/// [`Containerd::stop`] to check that this went cleanly.
#[derive(Debug)]
pub struct Containerd {
    pub host: HostId,
    host_ns: String,
    state_dir: PathBuf,
    /// The CRI socket (`CONTAINERD_ADDRESS`).
    pub address: PathBuf,
    cri_python: PathBuf,
    stopped: bool,
}

impl Containerd {
    /// Starts containerd in `cni`'s host with `cni.bin_dir` as its plugin dir and `conf_dir`
    /// (its first conflist) as its network config; state under `host{i}/cd`.
    pub fn start(net: &Net, cni: &CniHost, conf_dir: &Path) -> anyhow::Result<Containerd> {
        Self::start_with_env(net, cni, conf_dir, &[])
    }

    /// [`Containerd::start`] with extra environment for `containerd.sh` (and so for containerd
    /// and the plugins it runs), e.g. `WEFT_CONTAINERD_BINDS`.
    pub fn start_with_env(
        net: &Net,
        cni: &CniHost,
        conf_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Containerd> {
        let clients = clients()?;
        let state_dir = net.host_dir(cni.host).join("cd");
        // From here on, Drop stops whatever part of it started.
        let mut containerd = Containerd {
            host: cni.host,
            host_ns: cni.ns.clone(),
            state_dir: state_dir.clone(),
            address: state_dir.join("containerd.sock"),
            cri_python: clients.cri_python.clone(),
            stopped: false,
        };
        let mut command = Command::new("bash");
        command
            .arg(clients_dir().join("containerd.sh"))
            .args(["start", &cni.ns])
            .arg(&state_dir)
            .arg(&cni.bin_dir)
            .arg(conf_dir)
            .envs(env.iter().copied());
        let out = cmd::run_with_timeout(&mut command, CONTAINERD_TIMEOUT)?;
        ensure!(
            out.success(),
            "host{}: containerd.sh start failed ({}): {}{}",
            cni.host,
            out.status,
            out.stderr.trim_end(),
            out.stdout.trim_end()
        );
        if let Some(address) = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("CONTAINERD_ADDRESS="))
        {
            containerd.address = PathBuf::from(address.trim());
        }
        Ok(containerd)
    }

    /// `cri-client.py --socket <address> ARGS...`: its JSON answer, or an error with stderr
    /// (where the plugin's error message is).
    pub fn cri(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut command = Command::new(&self.cri_python);
        command
            .arg(clients_dir().join("cri-client.py"))
            .arg("--socket")
            .arg(&self.address)
            .args(args);
        let out = cmd::run_with_timeout(&mut command, CONTAINERD_TIMEOUT)?;
        ensure!(
            out.success(),
            "host{}: cri-client {} failed ({}): {}",
            self.host,
            args.join(" "),
            out.status,
            out.stderr.trim_end()
        );
        serde_json::from_str(out.stdout.trim()).with_context(|| {
            format!(
                "host{}: cri-client {}: not JSON: {}",
                self.host,
                args.join(" "),
                out.stdout
            )
        })
    }

    /// `containerd.sh stop`: fails if it could not clean up or had to remove pods by force
    /// (which means the plugin's DEL failed).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        self.run_stop()
    }

    fn run_stop(&self) -> anyhow::Result<()> {
        let mut command = Command::new("bash");
        command
            .arg(clients_dir().join("containerd.sh"))
            .args(["stop", &self.host_ns])
            .arg(&self.state_dir);
        let out = cmd::run_with_timeout(&mut command, CONTAINERD_TIMEOUT)?;
        ensure!(
            out.success(),
            "host{}: containerd.sh stop failed ({}): {}{}\nlog tail:\n{}",
            self.host,
            out.status,
            out.stderr.trim_end(),
            out.stdout.trim_end(),
            self.log_tail()
        );
        Ok(())
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.state_dir.join("containerd.log")).unwrap_or_default();
        crate::wait::log_tail(&log, 30)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(e) = self.run_stop()
        {
            eprintln!("harness cleanup: {e:#}");
        }
    }
}

/// Machine-wide sysctls (files under `/proc/sys`) set for one test, restored on drop, also when
/// the test fails. Tests that change the same sysctl must not run at the same time.
#[derive(Debug)]
pub struct SysctlGuard {
    saved: Vec<(PathBuf, String)>,
}

impl SysctlGuard {
    /// Sets each `(key, value)` (`net.ipv4.neigh.default.gc_thresh3`), remembering the old
    /// values. On an error, what was already set is restored.
    pub fn set(pairs: &[(&str, String)]) -> anyhow::Result<SysctlGuard> {
        let mut guard = SysctlGuard { saved: Vec::new() };
        for (key, value) in pairs {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            std::fs::write(&path, value).with_context(|| format!("cannot set {key} to {value}"))?;
            guard.saved.push((path, old.trim().to_owned()));
        }
        Ok(guard)
    }

    /// Room in the (machine-wide) neighbour tables for about `entries` entries, IPv4 and IPv6:
    /// `gc_thresh1/2/3` raised (never lowered) to `entries`, 2x and 4x. 100 pods that all ping
    /// each other make ~9900 entries; the defaults (128/512/1024) would overflow.
    pub fn neighbour_tables(entries: u64) -> anyhow::Result<SysctlGuard> {
        let mut pairs = Vec::new();
        for family in ["ipv4", "ipv6"] {
            for (n, factor) in [(1, 1), (2, 2), (3, 4)] {
                let key = format!("net.{family}.neigh.default.gc_thresh{n}");
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                let current: u64 = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim()
                    .parse()?;
                pairs.push((key, current.max(entries * factor).to_string()));
            }
        }
        let pairs: Vec<(&str, String)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        SysctlGuard::set(&pairs)
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        for (path, old) in self.saved.iter().rev() {
            if let Err(e) = std::fs::write(path, old) {
                eprintln!("harness cleanup: cannot restore {}: {e}", path.display());
            }
        }
    }
}

/// One entry of the router's `ipam.allocations`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpamAllocation {
    pub container_id: String,
    pub ifname: String,
    /// The address without a prefix length.
    pub address: Ipv4Addr,
}

/// `10.32.0.5/12` or `10.32.0.5` → `10.32.0.5`.
pub fn parse_addr(s: &str) -> anyhow::Result<Ipv4Addr> {
    let bare = s.split('/').next().unwrap_or_default();
    bare.parse()
        .with_context(|| format!("{s:?} is not an IPv4 address"))
}

/// Whether `addr` is in `cidr` (`10.32.0.0/12`).
pub fn in_cidr(addr: Ipv4Addr, cidr: &str) -> anyhow::Result<bool> {
    let (base, bits) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?} is not a CIDR"))?;
    let base: Ipv4Addr = base.parse()?;
    let bits: u32 = bits.parse()?;
    ensure!(bits <= 32, "{cidr:?} is not a CIDR");
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Ok(u32::from(addr) & mask == u32::from(base) & mask)
}

/// The first IPv4 address of an ADD result (`ips[0].address`, without the prefix).
pub fn result_address(result: &Value) -> anyhow::Result<Ipv4Addr> {
    let address = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no ips[0].address in {result}"))?;
    parse_addr(address)
}

impl Net {
    /// Host `i`'s `ipam` report object.
    pub fn ipam(&self, i: HostId) -> anyhow::Result<Value> {
        let ipam = self.report_json(i)?["ipam"].clone();
        ensure!(ipam.is_object(), "host{i} reports no ipam: {ipam}");
        Ok(ipam)
    }

    /// Host `i`'s `ipam.allocations`, sorted.
    pub fn ipam_allocations(&self, i: HostId) -> anyhow::Result<Vec<IpamAllocation>> {
        let ipam = self.ipam(i)?;
        let mut out = Vec::new();
        for a in ipam["allocations"].as_array().into_iter().flatten() {
            out.push(IpamAllocation {
                container_id: a["container_id"]
                    .as_str()
                    .with_context(|| format!("host{i}: allocation without container_id: {a}"))?
                    .to_owned(),
                ifname: a["ifname"].as_str().unwrap_or_default().to_owned(),
                address: parse_addr(a["address"].as_str().unwrap_or_default())
                    .with_context(|| format!("host{i}: allocation {a}"))?,
            });
        }
        out.sort();
        Ok(out)
    }

    /// Every host in `hosts` has IPAM `ready` and a gateway address on its bridge.
    pub fn check_ipam_ready(&self, hosts: &[HostId]) -> anyhow::Result<bool> {
        for &i in hosts {
            let ipam = self.ipam(i)?;
            ensure!(
                ipam["state"] == "ready" && ipam["gateway"].is_string(),
                "host{i}: ipam state {}, gateway {}",
                ipam["state"],
                ipam["gateway"]
            );
        }
        Ok(true)
    }

    /// `weft ipam check` on each of `hosts` exits 0 (the peers' views agree); otherwise an
    /// error with what it printed.
    pub fn check_ipam_agrees(&self, hosts: &[HostId]) -> anyhow::Result<bool> {
        for &i in hosts {
            let out = self.weft_output(i, &["ipam", "check"])?;
            ensure!(
                out.success(),
                "host{i}: weft ipam check ({}): {}{}",
                out.status,
                out.stdout.trim_end(),
                out.stderr.trim_end()
            );
        }
        Ok(true)
    }
}
