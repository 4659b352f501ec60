//! Which requests the status endpoint serves. A web page open in a browser on the node can send
//! "simple" cross-site requests to `127.0.0.1:6784` (a POST with no preflight), and a DNS name
//! that rebinds to 127.0.0.1 lets a page read the answers too. So:
//!
//! - every request must name this endpoint in `Host`: a loopback name or address, the
//!   configured address, or (when bound to every address) any IP literal, with the endpoint's
//!   port if a port is given. A rebinding DNS name is refused with 421;
//! - a request with an `Origin` header must come from the endpoint itself;
//! - a request that changes something (any method but GET/HEAD, and the routes marked as
//!   control) must come from this host and carry `X-Weft-Client`, a header a browser only
//!   sends cross-site after a CORS preflight, which this endpoint never answers.
//!
//! [`decide`] is the decision, a pure function of the request's facts.

use std::net::{IpAddr, SocketAddr};

use crate::http_admission::Source;

/// The header the CLI sends with every request; changes are refused without it.
pub const CLIENT_HEADER: &str = "x-weft-client";

/// What a route does: reads are served to whoever names the endpoint properly; controls only
/// to the local CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Control,
}

/// The facts about one request that the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the method is one that reads (GET, HEAD).
    pub safe_method: bool,
    /// The route's access (the method decides too: a non-GET request is always a control).
    pub access: Access,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub client_header: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` names something else (DNS rebinding) or is missing.
    Host(String),
    /// `Origin` is another site.
    Origin(String),
    /// A change from another host.
    Remote,
    /// A change without `X-Weft-Client`.
    ClientHeader,
}

impl Refusal {
    /// The `reason` label of `weft_http_requests_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Host(_) => "host",
            Self::Origin(_) => "origin",
            Self::Remote => "remote",
            Self::ClientHeader => "client_header",
        }
    }

    /// 421 for a request meant for another host name, 403 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::Host(_) => 421,
            _ => 403,
        }
    }

    /// The body: what was refused and why.
    pub fn message(&self) -> String {
        match self {
            Self::Host(host) => format!(
                "refused: Host {host:?} does not name this weft status endpoint (use 127.0.0.1, \
                 localhost, [::1] or the address it is bound to; other names are refused \
                 against DNS rebinding)\n"
            ),
            Self::Origin(origin) => format!(
                "refused: a request from the web origin {origin:?} (cross-site requests are \
                 not served)\n"
            ),
            Self::Remote => "this operation is only available from the local host\n".to_owned(),
            Self::ClientHeader => format!(
                "refused: requests that change something must carry the {CLIENT_HEADER} header \
                 (use the weft CLI, or curl -H '{CLIENT_HEADER}: curl')\n"
            ),
        }
    }
}

/// The decision.
pub fn decide(bound: SocketAddr, request: &RequestFacts<'_>) -> Result<(), Refusal> {
    let host = request.host.unwrap_or_default();
    if !names_endpoint(bound, host, None) {
        return Err(Refusal::Host(host.to_owned()));
    }
    if let Some(origin) = request.origin
        && !origin_is_endpoint(bound, origin)
    {
        return Err(Refusal::Origin(origin.to_owned()));
    }
    let control = request.access == Access::Control || !request.safe_method;
    if control {
        if Source::of(request.peer) != Source::Local {
            return Err(Refusal::Remote);
        }
        if !request.client_header {
            return Err(Refusal::ClientHeader);
        }
    }
    Ok(())
}

/// Whether `authority` (`host[:port]`) names the endpoint bound to `bound`. A missing port is
/// `default_port` (`None`: any port is fine, as for `Host`).
fn names_endpoint(bound: SocketAddr, authority: &str, default_port: Option<u16>) -> bool {
    let Some((host, port)) = split_authority(authority) else {
        return false;
    };
    if let Some(port) = port.or(default_port)
        && port != bound.port()
    {
        return false;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        // An address literal cannot be rebound: only a name can.
        Ok(ip) => ip.is_loopback() || ip == bound.ip() || bound.ip().is_unspecified(),
        Err(_) => false,
    }
}

fn origin_is_endpoint(bound: SocketAddr, origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .is_some_and(|authority| names_endpoint(bound, authority, Some(80)))
}

