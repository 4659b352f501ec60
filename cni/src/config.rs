//! What a call brings: the `CNI_*` environment and the network configuration on stdin.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{self, CniError};
use crate::protocol::{Attachment, DEFAULT_SOCKET};
use crate::result::Dns;

/// Default bridge name (the router's answer wins).
pub const DEFAULT_BRIDGE: &str = "weft";

/// The verbs of spec 1.1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// The `CNI_*` variables, as given (empty counts as absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    /// Reads the variables through `get` (the process environment in the binary, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        Self {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }

    /// The verb, or error 4 naming `CNI_COMMAND`.
    pub fn command(&self) -> Result<Command, CniError> {
        let raw = self
            .command
            .as_deref()
            .ok_or_else(|| CniError::invalid_env("CNI_COMMAND", "CNI_COMMAND is not set"))?;
        Command::parse(raw).ok_or_else(|| {
            CniError::invalid_env(
                "CNI_COMMAND",
                format!(
                    "unknown CNI_COMMAND {raw:?} (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
                ),
            )
        })
    }

    /// The container id, checked the way spec 1.1 describes it.
    pub fn container_id(&self) -> Result<&str, CniError> {
        let id = self.container_id.as_deref().ok_or_else(|| {
            CniError::invalid_env("CNI_CONTAINERID", "CNI_CONTAINERID is not set")
        })?;
        let mut chars = id.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(CniError::invalid_env(
                "CNI_CONTAINERID",
                format!(
                    "CNI_CONTAINERID {id:?} must be alphanumeric, '_', '.' or '-', starting alphanumeric"
                ),
            ));
        }
        Ok(id)
    }

    /// The interface name inside the container, checked against the kernel's rules.
    pub fn ifname(&self) -> Result<&str, CniError> {
        let name = self
            .ifname
            .as_deref()
            .ok_or_else(|| CniError::invalid_env("CNI_IFNAME", "CNI_IFNAME is not set"))?;
        valid_ifname(name).map_err(|why| {
            CniError::invalid_env("CNI_IFNAME", format!("CNI_IFNAME {name:?} {why}"))
        })?;
        Ok(name)
    }

    /// The netns path (required for ADD and CHECK).
    pub fn netns(&self) -> Result<&str, CniError> {
        self.netns
            .as_deref()
            .ok_or_else(|| CniError::invalid_env("CNI_NETNS", "CNI_NETNS is not set"))
    }

    /// `CNI_ARGS` as `K=V` pairs; error 4 if a pair has no `=`.
    pub fn args(&self) -> Result<Vec<(String, String)>, CniError> {
        let Some(raw) = self.args.as_deref() else {
            return Ok(Vec::new());
        };
        raw.split(';')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        CniError::invalid_env(
                            "CNI_ARGS",
                            format!("CNI_ARGS pair {p:?} is not KEY=VALUE"),
                        )
                    })
            })
            .collect()
    }
}

/// Linux interface name rules: 1–15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn valid_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err("must not contain '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// `runtimeConfig` capabilities the plugin reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The `dns` capability: overrides the config's `dns`.
    #[serde(default)]
    pub dns: Option<RuntimeDns>,
}

/// The `dns` capability's shape (`servers`, `searches`, `options`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeDns {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// One `cni.dev/valid-attachments` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration as the plugin reads it: every weft field is optional.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The router's unix socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The bridge pods attach to (the router's answer wins).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Hairpin mode on the host end (default true: a pod can reach itself through a service).
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: Option<bool>,
    /// Overrides the router's MTU (with delegated IPAM: the bridge's MTU).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Absent: the router's IPAM. `{"type": "host-local", ...}`: delegate to that plugin.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// The spec's original key for the same list; libcni sets both.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<GcAttachment>>,
}

/// A [`NetConf`] with defaults applied and values checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub cni_version: String,
    pub name: String,
    pub socket: PathBuf,
    pub bridge: String,
    pub hairpin: bool,
    pub mtu: Option<u32>,
    /// The delegated IPAM plugin's type, if any.
    pub ipam_type: Option<String>,
    pub dns: Dns,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Parses stdin into JSON: error 6 if it is not a JSON object.
pub fn parse_json(stdin: &[u8]) -> Result<Value, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            error::DECODING_FAILURE,
            "decoding failure",
            format!("network configuration: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(CniError::new(
            error::DECODING_FAILURE,
            "decoding failure",
            "the network configuration is not a JSON object",
        ));
    }
    Ok(v)
}

