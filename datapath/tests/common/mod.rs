//! What the kernel tests of the datapath edges share: a root check, `ip`, and the topology they
//! run on — a pod namespace on a bridge in a host namespace, with a TAP port on that bridge —
//! made in namespaces of their own and always removed, also when a test fails.

use std::process::Command;

use weft_datapath::tap::Tap;

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `ip` and returns its output; panics with its error if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces made by a test; deleted on drop, also when the test fails.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A pod (`eth0`, 10.99.0.2/24, up) on bridge `br0` in a host namespace, whose other port is
/// `tap`. Names start with `prefix` and carry the process id.
pub struct BridgedTap {
    pub tap: Tap,
    pub pod: String,
    _namespaces: Namespaces,
}

impl BridgedTap {
    pub fn new(prefix: &str) -> BridgedTap {
        let id = std::process::id();
        let (host, pod, tap_name) = (
            format!("wt{prefix}h{id}"),
            format!("wt{prefix}p{id}"),
            format!("w{prefix}{}", id % 100_000),
        );
        let namespaces = Namespaces(vec![host.clone(), pod.clone()]);
        ip(&["netns", "add", &host]);
        ip(&["netns", "add", &pod]);
        // The TAP keeps working after moving: the descriptor follows the device.
        let tap = Tap::create(&tap_name, false).expect("create TAP");
        ip(&["link", "set", &tap_name, "netns", &host]);
        ip(&["-n", &host, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &host, "link", "set", "br0", "up"]);
        ip(&["-n", &host, "link", "set", &tap_name, "master", "br0", "up"]);
        ip(&[
            "-n", &host, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns",
            &pod,
        ]);
        ip(&["-n", &host, "link", "set", "vpod", "master", "br0", "up"]);
        ip(&["-n", &pod, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        ip(&["-n", &pod, "link", "set", "eth0", "up"]);
        BridgedTap {
            tap,
            pod,
            _namespaces: namespaces,
        }
    }
}
