//! Frames as pods send them, with any MTU: errors are fine, panics are not; every reply fits
//! the bound and goes back to the MAC the frame came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_datapath::icmp::{MAX_REPLY_LEN, too_big_reply};

fuzz_target!(|data: &[u8]| {
    let Some((mtu, frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mtu = u16::from_be_bytes(*mtu);
    let mut out = Vec::new();
    if let Ok(len) = too_big_reply(frame, mtu, &mut out) {
        assert_eq!(len, out.len());
        assert!(len <= MAX_REPLY_LEN);
        assert_eq!(out.get(..6), frame.get(6..12), "back to the sender");
        assert_eq!(out.get(6..12), frame.get(..6), "from the MAC it addressed");
    }
});
