//! `weft reset` against a real node (a harness host): a router with the sleeve datapath, a pod
//! through the real plugin (cnitool) from the conflist `weft install-cni` wrote, then
//! `weft reset`. It
//! refuses while the router runs; with the router killed it leaves no conflist, plugin, bridge,
//! TAP, pod veth, nftables table, socket or data; a second run finds nothing and exits 0.
//! Needs root (and the CNI clients of `tests/clients/`); skipped otherwise.

use std::path::Path;

use anyhow::ensure;
use serde_json::Value;
use weft_tests::cni::{self, ContainerNs};
use weft_tests::{Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "reset test password";

/// The names of the network devices in host 1.
fn links(net: &Net) -> anyhow::Result<Vec<String>> {
    let json = net.exec(1, &["ip", "-j", "link", "show"])?;
    let links: Value = serde_json::from_str(&json)?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

fn weft_links(net: &Net) -> anyhow::Result<Vec<String>> {
    Ok(links(net)?
        .into_iter()
        .filter(|n| n == "weft" || n == "weft-tap" || n.starts_with("vw"))
        .collect())
}

/// `nft list tables` in host 1: weft's tables among them.
fn weft_tables(net: &Net) -> anyhow::Result<Vec<String>> {
    let tables = net.exec(1, &["nft", "list", "tables"])?;
    Ok(tables
        .lines()
        .map(str::trim)
        .filter(|l| *l == "table ip weft" || *l == "table bridge weft")
        .map(str::to_owned)
        .collect())
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[test]
fn reset_refuses_while_the_router_runs_then_leaves_nothing_and_is_idempotent() -> anyhow::Result<()>
{
    if !require_root() {
        return Ok(());
    }
    cni::clients()?;
    let plugin = cni::plugin_binary(WEFT.as_ref())?;
    let net = Net::new(WEFT, 1)?;
    net.start(1, RouterOpts::new().password(PASSWORD))?;
    net.wait_until("IPAM is ready", SETTLE, || net.check_ipam_ready(&[1]))?;

    let host = net.cni_host(1, &plugin)?;
    let data_dir = net.host_dir(1).join("data");
    let (bin, conf, socket) = (
        host.bin_dir.display().to_string(),
        host.conf_dir.display().to_string(),
        host.socket.display().to_string(),
    );
    net.weft(
        1,
        &[
            "install-cni",
            "--plugin",
            &plugin.display().to_string(),
            "--bin-dir",
            &bin,
            "--conf-dir",
            &conf,
            "--cni-socket",
            &socket,
        ],
    )?;
    let conflist = host.conf_dir.join("10-weft.conflist");
    let plugin_installed = host.bin_dir.join("weft-cni");
    ensure!(exists(&conflist) && exists(&plugin_installed));

    // A pod through the real plugin, from the conflist install-cni wrote (network "weft").
    let pod = ContainerNs::new(&net)?;
    host.add("weft", &pod, None)?;
    let veths = host.weft_veths()?;
    ensure!(veths.len() == 1, "one pod veth: {veths:?}");
    let before = weft_links(&net)?;
    ensure!(
        before.contains(&"weft".to_owned()) && before.contains(&"weft-tap".to_owned()),
        "bridge and TAP before the reset: {before:?}"
    );
    let tables = weft_tables(&net)?;
    ensure!(
        tables.len() == 2,
        "both of weft's nftables tables before the reset: {tables:?}"
    );

    let data = data_dir.display().to_string();
    let reset = [
        "reset",
        "--cni-conf-dir",
        &conf,
        "--cni-bin-dir",
        &bin,
        "--data-dir",
        &data,
        "--cni-socket",
        &socket,
    ];

    // While the router serves: refused, nothing touched.
    let refused = net.weft_output(1, &reset)?;
    ensure!(
        refused.status.code() == Some(2)
            && refused
                .stderr
                .contains("a weft router is running on this node")
            && refused.stderr.contains("stop it first"),
        "reset while the router runs: {refused:?}"
    );
    ensure!(
        exists(&conflist) && exists(&plugin_installed) && exists(&host.socket),
        "a refused reset removed something"
    );
    ensure!(
        weft_links(&net)? == before,
        "a refused reset removed a device"
    );

    net.kill(1)?;
    // The router's TAP is not persistent: it went with the router's process. A persistent one
    // of that name (made by hand, say) is a leftover and goes too.
    net.exec(
        1,
        &["ip", "tuntap", "add", "dev", "weft-tap", "mode", "tap"],
    )?;
    let out = net.weft_output(1, &reset)?;
    println!("weft reset:\n{}{}", out.stdout, out.stderr);
    ensure!(
        out.success(),
        "weft reset after the router stopped: {out:?}"
    );
    for line in [
        format!("removed network config {}", conflist.display()),
        format!("removed plugin {}", plugin_installed.display()),
        format!("removed pod veth {}", veths[0]),
        "removed TAP weft-tap".to_owned(),
        "removed bridge weft".to_owned(),
        "removed nftables table ip weft".to_owned(),
        "removed nftables table bridge weft".to_owned(),
        format!("removed CNI socket {socket}"),
        format!("removed data dir {data}"),
    ] {
        ensure!(
            out.stdout.contains(&line),
            "no {line:?} in:\n{}",
            out.stdout
        );
    }

    let left = weft_links(&net)?;
    ensure!(left.is_empty(), "devices left: {left:?}");
    let tables = weft_tables(&net)?;
    ensure!(tables.is_empty(), "nftables tables left: {tables:?}");
    for path in [&conflist, &plugin_installed, &host.socket, &data_dir] {
        ensure!(!exists(path), "{} is still there", path.display());
    }
    // Only weft's plugin went: the reference plugins beside it stay.
    ensure!(
        exists(&host.bin_dir.join("portmap")),
        "reset removed a plugin that is not weft's"
    );

    let again = net.weft_output(1, &reset)?;
    ensure!(
        again.success() && again.stdout.contains("nothing to remove"),
        "second reset: {again:?}"
    );
    ensure!(
        !again.stdout.contains("removed"),
        "second reset removed something: {}",
        again.stdout
    );
    drop(pod);
    Ok(())
}

#[test]
fn a_foreign_config_and_kept_data_are_left_and_named() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    let dir = net.host_dir(1);
    let (conf_dir, bin_dir, data_dir) = (dir.join("net.d"), dir.join("bin"), dir.join("data"));
    for d in [&conf_dir, &bin_dir, &data_dir] {
        std::fs::create_dir_all(d)?;
    }
    // Another network's config under weft's file name, and a data dir with a store in it.
    let foreign = br#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#;
    let conflist = conf_dir.join("10-weft.conflist");
    std::fs::write(&conflist, foreign)?;
    std::fs::write(data_dir.join("weft.redb"), b"not really a store")?;
    let path = |p: &Path| p.display().to_string();
    let (conf, bin, data, socket) = (
        path(&conf_dir),
        path(&bin_dir),
        path(&data_dir),
        path(&dir.join("cni.sock")),
    );
    let out = net.weft_output(
        1,
        &[
            "reset",
            "--cni-conf-dir",
            &conf,
            "--cni-bin-dir",
            &bin,
            "--data-dir",
            &data,
            "--cni-socket",
            &socket,
            "--keep-data",
        ],
    )?;
    ensure!(out.success(), "weft reset: {out:?}");
    ensure!(
        out.stdout
            .contains("does not name the weft-cni plugin, not weft's: left alone")
            && out.stdout.contains("kept (--keep-data)")
            && out.stdout.contains("nothing to remove"),
        "weft reset said:\n{}",
        out.stdout
    );
    ensure!(
        std::fs::read(&conflist)? == foreign,
        "the foreign config changed"
    );
    ensure!(
        exists(&data_dir.join("weft.redb")),
        "--keep-data removed the store"
    );
    Ok(())
}
