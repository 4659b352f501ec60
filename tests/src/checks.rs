//! Conditions about the whole mesh that many scenarios wait for. Each returns `Ok(true)` when
//! it holds and otherwise an error saying what was seen, for [`Net::wait_until`].

use anyhow::{bail, ensure};

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
}
