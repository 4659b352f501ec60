//! A just-enough reader of the Prometheus text format the router serves on `/metrics`.

/// The samples of one scrape: `(series, value)`, where a series is the metric name with its
/// labels exactly as served, e.g. `weft_connections{state="established"}`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<(String, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// The value of one series (`name` or `name{labels}`), if served.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }

    /// The sum over all label sets of metric `name` (0 when none is served yet).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series == name
                    || series
                        .strip_prefix(name)
                        .is_some_and(|l| l.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_sums_are_read() {
        let m = Metrics::parse(
            "# HELP weft_peers Peers.\n# TYPE weft_peers gauge\nweft_peers 5\n\
             weft_handshake_failures_total{reason=\"protocol\"} 2\n\
             weft_handshake_failures_total{reason=\"io\"} 1\n\
             weft_handshake_failures_totally 9\n# EOF\n",
        );
        assert_eq!(m.get("weft_peers"), Some(5.0));
        assert_eq!(
            m.get("weft_handshake_failures_total{reason=\"protocol\"}"),
            Some(2.0)
        );
        assert_eq!(m.sum("weft_handshake_failures_total"), 3.0);
        assert_eq!(m.sum("weft_missing"), 0.0);
    }
}
