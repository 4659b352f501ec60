//! Secret keys, X25519 public keys and per-connection key pairs.

use std::fmt;

use crate::sodium;
use crate::{CryptoError, KEY_LEN, PUBLIC_KEY_LEN, ensure_init};

/// 32 secret bytes, wiped with `sodium_memzero` on drop.
///
/// Moving a value is a bitwise copy the compiler does not wipe, so keep keys in place (behind a
/// reference, or inside a long-lived struct) where it matters. `Debug` never prints the bytes;
/// `==` is constant-time.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; KEY_LEN],
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self { bytes }
    }

    /// A uniformly random key from libsodium's CSPRNG.
    pub fn random() -> Self {
        ensure_init();
        let mut key = Self::zeroed();
        sodium::random_bytes(&mut key.bytes);
        key
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Lets libsodium write straight into the final storage instead of a temporary copy.
    pub(crate) fn zeroed() -> Self {
        Self {
            bytes: [0; KEY_LEN],
        }
    }

    pub(crate) fn as_mut_bytes(&mut self) -> &mut [u8; KEY_LEN] {
        &mut self.bytes
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        sodium::memzero(&mut self.bytes);
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        sodium::equal_same_len(&self.bytes, &other.bytes)
    }
}

impl Eq for SecretKey {}

/// An X25519 public key (a Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_LEN]);

impl fmt::Debug for PublicKey {
    /// The first 4 bytes in hex: enough to tell peers apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

/// An X25519 key pair for one connection.
#[derive(Debug)]
pub struct EphemeralKeyPair {
    secret: SecretKey,
    public: PublicKey,
}

impl EphemeralKeyPair {
    pub fn generate() -> Self {
        // libsodium clamps the scalar to 2^254 + 8k, which is never a multiple of the group
        // order, so the public key is never the rejected all-zero point and this loop runs
        // once; looping rather than panicking keeps that reasoning out of the failure path.
        loop {
            if let Ok(pair) = Self::from_secret(SecretKey::random()) {
                return pair;
            }
        }
    }

    /// Builds the pair for a known secret scalar (test vectors, or a long-term identity).
    /// Fails with [`CryptoError::InvalidPublicKey`] only if the derived public key would be the
    /// all-zero point, which clamping makes unreachable.
    pub fn from_secret(secret: SecretKey) -> Result<Self, CryptoError> {
        ensure_init();
        let mut public = [0u8; PUBLIC_KEY_LEN];
        if sodium::x25519_base(&mut public, secret.as_bytes()) {
            Ok(Self {
                secret,
                public: PublicKey(public),
            })
        } else {
            Err(CryptoError::InvalidPublicKey)
        }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// X25519 with the peer's public key.
    ///
    /// The result is the raw shared point, not uniformly random: feed it through
    /// [`derive_key`](crate::derive_key) before using it as a key. Fails with
    /// [`CryptoError::InvalidPublicKey`] for low-order points (the result would be all zero
    /// and independent of our secret, letting an attacker force a known key).
    pub fn diffie_hellman(&self, remote: &PublicKey) -> Result<SecretKey, CryptoError> {
        let mut shared = SecretKey::zeroed();
        // libsodium already rejects an all-zero result; the explicit check keeps that
        // guarantee independent of the linked library version.
        if sodium::x25519(shared.as_mut_bytes(), self.secret.as_bytes(), &remote.0)
            && !sodium::is_zero(shared.as_bytes())
        {
            Ok(shared)
        } else {
            Err(CryptoError::InvalidPublicKey)
        }
    }
}
