//! `weft install-cni`: puts the `weft-cni` plugin and its network config on a node, the way
//! Weave Net's DaemonSet does from an init container.
//!
//! What to write is decided by pure functions ([`conflist`], [`copy_decision`],
//! [`configs_before`]); [`install`] only does the file operations. Every write is atomic (a temp
//! file in the same directory, fsync, chmod, rename), so a container runtime never sees a half
//! written plugin or config, and a running plugin's binary is replaced, never overwritten.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::config::{DEFAULT_CNI_SOCKET, InstallCniArgs};

/// The plugin's file name, in the bin dir and as the conflist's `type`.
pub const PLUGIN_NAME: &str = "weft-cni";
/// The config's file name; runtimes use the first config in name order.
pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// The network's name in the config.
pub const NETWORK_NAME: &str = "weft";
/// The reference plugin that implements hostPort.
pub const PORTMAP_NAME: &str = "portmap";

const PLUGIN_MODE: u32 = 0o755;
const CONFLIST_MODE: u32 = 0o644;

/// What goes into the conflist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflistOptions {
    pub cni_version: String,
    pub socket: PathBuf,
    pub hairpin: bool,
    pub mtu: Option<u32>,
    /// Chain portmap: asked for and present in the bin dir.
    pub portmap: bool,
}

/// The network config list. The weft entry names only what differs from the plugin's defaults
/// (socket `/run/weft/cni.sock`, `hairpinMode` true, the router's MTU), so a default install
/// is `{"type": "weft-cni"}`.
pub fn conflist(opts: &ConflistOptions) -> Value {
    let mut weft = json!({ "type": PLUGIN_NAME });
    if opts.socket != Path::new(DEFAULT_CNI_SOCKET) {
        weft["socket"] = json!(opts.socket);
    }
    if !opts.hairpin {
        weft["hairpinMode"] = json!(false);
    }
    if let Some(mtu) = opts.mtu {
        weft["mtu"] = json!(mtu);
    }
    let mut plugins = vec![weft];
    if opts.portmap {
        plugins.push(json!({
            "type": PORTMAP_NAME,
            "capabilities": { "portMappings": true },
            "snat": true,
        }));
    }
    json!({ "cniVersion": opts.cni_version, "name": NETWORK_NAME, "plugins": plugins })
}

/// The conflist file's bytes (pretty, newline-terminated: people read it on the node).
pub fn render_conflist(opts: &ConflistOptions) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(&conflist(opts)).expect("a JSON value serializes");
    text.push(b'\n');
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDecision {
    /// Nothing installed yet.
    Install,
    /// A different file (content or mode) is installed.
    Replace,
    UpToDate,
}

/// Whether to write `wanted` (with `mode`) over what is installed (its bytes and permission bits).
pub fn copy_decision(wanted: &[u8], mode: u32, installed: Option<(&[u8], u32)>) -> CopyDecision {
    match installed {
        None => CopyDecision::Install,
        Some((bytes, installed_mode)) if bytes == wanted && installed_mode & 0o7777 == mode => {
            CopyDecision::UpToDate
        }
        Some(_) => CopyDecision::Replace,
    }
}

/// The other network configs a runtime would pick before ours (it uses the first in name order).
pub fn configs_before<'a>(names: impl IntoIterator<Item = &'a str>, ours: &str) -> Vec<String> {
    let mut before: Vec<String> = names
        .into_iter()
        .filter(|n| !n.starts_with('.') && n < &ours)
        .filter(|n| {
            [".conf", ".conflist", ".json"]
                .iter()
                .any(|ext| n.ends_with(ext))
        })
        .map(str::to_owned)
        .collect();
    before.sort();
    before
}

