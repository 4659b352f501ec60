//! Multi-host test harness for weft: each host is a network namespace on a shared virtual
//! switch, running a real `weft router` process.
//!
//! ```text
//!            switch netns (bridge br0)
//!        v1 /      v2 |       \ vN
//!   host1 netns   host2 netns  ... hostN netns      each: lo + eth0 = 10.77.0.N/24
//! ```
//!
//! A [`Net`] owns its namespaces, router processes and temp directory and removes them all when
//! dropped, also when a test fails or panics; so are its pods (`add_pod`), the commands left
//! running in them or in hosts (`spawn_in_pod`, `spawn_in_host`) and packet captures
//! (`capture`). Names carry the test process id and a counter, so tests running in parallel
//! (threads or processes) never share a namespace.
//!
//! The harness does not build weft: scenario tests pass the binary cargo built for them
//! (`env!("CARGO_BIN_EXE_weft")` in the router crate's integration tests, `router/tests/`).
//!
//! The `cni` module drives the `weft-cni` plugin with real CNI clients (cnitool, containerd's
//! CRI, direct calls): the end-to-end tests in `router/tests/cni.rs`.
//!
//! Running, as root: `cargo test -p weft-router --test mesh` for the scenarios and
//! `cargo test -p weft-tests` for the harness' own checks. A failed wait prints every host's
//! status and router log tail; `WEFT_TEST_KEEP=1` also keeps each Net's directory (full logs,
//! data dirs) under the temp dir, and `-- --nocapture` shows how long each wait took.

mod background;
mod capture;
mod checks;
mod cmd;
pub mod cni;
pub mod fakeapi;
mod faults;
mod fdb;
pub mod kubelet;
mod metrics;
mod net;
mod pods;
mod report;
mod router;
pub mod traffic;
mod wait;

pub use background::Background;
pub use capture::{Capture, Datagram};
pub use checks::pairs_of;
pub use cmd::{COMMAND_TIMEOUT, Output};
pub use faults::Reachability;
pub use fdb::FdbEntry;
pub use metrics::Metrics;
pub use net::{HostId, Net};
pub use pods::PodId;
pub use report::{Connection, Counters, Peer, PeerConnection, Report, Route};
pub use router::RouterOpts;
pub use wait::log_tail;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// A deadline for conditions that should settle within a few gossip rounds, generous enough
/// for a loaded two-core CI machine running several meshes at once.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Whether this process can build network namespaces. Scenario tests call it first and return
/// early (after saying why) when it cannot, so `cargo test` stays usable as a normal user.
pub fn require_root() -> bool {
    // The owner of /proc/self is this process's effective uid: no unsafe geteuid() needed.
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let has_netns = is_root
        && std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_netns {
        eprintln!("skipped: needs root and ip netns");
    }
    has_netns
}
