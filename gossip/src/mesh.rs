//! One router's control-plane state machine: connections, topology gossip, routes and dialing.
//!
//! The router's tasks feed it events (a connection finished its handshake, a message arrived,
//! a dial failed, time passed) and carry out the [`Action`]s it returns. It never blocks and
//! never does IO, so whole meshes of it run in memory in tests.
//!
//! The topology is one gossip channel among others (see `channel` for how every channel is
//! spread); the mesh merges it itself because it drives routes and discovery. What a peer
//! learns from a neighbour's gossip it re-broadcasts as its own news, so two partitions that
//! join spread each other's state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::channel::{ChannelError, GossipChannel, GossipMsg};
use crate::maker::{ConnectionMaker, Retry, TargetStatus};
use crate::peer::{PeerName, PeerUid};
use crate::routes::{LinkSet, Routes};
use crate::topology::{ConnectionInfo, PeerEntry, Topology, TopologyUpdate};
use crate::wire::{self, ChannelId, ControlMsg, EchoMsg, Features};

/// The router's handle for one connection; unique for the router's lifetime.
pub type ConnKey = u64;

/// Budget for one topology update inside a frame, leaving room for the envelope and seal.
const UPDATE_BUDGET: usize = wire::MAX_FRAME_LEN - 1024;
/// Topology changes arrive in bursts (a peer joining changes every entry); work that depends on
/// the whole topology (garbage collection, routes, discovery) and the announcement of our own
/// entry wait this long so that one burst costs one recomputation and one broadcast. Relays in
/// between use the previous routes: duplicates die at the "relay only what improved" rule and
/// gaps are repaired by anti-entropy.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How many recent inbound handshake failures status keeps.
const INBOUND_FAILURES_KEPT: usize = 32;

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
    /// Maximum number of connections (0 = unlimited).
    pub conn_limit: usize,
    pub gossip_interval: Duration,
    /// Announce a new connection as established only once the data path to the peer works
    /// ([`Mesh::set_data_path`]), so data routes avoid a link whose UDP is blocked while its
    /// TCP control connection is up. Off when no data path runs.
    pub confirm_data_path: bool,
}

/// What the router must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        conn: ConnKey,
        msg: ControlMsg,
    },
    Close {
        conn: ConnKey,
        reason: String,
    },
    Dial {
        address: String,
    },
    /// An echo we sent to `from` came back.
    EchoReply {
        id: u64,
        from: PeerName,
    },
    /// The set of operator-named targets changed (persist it).
    TargetsChanged,
}

/// A connection that completed its handshake.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub features: Features,
    pub outbound: bool,
    /// The TCP address of the remote end.
    pub remote_tcp: SocketAddr,
    /// The target address that was dialled, for outbound connections.
    pub target: Option<String>,
    /// `our conn_id ^ their conn_id`: the same number on both ends.
    pub conn_uid: u64,
    pub encrypted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to ourself")]
    ConnectToSelf,
    #[error("peer name collision: the remote also calls itself {0}")]
    NameCollision(PeerName),
    #[error(
        "already connected to {0} with another incarnation; waiting for that connection to end"
    )]
    OtherIncarnation(PeerName),
    #[error("duplicate connection to {0}; keeping the other one")]
    Duplicate(PeerName),
    #[error("connection limit ({0}) reached")]
    ConnLimit(usize),
}

impl RegisterError {
    pub fn retry(&self) -> Retry {
        match self {
            RegisterError::ConnectToSelf | RegisterError::NameCollision(_) => Retry::Never,
            _ => Retry::Later,
        }
    }
}

#[derive(Debug, Clone)]
struct Conn {
    peer: PeerName,
    peer_uid: PeerUid,
    nickname: String,
    outbound: bool,
    remote_tcp: SocketAddr,
    /// Where the remote accepts connections (what we gossip for discovery).
    remote_listen: SocketAddr,
    target: Option<String>,
    conn_uid: u64,
    encrypted: bool,
    since: Instant,
}

