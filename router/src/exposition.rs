//! The two text formats of `/metrics`. The registry encodes OpenMetrics, which Prometheus asks
//! for (`Accept: application/openmetrics-text`); other scrapers and `promtool check metrics`
//! read the older Prometheus text format (0.0.4), where a counter's family is named like its
//! samples (`…_total`) and there is no `# EOF` or `# UNIT`. [`to_prometheus_text`] turns one
//! into the other; [`wants_openmetrics`] reads the scraper's `Accept`.

use std::collections::HashSet;
use std::fmt::Write as _;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the scraper accepts OpenMetrics (Prometheus says so in `Accept`).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The Prometheus text format of an OpenMetrics exposition (as `prometheus_client` writes it:
/// no exemplars, no `_created` samples).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match metadata {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let _ = writeln!(out, "{prefix}{name}{suffix} {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS_SAMPLE: &str = "\
# HELP weft_peers Peers in the topology.
# TYPE weft_peers gauge
weft_peers 2
# HELP weft_gossip_bytes Control message bytes.
# TYPE weft_gossip_bytes counter
# UNIT weft_gossip_bytes bytes
weft_gossip_bytes_total{direction=\"out\"} 10
# EOF
";

    #[test]
    fn counters_are_named_like_their_samples_and_openmetrics_markers_go() {
        assert_eq!(
            to_prometheus_text(OPENMETRICS_SAMPLE),
            "\
# HELP weft_peers Peers in the topology.
# TYPE weft_peers gauge
weft_peers 2
# HELP weft_gossip_bytes_total Control message bytes.
# TYPE weft_gossip_bytes_total counter
weft_gossip_bytes_total{direction=\"out\"} 10
"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
