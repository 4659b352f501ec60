//! The cap on the peer addresses this router keeps dialling because it was told to (`--peers`
//! and `weft connect`, persisted in the store). Without one, anything that could reach the
//! control endpoint could make the router keep, and dial after every restart, any number of
//! addresses.

/// The most direct targets a router keeps (command line and `weft connect` together).
pub const MAX_DIRECT_TARGETS: usize = 256;

/// Whether adding `requested` to the `existing` direct targets stays within `cap`; addresses
/// already targeted cost nothing.
pub fn admit(existing: &[String], requested: &[String], cap: usize) -> Result<(), String> {
    let mut new: Vec<&String> = requested.iter().filter(|r| !existing.contains(r)).collect();
    new.sort();
    new.dedup();
    let total = existing.len() + new.len();
    if total > cap {
        return Err(format!(
            "refused: this would make {total} connect targets, more than the cap of {cap} \
             ({} now); weft forget some first",
            existing.len()
        ));
    }
    Ok(())
}

/// At start-up: the command line's peers, then the persisted targets while there is room. Returns
/// the targets and how many persisted ones were left out.
pub fn at_start(peers: Vec<String>, persisted: Vec<String>, cap: usize) -> (Vec<String>, usize) {
    let mut targets = peers;
    let mut left_out = 0;
    for address in persisted {
        if targets.contains(&address) {
            continue;
        }
        if targets.len() >= cap {
            left_out += 1;
        } else {
            targets.push(address);
        }
    }
    (targets, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(range: std::ops::Range<u32>) -> Vec<String> {
        range
            .map(|i| format!("10.9.{}.{}:6783", i / 256, i % 256))
            .collect()
    }

    #[test]
    fn connect_stays_within_the_cap() {
        let existing = addrs(0..250);
        assert_eq!(admit(&existing, &addrs(250..256), 256), Ok(()));
        // Already-known addresses and duplicates cost nothing.
        let mut again = addrs(0..250);
        again.extend(addrs(250..256));
        again.extend(addrs(250..256));
        assert_eq!(admit(&existing, &again, 256), Ok(()));
        let err = admit(&existing, &addrs(250..257), 256).unwrap_err();
        assert!(
            err.contains("257") && err.contains("256") && err.contains("forget"),
            "{err}"
        );
    }

    #[test]
    fn start_up_keeps_the_command_line_and_caps_the_rest() {
        let (targets, left_out) = at_start(addrs(0..2), addrs(1..500), 256);
        assert_eq!(targets.len(), 256);
        assert_eq!(&targets[..2], &addrs(0..2)[..]);
        assert_eq!(left_out, (500 - 2) - 254);
        let (targets, left_out) = at_start(addrs(0..300), vec![], 256);
        assert_eq!((targets.len(), left_out), (300, 0));
    }
}
