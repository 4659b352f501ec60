//! Delegated IPAM: run the IPAM plugin named by `ipam.type` from `CNI_PATH`, with the same
//! environment (but the verb we ask for) and the same stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{self, CniError};

/// Runs another CNI plugin. The real one is [`ProcessExec`]; unit tests use a fake.
pub trait Exec {
    /// Runs `plugin` (found in `cni_path`) with `CNI_COMMAND=command` and `stdin`; its stdout on
    /// success, its CNI error otherwise.
    fn run(
        &self,
        plugin: &str,
        cni_path: Option<&str>,
        command: &str,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError>;
}

/// Runs plugins as child processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessExec;

/// The plugin's path: the first `dir/plugin` in `CNI_PATH` that is a file.
pub fn find_plugin(plugin: &str, cni_path: Option<&str>) -> Result<PathBuf, CniError> {
    let cni_path = cni_path.ok_or_else(|| {
        CniError::invalid_env(
            "CNI_PATH",
            format!("CNI_PATH is not set: needed to find the ipam plugin {plugin:?}"),
        )
    })?;
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::invalid_config(format!(
                "ipam plugin {plugin:?} not found in CNI_PATH {cni_path:?}"
            ))
        })
}

impl Exec for ProcessExec {
    fn run(
        &self,
        plugin: &str,
        cni_path: Option<&str>,
        command: &str,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let path = find_plugin(plugin, cni_path)?;
        let mut child = Command::new(&path)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                CniError::new(
                    error::DELEGATE_FAILED,
                    format!("cannot run ipam plugin {}", path.display()),
                    e.to_string(),
                )
            })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading stdin closes the pipe: its exit status tells.
            let _ = input.write_all(stdin);
        }
        let out = child.wait_with_output().map_err(|e| {
            CniError::new(
                error::DELEGATE_FAILED,
                format!("ipam plugin {plugin} {command}"),
                e.to_string(),
            )
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => Err(CniError::new(
                v["code"]
                    .as_u64()
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(error::DELEGATE_FAILED),
                format!(
                    "ipam plugin {plugin} {command}: {}",
                    v.get("msg").and_then(Value::as_str).unwrap_or("failed")
                ),
                v.get("details")
                    .and_then(Value::as_str)
                    .unwrap_or(&stderr)
                    .to_string(),
            )),
            _ => Err(CniError::new(
                error::DELEGATE_FAILED,
                format!("ipam plugin {plugin} {command} failed ({})", out.status),
                format!("{} {stderr}", String::from_utf8_lossy(&out.stdout).trim())
                    .trim()
                    .to_string(),
            )),
        }
    }
}

/// Whether the delegate speaks spec 1.1.0 (and so knows GC and STATUS), from its VERSION answer.
pub fn supports_1_1(exec: &dyn Exec, plugin: &str, cni_path: Option<&str>) -> bool {
    exec.run(plugin, cni_path, "VERSION", br#"{"cniVersion":"1.1.0"}"#)
        .ok()
        .and_then(|out| serde_json::from_slice::<Value>(&out).ok())
        .and_then(|v| {
            v.get("supportedVersions")
                .and_then(Value::as_array)
                .cloned()
        })
        .is_some_and(|vs| vs.iter().any(|v| v == "1.1.0"))
}