/// A connection as shown in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionStatus {
    pub peer: PeerName,
    pub nickname: String,
    pub address: SocketAddr,
    pub outbound: bool,
    pub encrypted: bool,
    pub up_secs: u64,
}

/// A recent inbound connection that failed before it was established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundFailure {
    pub address: SocketAddr,
    pub reason: String,
    #[serde(skip)]
    pub at: Instant,
}

pub struct Mesh {
    config: MeshConfig,
    topology: Topology,
    routes: Routes,
    /// Bumped on every recomputation, so users of the routes know when to take a new copy.
    routes_version: u64,
    maker: ConnectionMaker,
    conns: BTreeMap<ConnKey, Conn>,
    by_peer: BTreeMap<PeerName, ConnKey>,
    /// Which peer a target address led to, so a target counts as connected while any
    /// connection to that peer is up (whoever dialled).
    target_peer: BTreeMap<String, PeerName>,
    inbound_failures: VecDeque<InboundFailure>,
    /// When the coalesced recomputation and announcement are due.
    recompute_at: Option<Instant>,
    announce_at: Option<Instant>,
    /// Channels hosted besides the topology, e.g. IPAM and MAC-to-peer.
    channels: BTreeMap<ChannelId, Box<dyn GossipChannel>>,
    next_gossip: Instant,
    /// Dials in flight, counted against the connection limit.
    attempting: usize,
    /// Spreads retries (xorshift64, seeded from our uid): peers that failed together must not
    /// retry in lock-step, and the state machine stays deterministic for a given uid.
    rng: u64,
    pub counters: MeshCounters,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct MeshCounters {
    pub connections_terminated: u64,
    pub unicast_dropped_no_route: u64,
    pub malformed_gossip: u64,
}

impl Mesh {
    pub fn new(config: MeshConfig, now: Instant) -> Self {
        let uid = config.uid;
        let local = PeerEntry {
            name: config.name,
            nickname: config.nickname.clone(),
            uid: config.uid,
            version: 1,
            connections: BTreeMap::new(),
        };
        let topology = Topology::new(local);
        let routes = topology.routes();
        Mesh {
            next_gossip: now + config.gossip_interval,
            config,
            topology,
            routes,
            routes_version: 0,
            maker: ConnectionMaker::new(),
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            target_peer: BTreeMap::new(),
            inbound_failures: VecDeque::new(),
            channels: BTreeMap::new(),
            recompute_at: None,
            announce_at: None,
            attempting: 0,
            rng: uid | 1,
            counters: MeshCounters::default(),
        }
    }

