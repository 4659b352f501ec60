//! Honest health across real routers: `/healthz` is liveness (the event loop answers),
//! `/readyz` is readiness with a reason per check (no ring yet → 503 saying why, until
//! `weft ipam force-ring`), `weft status --wait` follows `/readyz`, and the read-only metrics
//! listener (`--metrics-addr`) serves `/metrics`, `/healthz` and `/readyz` to another host,
//! refuses every other method and path, and says which weft runs (`weft_build_info`).

use anyhow::ensure;
use serde_json::Value;
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "health test password";
const METRICS_PORT: u16 = 6782;

fn opts() -> RouterOpts {
    RouterOpts::new().password(PASSWORD)
}

/// `curl` in host `i`: `(status code, body)`.
fn curl(net: &Net, i: HostId, args: &[&str]) -> anyhow::Result<(u16, String)> {
    let mut argv = vec![
        "curl",
        "--silent",
        "--max-time",
        "10",
        "--write-out",
        "\n%{http_code}",
    ];
    argv.extend_from_slice(args);
    let out = net.exec(i, &argv)?;
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    Ok((code.parse().unwrap_or(0), body.to_owned()))
}

fn get_json(net: &Net, i: HostId, url: &str) -> anyhow::Result<(u16, Value)> {
    let (code, body) = curl(net, i, &[url])?;
    let value = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("{url}: {code} not JSON ({e}): {body}"))?;
    Ok((code, value))
}

fn check<'a>(readiness: &'a Value, name: &str) -> &'a Value {
    readiness["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn readiness_waits_for_the_ring_and_status_wait_follows_it() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // Host 2 runs no router: host 1 cannot agree on a ring with it.
    let net = Net::new(WEFT, 2)?;
    net.start(1, opts().peers([net.address(2)]))?;
    let absent = format!("{}:6783", net.address(2));
    let readyz = "http://127.0.0.1:6784/readyz";

    net.wait_until("/readyz says there is no ring yet", SETTLE, || {
        let (code, readiness) = get_json(&net, 1, readyz)?;
        let ipam = check(&readiness, "ipam");
        ensure!(
            code == 503
                && readiness["ready"] == false
                && ipam["ok"] == false
                && ipam["reason"].as_str().is_some_and(|r| r
                    .starts_with("no ring yet: 0 of 1 initial peers reachable: ")
                    && r.contains(&absent)),
            "/readyz: {code} {readiness}"
        );
        Ok(true)
    })?;
    let (code, readiness) = get_json(&net, 1, readyz)?;
    for name in ["datapath", "persistence", "peers"] {
        ensure!(check(&readiness, name)["ok"] == true, "{name}: {readiness}");
    }
    ensure!(
        check(&readiness, "peers")["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&absent)),
        "the absent peer is named: {code} {readiness}"
    );

    // Liveness does not care: the event loop answers.
    for path in ["/healthz", "/livez"] {
        let (code, alive) = get_json(&net, 1, &format!("http://127.0.0.1:6784{path}"))?;
        ensure!(
            code == 200 && alive["alive"] == true,
            "{path}: {code} {alive}"
        );
    }

    let waited = net.weft_output(1, &["status", "--wait", "--timeout", "3"])?;
    ensure!(
        !waited.success()
            && waited.stdout.contains(&format!(
                "waiting: ipam: no ring yet: 0 of 1 initial peers reachable: {absent}"
            )),
        "weft status --wait while there is no ring: {waited:?}"
    );

    let out = net.weft(1, &["ipam", "force-ring"])?;
    ensure!(out.contains("created ring"), "force-ring: {out}");
    net.wait_until("/readyz is ready once there is a ring", SETTLE, || {
        let (code, readiness) = get_json(&net, 1, readyz)?;
        ensure!(
            code == 200 && readiness["ready"] == true,
            "/readyz: {code} {readiness}"
        );
        Ok(true)
    })?;
    let waited = net.weft_output(1, &["status", "--wait", "--timeout", "10"])?;
    ensure!(
        waited.success() && waited.stdout.contains("ready"),
        "weft status --wait once ready: {waited:?}"
    );
    Ok(())
}

#[test]
fn the_metrics_listener_serves_reads_only_to_other_hosts() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    let listen = |i: HostId| format!("{}:{METRICS_PORT}", net.address(i));
    net.start_mesh(|i| opts().arg("--metrics-addr").arg(&listen(i)))?;
    let base = format!("http://{}", listen(1));

    // Host 2 scrapes host 1, as Prometheus on another node would.
    let (code, text) = curl(&net, 2, &[&format!("{base}/metrics")])?;
    ensure!(code == 200, "/metrics from another host: {code} {text}");
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        text.contains(&format!("weft_build_info{{version=\"{version}\"}} 1")),
        "weft_build_info in:\n{text}"
    );
    ensure!(text.contains("weft_peers "), "the usual series in:\n{text}");
    promtool_check(&text)?;

    net.wait_until(
        "host1 is ready through the metrics listener",
        SETTLE,
        || {
            let (code, readiness) = get_json(&net, 2, &format!("{base}/readyz"))?;
            ensure!(code == 200, "/readyz: {code} {readiness}");
            Ok(true)
        },
    )?;
    let (code, alive) = get_json(&net, 2, &format!("{base}/healthz"))?;
    ensure!(
        code == 200 && alive["alive"] == true,
        "/healthz: {code} {alive}"
    );

    // Nothing else: no status documents, no controls, no other method (even with the CLI's
    // header, even from host 1 itself).
    for path in ["/status", "/report", "/livez", "/connect?peer=10.0.0.9"] {
        let (code, body) = curl(&net, 2, &[&format!("{base}{path}")])?;
        ensure!(code == 404, "GET {path}: {code} {body}");
    }
    for i in [2, 1] {
        let (code, body) = curl(
            &net,
            i,
            &[
                "-X",
                "POST",
                "-H",
                "x-weft-client: curl",
                &format!("{base}/metrics"),
            ],
        )?;
        ensure!(code == 405, "POST /metrics from host{i}: {code} {body}");
    }
    // And the same Host guard as the status endpoint (DNS rebinding).
    let (code, body) = curl(
        &net,
        2,
        &["-H", "Host: evil.example", &format!("{base}/metrics")],
    )?;
    ensure!(code == 421, "a rebinding Host: {code} {body}");

    let (_, text) = curl(&net, 2, &[&format!("{base}/metrics")])?;
    let refused = "weft_http_requests_refused_total{listener=\"metrics\",reason=\"method\"} 2";
    ensure!(text.contains(refused), "{refused} in:\n{text}");
    Ok(())
}

/// `promtool check metrics` on a scrape, when promtool is installed (Debian's `prometheus`).
fn promtool_check(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: the scrape is not linted");
        return Ok(());
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
