//! The weft CNI plugin (spec 1.1.0), a small client of the local router.
//!
//! What exists so far is version negotiation, which every verb starts with; the verbs and the
//! router-side IPAM come with the CNI issue.

/// CNI spec versions the plugin answers, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

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
