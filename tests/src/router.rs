//! Starting, killing and querying the `weft router` process of each host.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::{self, COMMAND_TIMEOUT, Output};
use crate::metrics::Metrics;
use crate::net::{HostId, Net};
use crate::report::Report;

/// How long a router may take to serve its status endpoint after being spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// [`STARTUP_TIMEOUT`], or `WEFT_TEST_STARTUP_SECS`: the kernel VM emulates its CPU and reads
/// the binary over 9p, and the first router of a boot can take longer than 20 s to answer.
fn startup_timeout() -> Duration {
    std::env::var("WEFT_TEST_STARTUP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(STARTUP_TIMEOUT, Duration::from_secs)
}

/// Fast failure detection and gossip, so scenarios settle in seconds.
const FAST_TIMERS: [&str; 4] = ["--heartbeat-interval", "1", "--gossip-interval", "2"];

/// How to start a router. Peers are host addresses; the default port is implied.
#[derive(Debug, Clone, Default)]
pub struct RouterOpts {
    pub peers: Vec<String>,
    /// Mesh password, written to a password file (with a trailing newline, like a Secret).
    pub password: Option<String>,
    /// Explicit peer name (`--name`); by default the router derives and persists one.
    pub name: Option<String>,
    /// More `weft router` flags, appended after the harness' own.
    pub extra_args: Vec<String>,
}

impl RouterOpts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn peers<S: ToString>(mut self, peers: impl IntoIterator<Item = S>) -> Self {
        self.peers = peers.into_iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }
}

/// A running router and how it was started (for `restart`).
pub(crate) struct RouterProcess {
    child: Child,
    opts: RouterOpts,
}

impl RouterProcess {
    /// SIGKILL, then reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What became of a host's router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouterState {
    NotStarted,
    Running(u32),
    Exited(String),
}

