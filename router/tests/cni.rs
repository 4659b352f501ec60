//! End-to-end tests of the CNI plugin and the router's IPAM (issue 4) with the clients real
//! clusters use (`tests/clients/`): cnitool (libcni) with weft-cni chained before portmap,
//! GC and STATUS through the plugin's own interface, containerd's CRI plugin on three hosts,
//! 100 pods added at once on three hosts that all reach each other and keep their addresses
//! across a router restart and a partition, and bad input answered with the right CNI error
//! codes, leaving nothing behind.
//!
//! Every host runs a real `weft router` (sleeve datapath, encrypted) in a network namespace;
//! containers are empty named network namespaces. The plugin binary is `weft-cni` next to
//! `weft` (built once if missing or older than `cni/`). Needs root; skipped otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use weft_tests::cni::{
    self, CniHost, ContainerNs, Containerd, IpamAllocation, SysctlGuard, VerbRun, conflist,
    container_ipv4_addrs, in_cidr, parse_addr, plugin_config, portmap_plugin, result_address,
    weft_plugin,
};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "correct horse battery staple";
/// The router's default `--ipalloc-range`.
const RANGE: &str = "10.32.0.0/12";
/// cnitool's conflists: libcni 1.1 and Debian's reference plugins (portmap 1.1.1) speak
/// 1.0.0, and so do containerd 1.6's libcni.
const CNI_VERSION: &str = "1.0.0";
/// GC and STATUS exist from spec 1.1.0 on (`cni-call.py` runs them like libcni 1.2 does).
const CNI_VERSION_GC: &str = "1.1.0";
/// The conflist with weft-cni alone.
const NET_WEFT: &str = "weft";
/// The conflist with weft-cni, then portmap.
const NET_PORTMAP: &str = "weft-portmap";
/// The allocation key of a router's own bridge address in `ipam.allocations`.
const GATEWAY_KEY: &str = "weft:gateway";

/// One test's hosts and their CNI side. Declare guards (containers, containerd) after it, so
/// they are dropped first, while the routers still run.
struct Cluster {
    net: Net,
    hosts: Vec<CniHost>,
}

impl Cluster {
    /// `n` hosts on an encrypted sleeve mesh (hosts 2.. told about host1), routers started
    /// with `extra` flags; waits for the full mesh and for IPAM to be ready everywhere. Each
    /// host gets the conflists [`NET_WEFT`] and [`NET_PORTMAP`] in its `NETCONFPATH`, and
    /// `gc/weft.conflist` (version 1.1.0) for GC and STATUS.
    fn new(n: usize, extra: &[&str]) -> anyhow::Result<Cluster> {
        cni::clients()?;
        let plugin = cni::plugin_binary(WEFT.as_ref())?;
        let net = Net::new(WEFT, n)?;
        net.start_mesh(|_| {
            extra
                .iter()
                .fold(RouterOpts::new().password(PASSWORD), |opts, arg| {
                    opts.arg(arg)
                })
        })?;
        net.wait_until("IPAM is ready on every host", SETTLE, || {
            net.check_ipam_ready(&net.host_ids())
        })?;
        let mut hosts = Vec::new();
        for i in net.host_ids() {
            let host = net.cni_host(i, &plugin)?;
            let weft = weft_plugin(&host.socket);
            host.write_conflist(&conflist(
                NET_WEFT,
                CNI_VERSION,
                std::slice::from_ref(&weft),
            ))?;
            host.write_conflist(&conflist(
                NET_PORTMAP,
                CNI_VERSION,
                &[weft.clone(), portmap_plugin()],
            ))?;
            host.write_conflist_in(
                &gc_dir(&net, i),
                &conflist(NET_WEFT, CNI_VERSION_GC, &[weft]),
            )?;
            hosts.push(host);
        }
        Ok(Cluster { net, hosts })
    }

    fn host(&self, i: HostId) -> &CniHost {
        &self.hosts[i - 1]
    }

    /// Host `i`'s conflist for `cni-call.py` (GC, STATUS).
    fn gc_conflist(&self, i: HostId) -> PathBuf {
        gc_dir(&self.net, i).join(format!("{NET_WEFT}.conflist"))
    }

    /// Host `i`'s pod allocations (the gateway's left out).
    fn pod_allocations(&self, i: HostId) -> anyhow::Result<Vec<IpamAllocation>> {
        Ok(self
            .net
            .ipam_allocations(i)?
            .into_iter()
            .filter(|a| a.container_id != GATEWAY_KEY)
            .collect())
    }

    /// The address host `i`'s IPAM has for `container_id`/`eth0`, if any.
    fn allocation_of(&self, i: HostId, container_id: &str) -> anyhow::Result<Option<Ipv4Addr>> {
        Ok(self
            .pod_allocations(i)?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == "eth0")
            .map(|a| a.address))
    }

    /// Waits until host `i` no longer lists an allocation for any of `container_ids`.
    fn wait_released(&self, i: HostId, container_ids: &[&str]) -> anyhow::Result<()> {
        self.net.wait_until(
            &format!("host{i} released {} allocation(s)", container_ids.len()),
            SETTLE,
            || {
                let left: Vec<_> = self
                    .pod_allocations(i)?
                    .into_iter()
                    .filter(|a| container_ids.contains(&a.container_id.as_str()))
                    .collect();
                ensure!(left.is_empty(), "host{i} still allocates {left:?}");
                Ok(true)
            },
        )
    }
}

