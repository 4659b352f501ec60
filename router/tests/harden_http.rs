//! The router's HTTP listeners under attack (issue 9, findings 2, 3 and 7): cross-site and DNS
//! rebinding requests to the status endpoint are refused and change nothing while the CLI
//! works; `weft connect` targets are capped; 1,100 half-sent requests to the status port
//! neither stop CNI ADDs nor new mesh connections, and are closed by their deadline; idle CNI
//! connections are closed too; and both ends refuse a CNI socket in a directory others could
//! write.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_cni::client::{Transport, UnixHttp};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "harden http test password";
const ENDPOINT: &str = "http://127.0.0.1:6784";

/// One request with curl in host `i`: `(status, body)`.
fn curl(net: &Net, i: HostId, args: &[&str]) -> anyhow::Result<(u16, String)> {
    let mut argv = vec!["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = net.exec(i, &argv)?;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

fn metric(net: &Net, i: HostId, series: &str) -> anyhow::Result<f64> {
    Ok(net.metrics(i)?.get(series).unwrap_or(0.0))
}

fn target_addresses(net: &Net, i: HostId) -> anyhow::Result<Vec<String>> {
    Ok(net
        .report(i)?
        .connections
        .into_iter()
        .filter(|c| c.direction == "outbound")
        .map(|c| c.address)
        .collect())
}

#[test]
fn cross_site_and_rebinding_requests_are_refused_and_the_cli_works() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    net.start_mesh(|_| RouterOpts::new().password(PASSWORD))?;
    net.wait_until("host1 and host2 connect", SETTLE, || {
        net.check_full_mesh(&[1, 2])
    })?;
    let host2 = net.address(2).to_string();

    // What a web page can make a browser send: simple POSTs (no preflight) with its Origin.
    for path in [
        "/connect?peer=10.9.9.9",
        "/forget?peer=10.9.9.9",
        "/rmpeer?peer=host2&force=true",
        "/ping?peer=host2",
    ] {
        let (code, body) = curl(
            &net,
            1,
            &[
                "-X",
                "POST",
                "-H",
                "Origin: http://evil.example",
                "-H",
                "Content-Type: text/plain",
                "--data",
                "x",
                &format!("{ENDPOINT}{path}"),
            ],
        )?;
        ensure!(
            code == 403 && body.contains("cross-site"),
            "cross-site POST {path}: {code} {body}"
        );
    }
    // Without an Origin (an old browser, a form, a local non-CLI client) and without the
    // CLI's header: refused too.
    let (code, body) = curl(
        &net,
        1,
        &["-X", "POST", &format!("{ENDPOINT}/connect?peer=10.9.9.9")],
    )?;
    ensure!(
        code == 403 && body.contains("x-weft-client"),
        "POST without the client header: {code} {body}"
    );
    // A DNS name rebound to 127.0.0.1: reads and changes refused, with the reason.
    let rebound = ["--resolve", "evil.example:6784:127.0.0.1"];
    for (method, path) in [
        ("GET", "/report"),
        ("GET", "/status"),
        ("POST", "/connect?peer=10.9.9.9"),
    ] {
        let mut args = rebound.to_vec();
        let url = format!("http://evil.example:6784{path}");
        args.extend_from_slice(&["-X", method, "-H", "X-Weft-Client: cli", &url]);
        let (code, body) = curl(&net, 1, &args)?;
        ensure!(
            code == 421 && body.contains("rebinding") && !body.contains(&host2),
            "rebinding {method} {path}: {code} {body}"
        );
    }
    let (code, _) = curl(
        &net,
        1,
        &[
            "-H",
            "Host: evil.example:6784",
            &format!("{ENDPOINT}/metrics"),
        ],
    )?;
    ensure!(code == 421, "metrics through a foreign Host: {code}");
    let metrics = net.metrics(1)?;
    for (reason, at_least) in [("origin", 4.0), ("client_header", 1.0), ("host", 4.0)] {
        let series =
            format!("weft_http_requests_refused_total{{listener=\"status\",reason=\"{reason}\"}}");
        let n = metrics.get(&series).unwrap_or(0.0);
        ensure!(
            n >= at_least,
            "{series} = {n}, expected at least {at_least}"
        );
    }
    eprintln!(
        "refused requests counted: {:?}",
        metrics
            .samples
            .iter()
            .filter(|(s, _)| s.starts_with("weft_http_requests_refused"))
            .collect::<Vec<_>>()
    );

    // The CLI is served: connect, forget, ping. (A connected target shows as its connection,
    // so an address nobody answers on shows the target.)
    net.weft(1, &["connect", "10.66.200.1"])?;
    ensure!(
        target_addresses(&net, 1)?.contains(&"10.66.200.1:6783".to_owned()),
        "weft connect did not add its target"
    );
    net.weft(1, &["forget", "10.66.200.1"])?;
    ensure!(
        !target_addresses(&net, 1)?.contains(&"10.66.200.1:6783".to_owned()),
        "weft forget did not remove its target"
    );
    let ping = net.weft(1, &["ping", "host2"])?;
    ensure!(ping.contains("echo from"), "weft ping: {ping}");
    // `weft ipam check` (a control GET) too.
    net.wait_until("weft ipam check agrees", SETTLE, || {
        let out = net.weft_output(1, &["ipam", "check"])?;
        ensure!(out.success(), "{}", out.stdout);
        Ok(true)
    })?;

    // `weft connect` targets are capped: 256 with host2, not one more.
    net.weft(1, &["connect", &host2])?;
    let many: Vec<String> = (0..255)
        .map(|n| format!("10.66.{}.{}", n / 200, 1 + n % 200))
        .collect();
    net.weft(1, &["connect", &many.join(",")])?;
    let refused = net.weft_output(1, &["connect", "10.66.9.9"])?;
    ensure!(
        !refused.success() && refused.stderr.contains("cap of 256"),
        "the 257th target: {refused:?}"
    );
    ensure!(
        metric(&net, 1, "weft_connect_targets_refused_total")? == 1.0,
        "the refused connect is counted"
    );

    // After a restart nothing refused was kept: not the cross-site target, not the 257th.
    net.restart(1)?;
    let targets = target_addresses(&net, 1)?;
    let kept = targets.iter().filter(|a| a.starts_with("10.66.")).count();
    ensure!(
        kept == 255,
        "{kept} of the 255 connect targets kept after the restart"
    );
    ensure!(
        !targets
            .iter()
            .any(|a| a.starts_with("10.9.9.9") || a.starts_with("10.66.9.9")),
        "a refused target was persisted: {targets:?}"
    );
    let forgotten: Vec<&str> = many.iter().map(String::as_str).collect();
    net.weft(1, &["forget", &forgotten.join(",")])?;

    // rmpeer: host2 goes away for good and host1 reclaims its space.
    let host2_name = net.report(2)?.name;
    net.kill(2)?;
    net.wait_until("host1 sees host2's space unreachable", SETTLE, || {
        let unreachable = net.ipam(1)?["unreachable_owners"].clone();
        Ok(unreachable.as_array().is_some_and(|a| a.len() == 1))
    })?;
    let out = net.weft(1, &["rmpeer", &host2_name])?;
    ensure!(out.contains("reclaimed"), "weft rmpeer: {out}");
    let report = net.report_json(1)?;
    ensure!(
        report["open_files_limit"]
            .as_u64()
            .is_some_and(|n| n >= 1024),
        "the report shows the open files limit: {}",
        report["open_files_limit"]
    );
    Ok(())
}

/// The attacker: opens `count` connections from `sources` (in turn, a block each) to `target`, sends
/// half a request on each and holds them; prints `{"opened":..}` once all are open. For `hold`
/// seconds it reopens, 2 s later, every connection the server closes (as the report's attacker did),
/// printing `{"holding":..}`; then it stops reopening, waits up to `wait` seconds for the
/// server to close the rest and prints `{"eof":..,"reset":..,"open":..,"total":..}`.
const HOLD_HALF_REQUESTS: &str = r#"
import json, resource, selectors, socket, sys, time
target, port, count, hold, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
sources = sys.argv[6:]
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
stats = {"total": 0, "failed": 0, "eof": 0, "reset": 0, "answered": 0}
def open_one(i):
    s = socket.socket()
    s.bind((sources[i * len(sources) // count], 0))
    s.settimeout(10)
    try:
        s.connect((target, port))
        s.sendall(b"GET /status HTTP/1.1\r\nHost: " + target.encode() + b"\r\nUser-Agent: slow")
    except OSError:
        stats["failed"] += 1
        s.close()
        return
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    stats["total"] += 1
for i in range(count):
    open_one(i)
print(json.dumps({"opened": stats["total"], "failed": stats["failed"]}), flush=True)
start = time.time()
def pump(reopen):
    for key, _ in sel.select(timeout=1):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            stats["reset"] += 1
        else:
            if data:
                stats["answered"] += 1
                continue
            stats["eof"] += 1
        sel.unregister(s)
        s.close()
        if reopen:
            pending.append((time.time() + 2, key.data))
pending = []
last = 0
while time.time() < start + hold:
    pump(True)
    now = time.time()
    for _, i in [p for p in pending if p[0] <= now]:
        open_one(i)
    pending = [p for p in pending if p[0] > now]
    if time.time() - last > 5:
        last = time.time()
        print(json.dumps({"holding": len(sel.get_map()), **stats}), flush=True)
deadline = time.time() + wait
while sel.get_map() and time.time() < deadline:
    pump(False)
print(json.dumps({"open": len(sel.get_map()), **stats}), flush=True)
"#;

fn last_json(text: &str, key: &str) -> Option<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v.get(key).is_some())
}

fn cni_add(socket: &Path, container: &str) -> anyhow::Result<String> {
    let body =
        format!(r#"{{"container_id":"{container}","ifname":"eth0","netns":"/run/netns/none"}}"#);
    let answer = UnixHttp
        .request(socket, "POST", "/cni/add", Some(body.as_bytes()))
        .map_err(|e| anyhow::anyhow!("ADD {container}: {e:?}"))?;
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    ensure!(
        answer.status == 200,
        "ADD {container}: {} {text}",
        answer.status
    );
    let v: Value = serde_json::from_str(&text)?;
    Ok(v["address"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn idle_http_connections_neither_starve_cni_nor_the_mesh_and_are_closed() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const ATTACK: usize = 1100;
    // host1: the router, its status endpoint on every address (as the report found it);
    // host2: the attacker, 20 source addresses; host3: a router that joins during the attack.
    let net = Net::new(WEFT, 3)?;
    net.start(
        1,
        RouterOpts::new()
            .password(PASSWORD)
            .arg("--status-addr")
            .arg("0.0.0.0:6784"),
    )?;
    net.wait_until("host1 has its bridge address", SETTLE, || {
        Ok(net.ipam(1)?["gateway"].is_string())
    })?;
    let sources: Vec<String> = (100..120).map(|n| format!("10.77.0.{n}")).collect();
    for source in &sources {
        net.exec(
            2,
            &["ip", "addr", "add", &format!("{source}/24"), "dev", "eth0"],
        )?;
    }
    let target = net.address(1).to_string();
    // Held (and reopened) for 40 s, then up to 60 s for the server to close the rest.
    let mut argv = vec![
        "/usr/bin/python3",
        "-c",
        HOLD_HALF_REQUESTS,
        &target,
        "6784",
        "1100",
        "40",
        "60",
    ];
    argv.extend(sources.iter().map(String::as_str));
    let attacker = net.spawn_in_host(2, &argv)?;
    let opened = net.wait_until("the attacker holds its connections", SETTLE, || {
        Ok(last_json(&attacker.stdout(), "opened").is_some())
    });
    opened.with_context(|| format!("attacker: {}", attacker.stderr()))?;
    let opened = last_json(&attacker.stdout(), "opened").unwrap_or_default();
    ensure!(
        opened["opened"].as_u64().unwrap_or(0) + opened["failed"].as_u64().unwrap_or(0)
            == ATTACK as u64,
        "attacker: {opened}"
    );

    // While the attack holds what it got: the caps hold, CNI ADDs are served, /healthz
    // answers and a new router joins.
    let metrics = net.metrics(1)?;
    let open = metrics
        .get("weft_http_connections_open{listener=\"status\"}")
        .unwrap_or(0.0);
    let per_source = metrics
        .get("weft_http_connections_refused_total{listener=\"status\",reason=\"per_source_limit\"}")
        .unwrap_or(0.0);
    let remote = metrics
        .get("weft_http_connections_refused_total{listener=\"status\",reason=\"remote_limit\"}")
        .unwrap_or(0.0);
    eprintln!(
        "during the attack: {open} open, refused {per_source} per source, {remote} over the remote cap"
    );
    ensure!(
        open <= 256.0 + 64.0,
        "{open} status connections open: the caps do not hold"
    );
    ensure!(
        per_source + remote >= (ATTACK - 256) as f64,
        "refusals not counted: per source {per_source}, remote {remote}"
    );
    let socket = net.cni_socket(1);
    let mut addresses = std::collections::BTreeSet::new();
    for n in 0..20 {
        let address = cni_add(&socket, &format!("under-attack-{n}"))?;
        ensure!(addresses.insert(address.clone()), "{address} given twice");
    }
    let (code, body) = curl(&net, 1, &[&format!("{ENDPOINT}/healthz")])?;
    ensure!(
        code == 200 && body.contains(r#""alive":true"#),
        "/healthz: {code} {body}"
    );

    // The admitted ones are closed at their header deadline, and the attacker reopens them.
    let header_deadline =
        "weft_http_connections_timed_out_total{listener=\"status\",reason=\"header\"}";
    net.wait_until(
        "the first admitted connections are closed at their deadline",
        SETTLE,
        || Ok(metric(&net, 1, header_deadline)? >= 256.0),
    )?;
    for n in 20..40 {
        let address = cni_add(&socket, &format!("under-attack-{n}"))?;
        ensure!(addresses.insert(address.clone()), "{address} given twice");
    }
    net.start(
        3,
        RouterOpts::new().password(PASSWORD).peers([net.address(1)]),
    )?;
    net.wait_until("host3 joins host1 during the attack", SETTLE, || {
        net.check_full_mesh(&[1, 3])
    })?;

    // Every connection is closed by the server: refused ones at once, admitted ones at their
    // header deadline.
    let done = net.wait_until(
        "the server closed every attacking connection",
        Duration::from_secs(120),
        || Ok(last_json(&attacker.stdout(), "open").is_some()),
    );
    done.with_context(|| format!("attacker: {} {}", attacker.stdout(), attacker.stderr()))?;
    let closed = last_json(&attacker.stdout(), "open").unwrap_or_default();
    eprintln!("attacker at the end: {closed}");
    ensure!(closed["open"] == 0, "connections left open: {closed}");
    let total = closed["total"].as_u64().unwrap_or(0);
    // The attack went on all along: connections closed by the router were reopened.
    ensure!(
        total > ATTACK as u64,
        "the attacker did not reopen: {closed}"
    );
    ensure!(
        closed["eof"].as_u64().unwrap_or(0) + closed["reset"].as_u64().unwrap_or(0) == total,
        "every connection ends in EOF or reset: {closed}"
    );
    let metrics = net.metrics(1)?;
    let header = metrics.get(header_deadline).unwrap_or(0.0);
    let open = metrics
        .get("weft_http_connections_open{listener=\"status\"}")
        .unwrap_or(0.0);
    eprintln!("after the attack: {header} closed at the header deadline, {open} open");
    let refused = metrics.sum("weft_http_connections_refused_total");
    eprintln!("in all: {total} attacking connections, {refused} refused at accept");
    ensure!(
        header + refused >= total as f64,
        "closed {header} at the deadline and refused {refused} of {total}"
    );
    ensure!(
        header >= 256.0,
        "only {header} closed at the header deadline"
    );
    ensure!(open <= 2.0, "{open} status connections still open");
    Ok(())
}

#[test]
fn idle_cni_connections_are_closed_by_their_deadline() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    net.start(1, RouterOpts::new().password(PASSWORD))?;
    net.wait_until("host1 has its bridge address", SETTLE, || {
        Ok(net.ipam(1)?["gateway"].is_string())
    })?;
    let socket = net.cni_socket(1);
    let mut idle = Vec::new();
    for n in 0..20 {
        let mut stream = UnixStream::connect(&socket)?;
        if n % 2 == 0 {
            // Half a request, then nothing.
            stream.write_all(b"POST /cni/add HTTP/1.1\r\nHost: weft\r\n")?;
        }
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        idle.push(stream);
    }
    ensure!(!cni_add(&socket, "beside-idle")?.is_empty(), "no address");
    for (n, stream) in idle.iter_mut().enumerate() {
        let mut buf = Vec::new();
        let read = stream.read_to_end(&mut buf);
        ensure!(
            matches!(read, Ok(0)),
            "idle CNI connection {n}: not closed by the router: {read:?} {buf:?}"
        );
    }
    let closed = metric(
        &net,
        1,
        "weft_http_connections_timed_out_total{listener=\"cni\",reason=\"header\"}",
    )?;
    ensure!(
        closed >= 20.0,
        "{closed} CNI connections counted as closed at the deadline"
    );
    Ok(())
}

#[test]
fn a_cni_socket_in_a_directory_others_could_write_is_refused_by_router_and_plugin()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    let base = net.host_dir(1);
    let open = base.join("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
    let foreign = base.join("foreign");
    std::fs::create_dir(&foreign)?;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534))?;
    let link = base.join("link");
    std::os::unix::fs::symlink(&foreign, &link)?;
    let cases = [
        (&open, "writable by group or others"),
        (&foreign, "owned by uid 65534"),
        (&link, "symlink"),
    ];

    // The router does not start on such a socket.
    for (dir, why) in cases {
        let socket = dir.join("cni.sock");
        let out = net.exec_output(
            1,
            &[
                WEFT,
                "router",
                "--data-dir",
                &base.join("data").display().to_string(),
                "--cni-socket",
                &socket.display().to_string(),
                "--datapath",
                "none",
            ],
        )?;
        ensure!(
            !out.success()
                && out.stderr.contains("refusing the CNI socket directory")
                && out.stderr.contains(why),
            "router on {}: {out:?}",
            socket.display()
        );
        ensure!(!socket.exists(), "the router bound {}", socket.display());
    }

    // The plugin does not talk to a socket there, even a live one, and says why: ADD fails
    // with weft's code 106, STATUS with 50 (the only code the spec gives STATUS for this).
    let plugin = weft_tests::cni::plugin_binary(Path::new(WEFT))?;
    let container = weft_tests::cni::ContainerNs::new(&net)?;
    let netns = container.path().display().to_string();
    for (dir, why) in cases {
        let socket = dir.join("cni.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket)?;
        let config = weft_tests::cni::plugin_config("weft", "1.1.0", &socket);
        for (verb, code) in [("ADD", 106), ("STATUS", 50)] {
            let mut child = Command::new("ip")
                .args(["netns", "exec", net.ns(1)])
                .arg(&plugin)
                .env_clear()
                .env("CNI_COMMAND", verb)
                .env("CNI_CONTAINERID", "harden-http")
                .env("CNI_NETNS", &netns)
                .env("CNI_IFNAME", "eth9")
                .env("CNI_PATH", "/nonexistent")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(config.to_string().as_bytes())?;
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let error: Value = serde_json::from_str(&stdout)
                .with_context(|| format!("plugin {verb}: not a CNI error: {stdout:?}"))?;
            ensure!(
                !out.status.success()
                    && error["code"] == code
                    && error["msg"].as_str().is_some_and(|m| m
                        .contains("refusing the CNI socket directory")
                        && m.contains(why)),
                "plugin {verb} on {}: {stdout}",
                socket.display()
            );
        }
    }
    Ok(())
}
