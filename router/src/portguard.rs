//! Anti-spoofing on each pod's bridge port: frames, ARP and IPv6 neighbour discovery from a pod
//! attached by `weft-cni` must carry its own MAC and its own address.
//!
//! The router chooses each attachment's MAC (the plugin sets it on the pod's interface) and
//! its address, and the plugin names the host end of the veth, so the router knows what every
//! guarded port may send. The rules are nftables `bridge` family rules, built here as pure data
//! like [`crate::nat`]: one table `bridge weft` whose chains never change, and per-port facts
//! as set elements, so attaching or detaching a port is one small transaction (elements only,
//! no chain or rule changes) and the drop counters, named counter objects, keep counting:
//!
//! - `guarded`: the host ends of guarded ports; frames entering from them jump to `guard`;
//! - `port_mac` (`ifname . ether_addr`), `port_ipv4` (`ifname . ipv4_addr`), `port_ipv6`
//!   (`ifname . ipv6_addr`: the pod's EUI-64 link-local address, derived from its MAC) and
//!   `port_na` (the same address as the raw neighbour-advertisement target field).
//!
//! What a guarded port may send (anything else is dropped and counted by kind):
//! - `mac`: any frame whose source MAC is not the pod's;
//! - `arp`: ARP whose sender hardware address is not the pod's, or whose sender IP is neither
//!   the pod's nor 0.0.0.0 (address probes);
//! - `ip`: IPv4 from another source address; IPv6 from a source other than the pod's
//!   link-local address or `::` (duplicate address detection);
//! - `nd`: router advertisements and redirects (a pod is not a router), and neighbour
//!   advertisements for a target that is not the pod's link-local address;
//! - `ethertype`: anything but ARP, IPv4 and IPv6 (VLAN tags, raw Ethernet).
//!
//! Destinations are not restricted: broadcast and multicast work as before. Ports the router
//! did not set up (an older plugin that does not name its veth, hand-made ports) are not
//! guarded; `weft_datapath::mac` caps what they can claim.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_datapath::mac::{Mac, format_mac};

/// weft's bridge-family table (the `ip weft` table of [`crate::nat`] is another family).
pub const TABLE: &str = "weft";

/// The drop kinds, as named in the counters (`spoofed_<kind>`) and in the metric's label.
pub const KINDS: [&str; 5] = ["mac", "arp", "nd", "ip", "ethertype"];

/// One guarded port: the host end of the pod's veth and what the pod may send from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_veth: String,
    #[serde(with = "mac_text")]
    pub mac: Mac,
    pub ipv4: Ipv4Addr,
}

impl PortSpec {
    /// The pod's IPv6 link-local address: the kernel's default (EUI-64 from the MAC).
    pub fn link_local(&self) -> Ipv6Addr {
        link_local(&self.mac)
    }
}