fn gc_dir(net: &Net, i: HostId) -> PathBuf {
    net.host_dir(i).join("gc")
}

/// `ping` from `from` to `to`, two echo requests, all answered.
fn ping(from: &ContainerNs, to: Ipv4Addr) -> anyhow::Result<()> {
    let out = from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &to.to_string()])?;
    ensure!(
        out.success() && out.stdout.contains(" 0% packet loss"),
        "{} -> {to}: {}{}",
        from.name(),
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// The address ADD configured on the container's `eth0` (exactly one IPv4 address).
fn configured_address(container: &ContainerNs) -> anyhow::Result<Ipv4Addr> {
    match container.ipv4_addrs("eth0")?.as_slice() {
        [one] => Ok(*one),
        other => bail!("{} has IPv4 addresses {other:?} on eth0", container.name()),
    }
}

/// An ADD result's address, checked against the container and the range.
fn added_address(result: &Value, container: &ContainerNs, range: &str) -> anyhow::Result<Ipv4Addr> {
    let address = result_address(result)?;
    ensure!(
        in_cidr(address, range)?,
        "{} got {address}, outside {range}",
        container.name()
    );
    let configured = configured_address(container)?;
    ensure!(
        configured == address,
        "{}: the result says {address}, eth0 has {configured}",
        container.name()
    );
    Ok(address)
}

/// cnitool ADD, CHECK, cross-host ping and DEL (twice) on three hosts, through a conflist of
/// weft-cni then portmap (a hostPort answers through the host's address) and one of weft-cni
/// alone; afterwards no interface, portmap rule or allocation is left.
#[test]
fn cnitool_add_check_del_with_portmap_and_ping_across_hosts() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const HOST_PORT: u16 = 18080;
    const CONTAINER_PORT: u16 = 8080;
    let cluster = Cluster::new(3, &[])?;
    let net = &cluster.net;
    let ports = json!({"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}
    ]})
    .to_string();

    // Container a on host1 through weft-cni + portmap, b and c on hosts 2 and 3 through
    // weft-cni alone.
    let a = ContainerNs::new(net)?;
    let b = ContainerNs::new(net)?;
    let c = ContainerNs::new(net)?;
    let result_a = cluster.host(1).add(NET_PORTMAP, &a, Some(&ports))?;
    let addr_a = added_address(&result_a, &a, RANGE)?;
    let addr_b = added_address(&cluster.host(2).add(NET_WEFT, &b, None)?, &b, RANGE)?;
    let addr_c = added_address(&cluster.host(3).add(NET_WEFT, &c, None)?, &c, RANGE)?;
    let all = BTreeSet::from([addr_a, addr_b, addr_c]);
    ensure!(
        all.len() == 3,
        "addresses collide: {addr_a} {addr_b} {addr_c}"
    );
    // The pod's gateway is host1's bridge address, from the range.
    let gateway = parse_addr(result_a["ips"][0]["gateway"].as_str().unwrap_or_default())?;
    let bridge = parse_addr(net.ipam(1)?["gateway"].as_str().unwrap_or_default())?;
    ensure!(
        gateway == bridge && in_cidr(gateway, RANGE)?,
        "the result's gateway {gateway} is not host1's bridge address {bridge}"
    );
    let interfaces = result_a["interfaces"].to_string();
    ensure!(
        interfaces.contains(&a.path().display().to_string()),
        "the result names no interface in the container: {result_a}"
    );
    for (i, container, address) in [(1, &a, addr_a), (2, &b, addr_b), (3, &c, addr_c)] {
        let allocated = cluster.allocation_of(i, container.cnitool_id())?;
        ensure!(
            allocated == Some(address),
            "host{i} allocates {allocated:?} to {}, ADD said {address}",
            container.cnitool_id()
        );
    }

    // CHECK prints nothing and exits 0 (portmap 1.1.1 needs empty CAP_ARGS, see
    // tests/clients/README.md).
    cluster.host(1).check(NET_PORTMAP, &a, None)?;
    cluster.host(2).check(NET_WEFT, &b, None)?;
    cluster.host(3).check(NET_WEFT, &c, None)?;

    // The hostPort answers through host1's own address (portmap's DNAT to the pod).
    let _listener = net.spawn_in_container(
        &a,
        &[
            "busybox",
            "nc",
            "-ll",
            "-p",
            &CONTAINER_PORT.to_string(),
            "-e",
            "echo",
            "hello-from-pod",
        ],
    )?;
    let host1 = net.address(1).to_string();
    net.wait_until(
        &format!("hostPort {HOST_PORT} on host1 reaches the pod"),
        SETTLE,
        || {
            let out = net.exec_output(
                1,
                &[
                    "sh",
                    "-c",
                    "echo | busybox nc -w 2 \"$0\" \"$1\"",
                    &host1,
                    &HOST_PORT.to_string(),
                ],
            )?;
            ensure!(
                out.stdout.trim() == "hello-from-pod",
                "got {:?} {:?}",
                out.stdout,
                out.stderr
            );
            Ok(true)
        },
    )?;

    // Pods on different hosts reach each other through the encrypted mesh.
    net.wait_until(
        "containers on the three hosts ping each other",
        SETTLE,
        || {
            for (from, to) in [
                (&a, addr_b),
                (&a, addr_c),
                (&b, addr_a),
                (&b, addr_c),
                (&c, addr_a),
                (&c, addr_b),
            ] {
                ping(from, to)?;
            }
            Ok(true)
        },
    )?;

    // Leaving the range, a pod's connection is masqueraded behind its host's address; between
    // pods it keeps the pod's own address. The listener writes the peer address it saw to a
    // file.
    const LISTEN: &str = "import socket,sys; s=socket.socket(); \
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 17777)); \
        s.listen(); c, a = s.accept(); open(sys.argv[1], 'w').write(a[0])";
    const CONNECT: &str =
        "import socket,sys; socket.create_connection((sys.argv[1], 17777), 2).close()";
    let peer_seen = |what: &str, file: &std::path::Path, to: &str| -> anyhow::Result<String> {
        net.wait_until(what, SETTLE, || {
            let out = b.exec(&["python3", "-c", CONNECT, to])?;
            ensure!(out.success(), "connect to {to}: {}", out.stderr.trim());
            let seen = std::fs::read_to_string(file).unwrap_or_default();
            ensure!(!seen.is_empty(), "the listener has not reported yet");
            Ok(true)
        })?;
        Ok(std::fs::read_to_string(file)?)
    };
    let file = net.host_dir(1).join("peer-from-host");
    let _listener =
        net.spawn_in_host(1, &["python3", "-c", LISTEN, &file.display().to_string()])?;
    let seen = peer_seen("pod b connects to host1's address", &file, &host1)?;
    let host2 = net.address(2).to_string();
    ensure!(
        seen == host2,
        "host1 saw pod b (host2) connect from {seen}, not from host2's address {host2}: no masquerade"
    );
    let file = net.host_dir(1).join("peer-from-pod");
    let _listener =
        net.spawn_in_container(&a, &["python3", "-c", LISTEN, &file.display().to_string()])?;
    let seen = peer_seen("pod b connects to pod a", &file, &addr_a.to_string())?;
    ensure!(
        seen == addr_b.to_string(),
        "pod a saw pod b connect from {seen}, not from b's own address {addr_b}"
    );

    // DEL, and DEL again: both succeed; the interface, the rules and the allocation are gone.
    for (i, network, container, cap) in [
        (1, NET_PORTMAP, &a, Some(ports.as_str())),
        (2, NET_WEFT, &b, None),
        (3, NET_WEFT, &c, None),
    ] {
        let host = cluster.host(i);
        host.del(network, container, cap)?;
        host.del(network, container, cap)
            .context("a second DEL must succeed too")?;
        ensure!(
            !container.has_link("eth0")?,
            "{} still has eth0 after DEL",
            container.name()
        );
        let veths = host.weft_veths()?;
        ensure!(veths.is_empty(), "host{i} still has weft veths {veths:?}");
        ensure!(
            cluster.allocation_of(i, container.cnitool_id())?.is_none(),
            "host{i} still allocates an address to {}",
            container.cnitool_id()
        );
    }
    let nat = net.exec(1, &["iptables", "-t", "nat", "-S"])?;
    ensure!(
        !nat.contains(&HOST_PORT.to_string()),
        "portmap rules left on host1:\n{nat}"
    );
    Ok(())
}

