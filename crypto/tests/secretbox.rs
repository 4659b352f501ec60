//! Round trips, tamper detection and robustness of `SecretBox`.

use proptest::prelude::*;
use weft_crypto::{CryptoError, Nonce, SecretBox, SecretKey, TAG_LEN};

fn sealer() -> SecretBox {
    SecretBox::new(SecretKey::random())
}

fn sealed(sealer: &SecretBox, nonce: &Nonce, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    sealer.seal_append(nonce, plaintext, &mut out);
    out
}

#[test]
fn in_place_round_trip() {
    let sealer = sealer();
    let nonce = Nonce::from_counter(1, 42);
    let plaintext = b"an encapsulated ethernet frame".to_vec();

    let mut buf = plaintext.clone();
    let tag = sealer.seal_in_place(&nonce, &mut buf);
    assert_ne!(buf, plaintext);
    sealer.open_in_place(&nonce, &mut buf, &tag).unwrap();
    assert_eq!(buf, plaintext);
}

#[test]
fn append_round_trip_keeps_existing_contents() {
    let sealer = sealer();
    let nonce = Nonce::from_counter(0, 7);

    let mut wire = b"header".to_vec();
    sealer.seal_append(&nonce, b"payload", &mut wire);
    assert_eq!(wire.len(), 6 + TAG_LEN + 7);
    assert_eq!(&wire[..6], b"header");

    let mut out = b"prefix".to_vec();
    sealer.open_append(&nonce, &wire[6..], &mut out).unwrap();
    assert_eq!(out, b"prefixpayload");
}

#[test]
fn seal_append_does_not_reallocate_with_enough_capacity() {
    let sealer = sealer();
    let mut out = Vec::with_capacity(TAG_LEN + 100);
    let before = out.as_ptr();
    sealer.seal_append(&Nonce::from_counter(0, 0), &[7u8; 100], &mut out);
    assert_eq!(out.as_ptr(), before);
}

#[test]
fn empty_plaintext_round_trips() {
    let sealer = sealer();
    let nonce = Nonce::from_counter(0, 0);
    let wire = sealed(&sealer, &nonce, b"");
    assert_eq!(wire.len(), TAG_LEN);
    let mut out = Vec::new();
    sealer.open_append(&nonce, &wire, &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn flipping_any_bit_of_tag_or_ciphertext_fails_authentication() {
    let sealer = sealer();
    let nonce = Nonce::from_counter(2, 9);
    let wire = sealed(&sealer, &nonce, b"sixteen+ bytes of plaintext");

    for index in 0..wire.len() {
        for bit in 0..8 {
            let mut tampered = wire.clone();
            tampered[index] ^= 1 << bit;
            let mut out = b"untouched".to_vec();
            assert_eq!(
                sealer.open_append(&nonce, &tampered, &mut out),
                Err(CryptoError::Authentication),
                "byte {index} bit {bit}"
            );
            assert_eq!(out, b"untouched", "failed open must not append");
        }
    }
}

#[test]
fn tampering_in_place_fails_authentication() {
    let sealer = sealer();
    let nonce = Nonce::from_counter(0, 1);
    let mut buf = *b"in-place payload";
    let tag = sealer.seal_in_place(&nonce, &mut buf);

    for index in 0..buf.len() {
        let mut tampered = buf;
        tampered[index] ^= 0x80;
        assert_eq!(
            sealer.open_in_place(&nonce, &mut tampered, &tag),
            Err(CryptoError::Authentication)
        );
    }
    for index in 0..TAG_LEN {
        let mut bad_tag = tag;
        bad_tag[index] ^= 0x01;
        let mut copy = buf;
        assert_eq!(
            sealer.open_in_place(&nonce, &mut copy, &bad_tag),
            Err(CryptoError::Authentication)
        );
    }
}

#[test]
fn wrong_key_fails() {
    let nonce = Nonce::from_counter(0, 3);
    let wire = sealed(&sealer(), &nonce, b"secret");
    let mut out = Vec::new();
    assert_eq!(
        sealer().open_append(&nonce, &wire, &mut out),
        Err(CryptoError::Authentication)
    );
}

#[test]
fn wrong_nonce_fails() {
    let sealer = sealer();
    let wire = sealed(&sealer, &Nonce::from_counter(0, 3), b"secret");
    let mut out = Vec::new();
    for wrong in [Nonce::from_counter(0, 4), Nonce::from_counter(1, 3)] {
        assert_eq!(
            sealer.open_append(&wrong, &wire, &mut out),
            Err(CryptoError::Authentication)
        );
    }
}

#[test]
fn open_append_of_short_input_is_too_short() {
    let sealer = sealer();
    let nonce = Nonce::from_counter(0, 0);
    for len in 0..TAG_LEN {
        let mut out = Vec::new();
        assert_eq!(
            sealer.open_append(&nonce, &vec![0u8; len], &mut out),
            Err(CryptoError::TooShort)
        );
        assert!(out.is_empty());
    }
}

#[test]
fn nonce_layout() {
    let nonce = Nonce::from_counter(0xab, 0x0102_0304_0506_0708);
    let mut expected = [0u8; 24];
    expected[..9].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0xab]);
    assert_eq!(nonce.0, expected);
}

#[test]
fn nonces_are_distinct_across_domain_and_counter() {
    let pairs = [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (0, 256),
        (1, 256),
        (255, u64::MAX),
        (0, u64::MAX),
        (0, 1 << 56),
    ];
    for (i, &(domain_a, counter_a)) in pairs.iter().enumerate() {
        for &(domain_b, counter_b) in &pairs[i + 1..] {
            assert_ne!(
                Nonce::from_counter(domain_a, counter_a),
                Nonce::from_counter(domain_b, counter_b),
                "({domain_a}, {counter_a}) vs ({domain_b}, {counter_b})"
            );
        }
    }
}

proptest! {
    #[test]
    fn random_plaintexts_round_trip(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let sealer = SecretBox::new(SecretKey::from_bytes(key));
        let nonce = Nonce(nonce);

        let wire = sealed(&sealer, &nonce, &plaintext);
        prop_assert_eq!(wire.len(), TAG_LEN + plaintext.len());
        let mut opened = Vec::new();
        sealer.open_append(&nonce, &wire, &mut opened).unwrap();
        prop_assert_eq!(&opened, &plaintext);

        let mut buf = plaintext.clone();
        let tag = sealer.seal_in_place(&nonce, &mut buf);
        prop_assert_eq!(&tag[..], &wire[..TAG_LEN]);
        prop_assert_eq!(&buf[..], &wire[TAG_LEN..]);
        sealer.open_in_place(&nonce, &mut buf, &tag).unwrap();
        prop_assert_eq!(buf, plaintext);
    }

    #[test]
    fn garbage_never_panics_and_never_opens(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
        tag in any::<[u8; 16]>(),
    ) {
        let sealer = SecretBox::new(SecretKey::from_bytes(key));
        let nonce = Nonce(nonce);

        let mut out = Vec::new();
        let expected = if garbage.len() < TAG_LEN {
            CryptoError::TooShort
        } else {
            CryptoError::Authentication
        };
        prop_assert_eq!(sealer.open_append(&nonce, &garbage, &mut out), Err(expected));
        prop_assert!(out.is_empty());

        let mut buf = garbage;
        prop_assert_eq!(
            sealer.open_in_place(&nonce, &mut buf, &tag),
            Err(CryptoError::Authentication)
        );
    }
}
