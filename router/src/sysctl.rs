//! The host's network sysctls the router sets: `net.ipv4.ip_forward` (pods reach beyond their
//! bridge, Services included) and, on request, `net.bridge.bridge-nf-call-iptables` (bridged
//! pod-to-pod traffic passes the IPv4 netfilter hooks, so kube-proxy's Service rules see it, as
//! Weave Net's init container sets it).
//!
//! They are written through a directory that is the host's `/proc/sys/net` ([`ProcSysNet`],
//! `--proc-sys-net`): container runtimes mount `/proc/sys` read-only, so the chart mounts the
//! host's `/proc/sys/net` (hostPath) at `/host/proc/sys/net` the way Cilium does. `/proc/sys/net`
//! resolves in the network namespace of the writing task, not of the mount, and the router runs
//! in the host's: the writes land there.
//!
//! What to do is decided by [`plan`] from what is read; [`apply`] reads and writes.

use std::io;
use std::path::{Path, PathBuf};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::SysctlLabels;

/// A sysctl under `net.`, as its path below `/proc/sys/net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl(&'static str);

pub const IP_FORWARD: Sysctl = Sysctl("ipv4/ip_forward");
pub const BRIDGE_NF_CALL_IPTABLES: Sysctl = Sysctl("bridge/bridge-nf-call-iptables");

impl Sysctl {
    /// Its dotted name (`net.ipv4.ip_forward`).
    pub fn name(self) -> String {
        format!("net.{}", self.0.replace('/', "."))
    }

    /// Its label on `weft_sysctl_unset`.
    pub fn label(self) -> &'static str {
        match self.0 {
            "ipv4/ip_forward" => "net.ipv4.ip_forward",
            "bridge/bridge-nf-call-iptables" => "net.bridge.bridge-nf-call-iptables",
            _ => "other",
        }
    }
}

/// The host's `/proc/sys/net`, wherever it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSysNet {
    root: PathBuf,
}

impl ProcSysNet {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self, sysctl: Sysctl) -> PathBuf {
        self.root.join(sysctl.0)
    }

    /// The current value, trimmed; `None` if the file does not exist (its module is not loaded).
    pub fn read(&self, sysctl: Sysctl) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.path(sysctl)) {
            Ok(v) => Ok(Some(v.trim().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&self, sysctl: Sysctl, value: &str) -> io::Result<()> {
        std::fs::write(self.path(sysctl), format!("{value}\n"))
    }
}

/// What to do about one sysctl, given its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Already as wanted.
    Keep,
    /// Write the value.
    Write,
    /// It does not exist here (e.g. `br_netfilter` is not loaded): say why it matters.
    Missing,
}

/// Whether `current` (the value read, `None` when the sysctl does not exist) needs `wanted`.
pub fn plan(current: Option<&str>, wanted: &str) -> Step {
    match current {
        None => Step::Missing,
        Some(v) if v == wanted => Step::Keep,
        Some(_) => Step::Write,
    }
}

/// A sysctl that could not be set, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot set {}={} (through {}): {}. {}", .0.sysctl.name(), .0.value, .0.path, .0.reason, .0.fix)]
pub struct SysctlError(Box<Failure>);

#[derive(Debug)]
pub struct Failure {
    pub sysctl: Sysctl,
    pub value: String,
    pub path: String,
    pub reason: String,
    pub fix: String,
}

impl SysctlError {
    pub fn sysctl(&self) -> Sysctl {
        self.0.sysctl
    }
}

/// How to fix a failed read or write of `sysctl` through `dir`.
pub fn fix_for(sysctl: Sysctl, dir: &Path, error: Option<&io::Error>) -> String {
    if error.is_none() {
        // The sysctl does not exist.
        return if sysctl == BRIDGE_NF_CALL_IPTABLES {
            "The br_netfilter module is not loaded on this host (a container cannot load it): \
             load it (`modprobe br_netfilter`, and add it to /etc/modules-load.d/ to keep it \
             across reboots), or kube-proxy's Service rules do not see traffic between pods on \
             the same node; or turn this off (--bridge-nf-call-iptables=false, chart value \
             bridgeNfCallIptables: false) if nothing needs it"
                .to_owned()
        } else {
            format!(
                "{} does not exist: is {} the host's /proc/sys/net?",
                sysctl.name(),
                dir.display()
            )
        };
    }
    let e = error.expect("checked above");
    match e.raw_os_error() {
        Some(libc::EROFS) => format!(
            "{} is read-only, as container runtimes mount /proc/sys: mount the host's \
             /proc/sys/net (hostPath) elsewhere, e.g. /host/proc/sys/net, and point \
             --proc-sys-net (WEFT_PROC_SYS_NET) at it (the chart does), or run privileged",
            dir.display()
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "setting network sysctls needs root (uid 0) with CAP_NET_ADMIN in the host's \
             network namespace (hostNetwork)"
                .to_owned()
        }
        _ => format!(
            "check that {} is the host's /proc/sys/net, writable",
            dir.display()
        ),
    }
}