/// STATUS and GC, as a runtime calls them (stdin + env, `cni-call.py`): STATUS succeeds while
/// the router runs and fails with code 50 once it is gone; GC releases the allocations of
/// attachments missing from `cni.dev/valid-attachments` and keeps the listed ones; the space
/// it frees is handed out again (the range is small enough to fill).
#[test]
fn gc_releases_what_is_not_valid_and_status_follows_the_router() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const SMALL_RANGE: &str = "10.98.0.0/28";
    let cluster = Cluster::new(1, &["--ipalloc-range", SMALL_RANGE])?;
    let net = &cluster.net;
    let host = cluster.host(1);

    let (ok, calls) = host.cni_call("STATUS", &cluster.gc_conflist(1), &[])?;
    ensure!(
        ok && calls[0]["rc"] == 0,
        "STATUS with the router up: {calls}"
    );

    let mut kept = Vec::new();
    for _ in 0..2 {
        let container = ContainerNs::new(net)?;
        let address = added_address(
            &host.add(NET_WEFT, &container, None)?,
            &container,
            SMALL_RANGE,
        )?;
        kept.push((container, address));
    }
    let mut leaked_ids = Vec::new();
    let mut leaked_addrs = BTreeSet::new();
    for _ in 0..2 {
        // Containers that vanish without a DEL: their netns (and veth) go, the allocation
        // stays until GC.
        let container = ContainerNs::new(net)?;
        let address = added_address(
            &host.add(NET_WEFT, &container, None)?,
            &container,
            SMALL_RANGE,
        )?;
        leaked_ids.push(container.cnitool_id().to_owned());
        leaked_addrs.insert(address);
        drop(container);
    }
    let before = cluster.pod_allocations(1)?;
    ensure!(
        before.len() == 4,
        "expected 4 allocations, host1 has {before:?}"
    );

    let valid: Vec<String> = kept
        .iter()
        .map(|(c, _)| format!("{}/eth0", c.cnitool_id()))
        .collect();
    let (ok, calls) = host.cni_call("GC", &cluster.gc_conflist(1), &valid)?;
    ensure!(ok && calls[0]["rc"] == 0, "GC: {calls}");
    let leaked: Vec<&str> = leaked_ids.iter().map(String::as_str).collect();
    cluster.wait_released(1, &leaked)?;
    let after = cluster.pod_allocations(1)?;
    let expected: BTreeSet<(String, Ipv4Addr)> = kept
        .iter()
        .map(|(c, a)| (c.cnitool_id().to_owned(), *a))
        .collect();
    let have: BTreeSet<(String, Ipv4Addr)> = after
        .iter()
        .map(|a| (a.container_id.clone(), a.address))
        .collect();
    ensure!(
        have == expected,
        "after GC host1 allocates {after:?}, expected {expected:?}"
    );
    for (container, address) in &kept {
        ensure!(
            configured_address(container)? == *address,
            "GC touched the kept container {}",
            container.name()
        );
    }

    // Fill the range: the freed addresses are handed out again, never a kept one.
    let mut fill = Vec::new();
    let exhausted = loop {
        ensure!(fill.len() < 16, "a /28 gave out more than 16 addresses");
        let container = ContainerNs::new(net)?;
        let run = host.cnitool("add", NET_WEFT, &container, None, "eth0")?;
        if !run.success() {
            break run;
        }
        let result: Value = serde_json::from_str(&run.stdout)?;
        let address = added_address(&result, &container, SMALL_RANGE)?;
        fill.push((container, address));
    };
    ensure!(
        exhausted.to_string().contains("exhausted"),
        "the ADD after the range filled up failed, but not for exhaustion: {exhausted}"
    );
    let refilled: BTreeSet<Ipv4Addr> = fill.iter().map(|(_, a)| *a).collect();
    eprintln!(
        "{SMALL_RANGE}: 2 kept, {} more ADDs until it was full ({refilled:?})",
        fill.len()
    );
    ensure!(
        leaked_addrs.is_subset(&refilled),
        "the addresses GC freed ({leaked_addrs:?}) were not handed out again ({refilled:?})"
    );
    ensure!(
        kept.iter().all(|(_, a)| !refilled.contains(a)),
        "a kept address was handed out again: kept {:?}, new {refilled:?}",
        kept.iter().map(|(_, a)| a).collect::<Vec<_>>()
    );

    net.kill(1)?;
    let (ok, calls) = host.cni_call("STATUS", &cluster.gc_conflist(1), &[])?;
    ensure!(
        !ok && calls[0]["stdout"]["code"] == 50,
        "STATUS with the router down must fail with code 50: {calls}"
    );
    Ok(())
}

