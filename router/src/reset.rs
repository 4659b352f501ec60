//! `weft reset`: removes what weft put on a node, for uninstalling (like `weave reset`).
//!
//! What to remove is decided by a pure function of what exists ([`plan`], from an
//! [`Observed`]); the edge ([`run`]) only looks ([`observe`]) and removes. Like netavark's
//! teardown it tries every step and reports every failure, exiting non-zero if any failed; what
//! is already gone is not an error, so a second run finds nothing and exits 0.
//!
//! What counts as weft's:
//! - `10-weft.conflist` in the conf dir, only if it names the `weft-cni` plugin (another
//!   network's config of that name is left alone, and said so);
//! - `weft-cni` in the bin dir;
//! - the bridge (only if the device of that name is a bridge), its TAP `<bridge>-tap`, its VXLAN
//!   device `<bridge>-vxlan` and its Open vSwitch datapath `<bridge>-ovs` (a router's stop leaves
//!   them, so that pod traffic on fast connections keeps flowing across a restart; an uninstall
//!   removes them with their forwarding entries and flows), and the
//!   host ends of pod veths (`vw…`, `weft_cni::plugin::HOST_VETH_PREFIX`) still attached to it.
//!   Those veths carry nothing once the bridge is gone, and deleting one also deletes the pod's
//!   end, as `weave reset` deletes its `vethwepl*`. Other ports of the bridge are left (the
//!   kernel detaches them when the bridge goes) and named in the output;
//! - the nftables tables `ip weft` ([`crate::nat`]) and `bridge weft` ([`crate::portguard`]);
//! - the CNI socket;
//! - unless `--keep-data`: the state store (`weft.redb`, `weft.lastgood`, damaged copies set
//!   aside) and `port-guards.json` in the data dir, and the data dir itself when nothing else is
//!   in it. Files weft did not write are never removed.
//!
//! It refuses to run while a router serves on this node: the CNI socket answers, the state store
//! is locked by a running router, or the status endpoint answers.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::Value;
use weft_netlink::{RouteSocket, link};

use crate::config::{DEFAULT_CNI_SOCKET, DEFAULT_STATUS_ADDR};
use crate::install::{CONFLIST_NAME, PLUGIN_NAME};

/// The exit code when a router still serves on this node (nothing was touched).
pub const EXIT_ROUTER_RUNNING: i32 = 2;

/// Files weft writes in its data dir: exact names, and prefixes of the copies it sets aside or
/// writes before a rename (`weft.redb.damaged-…`, `weft.redb.new`, `port-guards.json.tmp`).
const DATA_FILES: [&str; 3] = [
    crate::store::FILE_NAME,
    crate::store::lastgood::FILE_NAME,
    "port-guards.json",
];

/// weft's nftables tables, as (family, name).
fn weft_tables() -> [(&'static str, &'static str); 2] {
    [
        ("ip", crate::nat::TABLE),
        ("bridge", crate::portguard::TABLE),
    ]
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The bridge pods attach to (the router's `--bridge`).
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    pub bridge: String,
    /// Where `weft install-cni` wrote `10-weft.conflist`.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where `weft install-cni` put the `weft-cni` plugin.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The router's data directory (peer name, IPAM allocations): its weft files are removed
    /// unless `--keep-data`.
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "/var/lib/weft")]
    pub data_dir: PathBuf,
    /// Keep the data directory (a reinstall then keeps this node's peer name and addresses).
    #[arg(long)]
    pub keep_data: bool,
    /// The router's CNI socket.
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = DEFAULT_CNI_SOCKET)]
    pub cni_socket: PathBuf,
    /// The router's status endpoint (a router answering there stops the reset).
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
    /// While a router still runs on this node, wait up to this long for it to stop (`90s`,
    /// `2m`, `120`) before giving up with exit code 2, instead of giving up at once: the chart's
    /// uninstall Jobs start while the deleted DaemonSet's routers are still stopping.
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
}

/// A duration: whole seconds, optionally with a unit (`s`, `m`, `h`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration (e.g. 90s, 2m, 120)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{value:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// What `--wait` does next, given why the reset cannot run now (if it cannot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitStep {
    /// No router runs: reset.
    Proceed,
    /// Look again in a moment.
    Wait(String),
    /// Still running at the deadline: refuse (exit code 2).
    GiveUp(String),
}

