//! Commands left running in a host or pod while a test does something else: a server, a
//! multicast receiver, a packet capture. Their output goes to files in the Net's directory, so
//! a test can watch it grow (`net.wait_until(.., || Ok(server.stdout().contains(..)))`).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::{self, Output};
use crate::net::{HostId, Net};
use crate::pods::PodId;

/// How long a stopped command may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Names the output files of background commands.
static NEXT_BACKGROUND: AtomicUsize = AtomicUsize::new(0);

/// A running command. Dropping it kills it (SIGKILL); the Net also kills whatever still runs in
/// its namespaces when it is dropped.
pub struct Background {
    child: Child,
    line: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Net {
    /// Starts `argv` in host `i`'s namespace and returns without waiting for it.
    pub fn spawn_in_host(&self, i: HostId, argv: &[&str]) -> anyhow::Result<Background> {
        self.spawn_background(self.ns(i).to_owned(), argv)
    }

    /// Starts `argv` in pod `pod` and returns without waiting for it.
    pub fn spawn_in_pod(&self, pod: PodId, argv: &[&str]) -> anyhow::Result<Background> {
        self.spawn_background(self.pod_ns(pod)?, argv)
    }

    /// Starts `argv` in container `container` and returns without waiting for it.
    pub fn spawn_in_container(
        &self,
        container: &crate::cni::ContainerNs,
        argv: &[&str],
    ) -> anyhow::Result<Background> {
        self.spawn_background(container.name().to_owned(), argv)
    }

    /// Starts `argv` in the named network namespace `ns` (one of this Net's).
    pub(crate) fn spawn_background(&self, ns: String, argv: &[&str]) -> anyhow::Result<Background> {
        let n = NEXT_BACKGROUND.fetch_add(1, Ordering::Relaxed);
        let stdout = self.dir.join(format!("background-{n}.out"));
        let stderr = self.dir.join(format!("background-{n}.err"));
        // `ip netns exec` execs the command: the child's pid is the command's, for signals.
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns]).args(argv);
        let line = cmd::describe(&command);
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot run {line}"))?;
        Ok(Background {
            child,
            line,
            stdout,
            stderr,
        })
    }
}

impl Background {
    /// What the command printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the command printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether the command still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the command exits by itself and returns its output; kills it and fails if
    /// that takes longer than `timeout`. A non-zero exit is not an error here.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<Output> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(self.output(status));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not finish within {}s\nstdout: {}\nstderr: {}",
                    self.line,
                    timeout.as_secs(),
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the command to end (SIGTERM; SIGKILL if it lingers) and returns its output.
    pub fn stop(mut self) -> anyhow::Result<Output> {
        if self.child.try_wait()?.is_none() {
            let pid = self.child.id().to_string();
            let _ = cmd::run_ok(Command::new("kill").args(["-TERM", &pid]));
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(self.output(status));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                return Ok(self.output(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&self, status: std::process::ExitStatus) -> Output {
        Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
