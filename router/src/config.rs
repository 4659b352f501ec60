//! Command-line and environment configuration. Every flag can also be set through a `WEFT_*`
//! environment variable, which is how the DaemonSet configures the router.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use weft_gossip::PeerName;

pub const DEFAULT_PORT: u16 = 6783;
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:6784";
pub const DEFAULT_CNI_SOCKET: &str = weft_cni::protocol::DEFAULT_SOCKET;

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: an encrypted L2 mesh network for Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router daemon.
    Router(Box<RouterArgs>),
    /// Show the local router's status.
    Status(StatusArgs),
    /// Ask the local router to connect to more peers.
    Connect(TargetArgs),
    /// Ask the local router to forget peer addresses (established connections stay up).
    Forget(TargetArgs),
    /// Send a control-plane echo to a peer along the mesh routes (relayed if need be).
    Ping(PingArgs),
    /// Reclaim the address space of a peer that is gone for good.
    Rmpeer(RmpeerArgs),
    /// IP address management: this router's view, or every peer's compared.
    Ipam(IpamArgs),
    /// The router's state store (`weft.redb` in the data directory), with the router stopped.
    Store(StoreArgs),
    /// Install the `weft-cni` plugin and its network config on this node (the DaemonSet's init
    /// container runs this).
    InstallCni(InstallCniArgs),
    /// Remove what weft put on this node (config, plugin, bridge, TAP, nftables tables, socket,
    /// data unless --keep-data), with the router stopped.
    Reset(crate::reset::ResetArgs),
}

