//! Issue 9, findings 5 and 6: a damaged state store and a full disk, on real routers.
//!
//! - A store truncated to 0 bytes, or with 16 KiB of garbage in its middle, stops start-up
//!   (exit code 3) with an error naming the file and the recovery command, and no panic;
//!   `weft store recover` rebuilds it from the last-good copy with the same peer name and every
//!   allocation.
//! - With the last-good copy damaged too, recovery starts empty and says so.
//! - On a 1 MiB data filesystem filled up, ADDs fail cleanly, CNI STATUS, `/readyz` and
//!   `/report` say persistence fails; once space is freed ADDs work again without a restart and
//!   every ADD answered before is still held.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use weft_cni::client::{Transport, UnixHttp};
use weft_tests::{Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// One plugin request on the router's socket: `(status, body)`.
fn cni(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let answer = UnixHttp
        .request(socket, method, path, body.map(str::as_bytes))
        .map_err(|e| anyhow::anyhow!("{path}: {e:?}"))?;
    Ok((
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

/// A CNI ADD: `Ok(address)` or `Err((status, body))`.
fn add(net: &Net, container: &str) -> anyhow::Result<Result<String, (u16, String)>> {
    let body =
        format!(r#"{{"container_id":"{container}","ifname":"eth0","netns":"/run/netns/none"}}"#);
    let (status, answer) = cni(&net.cni_socket(1), "POST", "/cni/add", Some(&body))?;
    if status != 200 {
        return Ok(Err((status, answer)));
    }
    let v: Value = serde_json::from_str(&answer).with_context(|| answer.clone())?;
    let address = v["address"].as_str().with_context(|| answer.clone())?;
    Ok(Ok(address.split('/').next().unwrap_or_default().to_owned()))
}

/// Every allocation host1 holds, container → address.
fn held(net: &Net) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(net
        .ipam_allocations(1)?
        .into_iter()
        .map(|a| (a.container_id, a.address.to_string()))
        .collect())
}

fn data_dir(net: &Net) -> PathBuf {
    net.host_dir(1).join("data")
}

fn store_file(net: &Net) -> PathBuf {
    data_dir(net).join("weft.redb")
}

fn wait_for_gateway(net: &Net) -> anyhow::Result<()> {
    net.wait_until("host1 has its bridge address", SETTLE, || {
        Ok(net.ipam(1)?["gateway"].is_string())
    })
}

/// A router with `pods` allocations; returns its name and what it holds.
fn router_with_pods(pods: usize) -> anyhow::Result<(Net, String, BTreeMap<String, String>)> {
    let net = Net::new(WEFT, 1)?;
    net.start(1, RouterOpts::new())?;
    wait_for_gateway(&net)?;
    for n in 0..pods {
        let container = format!("pod-{n}");
        if let Err((status, body)) = add(&net, &container)? {
            bail!("ADD {container}: {status} {body}");
        }
    }
    let name = net.report(1)?.name;
    let held = held(&net)?;
    ensure!(held.len() == pods + 1, "the pods and the gateway: {held:?}");
    Ok((net, name, held))
}

/// Starting host1 fails with exit code 3 and an error that names the store and the recovery
/// command, without a panic; returns what the failed start logged.
fn start_is_refused(net: &Net, expect: &str) -> anyhow::Result<String> {
    let log_before = net.log(1).len();
    match net.start(1, RouterOpts::new()) {
        Ok(()) => bail!("the router started on a damaged store"),
        Err(e) => check_refusal(net, &e.to_string(), log_before, expect),
    }
}

/// `start_error`: what a start that failed said; `log_before`: the log's length before it.
fn check_refusal(
    net: &Net,
    start_error: &str,
    log_before: usize,
    expect: &str,
) -> anyhow::Result<String> {
    ensure!(
        start_error.contains("exit status: 3"),
        "not exit code 3: {start_error}"
    );
    let log = net.log(1)[log_before..].to_owned();
    let store = store_file(net).display().to_string();
    let command = format!("weft store recover --data-dir {}", data_dir(net).display());
    ensure!(
        log.contains("ERROR") && log.contains(&store) && log.contains(&command),
        "the error must name {store} and `{command}`:\n{log}"
    );
    ensure!(log.contains(expect), "expected {expect:?} in:\n{log}");
    ensure!(!log.contains("panicked"), "a panic:\n{log}");
    Ok(log)
}

/// `weft store recover` on host1's data directory; returns what it printed.
fn recover(net: &Net) -> anyhow::Result<String> {
    let data = data_dir(net).display().to_string();
    let out = net.weft_output(1, &["store", "recover", "--data-dir", &data])?;
    ensure!(
        out.success(),
        "weft store recover: {}: {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    ensure!(!out.stderr.contains("panicked"), "{}", out.stderr);
    Ok(out.stdout + &out.stderr)
}

/// Damages the store with `damage`, and checks the refusal and the recovery from the last-good
/// copy: same peer name, every allocation.
fn damaged_store_is_refused_and_recovered(
    damage: impl Fn(&Path) -> anyhow::Result<()>,
    expect: &str,
) -> anyhow::Result<()> {
    let (net, name, before) = router_with_pods(8)?;
    net.kill(1)?;
    damage(&store_file(&net))?;
    start_is_refused(&net, expect)?;
    recovery_keeps_everything(&net, Recovery::Command, &name, &before)
}

/// How the operator recovers.
#[derive(Clone, Copy)]
enum Recovery {
    /// `weft store recover --data-dir …`, then a normal start.
    Command,
    /// `weft router --recover-store`.
    RouterFlag,
}

/// Recovery, then the router runs with the same name and every allocation.
fn recovery_keeps_everything(
    net: &Net,
    how: Recovery,
    name: &str,
    before: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let said = match how {
        Recovery::Command => {
            let said = recover(net)?;
            net.start(1, RouterOpts::new())?;
            said
        }
        Recovery::RouterFlag => {
            let log_before = net.log(1).len();
            net.start(1, RouterOpts::new().arg("--recover-store"))?;
            net.log(1)[log_before..].to_owned()
        }
    };
    ensure!(
        said.contains("rebuilt from the last-good copy") && said.contains(name),
        "{said}"
    );
    wait_for_gateway(net)?;
    let report = net.report_json(1)?;
    ensure!(
        report["name"] == name,
        "the peer name changed: {}",
        report["name"]
    );
    let after = held(net)?;
    ensure!(
        after == *before,
        "allocations before {before:?}\nafter {after:?}"
    );
    let recovered = &report["store"]["recovered_from"];
    ensure!(recovered["source"] == "last-good-copy", "{recovered}");
    let aside = recovered["damaged_file"].as_str().unwrap_or_default();
    ensure!(
        aside.contains("weft.redb.damaged-") && Path::new(aside).exists(),
        "the damaged file is kept aside: {recovered}"
    );
    ensure!(
        report["store"]["persistence"] == "ok",
        "{}",
        report["store"]
    );
    // A new ADD gets an address nobody holds.
    let fresh = add(net, "after-recovery")?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    ensure!(
        !before.values().any(|a| *a == fresh),
        "{fresh} was handed out twice"
    );
    Ok(())
}

#[test]
fn a_truncated_store_stops_start_up_and_recovers_every_allocation() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    damaged_store_is_refused_and_recovered(
        |store| {
            Ok(std::fs::File::options()
                .write(true)
                .open(store)?
                .set_len(0)?)
        },
        "is empty (0 bytes)",
    )
}

/// 16 KiB of pseudo-random bytes written over `path` at `offset`.
fn scribble(path: &Path, offset: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
    let garbage: Vec<u8> = (0..SCRIBBLE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut file = std::fs::File::options().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&garbage)?;
    file.sync_all()?;
    Ok(())
}

const SCRIBBLE: u64 = 16 << 10;

#[test]
fn garbage_in_the_store_is_an_error_not_a_panic_and_recovers_every_allocation() -> anyhow::Result<()>
{
    if !require_root() {
        return Ok(());
    }
    let (net, name, before) = router_with_pods(8)?;
    let path = store_file(&net);
    let len = std::fs::metadata(&path)?.len();
    ensure!(len > 2 * SCRIBBLE, "a store of {len} bytes is too small");
    // redb copies pages on write, so the middle of the file may hold only pages no longer in
    // use: garbage there harms nothing, and the router must start with everything intact.
    // Windows further out are tried until one hits live data, which must stop start-up.
    let middle = len / 2 - SCRIBBLE / 2;
    let windows = (0..16u64).map(|k| {
        let step = k.div_ceil(2) * SCRIBBLE;
        let offset = if k % 2 == 1 {
            middle.saturating_sub(step)
        } else {
            middle + step
        };
        offset.min(len - SCRIBBLE)
    });
    let mut refused = false;
    for (k, offset) in windows.enumerate() {
        net.kill(1)?;
        scribble(&path, offset, k as u64)?;
        let log_before = net.log(1).len();
        match net.start(1, RouterOpts::new()) {
            Err(e) => {
                eprintln!("16 KiB of garbage at {offset} of {len}: start-up refused");
                let log = check_refusal(&net, &e.to_string(), log_before, "is corrupt")?;
                let said = log
                    .lines()
                    .find(|l| l.contains("ERROR"))
                    .unwrap_or_default();
                eprintln!("{said}");
                refused = true;
                break;
            }
            Ok(()) => {
                eprintln!("16 KiB of garbage at {offset} of {len} hit no live page");
                wait_for_gateway(&net)?;
                let after = held(&net)?;
                ensure!(
                    after == before,
                    "the router started on a store that lost data: {after:?}"
                );
                ensure!(!net.log(1).contains("panicked"), "a panic");
            }
        }
    }
    ensure!(
        refused,
        "16 windows of 16 KiB of garbage never hit live data"
    );
    recovery_keeps_everything(&net, Recovery::RouterFlag, &name, &before)
}

#[test]
fn with_the_last_good_copy_damaged_too_recovery_starts_empty_and_says_so() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (net, _name, before) = router_with_pods(3)?;
    net.kill(1)?;
    std::fs::File::options()
        .write(true)
        .open(store_file(&net))?
        .set_len(0)?;
    let copy = data_dir(&net).join("weft.lastgood");
    let mut bytes = std::fs::read(&copy)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&copy, bytes)?;

    start_is_refused(&net, "damaged too")?;
    let said = recover(&net)?;
    ensure!(
        said.contains("STARTS EMPTY") && said.contains("allocations are lost"),
        "recovery must say loudly that it starts empty: {said}"
    );
    net.start(1, RouterOpts::new())?;
    wait_for_gateway(&net)?;
    let report = net.report_json(1)?;
    ensure!(
        report["store"]["recovered_from"]["source"] == "nothing",
        "{}",
        report["store"]
    );
    let after = held(&net)?;
    ensure!(
        after
            .keys()
            .all(|c| !before.contains_key(c) || c == "weft:gateway"),
        "nothing of the old state can come back: {after:?}"
    );
    ensure!(
        net.log(1).contains("rebuilt from nothing"),
        "the router's log says it too"
    );
    Ok(())
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()?;
        ensure!(
            status.success(),
            "mount tmpfs on {}: {status}",
            at.display()
        );
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the router may still have files open here; it is killed right after.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = file.sync_all();
    Ok(written)
}

/// Readiness (`/readyz`): persistence is one of its checks. (`/healthz` is liveness, which a
/// full disk does not fail: restarting would not help.)
fn readyz(net: &Net) -> anyhow::Result<(String, String)> {
    let out = net.exec(
        1,
        &[
            "curl",
            "--silent",
            "--max-time",
            "10",
            "--write-out",
            "\n%{http_code}",
            "http://127.0.0.1:6784/readyz",
        ],
    )?;
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", ""));
    Ok((code.to_owned(), body.to_owned()))
}

#[test]
fn after_a_full_disk_adds_work_again_without_a_restart_and_nothing_is_lost() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    // Declared after `net`, so it is unmounted before the Net's directory is removed.
    let _tmpfs = Tmpfs::mount(&data_dir(&net), "1m")?;
    net.start(1, RouterOpts::new())?;
    wait_for_gateway(&net)?;
    let pid = net.pid(1);
    let mut acknowledged = BTreeMap::new();
    for n in 0..20 {
        let container = format!("before-{n}");
        match add(&net, &container)? {
            Ok(address) => acknowledged.insert(container, address),
            Err(e) => bail!("ADD {container} before the disk is full: {e:?}"),
        };
    }

    let filler = data_dir(&net).join("filler");
    let filled = fill(&filler)?;
    // Room for the last-good copy but not for the database to grow: ADDs fill the database
    // until redb itself hits ENOSPC, which is what left it broken until a restart.
    let slack: u64 = 256 << 10;
    std::fs::File::options()
        .write(true)
        .open(&filler)?
        .set_len(filled.saturating_sub(slack))?;
    eprintln!("filler: {filled} bytes");
    // ADDs until one fails: the store may still have room inside its file for a while.
    let mut refused = None;
    for n in 0..2000 {
        let container = format!("full-{n}");
        match add(&net, &container)? {
            Ok(address) => {
                acknowledged.insert(container, address);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let Some((status, body)) = refused else {
        bail!("2000 ADDs on a full disk all succeeded");
    };
    // Full to the last byte now, so the failure lasts until the test frees space.
    let filler2 = data_dir(&net).join("filler2");
    fill(&filler2)?;
    let mut database_failed = body.contains("weft.redb");
    eprintln!(
        "{} ADDs acknowledged; refused by {}: {body}",
        acknowledged.len(),
        if database_failed {
            "the database"
        } else {
            "the last-good copy"
        }
    );
    let error: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    ensure!(
        status == 500
            && error["code"] == 5
            && error["msg"].as_str().is_some_and(|m| m.contains("persist")),
        "a clean CNI error (code 5, cannot persist): {status} {body}"
    );
    ensure!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("No space left")),
        "the error says why: {body}"
    );
    let (status, body) = cni(&net.cni_socket(1), "GET", "/cni/status", None)?;
    ensure!(
        status != 200 && body.contains("\"code\":50") && body.contains("persistence failing"),
        "CNI STATUS while the disk is full: {status} {body}"
    );
    let (code, body) = readyz(&net)?;
    ensure!(
        code == "503" && body.contains("persistence failing"),
        "/readyz while the disk is full: {code} {body}"
    );
    // A pod asked again (the runtime retries ADDs) keeps the address it was given: it is on
    // disk, and a failing write must not release it.
    let again = add(&net, "before-0")?.map_err(|e| anyhow::anyhow!("ADD again: {e:?}"))?;
    ensure!(
        Some(&again) == acknowledged.get("before-0"),
        "before-0 was given {:?}, asked again while the disk is full: {again}",
        acknowledged.get("before-0")
    );
    let report = net.report_json(1)?;
    ensure!(
        report["store"]["persistence"] == "failing",
        "{}",
        report["store"]
    );
    // The retries while failing are real writes: on a disk full to the last byte the
    // database itself fails too (redb then needs re-opening).
    let error = report["store"]["error"].as_str().unwrap_or_default();
    database_failed |= error.contains("weft.redb") || error.contains("re-open");
    let metrics = net.metrics(1)?;
    ensure!(
        metrics.get("weft_store_persistence_failing") == Some(1.0)
            && metrics
                .get("weft_store_write_failures_total")
                .is_some_and(|n| n >= 1.0),
        "metrics while failing: {:?} {:?}",
        metrics.get("weft_store_persistence_failing"),
        metrics.get("weft_store_write_failures_total")
    );

    std::fs::remove_file(&filler)?;
    std::fs::remove_file(&filler2)?;
    net.wait_until("ADDs work again", SETTLE, || {
        match add(&net, "after-full")? {
            Ok(address) => {
                acknowledged.insert("after-full".to_owned(), address);
                Ok(true)
            }
            Err(e) => bail!("{e:?}"),
        }
    })?;
    ensure!(net.pid(1) == pid, "the router was restarted");
    ensure!(
        net.log(1).contains("persistence works again"),
        "the recovery is logged"
    );
    let (status, body) = cni(&net.cni_socket(1), "GET", "/cni/status", None)?;
    ensure!(
        status == 200,
        "CNI STATUS after space was freed: {status} {body}"
    );
    let (code, body) = readyz(&net)?;
    ensure!(
        code == "200",
        "/readyz after space was freed: {code} {body}"
    );
    let report = net.report_json(1)?;
    ensure!(
        report["store"]["persistence"] == "ok",
        "{}",
        report["store"]
    );
    let kept = held(&net)?;
    for (container, address) in &acknowledged {
        ensure!(
            kept.get(container) == Some(address),
            "{container} was given {address}; the router holds {:?}",
            kept.get(container)
        );
    }
    let metrics = net.metrics(1)?;
    if database_failed {
        ensure!(
            metrics.get("weft_store_reopens_total{result=\"ok\"}") >= Some(1.0),
            "redb failed: the database must have been re-opened"
        );
    }
    eprintln!(
        "{} ADDs acknowledged, all held; store: {}; reopens ok {:?}, failed {:?}",
        acknowledged.len(),
        report["store"],
        metrics.get("weft_store_reopens_total{result=\"ok\"}"),
        metrics.get("weft_store_reopens_total{result=\"failed\"}"),
    );

    // And after a restart too: the store on the once-full disk is intact.
    net.restart(1)?;
    wait_for_gateway(&net)?;
    let after_restart = held(&net)?;
    ensure!(
        after_restart == kept,
        "before the restart {kept:?}\nafter {after_restart:?}"
    );
    Ok(())
}
