//! Conditions about the whole mesh that many scenarios wait for. Each returns `Ok(true)` when
//! it holds and otherwise an error saying what was seen, for [`Net::wait_until`].

use anyhow::{Context, bail, ensure};

use crate::net::{HostId, Net};

impl Net {
    /// Every host in `hosts` knows exactly these hosts as peers and has exactly one established
    /// connection to each of the others.
    pub fn check_full_mesh(&self, hosts: &[HostId]) -> anyhow::Result<bool> {
        let mut expected: Vec<String> = hosts.iter().map(|&h| self.nickname(h)).collect();
        expected.sort();
        for &i in hosts {
            let report = self.report(i)?;
            let peers = report.peer_nicknames();
            ensure!(
                peers == expected,
                "host{i} knows peers {peers:?}, expected {expected:?}"
            );
            let others: Vec<String> = expected
                .iter()
                .filter(|n| **n != self.nickname(i))
                .cloned()
                .collect();
            let connected = report.established_nicknames();
            ensure!(
                connected == others,
                "host{i} has established connections to {connected:?}, expected {others:?}"
            );
        }
        Ok(true)
    }

    /// No host in `hosts` has an established connection to host `gone`.
    pub fn check_disconnected_from(&self, hosts: &[HostId], gone: HostId) -> anyhow::Result<bool> {
        let nickname = self.nickname(gone);
        for &i in hosts {
            if self.report(i)?.connection_to(&nickname).is_some() {
                bail!("host{i} is still connected to {nickname}");
            }
        }
        Ok(true)
    }

    /// The data path of host `i`'s established connection to host `peer`
    /// (`connections[].datapath` in its report).
    pub fn data_path(&self, i: HostId, peer: HostId) -> anyhow::Result<serde_json::Value> {
        self.data_path_in(&self.report_json(i)?, i, peer)
    }

    /// [`Net::data_path`] read from a report of host `i` already fetched.
    fn data_path_in(
        &self,
        report: &serde_json::Value,
        i: HostId,
        peer: HostId,
    ) -> anyhow::Result<serde_json::Value> {
        let nickname = self.nickname(peer);
        let connection = report["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["nickname"] == nickname.as_str() && c["state"] == "established")
            .with_context(|| format!("host{i} has no connection to {nickname}"))?;
        Ok(connection["datapath"].clone())
    }

    /// The datapath host `i`'s established connection to host `peer` uses (`vxlan` or
    /// `sleeve`: `connections[].datapath.datapath`) and the reason for it (`datapath_reason`).
    pub fn datapath_in_use(&self, i: HostId, peer: HostId) -> anyhow::Result<(String, String)> {
        let path = self.data_path(i, peer)?;
        Self::datapath_of(&path, i, peer)
    }

    fn datapath_of(
        path: &serde_json::Value,
        i: HostId,
        peer: HostId,
    ) -> anyhow::Result<(String, String)> {
        let kind = path["datapath"]
            .as_str()
            .with_context(|| format!("host{i} -> host{peer}: no datapath in {path}"))?;
        let reason = path["datapath_reason"].as_str().unwrap_or_default();
        Ok((kind.to_owned(), reason.to_owned()))
    }

    /// Every connection between two hosts of `pairs` (each pair checked from both ends) is
    /// established and uses datapath `kind`; otherwise an error naming the first that does not,
    /// with its reason.
    pub fn check_datapath(&self, pairs: &[(HostId, HostId)], kind: &str) -> anyhow::Result<bool> {
        for &(a, b) in pairs {
            for (i, peer) in [(a, b), (b, a)] {
                let (used, reason) = self.datapath_in_use(i, peer)?;
                ensure!(
                    used == kind,
                    "host{i} -> host{peer} uses {used} ({reason}), expected {kind}"
                );
            }
        }
        Ok(true)
    }

    /// Waits until the connection between hosts `a` and `b` is on the sleeve at both ends
    /// for a fast-path reason (its fast path was blocked); returns `a`'s reason.
    pub fn wait_until_on_sleeve_for_the_fast_path(
        &self,
        a: HostId,
        b: HostId,
    ) -> anyhow::Result<String> {
        self.wait_until(
            &format!("host{a}-host{b} move to the sleeve with a fast-path reason"),
            crate::SETTLE,
            || {
                for (i, peer) in [(a, b), (b, a)] {
                    let (kind, reason) = self.datapath_in_use(i, peer)?;
                    ensure!(
                        kind == "sleeve" && reason.starts_with("fast path:"),
                        "host{i} -> host{peer}: {kind} ({reason})"
                    );
                }
                Ok(true)
            },
        )?;
        Ok(self.datapath_in_use(a, b)?.1)
    }

    /// Every connection among `hosts` uses datapath `kind` (see [`Net::check_datapath`]).
    pub fn check_all_on_datapath(&self, hosts: &[HostId], kind: &str) -> anyhow::Result<bool> {
        self.check_datapath(&pairs_of(hosts), kind)
    }

    /// Every host's data paths to the others are up and every host has heard (through gossip)
    /// that all links are established, so data routes are direct everywhere.
    pub fn check_data_paths_up(&self, hosts: &[HostId]) -> anyhow::Result<bool> {
        for &i in hosts {
            let report = self.report_json(i)?;
            for &j in hosts {
                if i != j && self.data_path_in(&report, i, j)?["health"] != "up" {
                    return Ok(false);
                }
            }
            let established = report["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["connections"].as_array().into_iter().flatten())
                .filter(|c| c["established"] == true)
                .count();
            if established != hosts.len() * (hosts.len() - 1) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Every unordered pair of distinct hosts of `hosts`, `(a, b)` with `a` before `b` in `hosts`.
pub fn pairs_of(hosts: &[HostId]) -> Vec<(HostId, HostId)> {
    let mut pairs = Vec::new();
    for (n, &a) in hosts.iter().enumerate() {
        for &b in &hosts[n + 1..] {
            pairs.push((a, b));
        }
    }
    pairs
}
