//! A listener's handshake fed whatever a remote might send: hello, intro and sealed features
//! cut from the input. It must fail cleanly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::SecretKey;
use weft_gossip::PeerName;
use weft_gossip::handshake::{Handshake, Role};
use weft_gossip::wire::{Features, HELLO_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < HELLO_LEN + 2 {
        return;
    }
    let (hello, rest) = data.split_at(HELLO_LEN);
    let cut = usize::from(rest[0]) % rest.len();
    let (intro, sealed) = rest[1..].split_at(cut.min(rest.len() - 1));
    let features = Features {
        name: PeerName::from_u64(1).unwrap(),
        nickname: "fuzz".into(),
        uid: 1,
        conn_id: 2,
        listen_port: 6783,
        datapaths: None,
    };
    let password = Some(SecretKey::from_bytes([7; 32]));
    let (mut hs, _) = Handshake::new(Role::Listener, password, features);
    let hello: [u8; HELLO_LEN] = hello.try_into().unwrap();
    if hs.on_hello(&hello).is_ok() && hs.on_intro(intro).is_ok() {
        let _ = hs.on_features(sealed);
    }
});