    /// A number in `[0, 1)` for backoff jitter.
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn name(&self) -> PeerName {
        self.config.name
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn routes_version(&self) -> u64 {
        self.routes_version
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Adds operator-named targets; they are dialled on the next tick.
    pub fn add_direct(&mut self, addresses: &[String], now: Instant, out: &mut Vec<Action>) {
        for address in addresses {
            self.maker.add_direct(address, now);
        }
        out.push(Action::TargetsChanged);
    }

    /// Forgets a target; returns whether it was known. An established connection stays up.
    pub fn forget(&mut self, address: &str, out: &mut Vec<Action>) -> bool {
        let known = self.maker.forget(address);
        self.target_peer.remove(address);
        out.push(Action::TargetsChanged);
        known
    }

    pub fn direct_targets(&self) -> Vec<String> {
        self.maker.direct_targets()
    }

    /// The peer a target address led to when it was last connected (or found to be us).
    pub fn target_peer(&self, address: &str) -> Option<PeerName> {
        self.target_peer.get(address).copied()
    }

    /// Checks a handshaken connection against the rules and, if it passes, adds it.
    pub fn register(
        &mut self,
        key: ConnKey,
        new: NewConnection,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), RegisterError> {
        if new.outbound {
            self.attempting = self.attempting.saturating_sub(1);
        }
        let result = self.check_registration(&new, out);
        if let Some(target) = &new.target {
            self.target_peer.insert(target.clone(), new.features.name);
            match &result {
                Ok(()) => self.maker.connected(target),
                // A duplicate means we are connected to that peer anyway.
                Err(RegisterError::Duplicate(_)) => self.maker.connected(target),
                Err(e) => {
                    let jitter = self.jitter();
                    self.maker
                        .failed(target, now, e.to_string(), e.retry(), jitter)
                }
            }
        } else if let Err(e) = &result
            && !matches!(e, RegisterError::Duplicate(_))
        {
            self.inbound_failed(new.remote_tcp, e.to_string(), now);
        }
        result?;

        let peer = new.features.name;
        let remote_listen = SocketAddr::new(new.remote_tcp.ip(), new.features.listen_port);
        self.conns.insert(
            key,
            Conn {
                peer,
                peer_uid: new.features.uid,
                nickname: new.features.nickname.clone(),
                outbound: new.outbound,
                remote_tcp: new.remote_tcp,
                remote_listen,
                target: new.target.clone(),
                conn_uid: new.conn_uid,
                encrypted: new.encrypted,
                since: now,
            },
        );
        self.by_peer.insert(peer, key);
        self.mark_targets_connected(peer, remote_listen);
        let info = ConnectionInfo {
            remote_addr: Some(remote_listen),
            outbound: new.outbound,
            established: !self.config.confirm_data_path,
        };
        if self
            .topology
            .update_local(|e| {
                e.connections.insert(peer, info);
            })
            .is_some()
        {
            self.topology_changed(now);
            self.announce_later(now);
        }
        // A new neighbour gets everything we know; from then on deltas and digests suffice.
        for channel in self.channel_ids() {
            let Some(state) = self.channel(channel) else {
                continue;
            };
            for part in state.full_state(UPDATE_BUDGET) {
                let msg = gossip(channel, &GossipMsg::Update(part));
                out.push(Action::Send { conn: key, msg });
            }
        }
        Ok(())
    }

    /// A connection to `peer` is up, whoever dialled it: every target that leads to that peer
    /// counts as connected, and so does the address it listens on when that is a target. A
    /// target left waiting would be dialled again when its backoff ran out, and the duplicate
    /// connection that made could replace the working one (the tie-break keeps the lower
    /// connection uid), cutting the peer's data path while the new one comes up.
    fn mark_targets_connected(&mut self, peer: PeerName, remote_listen: SocketAddr) {
        let listen = remote_listen.to_string();
        if self.maker.contains(&listen) {
            self.target_peer.insert(listen, peer);
        }
        let targets: Vec<String> = self
            .target_peer
            .iter()
            .filter(|(_, p)| **p == peer)
            .map(|(t, _)| t.clone())
            .collect();
        for target in targets {
            self.maker.connected(&target);
        }
    }

    fn check_registration(
        &mut self,
        new: &NewConnection,
        out: &mut Vec<Action>,
    ) -> Result<(), RegisterError> {
        let name = new.features.name;
        if name == self.config.name {
            return Err(if new.features.uid == self.config.uid {
                RegisterError::ConnectToSelf
            } else {
                RegisterError::NameCollision(name)
            });
        }
        if let Some(&existing_key) = self.by_peer.get(&name) {
            let existing = &self.conns[&existing_key];
            if existing.peer_uid != new.features.uid {
                return Err(RegisterError::OtherIncarnation(name));
            }
            // Both ends see the same two connection uids and keep the lower one, so
            // simultaneous dials settle on one connection without talking about it.
            if new.conn_uid >= existing.conn_uid {
                return Err(RegisterError::Duplicate(name));
            }
            out.push(Action::Close {
                conn: existing_key,
                reason: RegisterError::Duplicate(name).to_string(),
            });
            self.remove_conn(existing_key);
            return Ok(());
        }
        if self.config.conn_limit != 0 && self.conns.len() >= self.config.conn_limit {
            return Err(RegisterError::ConnLimit(self.config.conn_limit));
        }
        Ok(())
    }

    /// Removes a connection without the follow-ups; returns it.
    fn remove_conn(&mut self, key: ConnKey) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        if self.by_peer.get(&conn.peer) == Some(&key) {
            self.by_peer.remove(&conn.peer);
        }
        Some(conn)
    }

    /// The data path of connection `key` started or stopped working (with
    /// `confirm_data_path`): the connection is announced as established, or no longer, so data
    /// routes use it or go around it. Control traffic keeps using it either way. Returns
    /// whether anything changed.
    pub fn set_data_path(&mut self, key: ConnKey, up: bool, now: Instant) -> bool {
        let Some(conn) = self.conns.get(&key) else {
            return false;
        };
        let peer = conn.peer;
        let changed = self
            .topology
            .update_local(|e| {
                if let Some(info) = e.connections.get_mut(&peer) {
                    info.established = up;
                }
            })
            .is_some();
        if changed {
            self.topology_changed(now);
            self.announce_later(now);
        }
        changed
    }

    /// A registered connection ended (or the router closed it).
    pub fn connection_closed(&mut self, key: ConnKey, reason: &str, now: Instant) {
        let jitter = self.jitter();
        let Some(conn) = self.remove_conn(key) else {
            return;
        };
        self.counters.connections_terminated += 1;
        let lived = now.saturating_duration_since(conn.since);
        if !self.by_peer.contains_key(&conn.peer) {
            let targets: Vec<String> = self
                .target_peer
                .iter()
                .filter(|(_, p)| **p == conn.peer)
                .map(|(t, _)| t.clone())
                .collect();
            for target in targets {
                self.maker
                    .disconnected(&target, now, lived, reason.to_owned(), jitter);
            }
            if self
                .topology
                .update_local(|e| {
                    e.connections.remove(&conn.peer);
                })
                .is_some()
            {
                self.announce_later(now);
            }
        }
        self.topology_changed(now);
    }

    /// A dial failed before or during the handshake.
    pub fn dial_failed(&mut self, target: &str, reason: String, retry: Retry, now: Instant) {
        let jitter = self.jitter();
        self.attempting = self.attempting.saturating_sub(1);
        // The peer this address leads to may have dialled us meanwhile: then the target is
        // connected, not failed.
        if let Some(peer) = self.target_peer.get(target)
            && self.by_peer.contains_key(peer)
        {
            self.maker.connected(target);
            return;
        }
        self.maker.failed(target, now, reason, retry, jitter);
    }

    /// An inbound connection failed its handshake; kept for status.
    pub fn inbound_failed(&mut self, address: SocketAddr, reason: String, now: Instant) {
        self.inbound_failures
            .retain(|f| f.address.ip() != address.ip());
        self.inbound_failures.push_back(InboundFailure {
            address,
            reason,
            at: now,
        });
        while self.inbound_failures.len() > INBOUND_FAILURES_KEPT {
            self.inbound_failures.pop_front();
        }
    }

    /// Sends an echo request to `peer` along the unicast routes.
    pub fn echo(&mut self, peer: PeerName, id: u64, out: &mut Vec<Action>) -> Result<(), String> {
        let payload = wire::encode(&EchoMsg::Request { id });
        self.send_unicast(ChannelId::ECHO, self.config.name, peer, payload, out)
    }

    /// Hosts another gossip channel (IPAM, MAC-to-peer, …) on this mesh.
    pub fn add_channel(&mut self, id: ChannelId, channel: Box<dyn GossipChannel>) {
        self.channels.insert(id, channel);
    }

    /// A channel's state (the topology or a hosted channel).
    pub fn channel(&self, id: ChannelId) -> Option<&dyn GossipChannel> {
        if id == ChannelId::TOPOLOGY {
            Some(&self.topology)
        } else {
            self.channels.get(&id).map(|c| c.as_ref())
        }
    }

    fn channel_ids(&self) -> Vec<ChannelId> {
        std::iter::once(ChannelId::TOPOLOGY)
            .chain(self.channels.keys().copied())
            .collect()
    }

    /// Applies a local change to a hosted channel, expressed as an update, and spreads what
    /// it changed to the whole mesh.
    pub fn publish(
        &mut self,
        channel: ChannelId,
        update: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), ChannelError> {
        let Some(hosted) = self.channels.get_mut(&channel) else {
            return Err(ChannelError::Invalid(format!(
                "channel {} is not hosted",
                channel.0
            )));
        };
        if let Some(improved) = hosted.merge(self.config.name, update)? {
            self.broadcast_update(channel, improved, out);
        }
        Ok(())
    }

    fn broadcast_update(&mut self, channel: ChannelId, update: Vec<u8>, out: &mut Vec<Action>) {
        let msg = broadcast(channel, self.config.name, update);
        for hop in self.routes.broadcast(LinkSet::All, self.config.name) {
            self.send_to_peer(hop, msg.clone(), out);
        }
    }

    /// Sends a channel's message to one peer along the unicast routes (relayed if need be).
    pub fn unicast(
        &mut self,
        channel: ChannelId,
        dst: PeerName,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        self.send_unicast(channel, self.config.name, dst, payload, out)
    }

    /// Handles a message from a registered connection.
    pub fn on_message(
        &mut self,
        key: ConnKey,
        msg: ControlMsg,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(from) = self.conns.get(&key).map(|c| c.peer) else {
            return;
        };
        match msg {
            // The connection task handles both; nothing reaches the mesh.
            ControlMsg::Heartbeat | ControlMsg::Goodbye { .. } => {}
            ControlMsg::Gossip { channel, payload } => {
                if self.channel(channel).is_none() {
                    return;
                }
                match wire::decode::<GossipMsg>(&payload) {
                    Ok(msg) => {
                        // A bad update loses nothing already merged; it is counted and dropped.
                        if self.on_gossip(key, from, channel, msg, now, out).is_err() {
                            self.counters.malformed_gossip += 1;
                        }
                    }
                    Err(_) => self.counters.malformed_gossip += 1,
                }
            }
            ControlMsg::Broadcast {
                channel,
                src,
                payload,
            } => {
                let relay = if self.channel(channel).is_some() {
                    match wire::decode::<GossipMsg>(&payload) {
                        Ok(GossipMsg::Update(update)) => {
                            match self.merge(channel, src, &update, now) {
                                Ok(improved) => improved.is_some(),
                                Err(_) => {
                                    self.counters.malformed_gossip += 1;
                                    false
                                }
                            }
                        }
                        _ => {
                            self.counters.malformed_gossip += 1;
                            false
                        }
                    }
                } else {
                    // Channels we do not host are passed on; the tree keeps them loop-free.
                    true
                };
                if relay {
                    let msg = ControlMsg::Broadcast {
                        channel,
                        src,
                        payload,
                    };
                    for hop in self.routes.broadcast(LinkSet::All, src) {
                        if hop != from {
                            self.send_to_peer(hop, msg.clone(), out);
                        }
                    }
                }
            }
            ControlMsg::Unicast {
                channel,
                src,
                dst,
                payload,
            } => {
                if dst != self.config.name {
                    let _ = self.send_unicast(channel, src, dst, payload, out);
                    return;
                }
                if channel == ChannelId::ECHO {
                    match wire::decode::<EchoMsg>(&payload) {
                        Ok(EchoMsg::Request { id }) => {
                            let reply = wire::encode(&EchoMsg::Reply { id });
                            let _ = self.send_unicast(
                                ChannelId::ECHO,
                                self.config.name,
                                src,
                                reply,
                                out,
                            );
                        }
                        Ok(EchoMsg::Reply { id }) => out.push(Action::EchoReply { id, from: src }),
                        Err(_) => self.counters.malformed_gossip += 1,
                    }
                    return;
                }
                let replies = match self.channels.get_mut(&channel) {
                    Some(hosted) => hosted.on_unicast(src, &payload),
                    None => return,
                };
                match replies {
                    Ok(replies) => {
                        for (dst, reply) in replies {
                            let _ = self.send_unicast(channel, self.config.name, dst, reply, out);
                        }
                    }
                    Err(_) => self.counters.malformed_gossip += 1,
                }
            }
        }
    }

    fn on_gossip(
        &mut self,
        key: ConnKey,
        from: PeerName,
        channel: ChannelId,
        msg: GossipMsg,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), ChannelError> {
        match msg {
            GossipMsg::Update(update) => {
                // News from one neighbour is news for the rest of the mesh: spread it as ours.
                if let Some(improved) = self.merge(channel, from, &update, now)? {
                    let msg = broadcast(channel, self.config.name, improved);
                    for hop in self.routes.broadcast(LinkSet::All, self.config.name) {
                        if self.by_peer.get(&hop) != Some(&key) {
                            self.send_to_peer(hop, msg.clone(), out);
                        }
                    }
                }
            }
            GossipMsg::DigestHash(hash) => {
                let Some(state) = self.channel(channel) else {
                    return Ok(());
                };
                if hash != state.digest_hash() {
                    let digest = GossipMsg::Digest {
                        digest: state.digest(),
                        reply: true,
                    };
                    out.push(Action::Send {
                        conn: key,
                        msg: gossip(channel, &digest),
                    });
                }
            }
            GossipMsg::Digest { digest, reply } => {
                let Some(state) = self.channel(channel) else {
                    return Ok(());
                };
                let (updates, theirs_newer) = state.compare_digest(&digest, UPDATE_BUDGET)?;
                let our_digest = (theirs_newer && reply).then(|| state.digest());
                for update in updates {
                    out.push(Action::Send {
                        conn: key,
                        msg: gossip(channel, &GossipMsg::Update(update)),
                    });
                }
                if let Some(digest) = our_digest {
                    let msg = GossipMsg::Digest {
                        digest,
                        reply: false,
                    };
                    out.push(Action::Send {
                        conn: key,
                        msg: gossip(channel, &msg),
                    });
                }
            }
        }
        Ok(())
    }

    /// Merges an update into a channel; returns what improved (already applied), encoded.
    fn merge(
        &mut self,
        channel: ChannelId,
        from: PeerName,
        update: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        if channel != ChannelId::TOPOLOGY {
            return match self.channels.get_mut(&channel) {
                Some(hosted) => hosted.merge(from, update),
                None => Ok(None),
            };
        }
        let update: TopologyUpdate = wire::decode(update)?;
        let outcome = self.topology.merge(update);
        if let Some(version) = outcome.stale_self_version {
            // Someone still holds an entry from an earlier run of ours: outrank it.
            self.topology.bump_local_version_above(version);
            self.announce_later(now);
        }
        if outcome.improved.is_empty() {
            return Ok(None);
        }
        self.topology_changed(now);
        Ok(Some(wire::encode(&outcome.improved)))
    }

    fn topology_changed(&mut self, now: Instant) {
        self.recompute_at.get_or_insert(now + COALESCE);
    }

    fn announce_later(&mut self, now: Instant) {
        self.announce_at.get_or_insert(now + COALESCE);
    }

    /// Recomputes what depends on the topology: garbage, routes, discovered targets.
    fn recompute(&mut self, now: Instant) {
        let connected: BTreeSet<PeerName> = self.by_peer.keys().copied().collect();
        let gone = self.topology.gc(|name| connected.contains(&name));
        if !gone.is_empty() {
            for channel in self.channels.values_mut() {
                channel.peers_gone(&gone);
            }
        }
        self.routes = self.topology.routes();
        self.routes_version += 1;
        let mut discovered = BTreeSet::new();
        for entry in self.topology.peers() {
            for (peer, info) in &entry.connections {
                if *peer == self.config.name || connected.contains(peer) {
                    continue;
                }
                if let Some(addr) = info.remote_addr {
                    discovered.insert(addr.to_string());
                }
            }
        }
        self.maker.set_discovered(&discovered, now);
    }

    fn announce(&mut self, out: &mut Vec<Action>) {
        let entry = self.topology.local_entry().clone();
        let update = wire::encode(&TopologyUpdate {
            entries: vec![entry],
        });
        self.broadcast_update(ChannelId::TOPOLOGY, update, out);
    }

    fn send_to_peer(&mut self, peer: PeerName, msg: ControlMsg, out: &mut Vec<Action>) {
        if let Some(&conn) = self.by_peer.get(&peer) {
            out.push(Action::Send { conn, msg });
        }
    }

    fn send_unicast(
        &mut self,
        channel: ChannelId,
        src: PeerName,
        dst: PeerName,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let hop = self
            .routes
            .unicast(LinkSet::All, dst)
            .filter(|hop| self.by_peer.contains_key(hop));
        let Some(hop) = hop else {
            self.counters.unicast_dropped_no_route += 1;
            return Err(format!("no route to {dst}"));
        };
        self.send_to_peer(
            hop,
            ControlMsg::Unicast {
                channel,
                src,
                dst,
                payload,
            },
            out,
        );
        Ok(())
    }

    /// Does what is due: the coalesced recomputation and announcement, dials, and digests when
    /// the gossip interval has passed.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.recompute_at.is_some_and(|at| at <= now) {
            self.recompute_at = None;
            self.recompute(now);
        }
        if self.announce_at.is_some_and(|at| at <= now) {
            self.announce_at = None;
            self.announce(out);
        }
        let budget = if self.config.conn_limit == 0 {
            usize::MAX
        } else {
            self.config
                .conn_limit
                .saturating_sub(self.conns.len() + self.attempting)
        };
        for address in self.maker.due(now, budget) {
            self.attempting += 1;
            out.push(Action::Dial { address });
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            for channel in self.channel_ids() {
                let Some(state) = self.channel(channel) else {
                    continue;
                };
                let msg = gossip(channel, &GossipMsg::DigestHash(state.digest_hash()));
                for &conn in self.conns.keys() {
                    out.push(Action::Send {
                        conn,
                        msg: msg.clone(),
                    });
                }
            }
        }
    }

