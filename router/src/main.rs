//! `weft`: the router daemon (`weft router`) and the operator's CLI (`weft status`, …).

mod admission;
mod api;
mod client;
mod cluster;
mod cni_api;
mod config;
mod conn;
mod dataplane;
mod exposition;
mod fastpath;
mod hostnet;
mod http_admission;
mod http_server;
mod identity;
mod install;
mod ipam;
mod kube;
mod log_limit;
mod mesh_port;
mod metrics;
mod nat;
mod nft;
mod portguard;
mod problems;
mod readiness;
mod report;
mod reset;
mod router;
mod status_guard;
mod store;
mod sys;
mod sysctl;
mod targets;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_gossip::ipam::SharedIpam;
use weft_gossip::macs::{MAX_ENTRIES, MacChannel, SharedMacChannel};
use weft_gossip::mesh::MeshConfig;
use weft_gossip::routes::Routes;
use weft_gossip::wire::Features;

use crate::config::{Cli, Command, DatapathChoice, IpamWhat, RouterArgs, StatusWhat, StoreWhat};
use crate::conn::ConnParams;
use crate::metrics::Metrics;
use crate::report::Report;
use crate::router::{Event, Planes, Router, RouterInfo};
use crate::store::Store;

/// The exit code of `weft router` and `weft store` when the state store cannot be used (damaged,
/// in use, unreadable): start-up stops instead of making a new identity.
const EXIT_STORE_REFUSED: i32 = 3;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Router(args) => run_router(*args),
        Command::Status(args) if args.wait => wait_until_ready(&args),
        Command::Status(args) => status(&args),
        Command::Connect(args) => post_targets(&args, "/connect"),
        Command::Forget(args) => post_targets(&args, "/forget"),
        Command::Ping(args) => {
            let path = format!("/ping?peer={}", client::encode_query(&args.peer));
            let body = client::request(args.status_addr, "POST", &path)?;
            let result: router::PingResult = serde_json::from_str(&body)?;
            println!(
                "echo from {}({}) via {} in {:.2} ms",
                result.peer, result.nickname, result.via, result.rtt_ms
            );
            Ok(())
        }
        Command::Rmpeer(args) => {
            let mut path = format!("/rmpeer?peer={}", client::encode_query(&args.peer));
            if args.force {
                path.push_str("&force=true");
            }
            let body = client::request(args.status_addr, "POST", &path)?;
            print!("{body}");
            Ok(())
        }
        Command::Ipam(args) => match args.what {
            IpamWhat::Status => {
                let body = client::request(args.status_addr, "GET", "/report")?;
                let report: Report =
                    serde_json::from_str(&body).context("unexpected /report document")?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report.ipam)?);
                } else {
                    print!("{}", report::render_ipam(&report));
                }
                Ok(())
            }
            IpamWhat::Check => {
                let body = client::request(args.status_addr, "GET", "/ipam/check")?;
                let check: ipam::IpamCheckReport =
                    serde_json::from_str(&body).context("unexpected /ipam/check document")?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&check)?);
                } else {
                    print!("{}", report::render_ipam_check(&check));
                }
                if !check.differences.is_empty() || !check.missing.is_empty() {
                    std::process::exit(1);
                }
                Ok(())
            }
            IpamWhat::ForceRing => {
                let body = client::request(args.status_addr, "POST", "/ipam/force-ring")?;
                print!("{body}");
                Ok(())
            }
        },
        Command::Store(args) => {
            init_tracing("info")?;
            match args.what {
                StoreWhat::Recover => {
                    if !args.data_dir.is_dir() {
                        // A mistyped path must not become a new, empty store.
                        tracing::error!(data_dir = %args.data_dir.display(), "no such data directory");
                        std::process::exit(EXIT_STORE_REFUSED);
                    }
                    let store = open_store(&args.data_dir, store::Mode::Recover);
                    println!("{}", store.opened());
                    Ok(())
                }
            }
        }
        Command::InstallCni(args) => install::run(&args),
        Command::Reset(args) => reset::run(&args),
    }
}

/// The Kubernetes client libraries' own lines, off unless the filter names them: they log
/// every failed request (an API outage would flood the log); weft logs the same errors itself,
/// rate-limited, and counts them (`weft_kube_api_errors_total`).
const QUIET_LIBRARIES: [&str; 2] = ["kube_client", "kube_runtime"];

