//! Prometheus metrics. Counters are updated where things happen (connection tasks, the
//! actor); gauges describing current state are set from the report at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_gossip::wire::{ChannelId, ControlMsg};

use crate::report::Report;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    pub direction: &'static str,
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    pub peers: Gauge,
    pub connections: Family<StateLabels, Gauge>,
    pub terminations: Counter,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub gossip_messages: Family<GossipLabels, Counter>,
    pub gossip_bytes: Family<GossipLabels, Counter>,
    pub frames_rejected: Counter,
    pub send_queue_drops: Counter,
}

const CONNECTION_STATES: [&str; 5] = ["established", "connecting", "waiting", "retrying", "failed"];

fn channel_label(msg: &ControlMsg) -> &'static str {
    let channel = match msg {
        ControlMsg::Heartbeat => return "heartbeat",
        ControlMsg::Goodbye { .. } => return "goodbye",
        ControlMsg::Gossip { channel, .. }
        | ControlMsg::Broadcast { channel, .. }
        | ControlMsg::Unicast { channel, .. } => *channel,
    };
    match channel {
        ChannelId::TOPOLOGY => "topology",
        ChannelId::ECHO => "echo",
        _ => "other",
    }
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("weft");
        registry.register(
            "peers",
            "Peers in the topology, this one included",
            self.peers.clone(),
        );
        registry.register(
            "connections",
            "Connections and targets by state",
            self.connections.clone(),
        );
        registry.register(
            "connection_terminations",
            "Established connections that ended",
            self.terminations.clone(),
        );
        registry.register(
            "handshake_failures",
            "Connections that failed before being established, by reason",
            self.handshake_failures.clone(),
        );
        registry.register(
            "gossip_messages",
            "Control messages by direction and channel",
            self.gossip_messages.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Control message bytes (before sealing)",
            self.gossip_bytes.clone(),
        );
        registry.register(
            "frames_rejected",
            "Sealed frames that failed to open (forged, replayed or corrupted); each closes its connection",
            self.frames_rejected.clone(),
        );
        registry.register(
            "send_queue_drops",
            "Messages dropped because a peer's send queue was full (anti-entropy repairs them)",
            self.send_queue_drops.clone(),
        );
        registry
    }

    pub fn message_sent(&self, msg: &ControlMsg, bytes: usize) {
        self.count(msg, bytes, "sent");
    }

    pub fn message_received(&self, msg: &ControlMsg, bytes: usize) {
        self.count(msg, bytes, "received");
    }

    fn count(&self, msg: &ControlMsg, bytes: usize, direction: &'static str) {
        let labels = GossipLabels {
            direction,
            channel: channel_label(msg),
        };
        self.gossip_messages.get_or_create(&labels).inc();
        self.gossip_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    pub fn handshake_failure(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn frame_rejected(&self) {
        self.frames_rejected.inc();
    }

    pub fn send_queue_drop(&self) {
        self.send_queue_drops.inc();
    }

    /// Sets the state gauges from a fresh report.
    pub fn observe(&self, report: &Report) {
        self.peers.set(report.peers.len() as i64);
        for state in CONNECTION_STATES {
            let n = report
                .connections
                .iter()
                .filter(|c| c.state == state)
                .count();
            self.connections
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
    }
}
