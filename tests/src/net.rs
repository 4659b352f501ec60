//! Hosts as network namespaces on one virtual switch, and commands run inside them.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, ensure};

use crate::cmd::{self, COMMAND_TIMEOUT, Output};
use crate::router::RouterProcess;

/// Hosts are numbered from 1, like their nicknames (`host1`, `host2`, …).
pub type HostId = usize;

/// Every Net's hosts live on `10.77.0.0/24`. Nets never see each other: each has its own switch
/// namespace, so the same addresses in two Nets do not clash.
const SUBNET_PREFIX: [u8; 3] = [10, 77, 0];
const SUBNET_BITS: u8 = 24;

/// Distinguishes the Nets of one test process.
static NEXT_NET: AtomicUsize = AtomicUsize::new(0);

/// A set of hosts on one switch. Dropping it kills its routers and deletes its namespaces and
/// temp directory (set `WEFT_TEST_KEEP=1` to keep the directory with the router logs).
pub struct Net {
    pub(crate) prefix: String,
    /// The prefix and the test (thread) that built this Net, for progress messages.
    pub(crate) label: String,
    pub(crate) dir: PathBuf,
    pub(crate) binary: PathBuf,
    switch_ns: Option<String>,
    pub(crate) hosts: Vec<Host>,
    /// Pod namespaces, each attached to a host's bridge (see `pods`).
    pub(crate) pods: Mutex<Vec<crate::pods::Pod>>,
    created: Instant,
}

pub(crate) struct Host {
    pub(crate) id: HostId,
    pub(crate) ns: String,
    pub(crate) address: Ipv4Addr,
    pub(crate) dir: PathBuf,
    pub(crate) router: Mutex<Option<RouterProcess>>,
    /// Whether the `weft_test` nftables table exists in this host.
    pub(crate) firewall_ready: Mutex<bool>,
}

impl Net {
    /// Builds a switch and `n_hosts` hosts; `binary` is the `weft` executable to run on them.
    pub fn new(binary: impl Into<PathBuf>, n_hosts: usize) -> anyhow::Result<Net> {
        let binary = binary.into();
        ensure!(
            binary.is_file(),
            "weft binary {} does not exist",
            binary.display()
        );
        let prefix = format!(
            "wt{}x{}",
            std::process::id(),
            NEXT_NET.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("weft-test-{prefix}"));
        // Names carry our pid, so anything already there was left by a killed run that had it.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let label = match std::thread::current().name() {
            Some(test) => format!("{prefix} {test}"),
            None => prefix.clone(),
        };
        // From here on, Drop cleans up whatever was built, also when a later step fails.
        let mut net = Net {
            label,
            prefix,
            dir,
            binary,
            switch_ns: None,
            hosts: Vec::new(),
            pods: Mutex::new(Vec::new()),
            created: Instant::now(),
        };
        let switch_ns = format!("{}sw", net.prefix);
        add_namespace(&switch_ns)?;
        net.switch_ns = Some(switch_ns.clone());
        ip_in(&switch_ns, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&switch_ns, &["link", "set", "br0", "up"])?;
        for _ in 0..n_hosts {
            net.add_host()?;
        }
        Ok(net)
    }

    /// Adds a host to the switch and returns its id.
    pub fn add_host(&mut self) -> anyhow::Result<HostId> {
        let id = self.hosts.len() + 1;
        // .250 and up are for services (the fake API server).
        ensure!(id < 250, "a Net has at most 249 hosts");
        let ns = format!("{}h{id}", self.prefix);
        let switch_ns = self.switch_ns.clone().context("switch is gone")?;
        let switch_port = format!("v{id}");
        let dir = self.dir.join(format!("host{id}"));
        std::fs::create_dir_all(&dir)?;
        // The router's CNI socket lives here: both ends refuse a directory others could write,
        // whatever the umask.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        add_namespace(&ns)?;
        let address = Ipv4Addr::new(
            SUBNET_PREFIX[0],
            SUBNET_PREFIX[1],
            SUBNET_PREFIX[2],
            id as u8,
        );
        self.hosts.push(Host {
            id,
            ns: ns.clone(),
            address,
            dir,
            router: Mutex::new(None),
            firewall_ready: Mutex::new(false),
        });
        plug_into_switch(&switch_ns, &switch_port, &ns, address)?;
        Ok(id)
    }

    /// Adds a namespace for a service (not a host: no router, not in `host_ids`) on the
    /// switch, with `address`, and returns its name. Its owner deletes it (the switch port
    /// goes with the Net). `tag` names it (`{prefix}{tag}`) and its switch port (`s{tag}`).
    pub(crate) fn add_service_namespace(
        &self,
        tag: &str,
        address: Ipv4Addr,
    ) -> anyhow::Result<String> {
        let ns = format!("{}{tag}", self.prefix);
        let switch_ns = self.switch_ns.clone().context("switch is gone")?;
        let switch_port = format!("s{tag}");
        add_namespace(&ns)?;
        plug_into_switch(&switch_ns, &switch_port, &ns, address)?;
        Ok(ns)
    }

    /// Host ids, `1..=n`.
    pub fn host_ids(&self) -> Vec<HostId> {
        self.hosts.iter().map(|h| h.id).collect()
    }

    /// Host `i`'s address on the switch.
    pub fn address(&self, i: HostId) -> Ipv4Addr {
        self.host(i).address
    }

    /// Host `i`'s network namespace.
    pub fn ns(&self, i: HostId) -> &str {
        &self.host(i).ns
    }

    /// The nickname the router on host `i` has (its hostname).
    pub fn nickname(&self, i: HostId) -> String {
        format!("host{i}")
    }

    /// The per-Net temp directory (router logs, data dirs, password files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `argv` in host `i`'s namespace; fails on a non-zero exit. Returns stdout.
    pub fn exec(&self, i: HostId, argv: &[&str]) -> anyhow::Result<String> {
        cmd::run_ok(&mut self.command_in(i, argv))
    }

    /// Runs `argv` in host `i`'s namespace and returns how it went, whatever the exit code.
    pub fn exec_output(&self, i: HostId, argv: &[&str]) -> anyhow::Result<Output> {
        cmd::run_with_timeout(&mut self.command_in(i, argv), COMMAND_TIMEOUT)
    }

    pub(crate) fn command_in(&self, i: HostId, argv: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.ns(i)]).args(argv);
        command
    }

    pub(crate) fn host(&self, i: HostId) -> &Host {
        assert!(
            (1..=self.hosts.len()).contains(&i),
            "no host {i} in a Net of {} hosts",
            self.hosts.len()
        );
        &self.hosts[i - 1]
    }
}

