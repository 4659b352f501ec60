//! `weft status --cluster` and `weft status`'s exit codes on three real routers: one line per
//! node with reachability, connection, data path, encryption, MTU, IPAM share and readiness;
//! exit 0 while every connection works, 1 (with `problem:` lines on stderr) once a named peer
//! is lost, 2 when there is no router to ask.

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_tests::{Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "status cluster test password";

fn cluster_json(net: &Net, i: usize) -> anyhow::Result<Value> {
    let json = net.weft_status(i, &["--cluster", "--json"])?;
    serde_json::from_str(&json).with_context(|| format!("host{i}: not JSON:\n{json}"))
}

#[test]
fn status_cluster_shows_every_node_and_status_exits_non_zero_once_a_peer_is_lost()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 3)?;
    net.start_mesh(|_| {
        RouterOpts::new()
            .password(PASSWORD)
            .arg("--datapath")
            .arg("sleeve")
    })?;
    let names: Vec<String> = net
        .host_ids()
        .into_iter()
        .map(|i| {
            Ok(net.report_json(i)?["name"]
                .as_str()
                .unwrap_or("")
                .to_owned())
        })
        .collect::<anyhow::Result<_>>()?;

    // Every node: reachable, connected, data path up, encrypted, an MTU and a share of the
    // range (each router's bridge address comes from its own share).
    net.wait_until("host1 sees three healthy nodes", SETTLE, || {
        let view = cluster_json(&net, 1)?;
        let nodes = view["nodes"].as_array().context("no nodes")?;
        ensure!(nodes.len() == 3, "{view:#}");
        for (i, node) in nodes.iter().enumerate() {
            ensure!(node["ipam"]["addresses"].as_u64() > Some(0), "{node}");
            ensure!(node["mtu"].as_u64() > Some(1000), "{node}");
            ensure!(node["encrypted"] == true, "{node}");
            if node["peer"] == names[0].as_str() {
                ensure!(
                    node["reachable"] == "self" && node["ready"] == true,
                    "{node}"
                );
                continue;
            }
            ensure!(
                node["reachable"] == "direct"
                    && node["connection"]["state"] == "established"
                    && node["datapath"]["health"] == "up"
                    && node["ready"].is_null()
                    && node["readiness"] == "unknown (no Kubernetes API view)",
                "node {i}: {node}"
            );
        }
        Ok(true)
    })?;
    let out = net.weft_output(1, &["status", "--cluster"])?;
    ensure!(out.status.code() == Some(0), "exit 0 when healthy: {out:?}");
    eprintln!("{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(
        lines.len() == 5
            && lines[0].starts_with("3 nodes seen by ")
            && lines[1].starts_with("PEER"),
        "a header, a column header and three lines:\n{}",
        out.stdout
    );
    for (i, name) in names.iter().enumerate() {
        let nickname = net.nickname(i + 1);
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name}({nickname})")))
            .with_context(|| format!("no line for {name}:\n{}", out.stdout))?;
        let expected: &[&str] = if i == 0 {
            &[
                "self",
                "sleeve running (bridge weft)",
                "encrypted",
                "% (",
                "yes",
            ]
        } else {
            &[
                "direct",
                "established",
                "sleeve up",
                "encrypted",
                "% (",
                "unknown",
            ]
        };
        for word in expected {
            ensure!(line.contains(word), "{word:?} not in {line:?}");
        }
    }
    for i in net.host_ids() {
        let out = net.weft_output(i, &["status"])?;
        ensure!(out.status.code() == Some(0), "host{i}: {out:?}");
    }

    // Host1 goes away: host2 was told about it, so its `weft status` fails and says why,
    // while the view keeps host1's share of the range.
    net.kill(1)?;
    let address1 = format!("{}:6783", net.address(1));
    net.wait_until("host2's weft status reports host1 lost", SETTLE, || {
        let out = net.weft_output(2, &["status"])?;
        ensure!(
            out.status.code() == Some(1)
                && out.stderr.lines().any(|l| l
                    .starts_with(&format!("problem: connection to {address1} (direct) "))),
            "{out:?}"
        );
        let view = cluster_json(&net, 2)?;
        let lost = view["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["peer"] == names[0].as_str()))
            .with_context(|| format!("no line for host1 in {view:#}"))?;
        // Its address is on its line while it is in the topology, on a line of its own after.
        let dialled = view["nodes"].as_array().is_some_and(|n| {
            n.iter().any(|n| {
                (n["peer"] == names[0].as_str() || n["peer"].is_null())
                    && n["connection"]["address"] == address1.as_str()
            })
        });
        ensure!(
            dialled
                && (lost["reachable"] == "unreachable" || lost["reachable"] == "absent")
                && lost["ipam"]["addresses"].as_u64() > Some(0)
                && lost["ready"].is_null(),
            "{lost}"
        );
        Ok(true)
    })?;
    // Every view exits the same, with its output intact.
    let out = net.weft_output(2, &["status", "--json"])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    serde_json::from_str::<Value>(&out.stdout).context("the JSON is printed whole")?;

    // No router to ask: exit 2.
    let out = net.weft_output(1, &["status", "--cluster"])?;
    ensure!(out.status.code() == Some(2), "no router on host1: {out:?}");
    Ok(())
}
