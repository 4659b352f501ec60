//! "Packet too big" replies against a real kernel: a pod on a bridge with a TAP port (in network
//! namespaces this test makes and always removes) pings a neighbour with oversized DF packets;
//! the test reads them from the TAP, answers with `icmp::too_big_reply`, and checks that the
//! pod's kernel accepted the answer: it caches the announced path MTU for the destination.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BridgedTap, ip, is_root};
use weft_datapath::icmp::too_big_reply;

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
    let net = BridgedTap::new("icmp");
    let (tap, pod) = (&net.tap, net.pod.as_str());
    ip(&[
        "-n",
        pod,
        "addr",
        "add",
        "fd99::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&["-n", pod, "link", "set", "eth0", "up"]);
    // Static neighbours: the pod sends straight away, with no ARP or neighbour discovery to
    // answer.
    for neighbour in ["10.99.0.3", "fd99::3"] {
        ip(&[
            "-n",
            pod,
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
                    "netns", "exec", pod, "ping", "-M", "do", "-s", "1400", "-c", "50", "-i",
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
            let route = ip(&["-n", pod, "route", "get", target]);
            if route.contains(&format!("mtu {MTU}")) {
                break route;
            }
        };
        assert!(answered >= 1, "{route}");
    }
}