/// Creates a network namespace, replacing a stale one of the same name: names carry the test
/// process' pid, so an existing one was left behind by a killed process that had our pid.
/// Joins namespace `ns` to the switch: a veth pair `switch_port` (on `br0`) / `eth0` (in `ns`,
/// with `address`), both up. Both ends are made inside namespaces, so nothing touches the root
/// namespace and interface names (`v{id}`, `s{tag}`, `eth0`) need no unique prefix to stay
/// within 15 bytes.
fn plug_into_switch(
    switch_ns: &str,
    switch_port: &str,
    ns: &str,
    address: Ipv4Addr,
) -> anyhow::Result<()> {
    let veth = [
        "link",
        "add",
        switch_port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ];
    ip_in(switch_ns, &veth)?;
    ip_in(
        switch_ns,
        &["link", "set", switch_port, "master", "br0", "up"],
    )?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    let cidr = format!("{address}/{SUBNET_BITS}");
    ip_in(ns, &["addr", "add", &cidr, "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

pub(crate) fn add_namespace(name: &str) -> anyhow::Result<()> {
    if Path::new("/run/netns").join(name).exists() {
        cmd::run_ok(Command::new("ip").args(["netns", "del", name]))?;
    }
    cmd::run_ok(Command::new("ip").args(["netns", "add", name])).map(drop)
}

/// `ip -n NS ARGS…`
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    cmd::run_ok(Command::new("ip").arg("-n").arg(ns).args(args))
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            if let Some(mut router) = host.router.lock().unwrap_or_else(|e| e.into_inner()).take() {
                router.kill();
            }
        }
        let pods: Vec<String> = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.ns.clone())
            .collect();
        // Anything else started in a host or pod (a raw-socket client, a server, a capture)
        // goes too: deleting a namespace kills nothing by itself.
        for ns in self.hosts.iter().map(|h| &h.ns).chain(&pods) {
            kill_processes_in(ns);
        }
        let namespaces = pods
            .into_iter()
            .chain(self.hosts.iter().map(|h| h.ns.clone()))
            .chain(self.switch_ns.clone());
        for ns in namespaces {
            if let Err(e) = cmd::run_ok(Command::new("ip").args(["netns", "del", &ns])) {
                eprintln!("harness cleanup: {e:#}");
            }
        }
        eprintln!(
            "[{}] torn down after {:.1}s",
            self.label,
            self.created.elapsed().as_secs_f64()
        );
        if std::env::var_os("WEFT_TEST_KEEP").is_some() {
            eprintln!("harness: kept {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("harness cleanup: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// SIGKILLs every process in the named netns `ns` (deleting a namespace kills nothing by
/// itself).
pub(crate) fn kill_processes_in(ns: &str) {
    if let Ok(pids) = cmd::run_ok(Command::new("ip").args(["netns", "pids", ns])) {
        for pid in pids.split_whitespace() {
            let _ = cmd::run_ok(Command::new("kill").args(["-KILL", pid]));
        }
    }
}
