//! Admission of connections to the router's HTTP listeners (the status endpoint and the CNI
//! socket): how many may be open at once, per source and in total, so that idle or slow
//! clients cannot take every file descriptor and starve the other listeners, the mesh and the
//! legitimate clients of the same listener. Pure bookkeeping; the accept loop in
//! [`crate::http_server`] asks [`Admission::admit`] and calls [`Admission::release`] when a
//! connection ends.
//!
//! Local clients (loopback TCP, the unix socket) have a pool of their own, so a remote flood
//! never locks out the CLI, and remote sources are capped one by one, so one address cannot
//! take the whole remote pool.

use std::collections::HashMap;
use std::net::IpAddr;

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Loopback TCP or a unix socket: this host.
    Local,
    /// Another host: its IPv4 address, or its IPv6 /64 (one host usually has a whole /64, so
    /// counting single IPv6 addresses would let it take the remote pool alone).
    Remote(IpAddr),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            _ if ip.is_loopback() => Self::Local,
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self::Remote(IpAddr::V6(prefix.into()))
            }
            v4 => Self::Remote(v4),
        }
    }
}

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections from this host open at once.
    pub local: usize,
    /// Connections from other hosts open at once, all sources together.
    pub remote_total: usize,
    /// Connections from one other host open at once.
    pub remote_per_source: usize,
}

/// Why a connection was refused (the `reason` label of `weft_http_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The local pool is full.
    LocalPool,
    /// The remote pool is full.
    RemotePool,
    /// This remote source has its share open already.
    SourceShare,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::LocalPool => "local_limit",
            Self::RemotePool => "remote_limit",
            Self::SourceShare => "per_source_limit",
        }
    }
}

/// The connections open on one listener.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    local: usize,
    remote: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            local: 0,
            remote: 0,
            per_source: HashMap::new(),
        }
    }

    /// Admits a new connection from `source` (counting it as open) or says why not.
    pub fn admit(&mut self, source: Source) -> Result<(), Refusal> {
        match source {
            Source::Local => {
                if self.local >= self.limits.local {
                    return Err(Refusal::LocalPool);
                }
                self.local += 1;
            }
            Source::Remote(ip) => {
                let from_source = self.per_source.get(&ip).copied().unwrap_or(0);
                if from_source >= self.limits.remote_per_source {
                    return Err(Refusal::SourceShare);
                }
                if self.remote >= self.limits.remote_total {
                    return Err(Refusal::RemotePool);
                }
                self.remote += 1;
                *self.per_source.entry(ip).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    /// A connection admitted from `source` ended.
    pub fn release(&mut self, source: Source) {
        match source {
            Source::Local => self.local = self.local.saturating_sub(1),
            Source::Remote(ip) => {
                self.remote = self.remote.saturating_sub(1);
                if let Some(n) = self.per_source.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_source.remove(&ip);
                    }
                }
            }
        }
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.local + self.remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        local: 2,
        remote_total: 3,
        remote_per_source: 2,
    };

    fn remote(last: u8) -> Source {
        Source::Remote(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn sources() {
        assert_eq!(Source::of("127.0.0.1".parse().unwrap()), Source::Local);
        assert_eq!(Source::of("::1".parse().unwrap()), Source::Local);
        assert_eq!(
            Source::of("::ffff:127.0.0.1".parse().unwrap()),
            Source::Local
        );
        assert_eq!(Source::of("::ffff:10.0.0.1".parse().unwrap()), remote(1));
        assert_eq!(Source::of("10.0.0.1".parse().unwrap()), remote(1));
        let slash64 = Source::Remote("fd00:1:2:3::".parse().unwrap());
        assert_eq!(Source::of("fd00:1:2:3::1".parse().unwrap()), slash64);
        assert_eq!(Source::of("fd00:1:2:3:ffff::9".parse().unwrap()), slash64);
        assert_ne!(Source::of("fd00:1:2:4::1".parse().unwrap()), slash64);
    }

    #[test]
    fn one_source_cannot_take_the_remote_pool_and_remote_floods_leave_local_room() {
        let mut a = Admission::new(LIMITS);
        assert_eq!(a.admit(remote(1)), Ok(()));
        assert_eq!(a.admit(remote(1)), Ok(()));
        assert_eq!(a.admit(remote(1)), Err(Refusal::SourceShare));
        assert_eq!(a.admit(remote(2)), Ok(()));
        assert_eq!(a.admit(remote(3)), Err(Refusal::RemotePool));
        // The remote pool is full; this host still gets in.
        assert_eq!(a.admit(Source::Local), Ok(()));
        assert_eq!(a.admit(Source::Local), Ok(()));
        assert_eq!(a.admit(Source::Local), Err(Refusal::LocalPool));
        assert_eq!(a.open(), 5);
        a.release(remote(1));
        assert_eq!(a.admit(remote(3)), Ok(()));
        a.release(Source::Local);
        assert_eq!(a.admit(Source::Local), Ok(()));
    }

    proptest! {
        /// Whatever the sequence of arrivals and departures, no cap is ever exceeded, a refusal
        /// happens only when a cap is reached, and releasing everything empties the books.
        #[test]
        fn caps_hold(ops in proptest::collection::vec((0u8..5, any::<bool>()), 0..200)) {
            let mut a = Admission::new(LIMITS);
            let mut open: Vec<Source> = Vec::new();
            for (who, arrive) in ops {
                let source = if who == 0 { Source::Local } else { remote(who) };
                if arrive {
                    let before_source = open.iter().filter(|s| **s == source).count();
                    let before_remote = open.iter().filter(|s| **s != Source::Local).count();
                    match a.admit(source) {
                        Ok(()) => open.push(source),
                        Err(Refusal::LocalPool) => prop_assert_eq!(before_source, LIMITS.local),
                        Err(Refusal::SourceShare) => {
                            prop_assert_eq!(before_source, LIMITS.remote_per_source)
                        }
                        Err(Refusal::RemotePool) => {
                            prop_assert_eq!(before_remote, LIMITS.remote_total)
                        }
                    }
                } else if let Some(i) = open.iter().position(|s| *s == source) {
                    open.swap_remove(i);
                    a.release(source);
                }
                let local = open.iter().filter(|s| **s == Source::Local).count();
                prop_assert!(local <= LIMITS.local);
                prop_assert!(open.len() - local <= LIMITS.remote_total);
                for who in 1..5 {
                    let n = open.iter().filter(|s| **s == remote(who)).count();
                    prop_assert!(n <= LIMITS.remote_per_source);
                }
                prop_assert_eq!(a.open(), open.len());
            }
            for source in open.drain(..) {
                a.release(source);
            }
            prop_assert_eq!(a.open(), 0);
            prop_assert!(a.per_source.is_empty());
        }
    }
}
