//! The mesh state machine with one registered neighbour, fed arbitrary control messages from
//! it: gossip, broadcasts and unicasts on any channel with any payload. Bad input is counted
//! and dropped; the mesh must never panic and must keep its own entry.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_gossip::PeerName;
use weft_gossip::mesh::{Mesh, MeshConfig, NewConnection};
use weft_gossip::wire::{self, ControlMsg, Features};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let local = PeerName::from_u64(0x0200_0000_0001).unwrap();
    let config = MeshConfig {
        name: local,
        nickname: "local".into(),
        uid: 11,
        conn_limit: 10,
        gossip_interval: Duration::from_secs(30),
        confirm_data_path: data.first().is_some_and(|b| b & 1 == 1),
    };
    let mut mesh = Mesh::new(config, now);
    let mut out = Vec::new();
    let neighbour = Features {
        name: PeerName::from_u64(0x0200_0000_0002).unwrap(),
        nickname: "neighbour".into(),
        uid: 22,
        conn_id: 3,
        listen_port: 6783,
        datapaths: None,
    };
    let remote: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let new = NewConnection {
        features: neighbour,
        outbound: false,
        remote_tcp: remote,
        target: None,
        conn_uid: 3,
        encrypted: true,
    };
    mesh.register(1, new, now, &mut out).unwrap();
    // The input is a sequence of length-prefixed control messages.
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (body, tail) = rest[2..].split_at(len);
        rest = tail;
        if let Ok(msg) = wire::decode::<ControlMsg>(body) {
            mesh.on_message(1, msg, now, &mut out);
        }
        mesh.tick(now + Duration::from_secs(31), &mut out);
        out.clear();
    }
    assert_eq!(mesh.topology().local_entry().name, local);
});
