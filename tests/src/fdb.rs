//! What the kernel of a host forwards by: its bridges' and VXLAN devices' forwarding databases
//! (`bridge fdb show`) and its interfaces' counters, for tests of the fast datapath.

use anyhow::Context;
use serde::Deserialize;

use crate::net::{HostId, Net};

/// One entry of `bridge -j fdb show`, as iproute2 prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct FdbEntry {
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: String,
    /// The port or device the entry belongs to (`ifname`).
    #[serde(rename = "ifname")]
    pub device: String,
    /// The remote (underlay) address of a VXLAN device's own entry.
    #[serde(default)]
    pub dst: Option<String>,
    /// The bridge of a bridge-port entry.
    #[serde(default)]
    pub master: Option<String>,
    /// `self`, `sticky`, `extern_learn`, …
    #[serde(default)]
    pub flags: Vec<String>,
    /// `permanent`, `static`, or empty for a learned entry.
    #[serde(default)]
    pub state: String,
}

impl FdbEntry {
    /// The device's own table (`self`), e.g. a VXLAN device's MAC → remote entries.
    pub fn is_self(&self) -> bool {
        self.flags.iter().any(|f| f == "self")
    }

    /// Whether the bridge learned it from traffic (neither static nor permanent).
    pub fn is_learned(&self) -> bool {
        self.state.is_empty()
    }

    /// The entry as one line, like `bridge fdb show` prints it, for messages and comparisons.
    pub fn line(&self) -> String {
        let mut line = format!("{} dev {}", self.mac, self.device);
        if let Some(dst) = &self.dst {
            line.push_str(&format!(" dst {dst}"));
        }
        for flag in &self.flags {
            line.push_str(&format!(" {flag}"));
        }
        if let Some(master) = &self.master {
            line.push_str(&format!(" master {master}"));
        }
        if !self.state.is_empty() {
            line.push_str(&format!(" {}", self.state));
        }
        line
    }
}

impl Net {
    /// Every entry of host `i`'s forwarding databases (`bridge -j fdb show`).
    pub fn fdb(&self, i: HostId) -> anyhow::Result<Vec<FdbEntry>> {
        let json = self.exec(i, &["bridge", "-j", "fdb", "show"])?;
        serde_json::from_str(&json)
            .with_context(|| format!("host{i}: unexpected `bridge -j fdb show`: {json}"))
    }

    /// Host `i`'s FDB entries on `device` (both its own and the bridge's entries for it).
    pub fn fdb_of(&self, i: HostId, device: &str) -> anyhow::Result<Vec<FdbEntry>> {
        Ok(self
            .fdb(i)?
            .into_iter()
            .filter(|e| e.device == device)
            .collect())
    }

    /// Whether host `i` has a network interface called `device`.
    pub fn has_link(&self, i: HostId, device: &str) -> anyhow::Result<bool> {
        Ok(self
            .exec_output(i, &["ip", "link", "show", "dev", device])?
            .success())
    }

    /// A counter of host `i`'s interface `device`: `statistic` is a file of
    /// `/sys/class/net/<device>/statistics/` (`tx_bytes`, `rx_packets`, …).
    pub fn link_statistic(&self, i: HostId, device: &str, statistic: &str) -> anyhow::Result<u64> {
        // `ip netns exec` mounts the namespace's own /sys.
        let path = format!("/sys/class/net/{device}/statistics/{statistic}");
        let text = self.exec(i, &["cat", &path])?;
        text.trim()
            .parse()
            .with_context(|| format!("host{i}: {path} holds {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_from_bridge_json() {
        let json = r#"[
            {"mac":"33:33:00:00:00:01","ifname":"weft","flags":["self"],"state":"permanent"},
            {"mac":"02:00:00:00:00:01","ifname":"weft-vxlan","flags":["sticky"],
             "master":"weft","state":"static"},
            {"mac":"02:00:00:00:00:01","ifname":"weft-vxlan","dst":"10.77.0.2",
             "flags":["self"],"state":"permanent"},
            {"mac":"0a:00:00:00:00:02","ifname":"vp1","flags":[],"master":"weft","state":""}
        ]"#;
        let entries: Vec<FdbEntry> = serde_json::from_str(json).unwrap();
        assert_eq!(entries.len(), 4);
        assert!(entries[0].is_self() && !entries[1].is_self());
        assert_eq!(
            entries[1].line(),
            "02:00:00:00:00:01 dev weft-vxlan sticky master weft static"
        );
        assert_eq!(
            entries[2].line(),
            "02:00:00:00:00:01 dev weft-vxlan dst 10.77.0.2 self permanent"
        );
        assert!(entries[3].is_learned() && !entries[2].is_learned());
    }
}