/// `fe80::` + the EUI-64 interface identifier of `mac` (universal/local bit flipped).
pub fn link_local(mac: &Mac) -> Ipv6Addr {
    let [a, b, c, d, e, f] = *mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// Whether `name` can be a host veth in the rules: an interface name (1 to 15 bytes) of
/// letters, digits, `_`, `-` and `.`, so it is quoted safely into the script.
pub fn valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A MAC for a new attachment from 6 random bytes: unicast, locally administered.
pub fn attachment_mac(random: [u8; 6]) -> Mac {
    let mut mac = random;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    if mac[1..] == [0; 5] {
        mac[5] = 1;
    }
    mac
}

/// The script that (re)creates the table with `ports` guarded (at router start: the ports of
/// the persisted allocations).
pub fn ruleset(ports: &[PortSpec]) -> String {
    let mut s = format!(
        "table bridge {TABLE} {{}}\n\
         delete table bridge {TABLE}\n\
         table bridge {TABLE} {{\n"
    );
    for kind in KINDS {
        let _ = writeln!(s, "\tcounter spoofed_{kind} {{}}");
    }
    s.push_str(
        "\tset guarded { type ifname; }\n\
         \tset port_mac { type ifname . ether_addr; }\n\
         \tset port_ipv4 { type ifname . ipv4_addr; }\n\
         \tset port_ipv6 { type ifname . ipv6_addr; }\n\
         \tset port_na { typeof iifname . @th,64,128; }\n\
         \tchain prerouting {\n\
         \t\ttype filter hook prerouting priority 0; policy accept;\n\
         \t\tiifname @guarded jump guard\n\
         \t}\n\
         \tchain guard {\n\
         \t\tiifname . ether saddr != @port_mac counter name spoofed_mac drop\n\
         \t\tether type arp iifname . arp saddr ether != @port_mac counter name spoofed_arp drop\n\
         \t\tether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @port_ipv4 counter name spoofed_arp drop\n\
         \t\tether type ip iifname . ip saddr != @port_ipv4 counter name spoofed_ip drop\n\
         \t\tether type ip6 ip6 saddr != :: iifname . ip6 saddr != @port_ipv6 counter name spoofed_ip drop\n\
         \t\ticmpv6 type { nd-router-advert, nd-redirect } counter name spoofed_nd drop\n\
         \t\ticmpv6 type nd-neighbor-advert iifname . @th,64,128 != @port_na counter name spoofed_nd drop\n\
         \t\tether type != { arp, ip, ip6 } counter name spoofed_ethertype drop\n\
         \t}\n\
         }\n",
    );
    for port in ports {
        add_elements(&mut s, port);
    }
    s
}

/// The set elements of one port, as `(set, element)`.
fn elements(port: &PortSpec) -> [(&'static str, String); 5] {
    let name = &port.host_veth;
    let ll = port.link_local();
    [
        ("guarded", format!("\"{name}\"")),
        (
            "port_mac",
            format!("\"{name}\" . {}", format_mac(&port.mac)),
        ),
        ("port_ipv4", format!("\"{name}\" . {}", port.ipv4)),
        ("port_ipv6", format!("\"{name}\" . {ll}")),
        ("port_na", format!("\"{name}\" . 0x{:032x}", u128::from(ll))),
    ]
}

fn add_elements(s: &mut String, port: &PortSpec) {
    for (set, element) in elements(port) {
        let _ = writeln!(s, "add element bridge {TABLE} {set} {{ {element} }}");
    }
}

/// Removes a port's elements. Each is added first, so the transaction does not fail on an
/// element someone else already removed.
fn remove_elements(s: &mut String, port: &PortSpec) {
    for (set, element) in elements(port) {
        let _ = writeln!(s, "add element bridge {TABLE} {set} {{ {element} }}");
        let _ = writeln!(s, "delete element bridge {TABLE} {set} {{ {element} }}");
    }
}

/// The transaction that guards `port`, replacing what `previous` (the same attachment's
/// earlier port, on a repeated ADD) allowed.
pub fn attach_script(port: &PortSpec, previous: Option<&PortSpec>) -> String {
    let mut s = String::new();
    if let Some(previous) = previous {
        remove_elements(&mut s, previous);
    }
    add_elements(&mut s, port);
    s
}

/// The transaction that stops guarding `port` (its attachment is gone).
pub fn detach_script(port: &PortSpec) -> String {
    let mut s = String::new();
    remove_elements(&mut s, port);
    s
}

/// Frames dropped so far, by kind (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoofCounts {
    pub mac: u64,
    pub arp: u64,
    pub nd: u64,
    pub ip: u64,
    pub ethertype: u64,
}

impl SpoofCounts {
    /// By kind, named as the metric's `kind` label.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("mac", self.mac),
            ("arp", self.arp),
            ("nd", self.nd),
            ("ip", self.ip),
            ("ethertype", self.ethertype),
        ]
    }
}

/// Reads the drop counters from `nft -j list counters table bridge weft`.
pub fn parse_counters(json: &str) -> Result<SpoofCounts, String> {
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = doc
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or("no \"nftables\" array")?;
    let mut counts = SpoofCounts::default();
    for counter in items.iter().filter_map(|item| item.get("counter")) {
        let name = counter.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let packets = counter.get("packets").and_then(|v| v.as_u64()).unwrap_or(0);
        let slot = match name.strip_prefix("spoofed_") {
            Some("mac") => &mut counts.mac,
            Some("arp") => &mut counts.arp,
            Some("nd") => &mut counts.nd,
            Some("ip") => &mut counts.ip,
            Some("ethertype") => &mut counts.ethertype,
            _ => continue,
        };
        *slot = packets;
    }
    Ok(counts)
}