/// `weft install-cni`.
pub fn run(args: &InstallCniArgs) -> anyhow::Result<()> {
    let plugin = match &args.plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find the running weft executable (pass --plugin)")?
            .with_file_name(PLUGIN_NAME),
    };
    for line in install(&Install {
        plugin,
        bin_dir: args.bin_dir.clone(),
        conf_dir: args.conf_dir.clone(),
        portmap: args.portmap,
        conflist: ConflistOptions {
            cni_version: args.cni_version.clone(),
            socket: args.cni_socket.clone(),
            hairpin: args.hairpin,
            mtu: args.mtu,
            portmap: false, // decided by install(), from the bin dir
        },
    })? {
        println!("{line}");
    }
    Ok(())
}

/// Where [`install`] reads and writes.
#[derive(Debug, Clone)]
pub struct Install {
    pub plugin: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// Chain portmap if it is in the bin dir.
    pub portmap: bool,
    /// Its `portmap` field is overwritten from the two above.
    pub conflist: ConflistOptions,
}

/// Installs the plugin, then its config (so a runtime never reads a config whose plugin is
/// missing), each only if it changed. Returns what it did, one line each.
pub fn install(job: &Install) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    // Both directories are checked before anything is written: a half-done install would
    // leave a plugin without a config, or an old config with a new plugin.
    writable_dir(&job.bin_dir, "CNI bin dir", "--bin-dir")?;
    writable_dir(&job.conf_dir, "CNI conf dir", "--conf-dir")?;

    let wanted = fs::read(&job.plugin).with_context(|| {
        format!(
            "cannot read the plugin {} (pass --plugin PATH)",
            job.plugin.display()
        )
    })?;
    let target = job.bin_dir.join(PLUGIN_NAME);
    report.push(update_file(&target, &wanted, PLUGIN_MODE, "plugin")?);

    let portmap_present = job.bin_dir.join(PORTMAP_NAME).is_file();
    if job.portmap && !portmap_present {
        report.push(format!(
            "portmap: not in {}, not chained (hostPort will not work; install the CNI reference plugins and rerun)",
            job.bin_dir.display()
        ));
    }
    let opts = ConflistOptions {
        portmap: job.portmap && portmap_present,
        ..job.conflist.clone()
    };
    let conf = job.conf_dir.join(CONFLIST_NAME);
    report.push(update_file(
        &conf,
        &render_conflist(&opts),
        CONFLIST_MODE,
        "config",
    )?);

    let names: Vec<String> = fs::read_dir(&job.conf_dir)
        .with_context(|| format!("cannot list {}", job.conf_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let before = configs_before(names.iter().map(String::as_str), CONFLIST_NAME);
    if !before.is_empty() {
        report.push(format!(
            "warning: {} sorts before {CONFLIST_NAME} in {}: the runtime uses the first config, not weft's",
            before.join(", "),
            job.conf_dir.display()
        ));
    }
    Ok(report)
}

/// Writes `path` unless it already holds `bytes` with `mode`; says what it did.
fn update_file(path: &Path, bytes: &[u8], mode: u32, what: &str) -> anyhow::Result<String> {
    let installed = match fs::read(path) {
        Ok(old) => {
            let old_mode = fs::metadata(path)?.permissions().mode();
            Some((old, old_mode))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let decision = copy_decision(
        bytes,
        mode,
        installed.as_ref().map(|(b, m)| (b.as_slice(), *m)),
    );
    let verb = match decision {
        CopyDecision::UpToDate => return Ok(format!("{what}: {} is up to date", path.display())),
        CopyDecision::Install => "installed",
        CopyDecision::Replace => "replaced",
    };
    write_atomic(path, bytes, mode)?;
    Ok(format!(
        "{what}: {verb} {} ({} bytes)",
        path.display(),
        bytes.len()
    ))
}

/// Replaces `path` with `bytes` in one rename: temp file in the same directory, fsync, chmod,
/// rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    // A leading dot and a `.tmp` suffix: runtimes load only *.conf, *.conflist and *.json.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A crashed earlier run may have left the same name (init containers are often pid 1).
    let _ = fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Fails with a message naming the flag unless `dir` is an existing, writable directory (tried
/// with a probe file: permission bits do not tell about read-only mounts, and root ignores them).
fn writable_dir(dir: &Path, what: &str, flag: &str) -> anyhow::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{what} {} is not a directory ({flag})", dir.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{what} {} does not exist (create it, mount the host's directory there, or pass {flag})",
            dir.display()
        ),
        Err(e) => bail!("{what} {}: {e} ({flag})", dir.display()),
    }
    let probe = dir.join(format!(".weft-install-probe.{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "{what} {} is not writable: {e} (is the host directory mounted read-write?)",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ConflistOptions {
        ConflistOptions {
            cni_version: "1.1.0".into(),
            socket: DEFAULT_CNI_SOCKET.into(),
            hairpin: true,
            mtu: None,
            portmap: true,
        }
    }

    #[test]
    fn default_conflist_is_weft_then_portmap() {
        assert_eq!(
            conflist(&defaults()),
            json!({"cniVersion": "1.1.0", "name": "weft", "plugins": [
                {"type": "weft-cni"},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            ]})
        );
    }

    #[test]
    fn conflist_names_only_what_differs_from_the_plugin_defaults() {
        let opts = ConflistOptions {
            cni_version: "1.0.0".into(),
            socket: "/run/other/weft.sock".into(),
            hairpin: false,
            mtu: Some(1376),
            portmap: false,
        };
        assert_eq!(
            conflist(&opts),
            json!({"cniVersion": "1.0.0", "name": "weft", "plugins": [{
                "type": "weft-cni", "socket": "/run/other/weft.sock", "hairpinMode": false,
                "mtu": 1376,
            }]})
        );
    }

    #[test]
    fn the_plugin_accepts_what_we_write() {
        // The weft entry, as a runtime hands it to the plugin (the list's version and name
        // copied in), must parse with the plugin's own config code to the same settings.
        let opts = ConflistOptions {
            socket: "/run/x.sock".into(),
            hairpin: false,
            mtu: Some(1400),
            ..defaults()
        };
        let list: Value = serde_json::from_slice(&render_conflist(&opts)).unwrap();
        let mut entry = list["plugins"][0].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        weft_cni::config::check_version(&entry).unwrap();
        let c = weft_cni::config::Config::from_json(entry).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/x.sock"));
        assert!(!c.hairpin);
        assert_eq!(c.mtu, Some(1400));

        let list: Value = serde_json::from_slice(&render_conflist(&defaults())).unwrap();
        let mut entry = list["plugins"][0].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        let c = weft_cni::config::Config::from_json(entry).unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_CNI_SOCKET));
        assert!(c.hairpin);
    }

    #[test]
    fn copy_only_when_content_or_mode_differs() {
        assert_eq!(copy_decision(b"a", 0o755, None), CopyDecision::Install);
        assert_eq!(
            copy_decision(b"a", 0o755, Some((b"a", 0o100755))),
            CopyDecision::UpToDate
        );
        assert_eq!(
            copy_decision(b"a", 0o755, Some((b"b", 0o100755))),
            CopyDecision::Replace
        );
        assert_eq!(
            copy_decision(b"a", 0o755, Some((b"a", 0o100644))),
            CopyDecision::Replace
        );
    }

    #[test]
    fn configs_that_shadow_ours() {
        let names = [
            "99-loopback.conf",
            "05-cilium.conflist",
            "10-weft.conflist",
            ".10-weft.conflist.7.tmp",
            "00-notes.txt",
            "10-flannel.conflist",
            "01-old.json",
        ];
        assert_eq!(
            configs_before(names, CONFLIST_NAME),
            vec!["01-old.json", "05-cilium.conflist", "10-flannel.conflist"]
        );
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("weft-install-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("bin")).unwrap();
            fs::create_dir_all(dir.join("net.d")).unwrap();
            fs::write(dir.join("weft-cni"), b"plugin v1").unwrap();
            Self(dir)
        }

        fn job(&self) -> Install {
            Install {
                plugin: self.0.join("weft-cni"),
                bin_dir: self.0.join("bin"),
                conf_dir: self.0.join("net.d"),
                portmap: true,
                conflist: ConflistOptions {
                    portmap: false,
                    ..defaults()
                },
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn installs_then_does_nothing_then_replaces() {
        let t = TempDir::new("cycle");
        let job = t.job();
        let report = install(&job).unwrap();
        assert!(report[0].starts_with("plugin: installed"), "{report:?}");
        assert!(report[1].starts_with("portmap: not in"), "{report:?}");
        assert!(report[2].starts_with("config: installed"), "{report:?}");
        let plugin = job.bin_dir.join(PLUGIN_NAME);
        let conf = job.conf_dir.join(CONFLIST_NAME);
        assert_eq!(fs::read(&plugin).unwrap(), b"plugin v1");
        assert_eq!(mode(&plugin), 0o755);
        assert_eq!(mode(&conf), 0o644);
        let list: Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);

        // Idempotent: nothing is rewritten, no temp files are left behind.
        let report = install(&job).unwrap();
        assert!(report[0].ends_with("is up to date"), "{report:?}");
        assert!(report[2].ends_with("is up to date"), "{report:?}");
        for dir in [&job.bin_dir, &job.conf_dir] {
            let names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 1, "{names:?}");
        }

        // A new plugin, a wrong mode on the installed one's replacement, and portmap appearing.
        fs::write(&job.plugin, b"plugin v2").unwrap();
        fs::write(job.bin_dir.join(PORTMAP_NAME), b"portmap").unwrap();
        fs::write(job.conf_dir.join("05-other.conflist"), b"{}").unwrap();
        let report = install(&job).unwrap();
        assert!(report[0].starts_with("plugin: replaced"), "{report:?}");
        assert!(report[1].starts_with("config: replaced"), "{report:?}");
        assert!(report[2].contains("05-other.conflist"), "{report:?}");
        assert_eq!(fs::read(&plugin).unwrap(), b"plugin v2");
        let list: Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        assert_eq!(list["plugins"][1]["type"], "portmap");

        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o644)).unwrap();
        let report = install(&job).unwrap();
        assert!(report[0].starts_with("plugin: replaced"), "{report:?}");
        assert_eq!(mode(&plugin), 0o755);
    }

    #[test]
    fn portmap_can_be_left_out() {
        let t = TempDir::new("noportmap");
        let job = Install {
            portmap: false,
            ..t.job()
        };
        fs::write(job.bin_dir.join(PORTMAP_NAME), b"portmap").unwrap();
        let report = install(&job).unwrap();
        assert_eq!(report.len(), 2, "{report:?}");
        let conf = fs::read(job.conf_dir.join(CONFLIST_NAME)).unwrap();
        let list: Value = serde_json::from_slice(&conf).unwrap();
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn missing_dirs_and_plugin_are_named() {
        let t = TempDir::new("missing");
        let job = Install {
            conf_dir: t.0.join("nope"),
            ..t.job()
        };
        let err = format!("{:#}", install(&job).unwrap_err());
        assert!(
            err.contains("CNI conf dir") && err.contains("does not exist"),
            "{err}"
        );
        assert!(err.contains("--conf-dir"), "{err}");
        // Nothing was written before the failure.
        assert!(!t.0.join("bin").join(PLUGIN_NAME).exists());

        let job = Install {
            bin_dir: t.0.join("weft-cni"),
            ..t.job()
        };
        let err = format!("{:#}", install(&job).unwrap_err());
        assert!(err.contains("is not a directory"), "{err}");

        let job = Install {
            plugin: t.0.join("absent"),
            ..t.job()
        };
        let err = format!("{:#}", install(&job).unwrap_err());
        assert!(err.contains("cannot read the plugin"), "{err}");
    }

    #[test]
    fn a_read_only_dir_is_refused() {
        // Root writes through permission bits; only a read-only mount would stop it.
        if fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
            return;
        }
        let t = TempDir::new("readonly");
        let job = t.job();
        fs::set_permissions(&job.bin_dir, fs::Permissions::from_mode(0o555)).unwrap();
        let err = format!("{:#}", install(&job).unwrap_err());
        fs::set_permissions(&job.bin_dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(err.contains("is not writable"), "{err}");
    }
}
