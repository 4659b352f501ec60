//! The TAP edge against the real kernel: a TAP device on a bridge, in network namespaces this
//! test makes (and always removes). A pod resolving a neighbour sends an ARP request that must
//! come out of the TAP; an ARP reply written to the TAP must reach the pod.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{BridgedTap, is_root};

const POD_IP: [u8; 4] = [10, 99, 0, 2];
const GHOST_IP: [u8; 4] = [10, 99, 0, 3];
const GHOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

fn arp_request_for(frame: &[u8], target: [u8; 4]) -> Option<[u8; 6]> {
    // Ethernet (14) + ARP: htype 2, ptype 2, hlen 1, plen 1, oper 2, sha 6, spa 4, tha 6, tpa 4.
    let is_arp = frame.len() >= 42 && frame[12..14] == [0x08, 0x06];
    (is_arp && frame[20..22] == [0, 1] && frame[38..42] == target)
        .then(|| frame[6..12].try_into().unwrap())
}

fn arp_reply(to_mac: [u8; 6], to_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend(to_mac);
    f.extend(GHOST_MAC);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend(GHOST_MAC);
    f.extend(GHOST_IP);
    f.extend(to_mac);
    f.extend(to_ip);
    f
}

#[test]
fn frames_cross_between_a_bridge_and_the_tap_both_ways() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let net = BridgedTap::new("tap");
    let (tap, pod) = (&net.tap, net.pod.as_str());

    // The pod asks for 10.99.0.3; the bridge floods the request to the TAP.
    let mut pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            pod,
            "ping",
            "-c",
            "3",
            "-i",
            "0.5",
            "10.99.0.3",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ping");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 65536];
    let pod_mac = loop {
        assert!(
            Instant::now() < deadline,
            "no ARP request for 10.99.0.3 came out of the TAP"
        );
        if !tap.wait_readable(Duration::from_millis(200)).unwrap() {
            continue;
        }
        let n = tap.read_frame(&mut buf).unwrap();
        if let Some(mac) = arp_request_for(&buf[..n], GHOST_IP) {
            break mac;
        }
    };

    // Answer through the TAP; the pod learns the neighbour.
    tap.write_frame(&arp_reply(pod_mac, POD_IP))
        .expect("write to TAP");
    let learned = loop {
        let out = Command::new("ip")
            .args(["-n", pod, "neigh", "show", "10.99.0.3"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("02:00:00:00:00:03") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = pinger.kill();
    let _ = pinger.wait();
    assert!(
        learned.contains("02:00:00:00:00:03"),
        "the pod did not learn the reply: {learned:?}"
    );
}