/// The decision, from the refusal now and the time left.
pub fn wait_step(refusal: Option<String>, time_left: Duration) -> WaitStep {
    match refusal {
        None => WaitStep::Proceed,
        Some(why) if time_left.is_zero() => WaitStep::GiveUp(why),
        Some(why) => WaitStep::Wait(why),
    }
}

/// How often `--wait` looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// What the reset is about: names and paths from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bridge: String,
    pub conflist: PathBuf,
    pub plugin: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub keep_data: bool,
}

impl Target {
    pub fn from_args(args: &ResetArgs) -> Self {
        Self {
            bridge: args.bridge.clone(),
            conflist: args.cni_conf_dir.join(CONFLIST_NAME),
            plugin: args.cni_bin_dir.join(PLUGIN_NAME),
            socket: args.cni_socket.clone(),
            data_dir: args.data_dir.clone(),
            keep_data: args.keep_data,
        }
    }

    fn tap(&self) -> String {
        format!("{}{}", self.bridge, crate::dataplane::TAP_NAME_SUFFIX)
    }
}

/// A network device as [`plan`] needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSeen {
    pub name: String,
    pub index: u32,
    pub is_bridge: bool,
    /// The index of its bridge, if it is a bridge port.
    pub master: Option<u32>,
}

/// What exists on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The conflist's bytes, if the file exists.
    pub conflist: Option<Vec<u8>>,
    pub plugin: bool,
    pub links: Vec<LinkSeen>,
    /// nftables tables, as (family, name).
    pub tables: Vec<(String, String)>,
    pub socket: bool,
    /// The data dir's entries (file names), or `None` if it does not exist.
    pub data_dir: Option<Vec<String>>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    RemoveFile {
        path: PathBuf,
        what: &'static str,
    },
    DeleteLink {
        name: String,
        what: &'static str,
    },
    /// An Open vSwitch datapath (its own port is the device of its name, which rtnetlink
    /// cannot delete; its vports and flows go with it).
    DeleteOvsDatapath {
        name: String,
    },
    DeleteTable {
        family: String,
        name: String,
    },
    RemoveDir {
        path: PathBuf,
        what: &'static str,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::RemoveFile { path, what } | Step::RemoveDir { path, what } => {
                write!(f, "{what} {}", path.display())
            }
            Step::DeleteLink { name, what } => write!(f, "{what} {name}"),
            Step::DeleteOvsDatapath { name } => write!(f, "Open vSwitch datapath {name}"),
            Step::DeleteTable { family, name } => write!(f, "nftables table {family} {name}"),
        }
    }
}

/// The removals in order, and what is deliberately left (one line each, with why).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub kept: Vec<String>,
}

/// Whether a network config (conflist or single conf) uses the `weft-cni` plugin.
pub fn names_weft_plugin(config: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(config) else {
        return false;
    };
    let is_weft = |p: &Value| p["type"].as_str() == Some(PLUGIN_NAME);
    match value["plugins"].as_array() {
        Some(plugins) => plugins.iter().any(is_weft),
        None => is_weft(&value),
    }
}