/// containerd's CRI plugin on three hosts runs a pod sandbox on each through weft-cni; the
/// sandboxes get addresses from the range, recorded by each router, and ping each other
/// across hosts; stopping and removing them (DEL twice) releases the addresses.
#[test]
fn containerd_pods_on_three_hosts_reach_each_other() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new(3, &[])?;
    let net = &cluster.net;
    let containerds = std::thread::scope(|scope| {
        let starts: Vec<_> = cluster
            .hosts
            .iter()
            .map(|host| {
                scope.spawn(move || {
                    let conf_dir = net.host_dir(host.host).join("cri.d");
                    host.write_conflist_in(
                        &conf_dir,
                        &conflist(NET_WEFT, CNI_VERSION, &[weft_plugin(&host.socket)]),
                    )?;
                    Containerd::start(net, host, &conf_dir)
                })
            })
            .collect();
        starts
            .into_iter()
            .map(|s| {
                s.join()
                    .unwrap_or_else(|_| bail!("containerd start panicked"))
            })
            .collect::<Vec<_>>()
    });
    // Every started one is stopped when this Vec is dropped, also if another failed.
    let containerds: Vec<Containerd> = containerds.into_iter().collect::<anyhow::Result<_>>()?;

    let mut pods = Vec::new();
    for cd in &containerds {
        let i = cd.host;
        let pod = cd.cri(&["run", &format!("pod-h{i}"), "--namespace", "e2e"])?;
        ensure!(pod["state"] == "SANDBOX_READY", "host{i}: {pod}");
        let id = pod["id"].as_str().context("no id")?.to_owned();
        let ip = parse_addr(pod["ip"].as_str().context("no ip")?)?;
        ensure!(in_cidr(ip, RANGE)?, "host{i}: pod ip {ip} outside {RANGE}");
        let netns = PathBuf::from(pod["netns"].as_str().context("no netns")?);
        ensure!(
            container_ipv4_addrs(&netns, "eth0")? == [ip],
            "host{i}: the sandbox's eth0 does not have {ip}"
        );
        let allocated = cluster.allocation_of(i, &id)?;
        ensure!(
            allocated == Some(ip),
            "host{i} allocates {allocated:?} to sandbox {id}, CRI says {ip}"
        );
        pods.push((i, id, ip, netns));
    }
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.2).collect();
    ensure!(
        ips.len() == pods.len(),
        "sandbox addresses collide: {pods:?}"
    );

    net.wait_until("the sandboxes ping each other across hosts", SETTLE, || {
        for (i, _, _, netns) in &pods {
            for (j, _, ip, _) in pods.iter().filter(|p| p.0 != *i) {
                let out = cni::nsenter_output(
                    netns,
                    &["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip.to_string()],
                )?;
                ensure!(
                    out.success(),
                    "pod on host{i} -> pod on host{j} ({ip}): {}{}",
                    out.stdout,
                    out.stderr
                );
            }
        }
        Ok(true)
    })?;

    for (cd, (i, id, _, netns)) in containerds.iter().zip(&pods) {
        cd.cri(&["stop", id])?;
        cd.cri(&["remove", id])?;
        ensure!(
            !netns.exists(),
            "host{i}: sandbox netns {} left",
            netns.display()
        );
        cluster.wait_released(*i, &[id.as_str()])?;
        let veths = cluster.host(*i).weft_veths()?;
        ensure!(veths.is_empty(), "host{i} still has weft veths {veths:?}");
    }
    for cd in containerds {
        cd.stop()?;
    }
    Ok(())
}

