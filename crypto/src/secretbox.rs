//! NaCl secretbox (XSalsa20-Poly1305).

use crate::sodium;
use crate::{CryptoError, NONCE_LEN, SecretKey, TAG_LEN, ensure_init};

/// A 24-byte secretbox nonce. Never seal two messages with the same (key, nonce).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// Counter in bytes 0..8 (big-endian), `domain` in byte 8, the rest zero.
    ///
    /// The layout is injective, so distinct `(domain, counter)` pairs give distinct nonces;
    /// `domain` lets several senders (e.g. the two directions of a connection) share one key
    /// without ever colliding.
    pub fn from_counter(domain: u8, counter: u64) -> Self {
        let mut bytes = [0u8; NONCE_LEN];
        bytes[..8].copy_from_slice(&counter.to_be_bytes());
        bytes[8] = domain;
        Self(bytes)
    }
}

/// Secretbox with one key. The sealed wire format of the `_append` variants is
/// `tag || ciphertext`, the same as libsodium's `crypto_secretbox_easy`.
#[derive(Clone, Debug)]
pub struct SecretBox {
    key: SecretKey,
}

impl SecretBox {
    pub fn new(key: SecretKey) -> Self {
        ensure_init();
        Self { key }
    }

    /// Encrypts `buf` in place and returns the authentication tag.
    pub fn seal_in_place(&self, nonce: &Nonce, buf: &mut [u8]) -> [u8; TAG_LEN] {
        sodium::secretbox_seal_in_place(buf, &nonce.0, self.key.as_bytes())
    }

    /// Verifies `tag` and decrypts `buf` in place. On [`CryptoError::Authentication`] the
    /// contents of `buf` are unspecified and must not be used.
    pub fn open_in_place(
        &self,
        nonce: &Nonce,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        if sodium::secretbox_open_in_place(buf, tag, &nonce.0, self.key.as_bytes()) {
            Ok(())
        } else {
            Err(CryptoError::Authentication)
        }
    }

    /// Appends `tag || ciphertext` of `plaintext` to `out`; allocates only if `out` lacks the
    /// `TAG_LEN + plaintext.len()` spare capacity.
    pub fn seal_append(&self, nonce: &Nonce, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; TAG_LEN]);
        out.extend_from_slice(plaintext);
        // Cannot panic: exactly TAG_LEN bytes were just pushed before the body.
        let (tag_slot, body) = out[start..].split_at_mut(TAG_LEN);
        let tag = self.seal_in_place(nonce, body);
        tag_slot.copy_from_slice(&tag);
    }

    /// Opens `tag || ciphertext` and appends the plaintext to `out`. On error `out` is left
    /// as it was.
    pub fn open_append(
        &self,
        nonce: &Nonce,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let Some((tag, ciphertext)) = sealed.split_first_chunk::<TAG_LEN>() else {
            return Err(CryptoError::TooShort);
        };
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let opened = self.open_in_place(nonce, &mut out[start..], tag);
        if opened.is_err() {
            out.truncate(start);
        }
        opened
    }
}