/// The attachment a port belongs to: (container id, ifname), as IPAM keys it.
pub type AttachmentKey = (String, String);

/// The guarded ports, as persisted (`port-guards.json` in the data directory) so that they
/// are guarded again after a restart; only those whose allocation IPAM still holds are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRegistry {
    pub ports: BTreeMap<String, BTreeMap<String, PortSpec>>,
}

impl PortRegistry {
    pub fn get(&self, key: &AttachmentKey) -> Option<&PortSpec> {
        self.ports.get(&key.0)?.get(&key.1)
    }

    /// Records `port` for `key`; returns the port it replaces.
    pub fn insert(&mut self, key: &AttachmentKey, port: PortSpec) -> Option<PortSpec> {
        self.ports
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone(), port)
    }

    pub fn remove(&mut self, key: &AttachmentKey) -> Option<PortSpec> {
        let by_if = self.ports.get_mut(&key.0)?;
        let port = by_if.remove(&key.1);
        if by_if.is_empty() {
            self.ports.remove(&key.0);
        }
        port
    }

    pub fn len(&self) -> usize {
        self.ports.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (AttachmentKey, &PortSpec)> {
        self.ports.iter().flat_map(|(container, by_if)| {
            by_if
                .iter()
                .map(move |(ifname, port)| ((container.clone(), ifname.clone()), port))
        })
    }

    /// Keeps only the ports whose attachment IPAM holds, at the address it holds (`address`
    /// answers for a key); returns the ports dropped.
    pub fn retain_allocated(
        &mut self,
        address: impl Fn(&AttachmentKey) -> Option<Ipv4Addr>,
    ) -> Vec<(AttachmentKey, PortSpec)> {
        let mut dropped = Vec::new();
        let keys: Vec<AttachmentKey> = self.iter().map(|(key, _)| key).collect();
        for key in keys {
            let keep = match (address(&key), self.get(&key)) {
                (Some(addr), Some(port)) => addr == port.ipv4,
                _ => false,
            };
            if !keep && let Some(port) = self.remove(&key) {
                dropped.push((key, port));
            }
        }
        dropped
    }
}

/// The registry's file in the data directory.
pub fn registry_path(data_dir: &Path) -> PathBuf {
    data_dir.join("port-guards.json")
}

/// Reads the registry; a missing file is an empty registry.
pub fn load_registry(path: &Path) -> io::Result<PortRegistry> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PortRegistry::default()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Writes the registry atomically (temporary file, rename), so a router crash leaves the old
/// or the new file whole. Not fsynced: what it describes, the pods' veths, does not survive the
/// power loss that could lose the write (network namespaces end with the machine), and an fsync
/// would cost every ADD a disk flush.
pub fn save_registry(path: &Path, registry: &PortRegistry) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(registry).map_err(io::Error::other)?;
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads the drop counters from the kernel.
pub fn read_counters() -> io::Result<SpoofCounts> {
    let json = crate::nft::list_json(&["list", "counters", "table", "bridge", TABLE])?;
    parse_counters(&json).map_err(io::Error::other)
}

/// The port guard as shown in `/report` (`datapath.port_guard`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PortGuardReport {
    /// The rules are installed; false if nftables refused them at start (ports unguarded).
    pub enabled: bool,
    /// Ports guarded now (attachments made by a plugin that names its veth).
    pub ports: usize,
    /// Frames from guarded ports dropped, by kind.
    pub spoofed: SpoofCounts,
    /// Transactions nftables refused (each failed the ADD it was for, or a DEL's cleanup).
    pub apply_failures: u64,
}

/// How often the drop counters are read back from the kernel.
const COUNTER_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The port guard as the router runs it: the registry, its file, and the kernel's rules. Owned
/// by the router actor; each change is one `nft` transaction (a few ms) made before the ADD it
/// belongs to is answered, so no pod ever runs on an unguarded port.
pub struct PortGuard {
    /// The table is installed (nftables accepted the ruleset at start).
    enabled: bool,
    registry: PortRegistry,
    path: PathBuf,
    apply_failures: u64,
    counts: std::sync::Arc<std::sync::Mutex<SpoofCounts>>,
}

