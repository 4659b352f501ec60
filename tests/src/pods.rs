//! Pods: network namespaces attached by veth to a host's weft bridge, as the CNI plugin will
//! attach real ones. They are the endpoints of data-plane tests.

use std::process::Command;

use anyhow::Context;

use crate::cmd::{self, COMMAND_TIMEOUT};
use crate::net::{HostId, Net, add_namespace, ip_in};

/// Pods are numbered from 1 within a Net.
pub type PodId = usize;

pub(crate) struct Pod {
    pub(crate) ns: String,
    /// The host whose bridge it is attached to.
    pub(crate) host: HostId,
}

impl Net {
    /// Adds a pod on `host`'s bridge `bridge` with address `cidr` (e.g. `10.40.0.1/24`) and
    /// `mtu`. The host's router must have created the bridge (`--datapath sleeve`).
    pub fn add_pod(
        &self,
        host: HostId,
        bridge: &str,
        cidr: &str,
        mtu: u16,
    ) -> anyhow::Result<PodId> {
        self.add_pod_with_mac(host, bridge, cidr, mtu, None)
    }

    /// [`Net::add_pod`], with the pod's `eth0` given the MAC address `mac`
    /// (`aa:bb:cc:dd:ee:ff`) before it comes up, so no frame ever leaves it with another one.
    pub fn add_pod_with_mac(
        &self,
        host: HostId,
        bridge: &str,
        cidr: &str,
        mtu: u16,
        mac: Option<&str>,
    ) -> anyhow::Result<PodId> {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let id = pods.len() + 1;
        let ns = format!("{}p{id}", self.prefix);
        add_namespace(&ns)?;
        pods.push(Pod {
            ns: ns.clone(),
            host,
        });
        drop(pods);
        let host_ns = self.ns(host).to_owned();
        let port = format!("vp{id}");
        let mtu = mtu.to_string();
        ip_in(
            &host_ns,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip_in(
            &host_ns,
            &["link", "set", &port, "master", bridge, "mtu", &mtu, "up"],
        )
        .with_context(|| format!("attaching pod{id} to {bridge} on host{host}"))?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
        if let Some(mac) = mac {
            ip_in(&ns, &["link", "set", "eth0", "address", mac])
                .with_context(|| format!("setting pod{id}'s MAC to {mac}"))?;
        }
        ip_in(&ns, &["addr", "add", cidr, "dev", "eth0"])?;
        ip_in(&ns, &["link", "set", "eth0", "mtu", &mtu, "up"])?;
        Ok(id)
    }

    /// Unplugs pod `pod` from its host: deletes its veth pair, as a CNI DEL would. Its
    /// (now empty) namespace stays until the Net is dropped; [`Net::pod_exec`] still runs there.
    pub fn remove_pod(&self, pod: PodId) -> anyhow::Result<()> {
        let host = self.pod_host(pod)?;
        ip_in(self.ns(host), &["link", "del", &format!("vp{pod}")])
            .with_context(|| format!("removing pod{pod} from host{host}"))
            .map(drop)
    }

    /// Adds another address to pod `pod`'s `eth0`. IPv6 addresses are added `nodad`: usable at
    /// once, without waiting for duplicate address detection.
    pub fn add_pod_address(&self, pod: PodId, cidr: &str) -> anyhow::Result<()> {
        let ns = self.pod_ns(pod)?;
        let mut args = vec!["addr", "add", cidr, "dev", "eth0"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip_in(&ns, &args).map(drop)
    }

    /// The MAC address of pod `pod`'s `eth0`, as `ip` prints it (`aa:bb:cc:dd:ee:ff`).
    pub fn pod_mac(&self, pod: PodId) -> anyhow::Result<String> {
        let json = ip_in(&self.pod_ns(pod)?, &["-j", "link", "show", "eth0"])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        links[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("pod{pod}: no MAC address in {json}"))
    }

    /// Runs a command inside pod `pod`; fails if it exits non-zero.
    pub fn pod_exec(&self, pod: PodId, argv: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.pod_ns(pod)?])
            .args(argv);
        let out = cmd::run_with_timeout(&mut command, COMMAND_TIMEOUT)?;
        anyhow::ensure!(
            out.success(),
            "pod{pod}: {} failed: {}{}",
            argv.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// How many pods were added so far (removed ones included): the last pod's id.
    pub fn pod_count(&self) -> usize {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The host pod `pod` was added to.
    pub fn pod_host(&self, pod: PodId) -> anyhow::Result<HostId> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pod.wrapping_sub(1))
            .map(|p| p.host)
            .with_context(|| format!("no pod{pod}"))
    }

    /// Pod `pod`'s network namespace.
    pub fn pod_ns(&self, pod: PodId) -> anyhow::Result<String> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pod.wrapping_sub(1))
            .map(|p| p.ns.clone())
            .with_context(|| format!("no pod{pod}"))
    }
}
