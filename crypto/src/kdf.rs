//! Hashing, key derivation and password stretching.

use crate::sodium::{self, Blake2b256};
use crate::{CryptoError, SecretKey, ensure_init};

/// Argon2id passes: libsodium's `crypto_pwhash_OPSLIMIT_INTERACTIVE`.
///
/// Pinned here rather than read from the library: every node of a mesh must derive the same
/// key, so a future libsodium retuning its defaults must not silently split a mesh.
pub(crate) const PWHASH_OPSLIMIT: u64 = 2;
/// Argon2id memory in bytes (64 MiB): libsodium's `crypto_pwhash_MEMLIMIT_INTERACTIVE`.
pub(crate) const PWHASH_MEMLIMIT: usize = 64 * 1024 * 1024;
const PWHASH_SALT_LEN: usize = libsodium_sys::crypto_pwhash_SALTBYTES as usize;
const PASSWORD_SALT_LABEL: &[u8] = b"weft password salt";

const _: () = {
    assert!(PWHASH_OPSLIMIT == libsodium_sys::crypto_pwhash_OPSLIMIT_INTERACTIVE as u64);
    assert!(PWHASH_MEMLIMIT == libsodium_sys::crypto_pwhash_MEMLIMIT_INTERACTIVE as usize);
    assert!(PWHASH_SALT_LEN == 16);
};

/// Unkeyed BLAKE2b-256 over `parts`, each prefixed with its length (u64 little-endian) so that
/// part boundaries are unambiguous: `["ab", "c"]` and `["a", "bc"]` hash differently.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    ensure_init();
    let mut hasher = Blake2b256::new(None);
    absorb_framed(&mut hasher, parts);
    let mut digest = [0u8; 32];
    hasher.finalize_into(&mut digest);
    digest
}

/// Derives a subkey: keyed BLAKE2b-256 with `key`, over the length-prefixed `label` followed
/// by the length-prefixed `parts` (the same framing as [`hash`]).
pub fn derive_key(key: &SecretKey, label: &str, parts: &[&[u8]]) -> SecretKey {
    ensure_init();
    let mut hasher = Blake2b256::new(Some(key.as_bytes()));
    absorb_framed(&mut hasher, &[label.as_bytes()]);
    absorb_framed(&mut hasher, parts);
    let mut derived = SecretKey::zeroed();
    hasher.finalize_into(derived.as_mut_bytes());
    derived
}

/// Stretches the mesh password once at start-up, so that a recorded handshake does not allow
/// cheap offline guessing.
///
/// Argon2id v1.3 with libsodium's "interactive" limits (2 passes, 64 MiB). The salt is the first
/// 16 bytes of `hash(&[b"weft password salt", mesh_id])`: deterministic, because every node must
/// arrive at the same key without exchanging anything, yet distinct per mesh, so work spent
/// attacking one mesh does not carry over to another using the same password.
pub fn stretch_password(password: &[u8], mesh_id: &str) -> Result<SecretKey, CryptoError> {
    ensure_init();
    let digest = hash(&[PASSWORD_SALT_LABEL, mesh_id.as_bytes()]);
    let mut salt = [0u8; PWHASH_SALT_LEN];
    salt.copy_from_slice(&digest[..PWHASH_SALT_LEN]);

    let mut key = SecretKey::zeroed();
    if sodium::argon2id13(
        key.as_mut_bytes(),
        password,
        &salt,
        PWHASH_OPSLIMIT,
        PWHASH_MEMLIMIT,
    ) {
        Ok(key)
    } else {
        Err(CryptoError::PasswordHash)
    }
}

fn absorb_framed(hasher: &mut Blake2b256, parts: &[&[u8]]) {
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}