impl PortGuard {
    /// Loads the registry from `data_dir`, keeps the ports whose allocation IPAM still holds
    /// (`allocated` answers for a key), installs the table with them guarded, and starts
    /// reading the drop counters. A damaged registry is moved aside (ports unguarded until
    /// their next ADD) and nftables refusing the table disables guarding; both are logged and
    /// shown in the report, neither stops the router.
    pub fn start(data_dir: &Path, allocated: impl Fn(&AttachmentKey) -> Option<Ipv4Addr>) -> Self {
        let path = registry_path(data_dir);
        let mut registry = load_registry(&path).unwrap_or_else(|e| {
            let aside = path.with_extension("json.damaged");
            tracing::error!(error = %e, moved_to = %aside.display(), "cannot read the port guards; ports of existing pods stay unguarded until their next ADD");
            let _ = std::fs::rename(&path, &aside);
            PortRegistry::default()
        });
        let dropped = registry.retain_allocated(allocated);
        if !registry.is_empty() {
            tracing::info!(
                ports = registry.len(),
                dropped = dropped.len(),
                "guarding the bridge ports of existing pods again"
            );
        }
        if !dropped.is_empty()
            && let Err(e) = save_registry(&path, &registry)
        {
            tracing::warn!(error = %e, "cannot save the port guards");
        }
        let ports: Vec<PortSpec> = registry.iter().map(|(_, port)| port.clone()).collect();
        let enabled = match crate::nft::apply(&ruleset(&ports)) {
            Ok(()) => {
                tracing::info!(
                    ports = ports.len(),
                    "pod bridge ports guarded against spoofing"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot install the bridge anti-spoofing rules; pods' bridge ports are NOT guarded");
                false
            }
        };
        let counts = std::sync::Arc::new(std::sync::Mutex::new(SpoofCounts::default()));
        if enabled {
            let counts = counts.clone();
            let _ = std::thread::Builder::new()
                .name("weft-portguard".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(COUNTER_POLL);
                        match read_counters() {
                            Ok(now) => *counts.lock().unwrap_or_else(|e| e.into_inner()) = now,
                            Err(e) => tracing::debug!(error = %e, "cannot read the anti-spoofing counters"),
                        }
                    }
                });
        }
        PortGuard {
            enabled,
            registry,
            path,
            apply_failures: 0,
            counts,
        }
    }

    /// The guarded ports (to pin their MACs at start).
    pub fn ports(&self) -> Vec<PortSpec> {
        self.registry.iter().map(|(_, port)| port.clone()).collect()
    }

    /// The port recorded for an attachment (a repeated ADD keeps its MAC).
    pub fn port(&self, key: &AttachmentKey) -> Option<&PortSpec> {
        self.registry.get(key)
    }

    /// Guards `port` for `key` and records it (see [`save_registry`]). Returns the port it
    /// replaces. On error nothing changed (the caller fails the ADD).
    pub fn attach(
        &mut self,
        key: &AttachmentKey,
        port: PortSpec,
    ) -> Result<Option<PortSpec>, String> {
        let previous = self.registry.get(key).cloned();
        if self.enabled
            && let Err(e) = crate::nft::apply(&attach_script(&port, previous.as_ref()))
        {
            self.apply_failures += 1;
            return Err(e.to_string());
        }
        self.registry.insert(key, port.clone());
        if let Err(e) = save_registry(&self.path, &self.registry) {
            // Guarded now, but a restart would not know: undo and fail, like an unpersisted
            // allocation.
            let restored = match &previous {
                Some(previous) => {
                    self.registry.insert(key, previous.clone());
                    attach_script(previous, Some(&port))
                }
                None => {
                    self.registry.remove(key);
                    detach_script(&port)
                }
            };
            if self.enabled && !restored.is_empty() {
                let _ = crate::nft::apply(&restored);
            }
            return Err(format!("cannot save {}: {e}", self.path.display()));
        }
        Ok(previous)
    }

    /// Stops guarding the ports whose allocation is gone; returns them (their MACs are
    /// unpinned by the caller).
    pub fn detach_unallocated(
        &mut self,
        allocated: impl Fn(&AttachmentKey) -> Option<Ipv4Addr>,
    ) -> Vec<PortSpec> {
        let dropped: Vec<PortSpec> = self
            .registry
            .retain_allocated(allocated)
            .into_iter()
            .map(|(_, port)| port)
            .collect();
        if dropped.is_empty() {
            return dropped;
        }
        if self.enabled {
            let script: String = dropped.iter().map(detach_script).collect();
            if let Err(e) = crate::nft::apply(&script) {
                self.apply_failures += 1;
                tracing::warn!(error = %e, "cannot remove the guards of deleted attachments");
            }
        }
        if let Err(e) = save_registry(&self.path, &self.registry) {
            tracing::warn!(error = %e, "cannot save the port guards");
        }
        dropped
    }

    pub fn report(&self) -> PortGuardReport {
        PortGuardReport {
            enabled: self.enabled,
            ports: self.registry.len(),
            spoofed: *self.counts.lock().unwrap_or_else(|e| e.into_inner()),
            apply_failures: self.apply_failures,
        }
    }
}

