//! The weft CNI plugin (spec 1.1.0): a small, fast-starting client of the local router.
//!
//! - [`protocol`]: the plugin ↔ router HTTP/JSON protocol (shared with the router).
//! - [`config`]: the `CNI_*` environment and the network configuration.
//! - [`result`]: results in each supported version's format.
//! - [`client`]: the hand-written HTTP/1.1 client over the router's unix socket.
//! - [`socket_dir`]: whether the socket's directory can be trusted (both ends check it).
//! - [`delegate`]: running a delegated IPAM plugin.
//! - [`hostnet`]: the kernel edge as a trait; [`netlink`] is the real one (on the shared
//!   `weft-netlink` client), [`sys`] its one unsafe bit (the gratuitous ARP).
//! - [`plugin`]: the verbs.

pub mod client;
pub mod config;
pub mod delegate;
pub mod error;
pub mod hostnet;
pub mod ip;
pub mod netlink;
pub mod plugin;
pub mod protocol;
pub mod result;
pub mod socket_dir;
pub mod sys;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod plugin_tests;

/// CNI spec versions the plugin answers, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when the caller did not state one we speak.
pub const LATEST_VERSION: &str = "1.1.0";

/// Whether a network configuration's `cniVersion` is one the plugin speaks.
pub fn supports(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// The `VERSION` verb's answer.
pub fn version_info(config_version: &str) -> serde_json::Value {
    serde_json::json!({ "cniVersion": config_version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_answer_lists_every_supported_version() {
        assert!(supports("1.1.0") && supports("0.3.1") && !supports("0.2.0"));
        let info = version_info("1.1.0");
        assert_eq!(info["supportedVersions"].as_array().unwrap().len(), 4);
    }
}
