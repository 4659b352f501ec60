//! Key agreement, hashing, key derivation, password stretching and helpers.

use std::collections::HashSet;

use weft_crypto::{
    CryptoError, EphemeralKeyPair, PublicKey, SecretKey, constant_time_eq, derive_key, hash, init,
    random_bytes, random_nonzero_u64, random_u64, stretch_password,
};

#[test]
fn init_is_idempotent() {
    assert_eq!(init(), Ok(()));
    assert_eq!(init(), Ok(()));
}

#[test]
fn both_sides_compute_the_same_secret() {
    let alice = EphemeralKeyPair::generate();
    let bob = EphemeralKeyPair::generate();
    assert_ne!(alice.public(), bob.public());

    let from_alice = alice.diffie_hellman(&bob.public()).unwrap();
    let from_bob = bob.diffie_hellman(&alice.public()).unwrap();
    assert_eq!(from_alice, from_bob);

    let eve = EphemeralKeyPair::generate();
    assert_ne!(eve.diffie_hellman(&bob.public()).unwrap(), from_alice);
}

#[test]
fn low_order_public_keys_are_rejected() {
    let pair = EphemeralKeyPair::generate();
    let mut one = [0u8; 32];
    one[0] = 1;
    // 0 and 1 are points of order 1 and 4; the RFC 7748 §5 non-canonical p (= 0 mod p) too.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    for low_order in [[0u8; 32], one, p] {
        assert_eq!(
            pair.diffie_hellman(&PublicKey(low_order)),
            Err(CryptoError::InvalidPublicKey)
        );
    }
}

#[test]
fn debug_output_hides_secrets() {
    let key = SecretKey::from_bytes([0xaa; 32]);
    assert_eq!(format!("{key:?}"), "SecretKey(..)");

    let pair = EphemeralKeyPair::from_secret(key).unwrap();
    assert!(!format!("{pair:?}").contains("aaaa"));

    let public = PublicKey([0x12; 32]);
    assert_eq!(format!("{public:?}"), "PublicKey(12121212…)");
}

#[test]
fn hash_framing_separates_part_boundaries() {
    assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
    assert_ne!(hash(&[b"abc"]), hash(&[b"ab", b"c"]));
    assert_ne!(hash(&[]), hash(&[b""]));
    assert_eq!(hash(&[b"ab", b"c"]), hash(&[b"ab", b"c"]));
}

#[test]
fn hash_is_blake2b_256_over_the_framed_input() {
    // With no parts there is no framing, so this is the published BLAKE2b-256("") digest:
    // it pins the primitive (unkeyed BLAKE2b, 32-byte output) independently of the framing.
    let empty = hash(&[]);
    let expected_empty = [
        0x0e, 0x57, 0x51, 0xc0, 0x26, 0xe5, 0x43, 0xb2, 0xe8, 0xab, 0x2e, 0xb0, 0x60, 0x99, 0xda,
        0xa1, 0xd1, 0xe5, 0xdf, 0x47, 0x77, 0x8f, 0x77, 0x87, 0xfa, 0xab, 0x45, 0xcd, 0xf1, 0x2f,
        0xe3, 0xa8,
    ];
    assert_eq!(empty, expected_empty);
}

#[test]
fn derive_key_depends_on_key_label_and_parts() {
    let key = SecretKey::from_bytes([1; 32]);
    let other_key = SecretKey::from_bytes([2; 32]);
    let base = derive_key(&key, "session", &[b"a", b"b"]);

    assert_eq!(base, derive_key(&key, "session", &[b"a", b"b"]));
    assert_ne!(base, derive_key(&other_key, "session", &[b"a", b"b"]));
    assert_ne!(base, derive_key(&key, "sessio", &[b"na", b"b"]));
    assert_ne!(base, derive_key(&key, "session", &[b"ab"]));
    assert_ne!(base, derive_key(&key, "session", &[b"b", b"a"]));
    assert_ne!(base.as_bytes(), &hash(&[b"session", b"a", b"b"]));
}

#[test]
fn stretch_password_is_deterministic_and_input_sensitive() {
    let key = stretch_password(b"correct horse", "mesh-a").unwrap();
    assert_eq!(key, stretch_password(b"correct horse", "mesh-a").unwrap());
    assert_ne!(key, stretch_password(b"correct horse", "mesh-b").unwrap());
    assert_ne!(key, stretch_password(b"correct horsf", "mesh-a").unwrap());
    assert_ne!(key.as_bytes(), &[0u8; 32]);
}

#[test]
fn stretch_password_accepts_empty_inputs() {
    let key = stretch_password(b"", "").unwrap();
    assert_ne!(key, stretch_password(b"", "mesh").unwrap());
}

#[test]
fn random_values_vary() {
    let values: HashSet<u64> = (0..64).map(|_| random_u64()).collect();
    assert!(values.len() > 60);
    assert!((0..1000).all(|_| random_nonzero_u64() != 0));

    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    random_bytes(&mut a);
    random_bytes(&mut b);
    assert_ne!(a, b);
    random_bytes(&mut []);

    assert_ne!(SecretKey::random(), SecretKey::random());
}

#[test]
fn constant_time_eq_compares_contents_and_lengths() {
    assert!(constant_time_eq(b"", b""));
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"", b"a"));
}
