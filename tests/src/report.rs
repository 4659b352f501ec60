//! The router's status report (`weft status --json`), typed for assertions. Only the fields
//! tests look at are declared; the report may grow without breaking the harness.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub version: String,
    pub name: String,
    pub nickname: String,
    pub uid: u64,
    pub encryption: bool,
    pub mesh_id: String,
    pub port: u16,
    /// Every peer in the topology, this one included.
    pub peers: Vec<Peer>,
    pub connections: Vec<Connection>,
    pub routes: Vec<Route>,
    pub counters: Counters,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Peer {
    pub name: String,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    pub connections: Vec<PeerConnection>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PeerConnection {
    pub name: String,
    pub nickname: String,
    pub address: Option<String>,
    pub outbound: bool,
    pub established: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Connection {
    /// `outbound` or `inbound`.
    pub direction: String,
    pub address: String,
    /// `established`, `connecting`, `waiting`, `retrying` or `failed`.
    pub state: String,
    pub peer: Option<String>,
    pub nickname: Option<String>,
    pub encrypted: Option<bool>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    pub peer: String,
    pub nickname: String,
    pub via: String,
    pub via_nickname: String,
}

impl Route {
    pub fn is_direct(&self) -> bool {
        self.via == self.peer
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Counters {
    pub connections_terminated: u64,
    pub unicast_dropped_no_route: u64,
    pub malformed_gossip: u64,
}

impl Report {
    /// Established connections.
    pub fn established(&self) -> impl Iterator<Item = &Connection> {
        self.connections.iter().filter(|c| c.state == "established")
    }

    /// Nicknames of the peers this router has an established connection to, sorted.
    pub fn established_nicknames(&self) -> Vec<String> {
        let mut nicknames: Vec<String> = self
            .established()
            .map(|c| c.nickname.clone().unwrap_or_default())
            .collect();
        nicknames.sort();
        nicknames
    }

    /// Nicknames of all peers in the topology (this one included), sorted.
    pub fn peer_nicknames(&self) -> Vec<String> {
        let mut nicknames: Vec<String> = self.peers.iter().map(|p| p.nickname.clone()).collect();
        nicknames.sort();
        nicknames
    }

    /// The topology entry of the peer called `nickname`.
    pub fn peer(&self, nickname: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.nickname == nickname)
    }

    /// The route to the peer called `nickname`.
    pub fn route_to(&self, nickname: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.nickname == nickname)
    }

    /// The established connection to the peer called `nickname`.
    pub fn connection_to(&self, nickname: &str) -> Option<&Connection> {
        self.established()
            .find(|c| c.nickname.as_deref() == Some(nickname))
    }

    /// Connections (targets, inbound failures) whose reason mentions `needle`.
    pub fn failures_mentioning<'a>(
        &'a self,
        needle: &'a str,
    ) -> impl Iterator<Item = &'a Connection> + 'a {
        self.connections
            .iter()
            .filter(move |c| c.reason.as_deref().is_some_and(|r| r.contains(needle)))
    }
}