impl Net {
    /// Starts the router on host `i` and waits until its status endpoint answers. Its data
    /// directory is kept across restarts; its log is appended to `host{i}/router.log`.
    pub fn start(&self, i: HostId, opts: RouterOpts) -> anyhow::Result<()> {
        let host = self.host(i);
        let mut slot = host.router.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(RouterProcess { child, .. }) = slot.as_mut()
            && child.try_wait()?.is_none()
        {
            bail!("host{i} already runs a router (pid {})", child.id());
        }

        let mut args: Vec<String> = vec!["router".into(), "--data-dir".into()];
        args.push(host.dir.join("data").display().to_string());
        args.push("--machine-id-file".into());
        args.push(self.machine_id_file(i)?.display().to_string());
        // Hosts share the machine's filesystem: each router gets its own CNI socket.
        args.push("--cni-socket".into());
        args.push(self.cni_socket(i).display().to_string());
        args.extend(FAST_TIMERS.iter().map(|s| s.to_string()));
        if let Some(password) = &opts.password {
            let file = host.dir.join("password");
            std::fs::write(&file, format!("{password}\n"))?;
            args.push("--password-file".into());
            args.push(file.display().to_string());
        }
        if let Some(name) = &opts.name {
            args.push("--name".into());
            args.push(name.clone());
        }
        args.extend(opts.extra_args.iter().cloned());
        args.extend(opts.peers.iter().cloned());

        let log_path = self.log_path(i);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(
            log,
            "=== harness: starting {} {}",
            self.binary.display(),
            args.join(" ")
        )?;
        // A UTS namespace per router: the hostname is the nickname and seeds the peer name.
        // `ip netns exec`, `unshare` and `sh` all exec, so the child's pid is the router's.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &host.ns, "unshare", "--uts", "sh", "-c"])
            .arg(r#"hostname "$0" && exec "$@""#)
            .arg(self.nickname(i))
            .arg(&self.binary)
            .args(&args)
            // Nothing from the developer's environment (WEFT_*, RUST_LOG) leaks in.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start the router on host{i}"))?;
        *slot = Some(RouterProcess { child, opts });
        drop(slot);
        self.wait_for_status_endpoint(i)
    }

    /// The unix socket host `i`'s router serves the CNI plugin on (the network config's
    /// `"socket"`).
    pub fn cni_socket(&self, i: HostId) -> PathBuf {
        self.host(i).dir.join("cni.sock")
    }

    /// Host `i`'s own directory (router data, log, CNI socket); tests may put files there.
    pub fn host_dir(&self, i: HostId) -> PathBuf {
        self.host(i).dir.clone()
    }

    /// Starts a router on every host with the options `opts(i)` gives, hosts 2.. told only
    /// about host1 (they find the others by gossip), and waits until the control mesh is
    /// complete.
    pub fn start_mesh(&self, opts: impl Fn(HostId) -> RouterOpts) -> anyhow::Result<()> {
        for i in self.host_ids() {
            let mut host_opts = opts(i);
            if i > 1 {
                host_opts = host_opts.peers([self.address(1)]);
            }
            self.start(i, host_opts)?;
        }
        self.wait_until("the control mesh is complete", crate::SETTLE, || {
            self.check_full_mesh(&self.host_ids())
        })
    }

    /// Kills host `i`'s router with SIGKILL (no goodbye to its peers) and reaps it.
    pub fn kill(&self, i: HostId) -> anyhow::Result<()> {
        let mut slot = self.router_slot(i);
        match slot.as_mut() {
            Some(router) => {
                router.kill();
                Ok(())
            }
            None => bail!("host{i} has no router to kill"),
        }
    }

    /// Kills host `i`'s router if it runs and starts it again with the same options and data
    /// directory.
    pub fn restart(&self, i: HostId) -> anyhow::Result<()> {
        let opts = {
            let mut slot = self.router_slot(i);
            let router = slot
                .as_mut()
                .with_context(|| format!("host{i} never ran a router"))?;
            router.kill();
            router.opts.clone()
        };
        self.start(i, opts)
    }

    /// The pid of host `i`'s router while it runs.
    pub fn pid(&self, i: HostId) -> Option<u32> {
        match self.router_state(i) {
            RouterState::Running(pid) => Some(pid),
            _ => None,
        }
    }

    /// Whether host `i`'s router process is alive.
    pub fn is_running(&self, i: HostId) -> bool {
        self.pid(i).is_some()
    }

    /// Host `i`'s router slot. A test that panicked while holding it left plain data behind, so
    /// a poisoned lock is taken as it is.
    fn router_slot(&self, i: HostId) -> std::sync::MutexGuard<'_, Option<RouterProcess>> {
        self.host(i)
            .router
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn router_state(&self, i: HostId) -> RouterState {
        let mut slot = self.router_slot(i);
        match slot.as_mut() {
            None => RouterState::NotStarted,
            Some(router) => match router.child.try_wait() {
                Ok(None) => RouterState::Running(router.child.id()),
                Ok(Some(status)) => RouterState::Exited(status.to_string()),
                Err(e) => RouterState::Exited(format!("unknown ({e})")),
            },
        }
    }

    /// Runs the weft CLI in host `i` (it talks to the router there); fails on a non-zero exit.
    pub fn weft(&self, i: HostId, args: &[&str]) -> anyhow::Result<String> {
        let out = self.weft_output(i, args)?;
        if !out.success() {
            bail!(
                "host{i}: weft {} failed ({}): {}",
                args.join(" "),
                out.status,
                out.stderr.trim_end()
            );
        }
        Ok(out.stdout)
    }

    /// Runs the weft CLI in host `i`, whatever its exit code.
    pub fn weft_output(&self, i: HostId, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.command_in(i, &[]);
        command
            .arg(&self.binary)
            .args(args)
            .env_remove("WEFT_STATUS_ADDR");
        cmd::run_with_timeout(&mut command, COMMAND_TIMEOUT)
    }

    /// Runs `weft status ARGS` in host `i` and returns what it printed, also when the report
    /// lists failed connections (exit 1, the problems on stderr); fails when there is no
    /// report (exit 2) or on any other exit.
    pub fn weft_status(&self, i: HostId, args: &[&str]) -> anyhow::Result<String> {
        let argv: Vec<&str> = std::iter::once("status")
            .chain(args.iter().copied())
            .collect();
        let out = self.weft_output(i, &argv)?;
        match out.status.code() {
            Some(0 | 1) => Ok(out.stdout),
            _ => bail!(
                "host{i}: weft {} failed ({}): {}",
                argv.join(" "),
                out.status,
                out.stderr.trim_end()
            ),
        }
    }

    /// Host `i`'s status report (`weft status --json`).
    pub fn report(&self, i: HostId) -> anyhow::Result<Report> {
        let json = self.weft_status(i, &["--json"])?;
        serde_json::from_str(&json)
            .with_context(|| format!("host{i}: unexpected status document:\n{json}"))
    }

    /// Host `i`'s status report as untyped JSON, for fields the typed [`Report`] lacks.
    pub fn report_json(&self, i: HostId) -> anyhow::Result<serde_json::Value> {
        let json = self.weft_status(i, &["--json"])?;
        serde_json::from_str(&json)
            .with_context(|| format!("host{i}: unexpected status document:\n{json}"))
    }

    /// Host `i`'s Prometheus metrics, scraped from its status endpoint.
    pub fn metrics(&self, i: HostId) -> anyhow::Result<Metrics> {
        let text = self.exec(
            i,
            &[
                "curl",
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "10",
                "http://127.0.0.1:6784/metrics",
            ],
        )?;
        Ok(Metrics::parse(&text))
    }

    /// The whole log of host `i`'s router runs.
    pub fn log(&self, i: HostId) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub(crate) fn log_path(&self, i: HostId) -> PathBuf {
        self.host(i).dir.join("router.log")
    }

    /// Each host gets its own machine id, so peer names do not depend on the machine the tests
    /// run on.
    fn machine_id_file(&self, i: HostId) -> anyhow::Result<PathBuf> {
        let path = self.host(i).dir.join("machine-id");
        if !path.exists() {
            std::fs::write(&path, format!("{:032x}\n", 0xfeed_0000_u64 + i as u64))?;
        }
        Ok(path)
    }

    fn wait_for_status_endpoint(&self, i: HostId) -> anyhow::Result<()> {
        let timeout = startup_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            if let RouterState::Exited(status) = self.router_state(i) {
                bail!(
                    "the router on host{i} exited ({status}) while starting; log:\n{}",
                    self.log(i)
                );
            }
            let probe = self.exec_output(
                i,
                &[
                    "curl",
                    "--silent",
                    "--fail",
                    "--max-time",
                    "2",
                    "http://127.0.0.1:6784/healthz",
                ],
            )?;
            if probe.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the router on host{i} did not serve status within {}s; log:\n{}",
                    timeout.as_secs(),
                    self.log(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
