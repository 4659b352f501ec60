//! Proves the kernel-VM harness (`tests/kernel-vm/run-kernel-tests`) end to end: this test binary
//! is built on the host, and in the VM (Debian's 6.1 kernel, where the `openvswitch` module is
//! loaded) it checks that the OVS generic netlink families resolve. On a host without the module
//! it skips itself, so `cargo test --workspace` stays green everywhere.
//!
//! The `kernel_` prefix is what the harness filters on; tests that need the OVS kernel datapath
//! are named `kernel_*` so that the host's `cargo test` skips them and the VM runs them.

use std::path::Path;
use std::process::Command;

#[test]
fn kernel_vm_has_openvswitch() {
    if !Path::new("/sys/module/openvswitch").exists() {
        println!("skipped: not in the kernel VM (no /sys/module/openvswitch)");
        return;
    }
    // `genl ctrl get` asks the kernel's nlctrl for the family by name: the same lookup the OVS
    // netlink client does before its first request.
    for family in ["ovs_datapath", "ovs_vport", "ovs_flow", "ovs_packet"] {
        let out = Command::new("genl")
            .args(["ctrl", "get", "name", family])
            .output()
            .expect("run genl (iproute2)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(family),
            "generic netlink family {family} does not resolve: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let id = stdout
            .split_whitespace()
            .skip_while(|w| *w != "ID:")
            .nth(1)
            .unwrap_or("?");
        println!("{family}: generic netlink family id {id}");
    }
}