#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Initial peers, `host[:port]`.
    #[arg(env = "WEFT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// TCP port for mesh connections.
    #[arg(long, env = "WEFT_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on for mesh connections.
    #[arg(long, env = "WEFT_HOST", default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
    /// Peer name (`aa:bb:cc:dd:ee:ff`); by default derived from the machine id and hostname
    /// and then persisted in the data directory.
    #[arg(long, env = "WEFT_NAME")]
    pub name: Option<PeerName>,
    /// Nickname shown in status (default: the hostname).
    #[arg(long, env = "WEFT_NICKNAME")]
    pub nickname: Option<String>,
    /// Maximum number of peer connections (0 = unlimited).
    #[arg(long, env = "WEFT_CONN_LIMIT", default_value_t = 100)]
    pub conn_limit: usize,
    /// Directory for persisted state (peer name, peers to resume, IPAM): `weft.redb` and its
    /// last-good copy `weft.lastgood`.
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "/var/lib/weft")]
    pub data_dir: PathBuf,
    /// If the state store is damaged (empty, corrupt, unreadable or missing beside its
    /// last-good copy), move it aside and rebuild it from the last-good copy, or start empty
    /// when that is damaged too; then start. A healthy store is used as it is. Without this
    /// flag a damaged store stops start-up (exit code 3).
    #[arg(long, env = "WEFT_RECOVER_STORE")]
    pub recover_store: bool,
    /// File holding the mesh password (e.g. a mounted Kubernetes Secret). `WEFT_PASSWORD`
    /// works too. With a password every connection is authenticated and encrypted.
    #[arg(long, env = "WEFT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Mesh id: salts the password hash, so the same password in two meshes gives
    /// different keys. Must be the same on every peer.
    #[arg(long, env = "WEFT_MESH_ID", default_value = "weft")]
    pub mesh_id: String,
    /// Status and control HTTP endpoint. Mutating requests are only served to loopback clients.
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
    /// Read-only listener for Prometheus and probes (`/metrics`, `/healthz`, `/readyz` only,
    /// GET only), e.g. `0.0.0.0:6782`. Empty: off.
    #[arg(long, env = "WEFT_METRICS_ADDR", value_parser = parse_optional_addr, default_value = "")]
    // Spelled out so clap takes the parser's `Option` as the value (an empty value is "off").
    pub metrics_addr: std::option::Option<SocketAddr>,
    /// File with the machine id that seeds the default peer name.
    #[arg(long, env = "WEFT_MACHINE_ID_FILE", default_value = "/etc/machine-id")]
    pub machine_id_file: PathBuf,
    /// Seconds between heartbeats on idle connections; a connection that stays silent for
    /// three intervals is closed.
    #[arg(long, env = "WEFT_HEARTBEAT_INTERVAL", default_value_t = 10.0)]
    pub heartbeat_interval: f64,
    /// Seconds between anti-entropy digests to each neighbour.
    #[arg(long, env = "WEFT_GOSSIP_INTERVAL", default_value_t = 30.0)]
    pub gossip_interval: f64,
    /// Data plane, chosen per peer connection with fallback to the sleeve and back:
    /// `auto` (the kernel fast path where it works: Open vSwitch when the kernel has it, else the
    /// Linux VXLAN device; the sleeve elsewhere), `fastdp` (the same, Open vSwitch only),
    /// `vxlan` (the same, VXLAN only), `sleeve` (userspace only: frames in UDP, sealed when
    /// there is a password)
    /// or `none` (control plane only). With a password every connection stays on the sealed
    /// sleeve until the fast path is encrypted (IPsec ESP).
    #[arg(long, env = "WEFT_DATAPATH", value_enum, default_value = "auto")]
    pub datapath: DatapathChoice,
    /// UDP port of the VXLAN fast path (default: the mesh port + 1, 6784).
    #[arg(long, env = "WEFT_VXLAN_PORT")]
    pub vxlan_port: Option<u16>,
    /// Name of the bridge pods attach to.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    pub bridge: String,
    /// MTU of the underlay network between hosts; the overlay MTU is this minus the
    /// encapsulation overhead.
    #[arg(long, env = "WEFT_UNDERLAY_MTU", default_value_t = 1500)]
    pub underlay_mtu: u16,
    /// The cluster's pod address range, split among the routers by IPAM. Must be the same on
    /// every peer.
    #[arg(long, env = "WEFT_IPALLOC_RANGE", default_value = weft_gossip::ipam::DEFAULT_RANGE)]
    pub ipalloc_range: weft_gossip::ipam::Cidr,
    /// Forward and masquerade pod traffic that leaves the range (nftables table `ip weft`), so
    /// pods reach the host's network and beyond; traffic between pods is never translated.
    #[arg(long, env = "WEFT_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Unix socket the CNI plugin talks to (root only). The plugin's network config names it
    /// as `"socket"` when it is not the default.
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = DEFAULT_CNI_SOCKET)]
    pub cni_socket: PathBuf,
    /// Peers from the Kubernetes API: watch Nodes and dial the other Nodes' InternalIPs, record
    /// this router's peer name on its Node, set its NetworkUnavailable condition to False once
    /// the data path is up, and reclaim deleted Nodes' address space (one router, elected with
    /// the Lease `weft-reclaim`). No IPAM ring is created before the first Node list.
    #[arg(long, env = "WEFT_KUBE_PEERS", default_value_t = false, default_missing_value = "true",
          num_args = 0..=1, require_equals = true, action = clap::ArgAction::Set)]
    pub kube_peers: bool,
    /// This router's Node (the chart: `spec.nodeName`); required with --kube-peers.
    #[arg(long, env = "WEFT_KUBE_NODE_NAME")]
    pub kube_node_name: Option<String>,
    /// Namespace of the reclaim Lease (the chart: its release namespace).
    #[arg(long, env = "WEFT_KUBE_NAMESPACE", default_value = "kube-system")]
    pub kube_namespace: String,
    /// Kubeconfig for --kube-peers; without it `KUBECONFIG`, then `~/.kube/config`, then the
    /// in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides.
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// The host's `/proc/sys/net`, through which the router sets `net.ipv4.ip_forward` (and
    /// `net.bridge.bridge-nf-call-iptables`). Container runtimes mount `/proc/sys` read-only:
    /// mount the host's `/proc/sys/net` elsewhere (hostPath) and name it here, as the chart does
    /// with `/host/proc/sys/net`. With the host network the writes reach the host's namespace.
    #[arg(long, env = "WEFT_PROC_SYS_NET", default_value = "/proc/sys/net")]
    pub proc_sys_net: PathBuf,
    /// Set `net.bridge.bridge-nf-call-iptables=1` so that traffic bridged between pods on one
    /// host passes the IPv4 netfilter hooks, where kube-proxy's Service rules see it (Weave Net
    /// sets it too). Needs the `br_netfilter` module, which a container cannot load: without it
    /// the router warns and counts it in `weft_sysctl_unset`.
    #[arg(long, env = "WEFT_BRIDGE_NF_CALL_IPTABLES", default_value_t = false, action = clap::ArgAction::Set)]
    pub bridge_nf_call_iptables: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathChoice {
    Auto,
    Fastdp,
    Vxlan,
    Sleeve,
    None,
}

impl DatapathChoice {
    /// Whether the sleeve runs (it always does with a data plane: fallback, broadcast, relay).
    pub fn has_dataplane(self) -> bool {
        self != DatapathChoice::None
    }