/// Whether `name` in the data dir is a file weft writes.
pub fn is_weft_data_file(name: &str) -> bool {
    DATA_FILES.iter().any(|f| {
        name == *f
            || name
                .strip_prefix(f)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// What to remove, given what exists. Order: the config first (the runtime stops giving new
/// pods to weft), then the plugin, the bridge's ports and the bridge, the nftables tables, the
/// socket, the data.
pub fn plan(target: &Target, seen: &Observed) -> Plan {
    let mut plan = Plan::default();
    if let Some(bytes) = &seen.conflist {
        if names_weft_plugin(bytes) {
            plan.steps.push(Step::RemoveFile {
                path: target.conflist.clone(),
                what: "network config",
            });
        } else {
            plan.kept.push(format!(
                "{}: does not name the {PLUGIN_NAME} plugin, not weft's: left alone",
                target.conflist.display()
            ));
        }
    }
    if seen.plugin {
        plan.steps.push(Step::RemoveFile {
            path: target.plugin.clone(),
            what: "plugin",
        });
    }

    let tap = target.tap();
    let vxlan = crate::fastpath::device_name(&target.bridge);
    let ovs = crate::fastpath::ovs_datapath_name(&target.bridge);
    let bridge = seen.links.iter().find(|l| l.name == target.bridge);
    let bridge_index = match bridge {
        Some(b) if b.is_bridge => Some(b.index),
        Some(_) => {
            plan.kept.push(format!(
                "device {} is not a bridge, not weft's: left alone",
                target.bridge
            ));
            None
        }
        None => None,
    };
    if let Some(index) = bridge_index {
        let mut ports: Vec<&LinkSeen> = seen
            .links
            .iter()
            .filter(|l| {
                l.master == Some(index) && l.name != tap && l.name != vxlan && l.name != ovs
            })
            .collect();
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        for port in ports {
            if port.name.starts_with(weft_cni::plugin::HOST_VETH_PREFIX) {
                plan.steps.push(Step::DeleteLink {
                    name: port.name.clone(),
                    what: "pod veth",
                });
            } else {
                plan.kept.push(format!(
                    "{}: a port of bridge {} weft did not make: left (detached with the bridge)",
                    port.name, target.bridge
                ));
            }
        }
    }
    if seen.links.iter().any(|l| l.name == tap) {
        plan.steps.push(Step::DeleteLink {
            name: tap,
            what: "TAP",
        });
    }
    if seen.links.iter().any(|l| l.name == vxlan) {
        plan.steps.push(Step::DeleteLink {
            name: vxlan,
            what: "VXLAN device",
        });
    }
    if seen.links.iter().any(|l| l.name == ovs) {
        plan.steps.push(Step::DeleteOvsDatapath { name: ovs });
    }
    if bridge_index.is_some() {
        plan.steps.push(Step::DeleteLink {
            name: target.bridge.clone(),
            what: "bridge",
        });
    }

    for (family, name) in weft_tables() {
        if seen.tables.iter().any(|(f, n)| f == family && n == name) {
            plan.steps.push(Step::DeleteTable {
                family: family.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    if seen.socket {
        plan.steps.push(Step::RemoveFile {
            path: target.socket.clone(),
            what: "CNI socket",
        });
    }

    if let Some(entries) = &seen.data_dir {
        let (mut ours, others): (Vec<&String>, Vec<&String>) =
            entries.iter().partition(|n| is_weft_data_file(n));
        ours.sort();
        if target.keep_data {
            if !ours.is_empty() {
                plan.kept.push(format!(
                    "data dir {}: kept (--keep-data)",
                    target.data_dir.display()
                ));
            }
        } else {
            for name in ours {
                plan.steps.push(Step::RemoveFile {
                    path: target.data_dir.join(name),
                    what: "state",
                });
            }
            if others.is_empty() {
                plan.steps.push(Step::RemoveDir {
                    path: target.data_dir.clone(),
                    what: "data dir",
                });
            } else {
                let mut others: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
                others.sort();
                plan.kept.push(format!(
                    "data dir {}: holds files weft did not write ({}): left",
                    target.data_dir.display(),
                    others.join(", ")
                ));
            }
        }
    }
    plan
}

/// Signs of a router serving on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    pub socket_answers: bool,
    pub store_locked: bool,
    pub status_answers: bool,
}

/// Why the reset must not run now, or `None`.
pub fn refusal(target: &Target, status_addr: SocketAddr, live: &Liveness) -> Option<String> {
    let mut signs = Vec::new();
    if live.socket_answers {
        signs.push(format!(
            "its CNI socket {} answers",
            target.socket.display()
        ));
    }
    if live.store_locked {
        signs.push(format!(
            "its state store in {} is in use",
            target.data_dir.display()
        ));
    }
    if live.status_answers {
        signs.push(format!("its status endpoint {status_addr} answers"));
    }
    if signs.is_empty() {
        return None;
    }
    Some(format!(
        "a weft router is running on this node ({}): stop it first (delete the DaemonSet or stop \
         the service), then run weft reset again; nothing was removed",
        signs.join(", ")
    ))
}

/// `weft reset`.
pub fn run(args: &ResetArgs) -> anyhow::Result<()> {
    let target = Target::from_args(args);
    let deadline = std::time::Instant::now() + args.wait.unwrap_or_default();
    let mut said = false;
    loop {
        let why = refusal(
            &target,
            args.status_addr,
            &liveness(&target, args.status_addr),
        );
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match wait_step(why, left) {
            WaitStep::Proceed => break,
            WaitStep::GiveUp(why) => {
                let waited = args
                    .wait
                    .map(|w| format!(" (waited {}s)", w.as_secs()))
                    .unwrap_or_default();
                eprintln!("weft reset: {why}{waited}");
                std::process::exit(EXIT_ROUTER_RUNNING);
            }
            WaitStep::Wait(_) => {
                if !said {
                    println!(
                        "a weft router still runs on this node: waiting up to {}s for it to stop",
                        left.as_secs().max(1)
                    );
                    said = true;
                }
                std::thread::sleep(WAIT_POLL.min(left));
            }
        }
    }
    let (seen, mut failures) = observe(&target);
    let plan = plan(&target, &seen);
    for step in &plan.steps {
        match execute(step) {
            Ok(true) => println!("removed {step}"),
            Ok(false) => {} // gone meanwhile: nothing to report
            Err(e) => failures.push(format!("cannot remove {step}: {e}")),
        }
    }
    for kept in &plan.kept {
        println!("kept {kept}");
    }
    if plan.steps.is_empty() && failures.is_empty() {
        let other = if plan.kept.is_empty() { "" } else { " else" };
        println!("nothing to remove: weft left nothing{other} on this node");
    }
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("weft reset: {failure}");
        }
        anyhow::bail!("{} step(s) failed", failures.len());
    }
    Ok(())
}

fn liveness(target: &Target, status_addr: SocketAddr) -> Liveness {
    let store_locked = std::fs::File::open(target.data_dir.join(crate::store::FILE_NAME))
        .map(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
        .unwrap_or(false);
    Liveness {
        socket_answers: std::os::unix::net::UnixStream::connect(&target.socket).is_ok(),
        store_locked,
        status_answers: TcpStream::connect_timeout(&status_addr, Duration::from_secs(1)).is_ok(),
    }
}

/// Looks at the node; what cannot be looked at is a failure (its part is not removed).
fn observe(target: &Target) -> (Observed, Vec<String>) {
    let mut failures = Vec::new();
    let mut failed = |what: &str, e: io::Error| failures.push(format!("cannot {what}: {e}"));
    let mut seen = Observed {
        conflist: match std::fs::read(&target.conflist) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                failed(&format!("read {}", target.conflist.display()), e);
                None
            }
        },
        plugin: exists(&target.plugin),
        socket: exists(&target.socket),
        ..Observed::default()
    };
    match RouteSocket::open().and_then(|mut nl| nl.links()) {
        Ok(links) => {
            seen.links = links
                .iter()
                .filter_map(|l| {
                    Some(LinkSeen {
                        name: link::name_of(l)?.to_owned(),
                        index: l.header.index,
                        is_bridge: link::is_bridge(l),
                        master: link::master_of(l),
                    })
                })
                .collect();
        }
        Err(e) => failed("list network devices", e),
    }
    match crate::nft::list_json(&["list", "tables"]) {
        Ok(json) => seen.tables = parse_tables(&json),
        Err(e) => failed("list nftables tables (is nft installed?)", e),
    }
    match std::fs::read_dir(&target.data_dir) {
        Ok(entries) => {
            seen.data_dir = Some(
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect(),
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => failed(&format!("list {}", target.data_dir.display()), e),
    }
    (seen, failures)
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The (family, name) of every table in `nft -j list tables` output.
pub fn parse_tables(json: &str) -> Vec<(String, String)> {
    let Ok(value) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let table = &item["table"];
            Some((
                table["family"].as_str()?.to_owned(),
                table["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Does one step: `Ok(false)` when what it removes was already gone.
fn execute(step: &Step) -> io::Result<bool> {
    let gone_is_fine = |r: io::Result<()>| match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    match step {
        Step::RemoveFile { path, .. } => gone_is_fine(std::fs::remove_file(path)),
        Step::RemoveDir { path, .. } => gone_is_fine(std::fs::remove_dir(path)),
        Step::DeleteLink { name, .. } => RouteSocket::open()?.delete_link(name),
        Step::DeleteOvsDatapath { name } => {
            weft_datapath::ovs::kernel::delete_datapath(name).map_err(io::Error::other)
        }
        Step::DeleteTable { family, name } => {
            crate::nft::apply(&format!("delete table {family} {name}\n")).map(|()| true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            bridge: "weft".into(),
            conflist: "/etc/cni/net.d/10-weft.conflist".into(),
            plugin: "/opt/cni/bin/weft-cni".into(),
            socket: "/run/weft/cni.sock".into(),
            data_dir: "/var/lib/weft".into(),
            keep_data: false,
        }
    }

    fn link(name: &str, index: u32, is_bridge: bool, master: Option<u32>) -> LinkSeen {
        LinkSeen {
            name: name.into(),
            index,
            is_bridge,
            master,
        }
    }

    fn weft_conflist() -> Vec<u8> {
        crate::install::render_conflist(&crate::install::ConflistOptions {
            cni_version: "1.0.0".into(),
            socket: DEFAULT_CNI_SOCKET.into(),
            hairpin: true,
            mtu: None,
            portmap: true,
        })
    }

    fn everything() -> Observed {
        Observed {
            conflist: Some(weft_conflist()),
            plugin: true,
            links: vec![
                link("lo", 1, false, None),
                link("eth0", 2, false, None),
                link("weft", 3, true, None),
                link("weft-tap", 4, false, Some(3)),
                link("vw0123456789", 5, false, Some(3)),
                link("vwaaaaaaaaaa", 6, false, Some(3)),
                link("other0", 7, false, Some(3)),
                link("vwbbbbbbbbbb", 8, false, None),
                link("weft-vxlan", 9, false, Some(3)),
                link("weft-ovs", 10, false, Some(3)),
            ],
            tables: vec![
                ("ip".into(), "nat".into()),
                ("ip".into(), "weft".into()),
                ("bridge".into(), "weft".into()),
                ("inet".into(), "weft".into()),
            ],
            socket: true,
            data_dir: Some(vec![
                "weft.redb".into(),
                "weft.lastgood".into(),
                "port-guards.json".into(),
                "weft.redb.damaged-1700000000".into(),
            ]),
        }
    }

    fn names(plan: &Plan) -> Vec<String> {
        plan.steps.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn everything_weft_made_is_removed_in_order_and_nothing_else() {
        let plan = plan(&target(), &everything());
        assert_eq!(
            names(&plan),
            [
                "network config /etc/cni/net.d/10-weft.conflist",
                "plugin /opt/cni/bin/weft-cni",
                "pod veth vw0123456789",
                "pod veth vwaaaaaaaaaa",
                "TAP weft-tap",
                "VXLAN device weft-vxlan",
                "Open vSwitch datapath weft-ovs",
                "bridge weft",
                "nftables table ip weft",
                "nftables table bridge weft",
                "CNI socket /run/weft/cni.sock",
                "state /var/lib/weft/port-guards.json",
                "state /var/lib/weft/weft.lastgood",
                "state /var/lib/weft/weft.redb",
                "state /var/lib/weft/weft.redb.damaged-1700000000",
                "data dir /var/lib/weft",
            ]
        );
        assert_eq!(
            plan.kept,
            ["other0: a port of bridge weft weft did not make: left (detached with the bridge)"]
        );
    }

    #[test]
    fn nothing_there_is_nothing_to_do() {
        let seen = Observed {
            links: vec![link("lo", 1, false, None)],
            tables: vec![("ip".into(), "filter".into())],
            ..Observed::default()
        };
        assert_eq!(plan(&target(), &seen), Plan::default());
    }

    #[test]
    fn a_config_that_is_not_weft_s_is_left_alone() {
        for foreign in [
            &br#"{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"bridge"}]}"#[..],
            br#"{"cniVersion":"0.4.0","name":"x","type":"flannel"}"#,
            b"not json",
        ] {
            let seen = Observed {
                conflist: Some(foreign.to_vec()),
                ..Observed::default()
            };
            let plan = plan(&target(), &seen);
            assert!(plan.steps.is_empty(), "{plan:?}");
            assert!(plan.kept[0].contains("not weft's"), "{plan:?}");
        }
        assert!(names_weft_plugin(br#"{"name":"x","type":"weft-cni"}"#));
        assert!(names_weft_plugin(&weft_conflist()));
    }

    #[test]
    fn a_device_named_like_the_bridge_that_is_no_bridge_is_left_alone() {
        let seen = Observed {
            links: vec![
                link("weft", 3, false, None),
                link("vw0123456789", 5, false, Some(3)),
            ],
            ..Observed::default()
        };
        let plan = plan(&target(), &seen);
        assert!(plan.steps.is_empty(), "{plan:?}");
        assert_eq!(plan.kept.len(), 1);
    }

    #[test]
    fn a_leftover_tap_goes_even_without_its_bridge() {
        let seen = Observed {
            links: vec![link("weft-tap", 4, false, None)],
            ..Observed::default()
        };
        assert_eq!(names(&plan(&target(), &seen)), ["TAP weft-tap"]);
        // Another bridge name names another TAP.
        let other = Target {
            bridge: "br9".into(),
            ..target()
        };
        assert!(plan(&other, &seen).steps.is_empty());
    }

    #[test]
    fn keep_data_keeps_the_data_dir_and_says_so() {
        let t = Target {
            keep_data: true,
            ..target()
        };
        let plan = plan(&t, &everything());
        assert!(!names(&plan).iter().any(|s| s.contains("/var/lib/weft")));
        assert!(plan.kept.iter().any(|k| k.contains("kept (--keep-data)")));
    }

    #[test]
    fn files_weft_did_not_write_stay_and_so_does_their_directory() {
        let seen = Observed {
            data_dir: Some(vec!["weft.redb".into(), "notes.txt".into()]),
            ..Observed::default()
        };
        let plan = plan(&target(), &seen);
        assert_eq!(names(&plan), ["state /var/lib/weft/weft.redb"]);
        assert!(plan.kept[0].contains("notes.txt"), "{plan:?}");
        // An empty data dir left by a previous run goes.
        let empty = Observed {
            data_dir: Some(Vec::new()),
            ..Observed::default()
        };
        assert_eq!(
            names(&super::plan(&target(), &empty)),
            ["data dir /var/lib/weft"]
        );
    }

    #[test]
    fn weft_data_files_are_recognised_by_name() {
        for ours in [
            "weft.redb",
            "weft.redb.new",
            "weft.redb.damaged-17-2",
            "weft.lastgood",
            "port-guards.json",
        ] {
            assert!(is_weft_data_file(ours), "{ours}");
        }
        for theirs in ["weft.redbx", "weft", "port-guards.jsonx", "other"] {
            assert!(!is_weft_data_file(theirs), "{theirs}");
        }
    }

    #[test]
    fn a_running_router_is_refused_with_every_sign_named() {
        let addr: SocketAddr = DEFAULT_STATUS_ADDR.parse().unwrap();
        assert_eq!(refusal(&target(), addr, &Liveness::default()), None);
        let why = refusal(
            &target(),
            addr,
            &Liveness {
                socket_answers: true,
                store_locked: true,
                status_answers: false,
            },
        )
        .expect("refused");
        assert!(why.contains("/run/weft/cni.sock answers"), "{why}");
        assert!(why.contains("/var/lib/weft is in use"), "{why}");
        assert!(why.contains("nothing was removed"), "{why}");
    }

    #[test]
    fn durations_take_seconds_minutes_or_hours() {
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn wait_proceeds_once_the_router_is_gone_and_gives_up_at_the_deadline() {
        let running = || Some("a weft router is running".to_owned());
        assert_eq!(wait_step(None, Duration::ZERO), WaitStep::Proceed);
        assert_eq!(wait_step(None, Duration::from_secs(5)), WaitStep::Proceed);
        assert_eq!(
            wait_step(running(), Duration::from_secs(5)),
            WaitStep::Wait("a weft router is running".into())
        );
        // Without --wait there is no time left: refused at once, as before.
        assert_eq!(
            wait_step(running(), Duration::ZERO),
            WaitStep::GiveUp("a weft router is running".into())
        );
    }

    #[test]
    fn nft_table_listing_is_parsed() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "weft", "handle": 1}},
            {"table": {"family": "bridge", "name": "weft", "handle": 2}}]}"#;
        assert_eq!(
            parse_tables(json),
            [
                ("ip".to_owned(), "weft".to_owned()),
                ("bridge".to_owned(), "weft".to_owned())
            ]
        );
        assert!(parse_tables("garbage").is_empty());
    }
}