/// Sets `sysctl` to `value` unless it already is. `Ok(false)`: it does not exist here.
pub fn ensure(dir: &ProcSysNet, sysctl: Sysctl, value: &str) -> Result<bool, SysctlError> {
    let fail = |e: Option<&io::Error>| {
        SysctlError(Box::new(Failure {
            sysctl,
            value: value.to_owned(),
            path: dir.path(sysctl).display().to_string(),
            reason: e.map_or_else(|| "it does not exist".to_owned(), |e| e.to_string()),
            fix: fix_for(sysctl, &dir.root, e),
        }))
    };
    let current = dir.read(sysctl).map_err(|e| fail(Some(&e)))?;
    match plan(current.as_deref(), value) {
        Step::Keep => Ok(true),
        Step::Missing => Ok(false),
        Step::Write => {
            dir.write(sysctl, value).map_err(|e| fail(Some(&e)))?;
            Ok(true)
        }
    }
}

/// Like [`ensure`], but a missing sysctl is an error too (with its fix).
pub fn ensure_present(dir: &ProcSysNet, sysctl: Sysctl, value: &str) -> Result<(), SysctlError> {
    if ensure(dir, sysctl, value)? {
        return Ok(());
    }
    Err(SysctlError(Box::new(Failure {
        sysctl,
        value: value.to_owned(),
        path: dir.path(sysctl).display().to_string(),
        reason: "it does not exist".to_owned(),
        fix: fix_for(sysctl, &dir.root, None),
    })))
}

