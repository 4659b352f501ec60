//! Fragment frames straight from the network into the reassembler: errors are fine, panics
//! are not, and whatever completes has exactly the length its pieces announced.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_datapath::sleeve::fragment::{self, Reassembler};

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::new(4, Duration::from_millis(10));
    let start = Instant::now();
    // The input is a sequence of pieces: [origin byte][step ms][len u16 BE][payload].
    let mut rest = data;
    while let [origin, step, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (payload, after) = tail.split_at(len);
        rest = after;
        let now = start + Duration::from_millis(u64::from(*step));
        if let Ok((header, chunk)) = fragment::parse(payload)
            && let Some(whole) = reassembler.insert([*origin; 6], header, chunk, now)
        {
            assert_eq!(whole.len(), header.total as usize);
        }
    }
});