fn init_tracing(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            let mut directives = level.to_owned();
            for quiet in QUIET_LIBRARIES.iter().filter(|l| !level.contains(*l)) {
                directives.push_str(&format!(",{quiet}=off"));
            }
            tracing_subscriber::EnvFilter::try_new(directives)
        })
        .context("invalid --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// Opens the state store, or ends the process with [`EXIT_STORE_REFUSED`] and an error that
/// names the file and what to do.
fn open_store(data_dir: &std::path::Path, mode: store::Mode) -> Store {
    match Store::open_with(data_dir, mode) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(data_dir = %data_dir.display(), "cannot use the state store: {e}");
            std::process::exit(EXIT_STORE_REFUSED);
        }
    }
}

/// `weft connect` / `weft forget`: hands the addresses to the local router.
fn post_targets(args: &config::TargetArgs, path: &str) -> anyhow::Result<()> {
    let query = client::encode_query(&args.hosts.join(","));
    client::request(args.status_addr, "POST", &format!("{path}?peer={query}"))?;
    Ok(())
}

fn run_router(args: RouterArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_level)?;
    // Checked before anything is written (the state store).
    let kube_node_name = match (args.kube_peers, args.kube_node_name.as_deref()) {
        (false, _) => None,
        (true, Some(name)) if !name.trim().is_empty() => Some(name.trim().to_owned()),
        (true, _) => anyhow::bail!(
            "--kube-peers needs this router's Node: --kube-node-name or WEFT_KUBE_NODE_NAME (the chart sets it from spec.nodeName)"
        ),
    };

    let heartbeat = positive_secs(args.heartbeat_interval, "--heartbeat-interval")?;
    let gossip_interval = positive_secs(args.gossip_interval, "--gossip-interval")?;
    let store_mode = if args.recover_store {
        store::Mode::Recover
    } else {
        store::Mode::Start
    };
    let store = Arc::new(open_store(&args.data_dir, store_mode));
    if let Some(record) = store.recovered_from() {
        let ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(record.at_unix_secs);
        let damaged_file = record.damaged_file.as_deref().unwrap_or("(none)");
        match record.source {
            store::recovery::Source::LastGoodCopy => tracing::info!(
                reason = %record.reason, damaged_file, ago_secs = ago,
                "this state store was rebuilt from its last-good copy"
            ),
            store::recovery::Source::Nothing => tracing::warn!(
                reason = %record.reason, damaged_file, ago_secs = ago,
                "this state store was rebuilt from nothing: the allocations made before were lost"
            ),
        }
    }
    let identity = identity::resolve(
        args.name,
        args.nickname.clone(),
        &args.machine_id_file,
        &store,
    )?;
    let password = match config::read_password(args.password_file.as_deref())? {
        Some(password) => Some(
            weft_crypto::stretch_password(&password, &args.mesh_id)
                .context("cannot derive a key from the mesh password")?,
        ),
        None => None,
    };
    let peers: Vec<String> = args
        .peers
        .iter()
        .map(|p| config::with_default_port(p.trim(), args.port))
        .collect();
    let (targets, left_out) =
        targets::at_start(peers, store.targets()?, targets::MAX_DIRECT_TARGETS);
    if left_out > 0 {
        tracing::warn!(
            left_out,
            cap = targets::MAX_DIRECT_TARGETS,
            "more persisted connect targets than the cap: the rest are not dialled (weft forget some)"
        );
    }
    let open_files_limit = match sys::raise_open_files_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open files limit");
            None
        }
    };
    tracing::info!(
        name = %identity.name,
        nickname = %identity.nickname,
        uid = identity.uid,
        encryption = password.is_some(),
        port = args.port,
        peers = ?targets,
        open_files_limit,
        "starting weft router"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::new(args.host, args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let status_listener = TcpListener::bind(args.status_addr)
            .await
            .with_context(|| format!("cannot serve status on {}", args.status_addr))?;
        if !args.status_addr.ip().is_loopback() {
            tracing::warn!(addr = %args.status_addr, "status endpoint is reachable from other hosts (read-only for them)");
        }
        let metrics_listener = match args.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr}"))?,
            ),
            None => None,
        };

        let metrics = Arc::new(Metrics::default());
        let (events_tx, events_rx) = mpsc::channel(8192);
        let mut params = ConnParams {
            password: password.clone(),
            local: Features {
                name: identity.name,
                nickname: identity.nickname.clone(),
                uid: identity.uid,
                conn_id: 0,
                listen_port: args.port,
                datapaths: None,
            },
            heartbeat,
            events: events_tx.clone(),
            metrics: metrics.clone(),
            next_key: 1.into(),
            mesh_port: mesh_port::MeshPort::new(admission::AdmissionLimits::default()),
        };
        let mesh_config = MeshConfig {
            name: identity.name,
            nickname: identity.nickname.clone(),
            uid: identity.uid,
            conn_limit: args.conn_limit,
            gossip_interval,
            confirm_data_path: args.datapath.has_dataplane(),
        };
        let info = RouterInfo {
            encryption: password.is_some(),
            port: args.port,
            conn_limit: args.conn_limit,
            mesh_id: args.mesh_id.clone(),
            open_files_limit,
            datapath_mode: args.datapath.as_str().to_owned(),
        };
        let ipam_channel = SharedIpam::new(ipam::open_channel(
            &store,
            args.ipalloc_range,
            identity.name,
            identity.uid,
            Instant::now(),
        )?);
        let cni_listener = cni_api::bind(&args.cni_socket)?;
        let dataplane = match args.datapath {
            DatapathChoice::None => None,
            DatapathChoice::Auto
            | DatapathChoice::Fastdp
            | DatapathChoice::Vxlan
            | DatapathChoice::Sleeve => {
                let macs = SharedMacChannel::new(MacChannel::new(
                    identity.name,
                    MAX_ENTRIES,
                    Instant::now(),
                ));
                let events = events_tx.clone();
                let sink: dataplane::EventSink = Box::new(move |event| {
                    // A full queue drops the event: MAC claims are re-made when the MAC is
                    // seen again, and link health is re-reported on its next change.
                    let _ = events.try_send(Event::Dataplane(event));
                });
                let config = dataplane::SleeveConfig {
                    bridge: args.bridge.clone(),
                    port: args.port,
                    underlay_mtu: args.underlay_mtu,
                    encrypted: password.is_some(),
                    bridge_mtu: None,
                };
                let dataplane = dataplane::Dataplane::start(
                    identity.name,
                    &config,
                    Routes::compute(identity.name, &Default::default()),
                    macs,
                    sink,
                )
                .context("cannot start the sleeve dataplane")?;
                Some(dataplane)
            }
        };
        let fast = dataplane.as_ref().map(|dataplane| {
            let events = events_tx.clone();
            let sink: weft_datapath::vxlan::engine::VxlanEventSink = Box::new(move |event| {
                // A full queue drops the event: it only changes how the sleeve link is probed,
                // and the next change is reported again.
                let _ = events.try_send(Event::Fast(event.into()));
            });
            fastpath::FastPath::start(
                &fastpath::FastConfig {
                    local: identity.name,
                    bridge: dataplane.bridge().to_owned(),
                    tap: format!("{}{}", dataplane.bridge(), dataplane::TAP_NAME_SUFFIX),
                    port: args.vxlan_port.unwrap_or(args.port.wrapping_add(1)),
                    underlay_mtu: args.underlay_mtu,
                    encrypted: password.is_some(),
                    backends: args.datapath.fast_backends(),
                    group_peers: dataplane.fast_group_peers(),
                },
                sink,
            )
        });
        if let Some(fast) = &fast {
            params.local.datapaths = Some(fast.offer());
        }
        if dataplane.is_some() {
            host_sysctls(&args, &metrics)?;
        }
        if dataplane.is_some() && args.masquerade {
            match nat::apply(args.ipalloc_range) {
                Ok(()) => tracing::info!(range = %args.ipalloc_range, "pod traffic leaving the range is masqueraded"),
                Err(e) => tracing::warn!(error = %e, "cannot masquerade pod traffic leaving the range (pods still reach each other)"),
            }
        }
        let bridge = dataplane.as_ref().map(|dataplane| ipam::BridgeInfo {
            name: dataplane.bridge().to_owned(),
            mtu: u32::from(dataplane.mtu()),
        });
        // The bridge-port guards of the attachments IPAM still holds, installed again.
        let ports = dataplane.as_ref().map(|_| {
            let channel = ipam_channel.clone();
            portguard::PortGuard::start(&args.data_dir, |(container, ifname)| {
                channel.lock().address_of(&weft_gossip::ipam::AllocKey::new(
                    container.clone(),
                    ifname.clone(),
                ))
            })
        });
        let ipam = ipam::IpamHost::new(
            ipam_channel,
            store.clone(),
            bridge,
            Box::new(hostnet::set_address),
            Instant::now(),
        );
        let store_health = store.health();
        let kube_shared = kube_node_name.as_ref().map(|_| kube::KubeShared::default());
        let router = Router::new(
            mesh_config,
            params,
            events_rx,
            store,
            info,
            targets,
            Planes {
                dataplane,
                ipam,
                ports,
                kube: kube_shared.clone(),
                fast,
            },
        );
        if let (Some(node_name), Some(shared)) = (kube_node_name, kube_shared) {
            tracing::info!(node = %node_name, namespace = %args.kube_namespace, "peers from the Kubernetes API");
            kube::spawn(
                kube::KubeOptions {
                    node_name,
                    namespace: args.kube_namespace.clone(),
                    kubeconfig: args.kubeconfig.clone(),
                    port: args.port,
                    peer_name: identity.name,
                },
                events_tx.clone(),
                shared,
                metrics.clone(),
            );
        }
        tokio::spawn(cni_api::serve(
            cni_listener,
            events_tx.clone(),
            metrics.clone(),
        ));
        if let Some(listener) = metrics_listener {
            tracing::info!(addr = ?args.metrics_addr, "serving /metrics, /healthz and /readyz (read-only)");
            tokio::spawn(api::serve(
                api::Endpoint::Metrics,
                listener,
                events_tx.clone(),
                metrics.clone(),
                store_health.clone(),
            ));
        }
        tokio::spawn(api::serve(
            api::Endpoint::Status,
            status_listener,
            events_tx,
            metrics,
            store_health,
        ));
        tokio::select! {
            _ = router.run(listener) => {}
            _ = shutdown_signal() => tracing::info!("shutting down"),
        }
        anyhow::Ok(())
    })
}