/// A call of the plugin with something wrong: the environment, stdin, the CNI error code it
/// must get and a word its message must contain.
struct BadCall {
    what: &'static str,
    env: Vec<(&'static str, String)>,
    stdin: String,
    code: u64,
    says: &'static str,
}

/// Bad input to the plugin, called directly (env + stdin: the plugin interface) and through
/// cnitool: each gets its CNI error code and a message that says what is wrong, and leaves no
/// interface and no allocation behind. Then an exhausted range (code 105) and a router that
/// is down (code 11).
#[test]
fn bad_input_gets_the_right_error_codes_and_leaves_nothing() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const TINY_RANGE: &str = "10.99.0.0/29";
    let cluster = Cluster::new(1, &["--ipalloc-range", TINY_RANGE])?;
    let net = &cluster.net;
    let host = cluster.host(1);
    let conf = plugin_config(NET_WEFT, CNI_VERSION, &host.socket).to_string();
    let container = ContainerNs::new(net)?;
    let netns = container.path().display().to_string();
    let full_env = |command: &'static str, id: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", id.to_owned()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", host.bin_dir.display().to_string()),
        ]
    };
    let call = |env: &[(&str, String)], stdin: &str| -> anyhow::Result<VerbRun> {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.call_plugin(&env, stdin.as_bytes())
    };
    let nothing_left = |what: &str| -> anyhow::Result<()> {
        let veths = host.weft_veths()?;
        ensure!(veths.is_empty(), "{what}: host veths left: {veths:?}");
        ensure!(
            !container.has_link("eth0")?,
            "{what}: eth0 left in the container"
        );
        let allocations = cluster.pod_allocations(1)?;
        ensure!(
            allocations.is_empty(),
            "{what}: allocations left: {allocations:?}"
        );
        Ok(())
    };

    // A good call first: the setup works, and its DEL leaves nothing.
    call(&full_env("ADD", "e2e-good"), &conf)?.ok()?;
    call(&full_env("DEL", "e2e-good"), &conf)?.ok()?;
    nothing_left("ADD then DEL")?;

    let add_env = full_env("ADD", "e2e-bad");
    let without = |var: &str| -> Vec<(&'static str, String)> {
        add_env.iter().filter(|(k, _)| *k != var).cloned().collect()
    };
    let with = |var: &str, value: &str| -> Vec<(&'static str, String)> {
        add_env
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if *k == var {
                        value.to_owned()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    let cases = [
        BadCall {
            what: "malformed JSON",
            env: add_env.clone(),
            stdin: "{\"cniVersion\": \"1.0.0\", nope".to_owned(),
            code: 6,
            says: "decod",
        },
        BadCall {
            what: "an unknown cniVersion",
            env: add_env.clone(),
            stdin: plugin_config(NET_WEFT, "9.9.9", &host.socket).to_string(),
            code: 1,
            says: "9.9.9",
        },
        BadCall {
            what: "no CNI_COMMAND",
            env: without("CNI_COMMAND"),
            stdin: conf.clone(),
            code: 4,
            says: "CNI_COMMAND",
        },
        BadCall {
            what: "no CNI_CONTAINERID",
            env: without("CNI_CONTAINERID"),
            stdin: conf.clone(),
            code: 4,
            says: "CNI_CONTAINERID",
        },
        BadCall {
            what: "no CNI_NETNS",
            env: without("CNI_NETNS"),
            stdin: conf.clone(),
            code: 4,
            says: "CNI_NETNS",
        },
        BadCall {
            what: "no CNI_IFNAME",
            env: without("CNI_IFNAME"),
            stdin: conf.clone(),
            code: 4,
            says: "CNI_IFNAME",
        },
        // plugin.rs checks the netns before anything else: error 4 naming CNI_NETNS.
        BadCall {
            what: "a netns that does not exist",
            env: with("CNI_NETNS", "/run/netns/weft-e2e-no-such-netns"),
            stdin: conf.clone(),
            code: 4,
            says: "CNI_NETNS",
        },
    ];
    for case in &cases {
        let text = call(&case.env, &case.stdin)?
            .expect_error(case.code)
            .with_context(|| format!("ADD with {}", case.what))?;
        ensure!(
            text.contains(case.says),
            "ADD with {}: the message {text:?} does not mention {:?}",
            case.what,
            case.says
        );
        nothing_left(case.what)?;
    }

    // Through cnitool: a conflist whose cniVersion the plugin does not speak fails the ADD.
    host.write_conflist(&conflist(
        "weft-bad-version",
        "0.2.0",
        &[weft_plugin(&host.socket)],
    ))?;
    let run = host.cnitool("add", "weft-bad-version", &container, None, "eth0")?;
    ensure!(
        !run.success(),
        "cnitool ADD with cniVersion 0.2.0 succeeded: {run}"
    );
    nothing_left("cnitool ADD with cniVersion 0.2.0")?;

    // An exhausted range: ADD until it fails; code 105, saying so; nothing left of the failed
    // ADD (its container has no interface, no extra veth on the host).
    let mut added = Vec::new();
    let exhausted = loop {
        ensure!(added.len() < 8, "a /29 gave out more than 8 addresses");
        let pod = ContainerNs::new(net)?;
        let id = format!("e2e-fill-{}", added.len());
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", &pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0"),
        ];
        let run = host.call_plugin(&env, conf.as_bytes())?;
        if !run.success() {
            ensure!(
                !pod.has_link("eth0")?,
                "the failed ADD left eth0 in its container"
            );
            break run;
        }
        added.push((pod, id));
    };
    ensure!(
        !added.is_empty(),
        "no ADD succeeded in {TINY_RANGE}: {exhausted}"
    );
    eprintln!(
        "{TINY_RANGE} held {} pods; the next ADD: {}",
        added.len(),
        exhausted.stdout.trim()
    );
    let text = exhausted.expect_error(105)?;
    ensure!(
        text.contains("exhausted"),
        "the exhausted range's message {text:?} does not say so"
    );
    let veths = host.weft_veths()?;
    ensure!(
        veths.len() == added.len(),
        "{} pods attached, host has veths {veths:?}",
        added.len()
    );
    ensure!(
        cluster.pod_allocations(1)?.len() == added.len(),
        "the failed ADD left an allocation: {:?}",
        cluster.pod_allocations(1)?
    );
    // cnitool says the same.
    let run = host.cnitool("add", NET_WEFT, &container, None, "eth0")?;
    ensure!(
        !run.success() && run.to_string().contains("exhausted"),
        "cnitool ADD in a full range: {run}"
    );
    for (pod, id) in &added {
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", &pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0"),
        ];
        host.call_plugin(&env, conf.as_bytes())?.ok()?;
    }
    nothing_left("DEL of every pod of the full range")?;

    // The router is down: code 11 (try again later), nothing left.
    net.kill(1)?;
    let text = call(&full_env("ADD", "e2e-down"), &conf)?.expect_error(11)?;
    ensure!(
        text.contains("weft"),
        "the router-down message {text:?} does not point at weft"
    );
    let veths = host.weft_veths()?;
    ensure!(veths.is_empty(), "router down: host veths left: {veths:?}");
    ensure!(
        !container.has_link("eth0")?,
        "router down: eth0 left in the container"
    );
    let run = host.cnitool("add", NET_WEFT, &container, None, "eth0")?;
    ensure!(
        !run.success(),
        "cnitool ADD with the router down succeeded: {run}"
    );
    Ok(())
}

