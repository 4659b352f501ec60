//! The engine's three threads: the TAP reader (frames from local pods, out to peers), the
//! UDP reader (datagrams from peers, to the bridge or relayed) and the housekeeping timer
//! (heartbeats, path MTU probes, MAC expiry). They share [`Shared`] with
//! [`super::SleeveEngine`].

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::outbox::{Outbox, TapFrame};
use super::{IPV4_UDP, NO_OFFLOAD, RoutingSnapshot, Shared, SleeveEvent, add, bump, lock, mac_at};
use crate::forward::{self, Decision};
use crate::mac::{Learned, Mac, MacOwner, format_mac};
use crate::pmtu::PmtuPhase;
use crate::sleeve::codec::{BROADCAST, DecapError, Frame, FrameKind, datagram_sender};
use crate::sleeve::fragment::{self, Reassembler};
use crate::sleeve::offload::{VNET_HDR_LEN, VnetHeader};
use crate::udp::{RECV_BUFFER_LEN, RecvMeta};
use crate::{ETHERNET_HEADER_LEN, PeerId};

const RECV_BATCH: usize = 16;
/// A TAP reader sends what it has gathered after this many frames or bytes, whichever comes
/// first, even if more are queued: enough to amortise the syscalls, little enough to keep
/// latency and buffers small.
const TAP_BATCH_FRAMES: usize = 64;
const TAP_BATCH_BYTES: usize = 256 * 1024;
/// The TAP reader wakes up at least this often (for housekeeping) when no frame comes.
const TAP_POLL: Duration = Duration::from_secs(1);
/// How often the housekeeping thread runs: heartbeats, liveness, MAC expiry.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How often expired MAC entries are removed (and local ones withdrawn from gossip).
const MAC_EXPIRY_EVERY: Duration = Duration::from_secs(10);

/// Frames from local pods, to the mesh.
pub(super) fn tap_loop(shared: &Shared) {
    let local = shared.local;
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536 + ETHERNET_HEADER_LEN];
    let mut outbox = Outbox::default();
    loop {
        match shared.tap.wait_readable(TAP_POLL) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "TAP poll failed; sleeve stops sending");
                return;
            }
        }
        let routes = shared.routes();
        for _ in 0..TAP_BATCH_FRAMES {
            let n = match shared.tap.read_frame(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "TAP read failed; sleeve stops sending");
                    return;
                }
            };
            from_tap(shared, &*routes, local, &buf[..n], &mut outbox);
            if outbox.queued_bytes() >= TAP_BATCH_BYTES {
                outbox.flush(shared);
            }
        }
        outbox.flush(shared);
    }
}

fn from_tap(
    shared: &Shared,
    routes: &dyn RoutingSnapshot,
    local: PeerId,
    raw: &[u8],
    outbox: &mut Outbox,
) {
    let Some((offload, frame)) = VnetHeader::split(raw) else {
        return;
    };
    let (Some(dst_mac), Some(src_mac)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
        return;
    };
    if offload.wire_frame_len(frame.len()) > ETHERNET_HEADER_LEN + usize::from(shared.mtu) {
        // Larger than the bridge's MTU (a pod configured with a larger one): say so.
        shared.too_big(frame, usize::from(shared.mtu), &mut outbox.reply);
        return;
    }
    let now = Instant::now();
    let (learned, owner) = {
        let mut macs = lock(&shared.macs);
        let learned = macs.learn(src_mac, MacOwner::Local, now);
        // Group addresses are never learned, from data or gossip: they are flooded.
        let owner = if crate::mac::is_multicast(&dst_mac) {
            None
        } else if let Some(owner) = macs.lookup(&dst_mac, now) {
            Some(owner)
        } else if let Some(peer) = shared.hinted_owner(&dst_mac) {
            // Data has not taught us where this MAC is yet, but gossip has: unicast at once
            // instead of flooding. A frame from the MAC will correct the entry if it is stale.
            // (Not learned, when the table refuses it, means still unknown.)
            let owner = MacOwner::Remote(peer);
            macs.learn(dst_mac, owner, now).map(|_| owner)
        } else {
            None
        };
        (learned, owner)
    };
    let decision = if crate::mac::is_multicast(&dst_mac) {
        forward::from_bridge_group(routes, &shared.fast_group.read())
    } else {
        forward::from_bridge_to(owner, routes)
    };
    if matches!(learned, Some(Learned::New | Learned::Moved { .. })) {
        (shared.events)(SleeveEvent::LocalMac(src_mac));
    }
    let tap_frame = TapFrame {
        offload,
        raw,
        frame,
    };
    match decision {
        Decision::Unicast { next_hop, dst } => {
            outbox.push_ethernet(shared, next_hop, local, dst, &tap_frame);
        }
        Decision::Flood { hops, .. } => {
            for hop in hops {
                outbox.push_ethernet(shared, hop, local, BROADCAST, &tap_frame);
            }
        }
        Decision::Local | Decision::Drop(_) => {}
    }
}

