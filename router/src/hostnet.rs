//! The host's network devices the router owns: the bridge pods attach to, and its ports.
//!
//! A narrow module on purpose: it drives iproute2 for now, and is the one place to move to
//! rtnetlink (already in the dependency plan) without touching anything else.

use std::io;
use std::path::Path;
use std::process::Command;

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Creates the bridge if it does not exist, and sets its MTU and brings it up.
pub fn ensure_bridge(name: &str, mtu: u16) -> io::Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        ip(&["link", "add", name, "type", "bridge"])?;
    }
    ip(&["link", "set", name, "mtu", &mtu.to_string(), "up"])
}

/// Makes `port` a bridge port with the bridge's MTU, up.
pub fn attach(port: &str, bridge: &str, mtu: u16) -> io::Result<()> {
    ip(&[
        "link",
        "set",
        port,
        "master",
        bridge,
        "mtu",
        &mtu.to_string(),
        "up",
    ])
}

/// Sets `address` on `device`, replacing the same address with another prefix length, then
/// removes `replaced` (an address given up) if it is there.
pub fn set_address(
    device: &str,
    address: weft_cni::ip::IpNet,
    replaced: Option<weft_cni::ip::IpNet>,
) -> io::Result<()> {
    ip(&["addr", "replace", &address.to_string(), "dev", device])?;
    if let Some(old) = replaced
        && old != address
    {
        // Already gone is fine: the address must not stay, not must be removed by us.
        let _ = ip(&["addr", "del", &old.to_string(), "dev", device]);
    }
    Ok(())
}