/// `weft status [VIEW] [--cluster] [--json]`: fetches `/report`, prints the view, and exits
/// with [`problems::EXIT_PROBLEMS`] when the report lists failed connections (on stderr) or
/// [`problems::EXIT_NO_REPORT`] when there is no report.
fn status(args: &config::StatusArgs) -> anyhow::Result<()> {
    let fetched = client::request(args.status_addr, "GET", "/report").and_then(|body| {
        serde_json::from_str::<Report>(&body).context("unexpected /report document")
    });
    let report = match fetched {
        Ok(report) => report,
        Err(e) => {
            eprintln!("weft status: {e:#}");
            std::process::exit(problems::EXIT_NO_REPORT);
        }
    };
    let out = if args.cluster {
        let view = cluster::build(&report);
        if args.json {
            serde_json::to_string_pretty(&view)? + "\n"
        } else {
            cluster::render(&view)
        }
    } else if args.json {
        let value = serde_json::to_value(&report)?;
        let section = match args.what {
            StatusWhat::Summary => value,
            StatusWhat::Peers => value["peers"].clone(),
            StatusWhat::Connections => value["connections"].clone(),
            StatusWhat::Routes => value["routes"].clone(),
            StatusWhat::Datapath => value["datapath"].clone(),
        };
        serde_json::to_string_pretty(&section)? + "\n"
    } else {
        match args.what {
            StatusWhat::Summary => report::render_summary(&report),
            StatusWhat::Peers => report::render_peers(&report),
            StatusWhat::Connections => report::render_connections(&report),
            StatusWhat::Routes => report::render_routes(&report),
            StatusWhat::Datapath => report::render_datapath(&report),
        }
    };
    print!("{out}");
    let problems = problems::problems(&report);
    if !problems.is_empty() {
        use std::io::Write as _;
        std::io::stdout().flush()?;
        for problem in &problems {
            eprintln!("problem: {problem}");
        }
        std::process::exit(problems::EXIT_PROBLEMS);
    }
    Ok(())
}