/// `host[:port]` or `[v6][:port]` → (host, port); `None` if malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_endpoint() -> SocketAddr {
        "127.0.0.1:6784".parse().unwrap()
    }

    fn cli(host: &str) -> RequestFacts<'_> {
        RequestFacts {
            peer: "127.0.0.1".parse().unwrap(),
            safe_method: false,
            access: Access::Control,
            host: Some(host),
            origin: None,
            client_header: true,
        }
    }

    #[test]
    fn the_cli_is_served() {
        for host in [
            "127.0.0.1:6784",
            "localhost:6784",
            "LOCALHOST:6784",
            "[::1]:6784",
            "127.0.0.1",
        ] {
            assert_eq!(decide(loopback_endpoint(), &cli(host)), Ok(()), "{host}");
        }
        let read = RequestFacts {
            safe_method: true,
            access: Access::Read,
            client_header: false,
            ..cli("127.0.0.1:6784")
        };
        assert_eq!(decide(loopback_endpoint(), &read), Ok(()));
    }

    #[test]
    fn rebinding_names_and_other_ports_are_refused_even_for_reads() {
        for host in [
            "evil.example:6784",
            "evil.example",
            "127.0.0.1.evil.example:6784",
            "localhost.evil.example:6784",
            "127.0.0.1:80",
            "127.0.0.1:abc",
            "[::1",
            ":6784",
            "",
        ] {
            let read = RequestFacts {
                safe_method: true,
                access: Access::Read,
                ..cli(host)
            };
            let refusal = decide(loopback_endpoint(), &read).unwrap_err();
            assert_eq!(refusal, Refusal::Host(host.to_owned()));
            assert_eq!(refusal.status(), 421);
        }
        let no_host = RequestFacts {
            host: None,
            ..cli("")
        };
        assert_eq!(
            decide(loopback_endpoint(), &no_host),
            Err(Refusal::Host(String::new()))
        );
    }

    #[test]
    fn the_configured_address_is_a_good_host_and_every_literal_when_bound_to_all() {
        let bound: SocketAddr = "10.0.0.1:6784".parse().unwrap();
        let read = |host| RequestFacts {
            peer: "10.0.0.2".parse().unwrap(),
            safe_method: true,
            access: Access::Read,
            host: Some(host),
            origin: None,
            client_header: false,
        };
        assert_eq!(decide(bound, &read("10.0.0.1:6784")), Ok(()));
        assert!(decide(bound, &read("10.0.0.9:6784")).is_err());
        let all: SocketAddr = "0.0.0.0:6784".parse().unwrap();
        assert_eq!(decide(all, &read("10.0.0.1:6784")), Ok(()));
        assert_eq!(decide(all, &read("[fd00::1]:6784")), Ok(()));
        assert!(decide(all, &read("node1.example:6784")).is_err());
    }

    #[test]
    fn cross_site_requests_are_refused() {
        for origin in [
            "http://evil.example",
            "http://evil.example:6784",
            "https://127.0.0.1:6784",
            "null",
            "http://127.0.0.1",
        ] {
            let facts = RequestFacts {
                origin: Some(origin),
                ..cli("127.0.0.1:6784")
            };
            let refusal = decide(loopback_endpoint(), &facts).unwrap_err();
            assert_eq!(refusal, Refusal::Origin(origin.to_owned()), "{origin}");
            assert_eq!(refusal.status(), 403);
            // Reads too.
            let read = RequestFacts {
                safe_method: true,
                access: Access::Read,
                ..facts
            };
            assert!(decide(loopback_endpoint(), &read).is_err(), "{origin}");
        }
        let same_origin = RequestFacts {
            origin: Some("http://localhost:6784"),
            ..cli("localhost:6784")
        };
        assert_eq!(decide(loopback_endpoint(), &same_origin), Ok(()));
    }

    #[test]
    fn changes_need_the_client_header_and_this_host() {
        // A browser's simple POST: no custom header.
        let simple = RequestFacts {
            client_header: false,
            ..cli("127.0.0.1:6784")
        };
        let refusal = decide(loopback_endpoint(), &simple).unwrap_err();
        assert_eq!(refusal, Refusal::ClientHeader);
        assert!(refusal.message().contains("x-weft-client"));
        // A POST to a route registered as a read is still a change.
        let post_to_read = RequestFacts {
            access: Access::Read,
            ..simple
        };
        assert_eq!(
            decide(loopback_endpoint(), &post_to_read),
            Err(Refusal::ClientHeader)
        );
        // A control GET (ipam check) needs it too.
        let control_get = RequestFacts {
            safe_method: true,
            ..simple
        };
        assert_eq!(
            decide(loopback_endpoint(), &control_get),
            Err(Refusal::ClientHeader)
        );
        let all: SocketAddr = "0.0.0.0:6784".parse().unwrap();
        let remote = RequestFacts {
            peer: "10.0.0.2".parse().unwrap(),
            ..cli("10.0.0.1:6784")
        };
        assert_eq!(decide(all, &remote), Err(Refusal::Remote));
        let mapped_loopback = RequestFacts {
            peer: "::ffff:127.0.0.1".parse().unwrap(),
            ..cli("127.0.0.1:6784")
        };
        assert_eq!(decide(all, &mapped_loopback), Ok(()));
    }
}
