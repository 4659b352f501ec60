//! CNI errors: the spec's well-known codes and the JSON the runtime reads on stdout.

use std::fmt;

use serde::{Deserialize, Serialize};

/// 1: the config's `cniVersion` is not one the plugin speaks.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// 2: a field in the network configuration is not supported.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// 3: the container is unknown or does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// 4: a required environment variable is missing or invalid; the message names it.
pub const INVALID_ENV: u32 = 4;
/// 5: I/O failure (e.g. reading stdin).
pub const IO_FAILURE: u32 = 5;
/// 6: the network configuration could not be decoded.
pub const DECODING_FAILURE: u32 = 6;
/// 7: the network configuration is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// 11: try again later (the router is down, or its IPAM is not ready yet).
pub const TRY_AGAIN_LATER: u32 = 11;
/// 50: the plugin is not available (STATUS).
pub const NOT_AVAILABLE: u32 = 50;
/// 100: weft-specific: a kernel (netlink, netns, raw socket) operation failed.
pub const KERNEL: u32 = 100;
/// 101: weft-specific: the router gave an answer the plugin does not understand.
pub const ROUTER_PROTOCOL: u32 = 101;
/// 102: weft-specific: a CHECK found the attachment different from what ADD set up.
pub const CHECK_MISMATCH: u32 = 102;
/// 103: weft-specific: a delegated IPAM plugin failed without a CNI error of its own.
pub const DELEGATE_FAILED: u32 = 103;

/// 104: weft-specific: ADD for an attachment that already exists (DEL it first).
pub const ALREADY_ATTACHED: u32 = 104;
/// 105: weft-specific (from the router): no address available: the range is exhausted, or
/// all its free space is owned by unreachable peers (the message names `weft rmpeer`).
pub const NO_ADDRESSES: u32 = 105;
/// 106: weft-specific: the router's socket is in a directory that someone other than root could
/// write (or a symlink): the plugin does not talk to it.
pub const UNSAFE_SOCKET_DIR: u32 = 106;

/// A CNI error: `{"cniVersion","code","msg","details"}` on stdout and a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn kernel(what: impl Into<String>, err: impl fmt::Display) -> Self {
        Self::new(KERNEL, what, err.to_string())
    }

    pub fn invalid_env(var: &str, why: impl Into<String>) -> Self {
        Self::new(
            INVALID_ENV,
            format!("invalid environment variables: {var}"),
            why,
        )
    }

    /// A bridge that is not there: weft's router has not made it (yet).
    pub fn no_bridge(bridge: &str, code: u32) -> Self {
        Self::new(
            code,
            format!("bridge {bridge} does not exist; is weft running?"),
            "",
        )
    }

    pub fn invalid_config(why: impl Into<String>) -> Self {
        Self::new(INVALID_CONFIG, "invalid network configuration", why)
    }

    /// The JSON the runtime reads: the error in the config's version.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}