    /// The kernel fast paths wanted, best first (empty: none). `auto` prefers Open vSwitch
    /// and takes the VXLAN device where the kernel has no openvswitch module; both speak
    /// VXLAN on the wire, so hosts of either kind are fast to each other.
    pub fn fast_backends(self) -> Vec<weft_datapath::DatapathKind> {
        use weft_datapath::DatapathKind::{Ovs, Vxlan};
        match self {
            DatapathChoice::Auto => vec![Ovs, Vxlan],
            DatapathChoice::Fastdp => vec![Ovs],
            DatapathChoice::Vxlan => vec![Vxlan],
            DatapathChoice::Sleeve | DatapathChoice::None => Vec::new(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatapathChoice::Auto => "auto",
            DatapathChoice::Fastdp => "fastdp",
            DatapathChoice::Vxlan => "vxlan",
            DatapathChoice::Sleeve => "sleeve",
            DatapathChoice::None => "none",
        }
    }
}

/// `weft status --help`: the exit codes (`crate::problems` decides them).
const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0  the report was shown and no connection has failed
  1  the report was shown and lists failures, one `problem:` line each on stderr: a dial
     target (named or discovered) retrying or failed, an established connection whose data
     path is down, or (with the Kubernetes API) a Node whose weft peer is not reachable;
     with --wait: not ready within --timeout
  2  no report: the router could not be reached or did not answer with one";

#[derive(Debug, Args)]
#[command(after_help = STATUS_EXIT_CODES)]
pub struct StatusArgs {
    /// What to show.
    #[arg(value_enum, default_value = "summary")]
    pub what: StatusWhat,
    /// Print JSON (the `/report` document, or its section) instead of text.
    #[arg(long)]
    pub json: bool,
    /// One line per node of the cluster, as this router sees it through the mesh and (with
    /// `--kube-peers`) the Kubernetes API: peer, Node, reachability, connection, data path,
    /// encryption, MTU, IPAM share and readiness. With `--json`, the same as a document.
    #[arg(long, conflicts_with = "wait")]
    pub cluster: bool,
    /// Wait until the router is ready (`/readyz`), printing what it waits for; exit non-zero
    /// if it is not ready within `--timeout`.
    #[arg(long)]
    pub wait: bool,
    /// Seconds `--wait` waits.
    #[arg(long, default_value_t = 300, requires = "wait")]
    pub timeout: u64,
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
}

/// An address, or nothing for an empty value (the flag's "off").
fn parse_optional_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{value:?} is not an address:port: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusWhat {
    Summary,
    Peers,
    Connections,
    Routes,
    /// The data plane: the bridge, the fast path's backend (the Open vSwitch datapath's ports
    /// and flows, or the VXLAN device) and each connection's datapath.
    Datapath,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// `host[:port]`
    #[arg(required = true)]
    pub hosts: Vec<String>,
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Peer name or nickname.
    pub peer: String,
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct RmpeerArgs {
    /// The departed peer's name (`aa:bb:cc:dd:ee:ff`) or nickname.
    pub peer: String,
    /// Reclaim even when no live peer owns space to inherit it (the last owner is gone). Safe
    /// on one host only: never run it with --force on two hosts that cannot reach each other.
    #[arg(long)]
    pub force: bool,
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct IpamArgs {
    /// `status`: this router's view of the ring and its allocations; `check`: ask every
    /// reachable peer for its view and say where they differ (exit 1 if they do);
    /// `force-ring`: create the ring now although the initial peers were not reached (only when
    /// they are gone for good: a peer told about them that still runs could create another).
    #[arg(value_enum, default_value = "status")]
    pub what: IpamWhat,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// `recover`: if the store is damaged, move it aside (`weft.redb.damaged-<unix time>`) and
    /// rebuild it from the last-good copy, or start empty when that is damaged too (said
    /// loudly). A healthy store is left as it is.
    #[arg(value_enum)]
    pub what: StoreWhat,
    /// The router's data directory.
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "/var/lib/weft")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreWhat {
    Recover,
}

#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// The plugin binary to install (default: `weft-cni` next to this `weft` executable).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Where the container runtime looks for CNI plugins.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where the container runtime reads network configs; weft writes `10-weft.conflist`.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// Chain the `portmap` plugin (hostPort) after weft-cni, if it is in the bin dir.
    #[arg(long, env = "WEFT_CNI_PORTMAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub portmap: bool,
    /// The router's CNI socket; written into the config only when it is not the default.
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = DEFAULT_CNI_SOCKET)]
    pub cni_socket: PathBuf,
    /// Hairpin mode on the pods' host ends (the plugin's default: true).
    #[arg(long, env = "WEFT_CNI_HAIRPIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub hairpin: bool,
    /// The pods' MTU, overriding the router's (default: the router's, from the underlay MTU).
    #[arg(long, env = "WEFT_CNI_MTU", value_parser = clap::value_parser!(u32).range(68..=65535))]
    pub mtu: Option<u32>,
    /// The config's `cniVersion`. 1.0.0 works with every runtime; 1.1.0 adds STATUS and GC but
    /// only runtimes with libcni 1.2 or newer (containerd 2, CRI-O 1.30+) can read its results
    /// (containerd 1.7 cannot, and its pods would get no network).
    #[arg(long, env = "WEFT_CNI_VERSION", default_value = "1.0.0",
          value_parser = clap::builder::PossibleValuesParser::new(weft_cni::SUPPORTED_VERSIONS))]
    pub cni_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IpamWhat {
    Status,
    Check,
    ForceRing,
}

