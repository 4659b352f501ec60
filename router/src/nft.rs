//! The one edge to nftables: scripts go to `nft -f -` as one transaction, and listings come
//! back as `nft -j` JSON. The rulesets themselves are pure data, built by their owners
//! ([`crate::nat`], [`crate::portguard`]). Needs `CAP_NET_ADMIN`.

use std::io::{self, Write};
use std::process::{Command, Output, Stdio};

/// Runs `script` as one `nft -f -` transaction: all of it applies or none.
pub fn apply(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    checked(child.wait_with_output()?).map(drop)
}

/// `nft -j ARGS…`: the JSON it prints.
pub fn list_json(args: &[&str]) -> io::Result<String> {
    let out = Command::new("nft")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    checked(out).map(|stdout| String::from_utf8_lossy(&stdout).into_owned())
}

/// The standard output of a successful run; a failed one's standard error as the error.
fn checked(out: Output) -> io::Result<Vec<u8>> {
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
