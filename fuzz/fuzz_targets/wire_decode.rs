//! Every decoder that reads bytes from the network (or from the router's state file): errors are fine, panics and unbounded
//! allocations are not; whatever decodes must encode back to something that decodes equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_gossip::channel::GossipMsg;
use weft_gossip::ipam;
use weft_gossip::topology::{Digest, TopologyUpdate};
use weft_gossip::wire::{self, ControlMsg, EchoMsg, Features, Intro};

fn round_trips<T>(bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = wire::decode::<T>(bytes) {
        let again: T = wire::decode(&wire::encode(&value)).expect("re-encoded value decodes");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trips::<ControlMsg>(data);
    round_trips::<GossipMsg>(data);
    round_trips::<TopologyUpdate>(data);
    round_trips::<Digest>(data);
    round_trips::<Features>(data);
    round_trips::<Intro>(data);
    round_trips::<EchoMsg>(data);
    round_trips::<wire::DatapathOffer>(data);
    // A version 2 features frame: the features, then the datapath offer.
    if let Ok(features) = wire::decode_features(data, wire::DATAPATH_OFFER_VERSION) {
        let body = wire::encode_features(&features, wire::DATAPATH_OFFER_VERSION);
        let again = wire::decode_features(&body, wire::DATAPATH_OFFER_VERSION);
        assert_eq!(again.as_ref(), Ok(&features));
    }
    // IPAM unicasts (space, reservations, `weft ipam check` views): whatever passes the
    // bound checks must survive a round trip and pass them again.
    if let Ok(msg) = ipam::decode_msg(data) {
        assert_eq!(ipam::decode_msg(&wire::encode(&msg)).as_ref(), Ok(&msg));
    }
    // The persisted IPAM snapshot (read back from disk at start): a damaged one is refused
    // with an error, never a panic.
    // The router restores it under its configured (valid) range, here the default one.
    if let Ok(snapshot) = ipam::IpamSnapshot::from_bytes(data) {
        let range = ipam::DEFAULT_RANGE.parse().expect("the default range parses");
        let config = ipam::IpamConfig::new(range);
        let _ = ipam::IpamChannel::restore(config, snapshot, 1, std::time::Instant::now(), 0);
    }
    let _ = wire::split_frames(data);
});
