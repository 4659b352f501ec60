//! Waiting for conditions, and the diagnostics a timed-out wait reports.

use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::net::Net;
use crate::router::RouterState;

/// Between two checks of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Lines of each router log a diagnosis shows.
const LOG_TAIL_LINES: usize = 25;

impl Net {
    /// Polls `check` until it returns `Ok(true)`. `Ok(false)` and `Err(_)` both mean "not yet";
    /// an error's message is the best description of what was last seen, so checks should
    /// `bail!`/`ensure!` with what they observed. On timeout the error names `what`, the last
    /// observation, every host's connections and the tail of every router log.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let last = match check() {
                Ok(true) => {
                    eprintln!(
                        "[{}] {what}: after {:.1}s",
                        self.label,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Ok(false) => "the condition did not hold".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {:.1}s waiting until {what}\nlast observed: {last}\n{}",
                    timeout.as_secs_f64(),
                    self.diagnosis()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Checks once that `check` holds now (for state that must already be true, such as "the
    /// mesh is still intact" after a fault); fails like a timed-out [`Net::wait_until`].
    pub fn check_now(
        &self,
        what: &str,
        check: impl FnOnce() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let last = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => "the condition did not hold".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        bail!("expected {what}\nobserved: {last}\n{}", self.diagnosis())
    }

    /// Every host's router state, connections and log tail, for failure messages.
    pub fn diagnosis(&self) -> String {
        let mut out = String::new();
        for i in self.host_ids() {
            let _ = writeln!(
                out,
                "===== host{i} ({}, {}) router: {}",
                self.ns(i),
                self.address(i),
                match self.router_state(i) {
                    RouterState::NotStarted => "not started".to_owned(),
                    RouterState::Running(pid) => format!("running, pid {pid}"),
                    RouterState::Exited(status) => format!("exited ({status})"),
                }
            );
            if self.is_running(i) {
                for view in ["connections", "routes", "peers"] {
                    match self.weft_status(i, &[view]) {
                        Ok(text) => {
                            let _ = write!(out, "--- weft status {view}\n{text}");
                        }
                        Err(e) => {
                            let _ = writeln!(out, "--- weft status {view}: {e:#}");
                        }
                    }
                }
            }
            let _ = write!(
                out,
                "--- log tail\n{}",
                log_tail(&self.log(i), LOG_TAIL_LINES)
            );
        }
        out
    }
}

/// The last `lines` lines of `log`.
pub fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
    tail.push('\n');
    tail
}
