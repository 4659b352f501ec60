//! Frames arriving on the fast-path heartbeat socket: errors are fine, panics are not; whatever
//! decodes is a beat that encodes back to the same bytes. Besides the raw input, a valid beat
//! built from its first bytes is damaged by the rest, so the fuzzer gets past the header checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_datapath::vxlan::fastbeat::{Beat, HEADER_LEN, decode, encode};

fn check(frame: &[u8]) {
    if let Ok(beat) = decode(frame) {
        let mut out = vec![0; frame.len()];
        assert_eq!(encode(&beat, frame.len(), &mut out), Ok(frame.len()));
        assert_eq!(out, frame);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let Some((f, damage)) = data.split_first_chunk::<30>() else {
        return;
    };
    let beat = Beat {
        sender: f[0..6].try_into().unwrap(),
        receiver: f[6..12].try_into().unwrap(),
        conn: u64::from_be_bytes(f[12..20].try_into().unwrap()),
        seq: u32::from_be_bytes(f[20..24].try_into().unwrap()),
        echo: u32::from_be_bytes(f[24..28].try_into().unwrap()),
        full: f[28] & 1 != 0,
        sender_ok: f[28] & 2 != 0,
    };
    let len = HEADER_LEN + usize::from(f[29]);
    let mut frame = vec![0; len];
    assert_eq!(encode(&beat, len, &mut frame), Ok(len));
    if beat.seq != 0 {
        assert_eq!(decode(&frame), Ok(beat));
    }
    for pair in damage.chunks_exact(2) {
        frame[usize::from(pair[0]) % len] ^= pair[1];
    }
    check(&frame);
});
