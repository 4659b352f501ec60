//! Pods reaching beyond the cluster range: the host forwards their packets and masquerades them
//! behind its own address, the way Weave Net and the reference `bridge` plugin (`ipMasq`) do.
//! Traffic inside the range is never translated, so pods see each other's real addresses.
//!
//! The ruleset is pure data ([`ruleset`]), applied in one `nft -f` transaction that replaces
//! weft's own table whole, so re-applying it is idempotent and nothing else is touched.

use std::io;

use weft_gossip::ipam::Cidr;

/// weft's nftables table (family `ip`).
pub const TABLE: &str = "weft";

/// The nftables script that (re)creates weft's table: masquerade what leaves the range.
pub fn ruleset(range: Cidr) -> String {
    format!(
        "table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {range} ip daddr != {range} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs [`ruleset`]. Needs `CAP_NET_ADMIN`. IPv4 forwarding, which it needs too, is turned
/// on by [`crate::sysctl`] (through `--proc-sys-net`).
pub fn apply(range: Cidr) -> io::Result<()> {
    crate::nft::apply(&ruleset(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_its_own_table_and_masquerades_only_what_leaves_the_range() {
        let rules = ruleset("10.32.0.0/12".parse().unwrap());
        assert!(rules.starts_with("table ip weft {}\ndelete table ip weft\n"));
        assert!(rules.contains("ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade"));
        assert!(rules.contains("type nat hook postrouting priority srcnat"));
        assert_eq!(rules.matches("table ip").count(), 3);
    }
}