/// Checks the config's `cniVersion` (error 1 if missing or unsupported).
pub fn check_version(raw: &Value) -> Result<String, CniError> {
    let version = match raw.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        None => String::new(),
        Some(other) => {
            return Err(CniError::new(
                error::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!("cniVersion must be a string, not {other}"),
            ));
        }
    };
    if !crate::supports(&version) {
        return Err(CniError::new(
            error::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "config cniVersion {version:?} is not supported; this plugin supports {}",
                crate::SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    Ok(version)
}

impl Config {
    /// Reads and checks a (version-checked) config: error 7 on wrong types or invalid values.
    pub fn from_json(raw: Value) -> Result<Self, CniError> {
        let conf: NetConf =
            serde_json::from_value(raw).map_err(|e| CniError::invalid_config(e.to_string()))?;
        let socket = conf.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if !socket.is_absolute() {
            return Err(CniError::invalid_config(format!(
                "socket {socket:?} must be an absolute path"
            )));
        }
        let bridge = conf.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        valid_ifname(&bridge)
            .map_err(|why| CniError::invalid_config(format!("bridge {bridge:?} {why}")))?;
        if let Some(mtu) = conf.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::invalid_config(format!(
                "mtu {mtu} is outside 68..65535"
            )));
        }
        let ipam_type = match &conf.ipam {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(Value::Object(m)) => match m.get("type") {
                Some(Value::String(t)) if t.is_empty() => None,
                Some(Value::String(t)) => {
                    if t.contains('/') || t == "." || t == ".." {
                        return Err(CniError::invalid_config(format!(
                            "ipam type {t:?} must be a plain plugin name"
                        )));
                    }
                    Some(t.clone())
                }
                None => return Err(CniError::invalid_config("ipam has no \"type\"")),
                Some(other) => {
                    return Err(CniError::invalid_config(format!(
                        "ipam type must be a string, not {other}"
                    )));
                }
            },
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "ipam must be an object, not {other}"
                )));
            }
        };
        let mut dns = conf.dns.unwrap_or_default();
        if let Some(rt) = conf.runtime_config.and_then(|r| r.dns) {
            if !rt.servers.is_empty() {
                dns.nameservers = rt.servers;
            }
            if !rt.searches.is_empty() {
                dns.search = rt.searches;
            }
            if !rt.options.is_empty() {
                dns.options = rt.options;
            }
        }
        let valid_attachments = conf.valid_attachments.or(conf.attachments).map(|list| {
            list.into_iter()
                .map(|a| Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect()
        });
        Ok(Self {
            cni_version: conf.cni_version,
            name: conf.name,
            socket,
            bridge,
            hairpin: conf.hairpin_mode.unwrap_or(true),
            mtu: conf.mtu,
            ipam_type,
            dns,
            prev_result: conf.prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> CniEnv {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn minimal_conflist_entry_gets_the_defaults() {
        let raw = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni"});
        assert_eq!(check_version(&raw).unwrap(), "1.1.0");
        let c = Config::from_json(raw).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/weft/cni.sock"));
        assert_eq!(c.bridge, "weft");
        assert!(c.hairpin);
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam_type, None);
        assert!(c.dns.is_empty());
    }

    #[test]
    fn weft_fields_and_runtime_dns() {
        let c = Config::from_json(json!({
            "cniVersion": "1.0.0", "name": "n", "type": "weft-cni", "socket": "/tmp/x.sock",
            "bridge": "br9", "hairpinMode": false, "mtu": 1376,
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]},
            "runtimeConfig": {"dns": {"servers": ["1.1.1.1"]}},
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(c.bridge, "br9");
        assert!(!c.hairpin);
        assert_eq!(c.mtu, Some(1376));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.dns.nameservers, vec!["1.1.1.1"]);
        assert_eq!(c.dns.search, vec!["svc"]);
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }

    #[test]
    fn bad_inputs_get_the_spec_codes() {
        assert_eq!(parse_json(b"{nope").unwrap_err().code, 6);
        assert_eq!(parse_json(b"[1]").unwrap_err().code, 6);
        assert_eq!(parse_json(b"").unwrap_err().code, 6);
        assert_eq!(
            check_version(&json!({"cniVersion": "0.2.0"}))
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(check_version(&json!({"name": "x"})).unwrap_err().code, 1);
        assert_eq!(
            check_version(&json!({"cniVersion": 1})).unwrap_err().code,
            1
        );
        for bad in [
            json!({"cniVersion": "1.1.0", "mtu": 10}),
            json!({"cniVersion": "1.1.0", "mtu": "big"}),
            json!({"cniVersion": "1.1.0", "hairpinMode": "yes"}),
            json!({"cniVersion": "1.1.0", "bridge": "a-very-long-bridge-name"}),
            json!({"cniVersion": "1.1.0", "socket": "relative.sock"}),
            json!({"cniVersion": "1.1.0", "ipam": {"subnet": "10.0.0.0/8"}}),
            json!({"cniVersion": "1.1.0", "ipam": {"type": "../../bin/sh"}}),
            json!({"cniVersion": "1.1.0", "ipam": "host-local"}),
        ] {
            assert_eq!(Config::from_json(bad.clone()).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn environment_checks_name_the_variable() {
        let e = env(&[]);
        let err = e.command().unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_COMMAND"));
        let e = env(&[("CNI_COMMAND", "FROB")]);
        assert_eq!(e.command().unwrap_err().code, 4);
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "eth0/1"),
        ]);
        assert_eq!(e.command().unwrap(), Command::Add);
        assert!(
            e.container_id()
                .unwrap_err()
                .msg
                .contains("CNI_CONTAINERID")
        );
        assert!(e.ifname().unwrap_err().msg.contains("CNI_IFNAME"));
        assert!(e.netns().unwrap_err().msg.contains("CNI_NETNS"));
        let e = env(&[(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web-0;;K8S_POD_NAMESPACE=default",
        )]);
        assert_eq!(e.args().unwrap().len(), 3);
        assert_eq!(env(&[("CNI_ARGS", "oops")]).args().unwrap_err().code, 4);
    }
}
