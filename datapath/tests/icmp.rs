//! "Packet too big" replies against a real kernel: a pod on a bridge with a TAP port (in network
//! namespaces this test makes and always removes) pings a neighbour with oversized DF packets;
//! the test reads them from the TAP, answers with `icmp::too_big_reply`, and checks that the
//! pod's kernel accepted the answer: it caches the announced path MTU for the destination.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_datapath::icmp::too_big_reply;
use weft_datapath::tap::Tap;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces made by this test; deleted on drop, also when the test fails.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child process killed on drop, also when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const NEIGHBOUR_MAC: &str = "02:00:00:00:00:03";
const NEIGHBOUR_V4: [u8; 4] = [10, 99, 0, 3];
const NEIGHBOUR_V6: [u8; 16] = [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
const MTU: u16 = 1300;

/// An oversized IP packet to `neighbour` (IPv4 or IPv6 by the address length).
fn is_oversized_to(frame: &[u8], neighbour: &[u8]) -> bool {
    let (ethertype, dst) = match neighbour.len() {
        4 => ([0x08, 0x00], frame.get(30..34)),
        _ => ([0x86, 0xdd], frame.get(38..54)),
    };
    frame.len() > 14 + usize::from(MTU)
        && frame.get(12..14) == Some(&ethertype)
        && dst == Some(neighbour)
}

#[test]
fn a_pods_kernel_takes_the_announced_mtu_from_our_replies() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let id = std::process::id();
    let (host, pod, tap_name) = (
        format!("wticmph{id}"),
        format!("wticmpp{id}"),
        format!("wicmp{}", id % 100_000),
    );
    let _namespaces = Namespaces(vec![host.clone(), pod.clone()]);
    ip(&["netns", "add", &host]);
    ip(&["netns", "add", &pod]);

    let tap = Tap::create(&tap_name, false).expect("create TAP");
    ip(&["link", "set", &tap_name, "netns", &host]);
    ip(&["-n", &host, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &host, "link", "set", "br0", "up"]);
    ip(&["-n", &host, "link", "set", &tap_name, "master", "br0", "up"]);
    ip(&[
        "-n", &host, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ]);
    ip(&["-n", &host, "link", "set", "vpod", "master", "br0", "up"]);
    ip(&["-n", &pod, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    ip(&[
        "-n",
        &pod,
        "addr",
        "add",
        "fd99::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&["-n", &pod, "link", "set", "eth0", "up"]);
    // Static neighbours: the pod sends straight away, with no ARP or neighbour discovery to
    // answer.
    for neighbour in ["10.99.0.3", "fd99::3"] {
        ip(&[
            "-n",
            &pod,
            "neigh",
            "add",
            neighbour,
            "lladdr",
            NEIGHBOUR_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }

    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::new();
    for (target, neighbour) in [
        ("10.99.0.3", &NEIGHBOUR_V4[..]),
        ("fd99::3", &NEIGHBOUR_V6[..]),
    ] {
        // 1400 bytes of ICMP data with DF: a 1428-byte IPv4 or 1448-byte IPv6 packet.
        let _ping = Killed(
            Command::new("ip")
                .args([
                    "netns", "exec", &pod, "ping", "-M", "do", "-s", "1400", "-c", "50", "-i",
                    "0.2", target,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start ping"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut answered = 0;
        let route = loop {
            assert!(
                Instant::now() < deadline,
                "the pod's kernel never took MTU {MTU} for {target} ({answered} replies sent)"
            );
            if tap.wait_readable(Duration::from_millis(100)).unwrap() {
                let n = tap.read_frame(&mut buf).unwrap();
                let frame = &buf[..n];
                if is_oversized_to(frame, neighbour) {
                    let len = too_big_reply(frame, MTU, &mut reply).expect("a reply");
                    tap.write_frame(&reply[..len]).expect("write to TAP");
                    answered += 1;
                }
            }
            let route = ip(&["-n", &pod, "route", "get", target]);
            if route.contains(&format!("mtu {MTU}")) {
                break route;
            }
        };
        assert!(answered >= 1, "{route}");
    }
}
