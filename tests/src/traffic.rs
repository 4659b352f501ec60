//! What the datapath tests make pods send and look for: pings (one pair, or many pairs at
//! once), sha256-checked TCP transfers, byte strings in captured payloads.

use anyhow::ensure;

use crate::{Net, PodId};

/// `count` pings from pod `from` to `to` (either family), `extra` flags before the address;
/// every echo request must be answered.
pub fn ping_n(
    net: &Net,
    from: PodId,
    to: &str,
    count: usize,
    extra: &[&str],
) -> anyhow::Result<()> {
    let count = count.to_string();
    let mut argv = vec!["ping", "-c", &count, "-i", "0.2", "-W", "2"];
    argv.extend_from_slice(extra);
    argv.push(to);
    let out = net.pod_exec(from, &argv)?;
    ensure!(out.contains(" 0% packet loss"), "pod{from} -> {to}: {out}");
    Ok(())
}

/// Two pings for every `(from, to)` pair, one thread per source pod; fails with every failed
/// pair.
pub fn ping_all(net: &Net, pairs: &[(PodId, String)]) -> anyhow::Result<()> {
    let mut sources: Vec<PodId> = pairs.iter().map(|&(from, _)| from).collect();
    sources.dedup();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = sources
            .into_iter()
            .map(|from| {
                scope.spawn(move || {
                    pairs
                        .iter()
                        .filter(|(f, _)| *f == from)
                        .filter_map(|(_, to)| ping_n(net, from, to, 2, &[]).err())
                        .map(|e| format!("{e:#}"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec!["a ping thread panicked".into()])
            })
            .collect()
    });
    ensure!(
        failures.is_empty(),
        "pings failed:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Accepts one connection and prints how many bytes arrived and their sha256 (python3; argv:
/// address, port).
pub const SHA256_SERVER: &str = "
import hashlib, socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print('listening', flush=True)
conn, _ = server.accept()
digest, total = hashlib.sha256(), 0
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
";

/// Sends `argv[3]` random bytes and prints how many and their sha256 (python3; argv: address,
/// port, bytes).
pub const SHA256_CLIENT: &str = "
import hashlib, os, socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
digest, left = hashlib.sha256(), int(sys.argv[3])
while left:
    chunk = os.urandom(min(left, 1 << 20))
    digest.update(chunk)
    conn.sendall(chunk)
    left -= len(chunk)
conn.shutdown(socket.SHUT_WR)
conn.recv(1)
print(sys.argv[3], digest.hexdigest(), flush=True)
";

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Lowercase hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