/// Datagrams from peers, to local pods and onward.
pub(super) fn udp_loop(shared: &Shared) {
    let mut bufs = vec![vec![0u8; RECV_BUFFER_LEN]; RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    let mut outbox = Outbox::default();
    let mut reassembler = Reassembler::default();
    let mut abandoned = 0;
    loop {
        let received = match shared.udp.recv_batch(&mut bufs, &mut meta, None) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A queued ICMP error for an earlier send surfaces here; it is not fatal.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let routes = shared.routes();
        for (buf, meta) in bufs.iter_mut().zip(&meta).take(received) {
            let segment = meta.segment.unwrap_or(meta.len).max(1);
            for datagram in buf[..meta.len].chunks_mut(segment) {
                receive(shared, &*routes, datagram, &mut outbox, &mut reassembler);
            }
        }
        outbox.flush(shared);
        let stats = reassembler.stats();
        add(
            &shared.counters.drop_incomplete,
            (stats.abandoned - abandoned) as usize,
        );
        abandoned = stats.abandoned;
    }
}

fn receive(
    shared: &Shared,
    routes: &dyn RoutingSnapshot,
    datagram: &mut [u8],
    outbox: &mut Outbox,
    reassembler: &mut Reassembler,
) {
    let counters = &shared.counters;
    let Ok(sender) = datagram_sender(datagram) else {
        bump(&counters.drop_malformed);
        return;
    };
    let Some(link) = shared.link(&sender) else {
        bump(&counters.drop_unknown_sender);
        return;
    };
    let len = datagram.len();
    let frames = match lock(&link.decap).decapsulate(datagram) {
        Ok(frames) => frames,
        Err(e) => {
            // Only a failure after authentication is the named peer's doing; anything else
            // may be a forgery naming any peer, so it stays off that peer's link.
            let authenticated = e.is_authenticated(shared.encrypted);
            if !authenticated {
                bump(&counters.drop_unauthenticated);
            }
            let (global, on_link) = match e {
                DecapError::Authentication => (&counters.drop_auth, &link.counters.drop_auth),
                DecapError::Replay(_) => (&counters.drop_replay, &link.counters.drop_replay),
                _ => (&counters.drop_malformed, &link.counters.drop_malformed),
            };
            if authenticated {
                bump(on_link);
            }
            return bump(global);
        }
    };
    let now = Instant::now();
    bump(&counters.datagrams_in);
    add(&counters.bytes_in, len);
    bump(&link.counters.datagrams_in);
    add(&link.counters.bytes_in, len);
    let since_epoch = now.saturating_duration_since(shared.epoch).as_nanos() as u64;
    link.last_heard.store(since_epoch.max(1), Ordering::Relaxed);
    for frame in frames {
        let Ok(frame) = frame else {
            bump(&counters.drop_malformed);
            break;
        };
        match frame.kind {
            FrameKind::Ethernet | FrameKind::Offloaded | FrameKind::Fragment => {}
            FrameKind::Heartbeat => continue,
            FrameKind::PmtuProbe => {
                // Acknowledge the size that arrived: the whole IP packet.
                let size = u16::try_from(len + IPV4_UDP)
                    .unwrap_or(u16::MAX)
                    .to_be_bytes();
                let local = shared.local;
                outbox.push(shared, sender, FrameKind::PmtuAck, local, sender, &[&size]);
                continue;
            }
            FrameKind::PmtuAck => {
                if let Some(size) = frame.payload.first_chunk::<2>() {
                    lock(&link.state)
                        .pmtu
                        .on_ack(u16::from_be_bytes(*size), now);
                }
                continue;
            }
        }
        let mut relay = |hop| {
            let parts = [frame.payload];
            if outbox.push(shared, hop, frame.kind, frame.src, frame.dst, &parts) {
                bump(&counters.relayed);
            }
        };
        match forward::from_mesh(frame.src, frame.dst, routes) {
            Decision::Local => deliver_frame(shared, &frame, reassembler, now),
            Decision::Flood {
                deliver_locally,
                hops,
            } => {
                if deliver_locally {
                    deliver_frame(shared, &frame, reassembler, now);
                }
                hops.into_iter().for_each(relay);
            }
            // No list to build for the common relay case: one hop.
            Decision::Unicast { next_hop, .. } => relay(next_hop),
            Decision::Drop(_) => bump(&counters.drop_no_route),
        }
    }
}

/// Delivers one frame addressed to this host (or flooded through it) to the bridge.
fn deliver_frame(shared: &Shared, frame: &Frame<'_>, reassembler: &mut Reassembler, now: Instant) {
    let counters = &shared.counters;
    let learn = |ethernet: &[u8]| {
        if let Some(src_mac) = mac_at(ethernet, 6) {
            lock(&shared.macs).learn(src_mac, MacOwner::Remote(frame.src), now);
        }
    };
    match frame.kind {
        FrameKind::Ethernet => {
            learn(frame.payload);
            shared.deliver(&NO_OFFLOAD, frame.payload);
        }
        FrameKind::Offloaded => deliver_offloaded(shared, frame.payload, learn),
        FrameKind::Fragment => {
            let Ok((header, chunk)) = fragment::parse(frame.payload) else {
                bump(&counters.drop_malformed);
                return;
            };
            if let Some(whole) = reassembler.insert(frame.src, header, chunk, now) {
                bump(&counters.reassembled);
                deliver_offloaded(shared, whole, learn);
            }
        }
        FrameKind::Heartbeat | FrameKind::PmtuProbe | FrameKind::PmtuAck => {}
    }
}

/// `raw` is an offload header followed by the Ethernet frame, as the origin's TAP gave it.
fn deliver_offloaded(shared: &Shared, raw: &[u8], learn: impl Fn(&[u8])) {
    if raw.len() < VNET_HDR_LEN + ETHERNET_HEADER_LEN {
        bump(&shared.counters.drop_malformed);
        return;
    }
    let (header, frame) = raw.split_at(VNET_HDR_LEN);
    learn(frame);
    shared.deliver(header, frame);
}

/// Housekeeping: heartbeats to every peer, the liveness of each link (reported to the router
/// so that data routes avoid a link whose UDP is dead), MAC expiry.
pub(super) fn timer_loop(shared: &Shared) {
    let local = shared.local;
    let mut outbox = Outbox::default();
    let mut next_mac_expiry = Instant::now() + MAC_EXPIRY_EVERY;
    loop {
        std::thread::sleep(TIMER_TICK);
        let now = Instant::now();
        for link in &shared.all_links() {
            let mut state = lock(&link.state);
            // `on_heard` ignores a time it has seen already.
            let heard = link.last_heard.load(Ordering::Relaxed);
            if heard != 0 {
                state
                    .liveness
                    .on_heard(shared.epoch + Duration::from_nanos(heard));
            }
            if state.heartbeat_due(now) {
                let peer = link.peer;
                let payload = link.conn.to_be_bytes();
                if outbox.push(shared, peer, FrameKind::Heartbeat, local, peer, &[&payload]) {
                    state.liveness.on_sent(now);
                    state.last_heartbeat = Some(now);
                }
            }
            if let Some(size) = state.pmtu.next_probe(now) {
                shared.send_probe(link, size, &mut state, now);
            }
            if state.pmtu.state().phase == PmtuPhase::Confirmed {
                state.pmtu_settled = true;
            }
            let path_mtu = usize::from(state.pmtu.path_mtu());
            link.max_datagram
                .store(path_mtu.saturating_sub(IPV4_UDP), Ordering::Relaxed);
            let up = state.data_path_up(now);
            if up != state.reported_up {
                // The reason is only built when there is a change to report.
                let (_, reason) = state.data_path(now);
                state.reported_up = up;
                let standby = state.standby;
                drop(state);
                if up {
                    tracing::info!(peer = %format_mac(&link.peer), path_mtu, standby = standby, "sleeve data path up");
                } else {
                    tracing::warn!(peer = %format_mac(&link.peer), standby = standby, reason = reason.as_deref().unwrap_or(""), "sleeve data path down");
                }
                (shared.events)(SleeveEvent::LinkHealth {
                    peer: link.peer,
                    conn: link.conn,
                    up,
                    reason,
                });
            }
        }
        outbox.flush(shared);
        if now >= next_mac_expiry {
            next_mac_expiry = now + MAC_EXPIRY_EVERY;
            let expired = lock(&shared.macs).expire(now);
            let gone: Vec<Mac> = expired
                .into_iter()
                .filter(|(_, owner)| *owner == MacOwner::Local)
                .map(|(mac, _)| mac)
                .collect();
            if !gone.is_empty() {
                (shared.events)(SleeveEvent::LocalMacsGone(gone));
            }
        }
    }
}