    /// When `tick` next has something to do.
    pub fn next_wakeup(&self) -> Instant {
        [
            self.maker.next_wakeup(),
            self.recompute_at,
            self.announce_at,
        ]
        .into_iter()
        .flatten()
        .fold(self.next_gossip, Instant::min)
    }

    pub fn connections(&self, now: Instant) -> Vec<ConnectionStatus> {
        self.conns
            .values()
            .map(|c| ConnectionStatus {
                peer: c.peer,
                nickname: c.nickname.clone(),
                address: if c.outbound {
                    c.remote_listen
                } else {
                    c.remote_tcp
                },
                outbound: c.outbound,
                encrypted: c.encrypted,
                up_secs: now.saturating_duration_since(c.since).as_secs(),
            })
            .collect()
    }

    pub fn targets(&self, now: Instant) -> Vec<TargetStatus> {
        self.maker.status(now)
    }

    pub fn inbound_failures(&self) -> impl Iterator<Item = &InboundFailure> {
        self.inbound_failures.iter()
    }

    /// The connection to a peer, if any.
    pub fn connection_to(&self, peer: PeerName) -> Option<ConnKey> {
        self.by_peer.get(&peer).copied()
    }

    /// Which target a connection was dialled for.
    pub fn connection_target(&self, key: ConnKey) -> Option<&str> {
        self.conns.get(&key).and_then(|c| c.target.as_deref())
    }
}

fn gossip(channel: ChannelId, msg: &GossipMsg) -> ControlMsg {
    ControlMsg::Gossip {
        channel,
        payload: wire::encode(msg),
    }
}

fn broadcast(channel: ChannelId, src: PeerName, update: Vec<u8>) -> ControlMsg {
    let payload = wire::encode(&GossipMsg::Update(update));
    ControlMsg::Broadcast {
        channel,
        src,
        payload,
    }
}