/// Reads the mesh password: the file wins over `WEFT_PASSWORD`. Trailing newlines are not part
/// of it (Secrets created with `echo` carry one).
pub fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let raw =
        match file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read password file {}: {e}", path.display())
            })?),
            None => std::env::var_os("WEFT_PASSWORD").map(|v| v.into_encoded_bytes()),
        };
    Ok(raw
        .map(|mut p| {
            while p.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                p.pop();
            }
            p
        })
        .filter(|p| !p.is_empty()))
}

/// Adds the default port to `host` if it has none.
pub fn with_default_port(target: &str, port: u16) -> String {
    if target.parse::<SocketAddr>().is_ok() {
        return target.to_owned();
    }
    if let Ok(ip) = target.parse::<std::net::IpAddr>() {
        return SocketAddr::new(ip, port).to_string();
    }
    match target.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => target.to_owned(),
        _ => format!("{target}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_added_only_when_missing() {
        assert_eq!(with_default_port("10.0.0.1", 6783), "10.0.0.1:6783");
        assert_eq!(with_default_port("10.0.0.1:99", 6783), "10.0.0.1:99");
        assert_eq!(with_default_port("node-a", 6783), "node-a:6783");
        assert_eq!(with_default_port("node-a:7000", 6783), "node-a:7000");
        assert_eq!(with_default_port("fd00::1", 6783), "[fd00::1]:6783");
    }

    #[test]
    fn recover_store_is_a_flag_that_takes_no_value() {
        let cli = Cli::try_parse_from(["weft", "router", "--recover-store", "10.0.0.1"]).unwrap();
        let Command::Router(args) = cli.command else {
            panic!("not the router");
        };
        assert!(args.recover_store);
        assert_eq!(args.peers, vec!["10.0.0.1".to_owned()]);
    }

    #[test]
    fn the_metrics_listener_is_off_unless_given_an_address() {
        let args = |extra: &[&str]| {
            let cli = Cli::try_parse_from([&["weft", "router"], extra].concat()).unwrap();
            let Command::Router(args) = cli.command else {
                panic!("not the router");
            };
            args.metrics_addr
        };
        assert_eq!(args(&[]), None);
        assert_eq!(args(&["--metrics-addr", ""]), None);
        assert_eq!(
            args(&["--metrics-addr", "0.0.0.0:6782"]),
            Some("0.0.0.0:6782".parse().unwrap())
        );
        assert!(Cli::try_parse_from(["weft", "router", "--metrics-addr", "nowhere"]).is_err());
    }

    #[test]
    fn kube_peers_is_a_switch_that_also_takes_a_value() {
        let args = |extra: &[&str]| {
            let cli = Cli::try_parse_from([&["weft", "router"], extra].concat()).unwrap();
            let Command::Router(args) = cli.command else {
                panic!("not the router");
            };
            args
        };
        assert!(!args(&[]).kube_peers);
        let a = args(&["--kube-peers", "--kube-node-name", "n1", "10.0.0.1"]);
        assert!(a.kube_peers);
        assert_eq!(a.kube_node_name.as_deref(), Some("n1"));
        assert_eq!(a.peers, vec!["10.0.0.1".to_owned()]);
        assert_eq!(a.kube_namespace, "kube-system");
        assert!(args(&["--kube-peers=true"]).kube_peers);
        assert!(!args(&["--kube-peers=false"]).kube_peers);
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
