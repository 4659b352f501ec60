//! Published test vectors, so a wrong binding or a mis-wired argument cannot pass unnoticed.

use weft_crypto::{EphemeralKeyPair, Nonce, PublicKey, SecretBox, SecretKey, TAG_LEN};

fn unhex<const N: usize>(hex: &str) -> [u8; N] {
    assert_eq!(hex.len(), 2 * N, "test vector has the wrong length");
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).expect("ascii hex");
        *byte = u8::from_str_radix(pair, 16).expect("valid hex digit");
    }
    out
}

/// RFC 7748 §6.1.
#[test]
fn x25519_rfc7748_section_6_1() {
    let alice = EphemeralKeyPair::from_secret(SecretKey::from_bytes(unhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    )))
    .expect("valid scalar");
    let bob = EphemeralKeyPair::from_secret(SecretKey::from_bytes(unhex(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    )))
    .expect("valid scalar");

    assert_eq!(
        alice.public(),
        PublicKey(unhex(
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        ))
    );
    assert_eq!(
        bob.public(),
        PublicKey(unhex(
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        ))
    );

    let expected: [u8; 32] =
        unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    let from_alice = alice.diffie_hellman(&bob.public()).expect("valid point");
    let from_bob = bob.diffie_hellman(&alice.public()).expect("valid point");
    assert_eq!(from_alice.as_bytes(), &expected);
    assert_eq!(from_bob.as_bytes(), &expected);
}

/// libsodium `test/default/secretbox.c` (the NaCl "firstkey" vector): 131-byte message,
/// expected output is tag || ciphertext.
const FIRSTKEY: &str = "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389";
const NONCE: &str = "69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37";
const MESSAGE: &str = concat!(
    "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc",
    "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31",
    "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde",
    "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864",
    "5e0705",
);
const SEALED: &str = concat!(
    "f3ffc7703f9400e52a7dfb4b3d3305d9",
    "8e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186a",
    "c0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738",
    "b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da",
    "99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74",
    "e355a5",
);

#[test]
fn secretbox_nacl_vector_append() {
    let sealer = SecretBox::new(SecretKey::from_bytes(unhex(FIRSTKEY)));
    let nonce = Nonce(unhex(NONCE));
    let message: [u8; 131] = unhex(MESSAGE);
    let expected: [u8; TAG_LEN + 131] = unhex(SEALED);

    let mut sealed = Vec::new();
    sealer.seal_append(&nonce, &message, &mut sealed);
    assert_eq!(sealed, expected);

    let mut opened = Vec::new();
    sealer
        .open_append(&nonce, &expected, &mut opened)
        .expect("vector opens");
    assert_eq!(opened, message);
}

#[test]
fn secretbox_nacl_vector_in_place() {
    let sealer = SecretBox::new(SecretKey::from_bytes(unhex(FIRSTKEY)));
    let nonce = Nonce(unhex(NONCE));
    let message: [u8; 131] = unhex(MESSAGE);
    let expected: [u8; TAG_LEN + 131] = unhex(SEALED);

    let mut buf = message;
    let tag = sealer.seal_in_place(&nonce, &mut buf);
    assert_eq!(tag[..], expected[..TAG_LEN]);
    assert_eq!(buf[..], expected[TAG_LEN..]);

    sealer
        .open_in_place(&nonce, &mut buf, &tag)
        .expect("vector opens");
    assert_eq!(buf, message);
}