/// The router's sysctls at start: `net.ipv4.ip_forward=1` (an error if it cannot be set: pods
/// would reach neither Services nor anything beyond their bridge) and, when asked,
/// `net.bridge.bridge-nf-call-iptables=1` (a warning if it cannot, with the reason). `unset`
/// gets 1 for each one left unset.
pub fn apply_for_router(
    dir: &ProcSysNet,
    bridge_nf_call_iptables: bool,
    unset: &Family<SysctlLabels, Gauge>,
) -> Result<(), SysctlError> {
    let mark = |sysctl: Sysctl, failed: bool| {
        unset
            .get_or_create(&SysctlLabels {
                sysctl: sysctl.label(),
            })
            .set(i64::from(failed));
    };
    if let Err(e) = ensure_present(dir, IP_FORWARD, "1") {
        mark(e.sysctl(), true);
        return Err(e);
    }
    mark(IP_FORWARD, false);
    tracing::info!(sysctl = %IP_FORWARD.name(), path = %dir.path(IP_FORWARD).display(), "IPv4 forwarding is on");
    if bridge_nf_call_iptables {
        match ensure_present(dir, BRIDGE_NF_CALL_IPTABLES, "1") {
            Ok(()) => {
                mark(BRIDGE_NF_CALL_IPTABLES, false);
                tracing::info!(
                    sysctl = %BRIDGE_NF_CALL_IPTABLES.name(),
                    "traffic bridged between pods passes the IPv4 netfilter hooks (kube-proxy sees it)"
                );
            }
            Err(e) => {
                mark(e.sysctl(), true);
                tracing::warn!(error = %e, "pod-to-Service traffic between pods on this node may bypass kube-proxy");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory standing in for /proc/sys/net, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("weft-sysctl-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir_with(tag: &str, files: &[(&str, &str)]) -> (Scratch, ProcSysNet) {
        let tmp = Scratch::new(tag);
        for (path, value) in files {
            let p = tmp.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, value).unwrap();
        }
        let dir = ProcSysNet::new(&tmp.0);
        (tmp, dir)
    }

    #[test]
    fn names_are_the_dotted_sysctl_names() {
        assert_eq!(IP_FORWARD.name(), "net.ipv4.ip_forward");
        assert_eq!(IP_FORWARD.label(), IP_FORWARD.name());
        assert_eq!(
            BRIDGE_NF_CALL_IPTABLES.name(),
            "net.bridge.bridge-nf-call-iptables"
        );
        assert_eq!(
            BRIDGE_NF_CALL_IPTABLES.label(),
            BRIDGE_NF_CALL_IPTABLES.name()
        );
    }

    #[test]
    fn only_a_different_value_is_written() {
        assert_eq!(plan(Some("1"), "1"), Step::Keep);
        assert_eq!(plan(Some("0"), "1"), Step::Write);
        assert_eq!(plan(None, "1"), Step::Missing);
    }

    #[test]
    fn a_sysctl_is_written_through_the_given_directory() {
        let (_tmp, dir) = dir_with("write", &[("ipv4/ip_forward", "0\n")]);
        assert!(ensure(&dir, IP_FORWARD, "1").unwrap());
        assert_eq!(dir.read(IP_FORWARD).unwrap().as_deref(), Some("1"));
        // Already set: nothing to write, still fine.
        assert!(ensure(&dir, IP_FORWARD, "1").unwrap());
    }

    #[test]
    fn a_missing_bridge_sysctl_says_to_load_br_netfilter() {
        let (_tmp, dir) = dir_with("missing", &[("ipv4/ip_forward", "1\n")]);
        assert!(!ensure(&dir, BRIDGE_NF_CALL_IPTABLES, "1").unwrap());
        let err = ensure_present(&dir, BRIDGE_NF_CALL_IPTABLES, "1").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("net.bridge.bridge-nf-call-iptables=1"),
            "{msg}"
        );
        assert!(msg.contains("modprobe br_netfilter"), "{msg}");
        assert!(msg.contains("bridgeNfCallIptables: false"), "{msg}");
    }

    #[test]
    fn a_read_only_proc_sys_names_the_sysctl_and_the_mount_that_fixes_it() {
        let fix = fix_for(
            IP_FORWARD,
            Path::new("/proc/sys/net"),
            Some(&io::Error::from_raw_os_error(libc::EROFS)),
        );
        assert!(fix.contains("/proc/sys/net is read-only"), "{fix}");
        assert!(fix.contains("--proc-sys-net (WEFT_PROC_SYS_NET)"), "{fix}");
        let fix = fix_for(
            IP_FORWARD,
            Path::new("/host/proc/sys/net"),
            Some(&io::Error::from_raw_os_error(libc::EACCES)),
        );
        assert!(fix.contains("CAP_NET_ADMIN"), "{fix}");
    }

    #[test]
    fn a_failed_write_is_an_error_naming_the_sysctl_and_the_path() {
        // A directory where the file should be: reading it fails (EISDIR).
        let tmp = Scratch::new("eisdir");
        std::fs::create_dir_all(tmp.0.join("ipv4/ip_forward")).unwrap();
        let dir = ProcSysNet::new(&tmp.0);
        let err = ensure(&dir, IP_FORWARD, "1").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot set net.ipv4.ip_forward=1 (through "),
            "{msg}"
        );
        assert!(msg.contains("ipv4/ip_forward"), "{msg}");
        assert_eq!(err.sysctl(), IP_FORWARD);
    }

    #[test]
    fn the_router_fails_without_forwarding_and_only_warns_without_br_netfilter() {
        let unset = Family::<SysctlLabels, Gauge>::default();
        let value = |sysctl: Sysctl| {
            unset
                .get_or_create(&SysctlLabels {
                    sysctl: sysctl.label(),
                })
                .get()
        };
        let (_tmp, dir) = dir_with("router", &[("ipv4/ip_forward", "0\n")]);
        apply_for_router(&dir, true, &unset).unwrap();
        assert_eq!(dir.read(IP_FORWARD).unwrap().as_deref(), Some("1"));
        assert_eq!(value(IP_FORWARD), 0);
        assert_eq!(value(BRIDGE_NF_CALL_IPTABLES), 1);

        // br_netfilter loaded: set, and no longer counted.
        std::fs::create_dir_all(dir.path(BRIDGE_NF_CALL_IPTABLES).parent().unwrap()).unwrap();
        dir.write(BRIDGE_NF_CALL_IPTABLES, "0").unwrap();
        apply_for_router(&dir, true, &unset).unwrap();
        assert_eq!(
            dir.read(BRIDGE_NF_CALL_IPTABLES).unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(value(BRIDGE_NF_CALL_IPTABLES), 0);

        // Off: left as it is.
        dir.write(BRIDGE_NF_CALL_IPTABLES, "0").unwrap();
        apply_for_router(&dir, false, &unset).unwrap();
        assert_eq!(
            dir.read(BRIDGE_NF_CALL_IPTABLES).unwrap().as_deref(),
            Some("0")
        );

        // No ip_forward at all (not /proc/sys/net): an error, counted.
        let (_empty, nowhere) = dir_with("router-empty", &[]);
        let err = apply_for_router(&nowhere, false, &unset).unwrap_err();
        assert!(err.to_string().contains("net.ipv4.ip_forward"), "{err}");
        assert_eq!(value(IP_FORWARD), 1);
    }
}