mod mac_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use weft_datapath::mac::{Mac, format_mac};

    pub fn serialize<S: Serializer>(mac: &Mac, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_mac(mac))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_mac(&text).ok_or_else(|| serde::de::Error::custom("not a MAC address"))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, last: u8, ip: [u8; 4]) -> PortSpec {
        PortSpec {
            host_veth: name.into(),
            mac: [0x02, 0xaa, 0, 0, 0, last],
            ipv4: Ipv4Addr::from(ip),
        }
    }

    #[test]
    fn the_ruleset_replaces_its_own_table_and_guards_every_port_given() {
        let rules = ruleset(&[
            port("vw01", 1, [10, 32, 0, 5]),
            port("vw02", 2, [10, 32, 0, 6]),
        ]);
        assert!(rules.starts_with("table bridge weft {}\ndelete table bridge weft\n"));
        assert!(rules.contains("type filter hook prerouting priority 0; policy accept;"));
        assert!(rules.contains("iifname @guarded jump guard"));
        for kind in KINDS {
            assert!(
                rules.contains(&format!("counter spoofed_{kind} {{}}")),
                "{kind}"
            );
            assert!(
                rules.contains(&format!("counter name spoofed_{kind} drop")),
                "{kind}"
            );
        }
        assert!(rules.contains("add element bridge weft guarded { \"vw01\" }"));
        assert!(
            rules.contains("add element bridge weft port_mac { \"vw02\" . 02:aa:00:00:00:02 }")
        );
        assert!(rules.contains("add element bridge weft port_ipv4 { \"vw01\" . 10.32.0.5 }"));
        assert!(
            rules.contains("add element bridge weft port_ipv6 { \"vw01\" . fe80::aa:ff:fe00:1 }")
        );
        assert!(rules.contains(
            "add element bridge weft port_na { \"vw01\" . 0xfe8000000000000000aa00fffe000001 }"
        ));
        // ARP probes and DAD are allowed; the MAC check comes first.
        assert!(rules.contains("arp saddr ip != 0.0.0.0"));
        assert!(rules.contains("ip6 saddr != ::"));
        let first_rule = rules.lines().find(|l| l.contains("drop")).unwrap();
        assert!(first_rule.contains("ether saddr != @port_mac"));
        // Nothing but its own table; no `fwd` (an nft keyword) as a name.
        assert_eq!(rules.matches("table bridge").count(), 3);
        assert!(!rules.contains("chain fwd"));
        assert_eq!(ruleset(&[]).matches("add element").count(), 0);
    }

    #[test]
    fn attaching_and_detaching_touch_only_the_port_elements() {
        let old = port("vw01", 1, [10, 32, 0, 5]);
        let new = port("vw01", 9, [10, 32, 0, 7]);
        let attach = attach_script(&new, None);
        assert_eq!(attach.lines().count(), 5);
        assert!(
            attach
                .lines()
                .all(|l| l.starts_with("add element bridge weft "))
        );
        // A repeated ADD replaces the old port's facts in the same transaction.
        let replace = attach_script(&new, Some(&old));
        let lines: Vec<_> = replace.lines().collect();
        assert_eq!(lines.len(), 15);
        assert!(lines[..10].iter().all(|l| !l.contains("02:aa:00:00:00:09")));
        assert!(lines[1].starts_with("delete element bridge weft guarded"));
        assert!(lines[10..].iter().all(|l| l.starts_with("add element")));
        assert!(replace.contains("port_ipv4 { \"vw01\" . 10.32.0.7 }"));
        let detach = detach_script(&old);
        assert_eq!(detach.matches("delete element").count(), 5);
        // Each delete follows an add of the same element, so it cannot fail on a missing one.
        for pair in detach.lines().collect::<Vec<_>>().chunks(2) {
            assert_eq!(pair[0].replacen("add", "delete", 1), pair[1]);
        }
        assert!(!detach.contains("chain") && !detach.contains("rule"));
    }

    #[test]
    fn link_local_is_the_kernels_eui64_address() {
        assert_eq!(
            link_local(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            link_local(&[0x02, 0, 0, 0, 0, 1]),
            "fe80::ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn port_names_and_macs_are_checked() {
        assert!(valid_port_name("vw0123456789"));
        assert!(valid_port_name("veth_a-b.c"));
        for bad in ["", "sixteen-chars-xx", "a b", "a\"b", "x}", "a;b", "é"] {
            assert!(!valid_port_name(bad), "{bad:?}");
        }
        let mac = attachment_mac([0xff; 6]);
        assert_eq!(mac[0] & 0x03, 0x02, "unicast, locally administered");
        assert_eq!(attachment_mac([1, 0, 0, 0, 0, 0]), [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            parse_mac("02:aa:00:00:00:0b"),
            Some([2, 0xaa, 0, 0, 0, 0xb])
        );
        for bad in [
            "02:aa:00:00:00",
            "02:aa:00:00:00:0b:0c",
            "2:aa:00:00:00:0b",
            "zz:aa:00:00:00:0b",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn counters_are_read_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "bridge", "name": "spoofed_mac", "table": "weft", "handle": 3, "packets": 50000, "bytes": 3000000}},
            {"counter": {"family": "bridge", "name": "spoofed_arp", "table": "weft", "handle": 4, "packets": 3, "bytes": 180}},
            {"counter": {"family": "bridge", "name": "spoofed_ethertype", "table": "weft", "handle": 7, "packets": 1, "bytes": 60}},
            {"counter": {"family": "bridge", "name": "other", "table": "weft", "handle": 8, "packets": 9, "bytes": 9}}]}"#;
        let counts = parse_counters(json).unwrap();
        assert_eq!(
            counts,
            SpoofCounts {
                mac: 50000,
                arp: 3,
                nd: 0,
                ip: 0,
                ethertype: 1
            }
        );
        assert!(parse_counters("{}").is_err());
        assert!(parse_counters("not json").is_err());
    }

    #[test]
    fn the_registry_keeps_only_allocated_ports_and_round_trips() {
        let mut registry = PortRegistry::default();
        let a = ("c1".to_string(), "eth0".to_string());
        let b = ("c2".to_string(), "eth0".to_string());
        let c = ("c3".to_string(), "eth0".to_string());
        assert_eq!(registry.insert(&a, port("vwa", 1, [10, 32, 0, 5])), None);
        registry.insert(&b, port("vwb", 2, [10, 32, 0, 6]));
        registry.insert(&c, port("vwc", 3, [10, 32, 0, 7]));
        let replaced = registry.insert(&a, port("vwa", 4, [10, 32, 0, 5]));
        assert_eq!(replaced.map(|p| p.mac[5]), Some(1));
        assert_eq!(registry.len(), 3);

        let dir = std::env::temp_dir().join(format!("weft-portguard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = registry_path(&dir);
        assert!(load_registry(&path).unwrap().is_empty());
        save_registry(&path, &registry).unwrap();
        assert_eq!(load_registry(&path).unwrap(), registry);
        std::fs::write(&path, b"{ damaged").unwrap();
        assert!(load_registry(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();

        // a is allocated as recorded, b at another address (stale), c not at all.
        let dropped = registry.retain_allocated(|key| match key.0.as_str() {
            "c1" => Some(Ipv4Addr::new(10, 32, 0, 5)),
            "c2" => Some(Ipv4Addr::new(10, 32, 0, 99)),
            _ => None,
        });
        let dropped: Vec<_> = dropped.into_iter().map(|(key, _)| key.0).collect();
        assert_eq!(dropped, vec!["c2", "c3"]);
        assert_eq!(registry.len(), 1);
        assert!(registry.get(&a).is_some());
        assert_eq!(registry.remove(&a).map(|p| p.host_veth), Some("vwa".into()));
        assert!(registry.is_empty());
    }
}