/// `weft status --wait`: polls `/readyz` until the router is ready (exit 0) or `--timeout`
/// passes (exit 1), printing what it waits for whenever that changes.
fn wait_until_ready(args: &config::StatusArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last: Option<Vec<String>> = None;
    loop {
        let waiting = match client::request_status(args.status_addr, "GET", "/readyz") {
            Ok((_, body)) => match serde_json::from_str::<readiness::Readiness>(&body) {
                Ok(r) if r.ready => {
                    println!("ready");
                    return Ok(());
                }
                Ok(r) => r.failing(),
                Err(_) => vec![format!("unexpected /readyz answer: {}", body.trim_end())],
            },
            Err(e) => vec![format!("{e:#}")],
        };
        if last.as_ref() != Some(&waiting) {
            for line in &waiting {
                println!("waiting: {line}");
            }
            last = Some(waiting);
        }
        if Instant::now() >= deadline {
            eprintln!("weft is not ready after {}s", args.timeout);
            std::process::exit(problems::EXIT_PROBLEMS);
        }
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
}

/// The host sysctls the data path needs, through `--proc-sys-net`.
fn host_sysctls(args: &RouterArgs, metrics: &Metrics) -> anyhow::Result<()> {
    let dir = sysctl::ProcSysNet::new(&args.proc_sys_net);
    sysctl::apply_for_router(&dir, args.bridge_nf_call_iptables, &metrics.sysctl_unset)?;
    Ok(())
}

fn positive_secs(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        anyhow::bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