/// A pod of the 100-pod test.
struct Pod {
    host: HostId,
    container: ContainerNs,
    address: Ipv4Addr,
}

/// ADDs a container on each of `hosts` (one entry per pod), all at once (a thread per
/// cnitool run); returns the pods in the same order.
fn add_in_parallel(cluster: &Cluster, hosts: &[HostId]) -> anyhow::Result<Vec<Pod>> {
    let containers = hosts
        .iter()
        .map(|&i| Ok((i, ContainerNs::new(&cluster.net)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let results: Vec<anyhow::Result<Ipv4Addr>> = std::thread::scope(|scope| {
        let runs: Vec<_> = containers
            .iter()
            .map(|(i, container)| {
                let host = cluster.host(*i);
                scope.spawn(move || {
                    let result = host.add(NET_WEFT, container, None)?;
                    added_address(&result, container, RANGE)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap_or_else(|_| bail!("an ADD thread panicked")))
            .collect()
    });
    let mut pods = Vec::new();
    let mut failures = Vec::new();
    for ((host, container), result) in containers.into_iter().zip(results) {
        match result {
            Ok(address) => pods.push(Pod {
                host,
                container,
                address,
            }),
            Err(e) => failures.push(format!("host{host}: {e:#}")),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} ADDs failed:\n{}",
        failures.len(),
        hosts.len(),
        failures.join("\n")
    );
    Ok(pods)
}

/// Every pod reaches every other pod: one fping per source pod (a few at a time), each
/// probing all the others; sources with unreachable targets are tried again until `SETTLE`.
fn all_reach_all(net: &Net, pods: &[Pod]) -> anyhow::Result<()> {
    const AT_ONCE: usize = 8;
    let fping = cni::clients()?.fping.clone();
    let mut pending: Vec<usize> = (0..pods.len()).collect();
    net.wait_until(
        &format!("each of {} pods reaches all the others", pods.len()),
        SETTLE * 2,
        || {
            let failures: Vec<(usize, String)> = std::thread::scope(|scope| {
                let workers: Vec<_> = pending
                    .chunks(pending.len().div_ceil(AT_ONCE).max(1))
                    .map(|sources| {
                        let fping = fping.clone();
                        scope.spawn(move || {
                            let mut failed = Vec::new();
                            for &s in sources {
                                let targets: Vec<String> = pods
                                    .iter()
                                    .enumerate()
                                    .filter(|&(t, _)| t != s)
                                    .map(|(_, p)| p.address.to_string())
                                    .collect();
                                match unreachable_from(&pods[s].container, fping.as_ref(), &targets)
                                {
                                    Ok(none) if none.is_empty() => {}
                                    Ok(some) => failed.push((s, some.join(" "))),
                                    Err(e) => failed.push((s, format!("{e:#}"))),
                                }
                            }
                            failed
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap_or_default())
                    .collect()
            });
            pending = failures.iter().map(|(s, _)| *s).collect();
            if failures.is_empty() {
                return Ok(true);
            }
            let sample: Vec<String> = failures
                .iter()
                .take(5)
                .map(|(s, what)| format!("pod {} ({}) cannot reach: {what}", s, pods[*s].address))
                .collect();
            bail!(
                "{} pods miss some peers; {}",
                failures.len(),
                sample.join("; ")
            )
        },
    )
}

/// The targets `from` cannot ping, with fping if there is one, else `ping` one by one.
fn unreachable_from(
    from: &ContainerNs,
    fping: Option<&PathBuf>,
    targets: &[String],
) -> anyhow::Result<Vec<String>> {
    let out = match fping {
        Some(fping) => {
            let fping = fping.display().to_string();
            let mut argv = vec![fping.as_str(), "-u", "-r", "3", "-t", "1000", "-i", "2"];
            argv.extend(targets.iter().map(String::as_str));
            from.exec(&argv)?
        }
        None => {
            let script = "for a; do ping -c1 -W2 -q \"$a\" >/dev/null 2>&1 || echo \"$a\"; done";
            let mut argv = vec!["sh", "-c", script, "sh"];
            argv.extend(targets.iter().map(String::as_str));
            from.exec(&argv)?
        }
    };
    let unreachable: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|a| targets.iter().any(|t| t == a))
        .map(str::to_owned)
        .collect();
    if unreachable.is_empty() && fping.is_some() && !out.success() {
        bail!(
            "fping in {} failed ({}): {}",
            from.name(),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(unreachable)
}

/// No address is held twice across the hosts' `ipam.allocations` (gateways included), and
/// every live pod's configured address is the one its host allocated to it.
fn check_no_duplicates(cluster: &Cluster, pods: &[Pod]) -> anyhow::Result<()> {
    let mut holders: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    let mut by_key: BTreeMap<(HostId, String), Ipv4Addr> = BTreeMap::new();
    for i in cluster.net.host_ids() {
        for a in cluster.net.ipam_allocations(i)? {
            holders
                .entry(a.address)
                .or_default()
                .push(format!("host{i}:{}/{}", a.container_id, a.ifname));
            by_key.insert((i, a.container_id), a.address);
        }
    }
    let mut configured: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for pod in pods {
        let address = configured_address(&pod.container)?;
        configured
            .entry(address)
            .or_default()
            .push(pod.container.name().to_owned());
        let allocated = by_key.get(&(pod.host, pod.container.cnitool_id().to_owned()));
        ensure!(
            allocated == Some(&address),
            "{} on host{} has {address} configured, its router allocates {allocated:?}",
            pod.container.name(),
            pod.host
        );
    }
    let twice: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
    ensure!(twice.is_empty(), "addresses allocated twice: {twice:?}");
    let twice: Vec<_> = configured.iter().filter(|(_, c)| c.len() > 1).collect();
    ensure!(twice.is_empty(), "addresses configured twice: {twice:?}");
    Ok(())
}

/// 100 ADDs at once on three hosts give 100 distinct addresses in the range, and every pod
/// reaches every other one. A restarted router keeps its pods' addresses and new ADDs never
/// collide with them; GC frees leaked addresses; ADDs on both sides of a partition never hand
/// out an address twice, and the peers agree again after healing.
#[test]
fn hundred_concurrent_adds_restart_gc_and_partition() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PODS: usize = 100;
    let cluster = Cluster::new(3, &[])?;
    let net = &cluster.net;
    let _neighbours = SysctlGuard::neighbour_tables((PODS * PODS) as u64)?;

    // 100 ADDs at once, ~34 per host.
    let spread: Vec<HostId> = (0..PODS).map(|k| k % 3 + 1).collect();
    let mut pods = add_in_parallel(&cluster, &spread)?;
    let addresses: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.address).collect();
    ensure!(
        addresses.len() == PODS,
        "{PODS} ADDs gave {} distinct addresses",
        addresses.len()
    );
    for i in net.host_ids() {
        let on_host = pods.iter().filter(|p| p.host == i).count();
        let allocated = cluster.pod_allocations(i)?.len();
        ensure!(
            allocated == on_host,
            "host{i} has {on_host} pods and {allocated} allocations"
        );
    }
    check_no_duplicates(&cluster, &pods)?;
    all_reach_all(net, &pods)?;

    // Restart host2's router: its pods keep their addresses; new ADDs everywhere avoid them.
    let before: Vec<IpamAllocation> = cluster.pod_allocations(2)?;
    net.restart(2)?;
    net.wait_until("the mesh is complete after the restart", SETTLE, || {
        net.check_full_mesh(&net.host_ids())
    })?;
    net.wait_until("IPAM is ready after the restart", SETTLE, || {
        net.check_ipam_ready(&net.host_ids())
    })?;
    let after = cluster.pod_allocations(2)?;
    ensure!(
        after == before,
        "host2's allocations changed across its restart:\nbefore {before:?}\nafter  {after:?}"
    );
    let new = add_in_parallel(&cluster, &[1, 2, 3, 1, 2, 3])?;
    for pod in &new {
        ensure!(
            !addresses.contains(&pod.address),
            "a new ADD on host{} got {}, which a pod already has",
            pod.host,
            pod.address
        );
    }
    pods.extend(new);
    check_no_duplicates(&cluster, &pods)?;

    // GC frees leaked addresses: three pods on host1 vanish without DEL; GC with every other
    // host1 attachment valid releases exactly theirs.
    let leaked = add_in_parallel(&cluster, &[1, 1, 1])?;
    let leaked_ids: Vec<String> = leaked
        .iter()
        .map(|p| p.container.cnitool_id().to_owned())
        .collect();
    drop(leaked);
    let valid: Vec<String> = pods
        .iter()
        .filter(|p| p.host == 1)
        .map(|p| format!("{}/eth0", p.container.cnitool_id()))
        .collect();
    let others_before = (cluster.pod_allocations(2)?, cluster.pod_allocations(3)?);
    let (ok, calls) = cluster
        .host(1)
        .cni_call("GC", &cluster.gc_conflist(1), &valid)?;
    ensure!(ok, "GC on host1: {calls}");
    let leaked_refs: Vec<&str> = leaked_ids.iter().map(String::as_str).collect();
    cluster.wait_released(1, &leaked_refs)?;
    let host1_pods = pods.iter().filter(|p| p.host == 1).count();
    ensure!(
        cluster.pod_allocations(1)?.len() == host1_pods,
        "after GC host1 allocates {:?}, it has {host1_pods} pods",
        cluster.pod_allocations(1)?
    );
    ensure!(
        (cluster.pod_allocations(2)?, cluster.pod_allocations(3)?) == others_before,
        "GC on host1 changed other hosts' allocations"
    );

    // A partition during allocation: host3 cut off from hosts 1 and 2, ADDs on both sides at
    // once, then healed.
    net.block(3, 1)?;
    net.block(3, 2)?;
    net.wait_until("host3 is cut off", SETTLE, || {
        net.check_disconnected_from(&[1, 2], 3)?;
        net.check_disconnected_from(&[3], 1)?;
        net.check_disconnected_from(&[3], 2)
    })?;
    let split = add_in_parallel(&cluster, &[1, 2, 3, 1, 2, 3, 3, 3]);
    net.unblock(3, 1)?;
    net.unblock(3, 2)?;
    pods.extend(split?);
    net.wait_until("the mesh is complete after healing", SETTLE, || {
        net.check_full_mesh(&net.host_ids())
    })?;
    net.wait_until("weft ipam check agrees on every host", SETTLE, || {
        net.check_ipam_agrees(&net.host_ids())
    })?;
    check_no_duplicates(&cluster, &pods)?;
    // Every pod, from before and after the restart and from both sides of the partition,
    // still reaches every other one.
    all_reach_all(net, &pods)?;
    for i in net.host_ids() {
        let conflicts = net.ipam(i)?["conflicts"].clone();
        ensure!(
            conflicts.as_array().is_some_and(Vec::is_empty),
            "host{i} reports IPAM conflicts: {conflicts}"
        );
    }
    Ok(())
}
