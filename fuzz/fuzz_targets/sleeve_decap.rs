//! Sleeve datagrams straight from the network: errors are fine, panics are not; whatever
//! decapsulates must encapsulate back to a datagram with the same frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::SecretKey;
use weft_datapath::sleeve::codec::{Decapsulator, Encapsulator, Frame, datagram_sender};

fuzz_target!(|data: &[u8]| {
    // Expect whichever sender the datagram names, so inputs reach the deeper paths.
    let sender = datagram_sender(data).unwrap_or([0; 6]);
    let decapsulators = [
        Decapsulator::plain(sender),
        Decapsulator::sealed(sender, Box::new(|_| SecretKey::from_bytes([7; 32]))),
    ];
    for mut decapsulator in decapsulators {
        let mut datagram = data.to_vec();
        let Ok(frames) = decapsulator.decapsulate(&mut datagram) else {
            continue;
        };
        let frames: Vec<Frame<'_>> = frames.map_while(Result::ok).collect();
        let mut encapsulated = Vec::new();
        Encapsulator::plain(sender)
            .encapsulate(&frames, usize::MAX, &mut encapsulated)
            .expect("decoded frames encode");
        let again: Vec<Frame<'_>> = Decapsulator::plain(sender)
            .decapsulate(&mut encapsulated)
            .expect("re-encoded datagram decodes")
            .collect::<Result<_, _>>()
            .expect("re-encoded frames decode");
        assert_eq!(again, frames);
    }
});
