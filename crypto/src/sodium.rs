//! Every call into libsodium, behind safe signatures.
//!
//! Each wrapper takes Rust references whose types already fix the lengths libsodium expects
//! (`&[u8; 32]` for keys and points, `&[u8; 24]` for nonces), so nothing outside this module
//! can hand libsodium a short buffer.
#![allow(unsafe_code)]

use libsodium_sys as sys;

/// Returns false only when `sodium_init` reports failure (-1); 1 means "already initialised".
pub(crate) fn init() -> bool {
    // SAFETY: sodium_init takes no arguments and is documented as thread-safe and idempotent.
    unsafe { sys::sodium_init() >= 0 }
}

pub(crate) fn memzero(buf: &mut [u8]) {
    // SAFETY: the pointer and length describe exactly one live, writable slice.
    unsafe { sys::sodium_memzero(buf.as_mut_ptr().cast(), buf.len()) }
}

/// Constant-time comparison of two equal-length slices.
pub(crate) fn equal_same_len(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // SAFETY: both pointers are valid for reads of `a.len()` (== `b.len()`) bytes.
    unsafe { sys::sodium_memcmp(a.as_ptr().cast(), b.as_ptr().cast(), a.len()) == 0 }
}

pub(crate) fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: the pointer is valid for reads of `buf.len()` bytes.
    unsafe { sys::sodium_is_zero(buf.as_ptr(), buf.len()) == 1 }
}

pub(crate) fn random_bytes(buf: &mut [u8]) {
    // SAFETY: the pointer is valid for writes of `buf.len()` bytes.
    unsafe { sys::randombytes_buf(buf.as_mut_ptr().cast(), buf.len()) }
}

/// X25519 of the base point. False when libsodium refuses to produce the all-zero point.
pub(crate) fn x25519_base(public: &mut [u8; 32], scalar: &[u8; 32]) -> bool {
    // SAFETY: `public` is writable and `scalar` readable for crypto_scalarmult_BYTES /
    // crypto_scalarmult_SCALARBYTES (both 32) bytes, enforced by the array types.
    unsafe { sys::crypto_scalarmult_base(public.as_mut_ptr(), scalar.as_ptr()) == 0 }
}

/// X25519. False when `point` has small order, i.e. the shared secret would be all zero.
pub(crate) fn x25519(shared: &mut [u8; 32], scalar: &[u8; 32], point: &[u8; 32]) -> bool {
    // SAFETY: all three buffers are exactly 32 bytes as crypto_scalarmult requires, and
    // `shared` is a unique borrow so it cannot alias the inputs.
    unsafe { sys::crypto_scalarmult(shared.as_mut_ptr(), scalar.as_ptr(), point.as_ptr()) == 0 }
}

/// Argon2id v1.3 (`crypto_pwhash` with `ALG_ARGON2ID13`). False on failure, which libsodium
/// reports for out-of-memory or a password longer than `crypto_pwhash_PASSWD_MAX`.
pub(crate) fn argon2id13(
    out: &mut [u8; 32],
    password: &[u8],
    salt: &[u8; 16],
    opslimit: u64,
    memlimit: usize,
) -> bool {
    // SAFETY: `out` is writable for the 32 bytes passed as outlen, `password` readable for its
    // length, and `salt` is exactly crypto_pwhash_SALTBYTES (16) bytes. libsodium checks the
    // lengths and limits itself and returns -1 instead of touching memory when they are out of
    // range.
    unsafe {
        sys::crypto_pwhash(
            out.as_mut_ptr(),
            out.len() as u64,
            password.as_ptr().cast(),
            password.len() as u64,
            salt.as_ptr(),
            opslimit,
            memlimit,
            sys::crypto_pwhash_ALG_ARGON2ID13 as i32,
        ) == 0
    }
}

/// Incremental BLAKE2b with a 32-byte output, optionally keyed with a 32-byte key.
pub(crate) struct Blake2b256 {
    state: sys::crypto_generichash_state,
}

impl Blake2b256 {
    const OUT_LEN: usize = 32;

    pub(crate) fn new(key: Option<&[u8; 32]>) -> Self {
        let mut hasher = Self {
            state: sys::crypto_generichash_state { opaque: [0; 384] },
        };
        let (key_ptr, key_len) = match key {
            Some(key) => (key.as_ptr(), key.len()),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: the state is the 64-byte-aligned, 384-byte struct from the bindings (at least
        // crypto_generichash_statebytes(), checked by a unit test); a null key with length 0
        // selects unkeyed mode. The output and key lengths (32) are inside BLAKE2b's ranges,
        // so the call cannot fail.
        unsafe {
            sys::crypto_generichash_init(&mut hasher.state, key_ptr, key_len, Self::OUT_LEN);
        }
        hasher
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        // SAFETY: the state was initialised in `new`; `data` is readable for its length.
        // Update only fails on an uninitialised state, which `new` rules out.
        unsafe {
            sys::crypto_generichash_update(&mut self.state, data.as_ptr(), data.len() as u64);
        }
    }

    pub(crate) fn finalize_into(mut self, out: &mut [u8; 32]) {
        // SAFETY: the state was initialised in `new` with outlen 32 and `out` is 32 writable
        // bytes; `self` is consumed so final runs at most once per state.
        unsafe {
            sys::crypto_generichash_final(&mut self.state, out.as_mut_ptr(), out.len());
        }
    }
}

impl Drop for Blake2b256 {
    // A keyed state holds the key; don't leave it on the stack.
    fn drop(&mut self) {
        memzero(&mut self.state.opaque);
    }
}

/// XSalsa20-Poly1305 encryption in place; returns the tag.
pub(crate) fn secretbox_seal_in_place(
    buf: &mut [u8],
    nonce: &[u8; 24],
    key: &[u8; 32],
) -> [u8; 16] {
    let mut tag = [0u8; 16];
    let ptr = buf.as_mut_ptr();
    // SAFETY: `buf` is readable and writable for its length; libsodium explicitly supports
    // c == m for crypto_secretbox_detached. `tag`, `nonce` and `key` have the exact
    // MACBYTES/NONCEBYTES/KEYBYTES sizes. A Rust slice is at most isize::MAX bytes, below
    // crypto_secretbox_MESSAGEBYTES_MAX, so the length check inside cannot abort.
    unsafe {
        sys::crypto_secretbox_detached(
            ptr,
            tag.as_mut_ptr(),
            ptr,
            buf.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        );
    }
    tag
}

/// Verifies `tag` and decrypts in place. False (buffer left as ciphertext) on forgery.
pub(crate) fn secretbox_open_in_place(
    buf: &mut [u8],
    tag: &[u8; 16],
    nonce: &[u8; 24],
    key: &[u8; 32],
) -> bool {
    let ptr = buf.as_mut_ptr();
    // SAFETY: as for sealing: m == c is supported by crypto_secretbox_open_detached, and the
    // fixed-size arrays match MACBYTES/NONCEBYTES/KEYBYTES.
    unsafe {
        sys::crypto_secretbox_open_detached(
            ptr,
            ptr,
            tag.as_ptr(),
            buf.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bindings were generated from newer headers than the system library; these catch a
    // mismatch that would otherwise corrupt memory (state size) or silently change keys.
    #[test]
    fn linked_library_matches_binding_layout_and_parameters() {
        // SAFETY: pure getters without arguments.
        let (state_bytes, ops, mem, alg) = unsafe {
            (
                sys::crypto_generichash_statebytes(),
                sys::crypto_pwhash_opslimit_interactive(),
                sys::crypto_pwhash_memlimit_interactive(),
                sys::crypto_pwhash_alg_argon2id13(),
            )
        };
        assert!(state_bytes <= std::mem::size_of::<sys::crypto_generichash_state>());
        assert_eq!(ops as u64, crate::kdf::PWHASH_OPSLIMIT);
        assert_eq!(mem, crate::kdf::PWHASH_MEMLIMIT);
        assert_eq!(alg, sys::crypto_pwhash_ALG_ARGON2ID13 as i32);
    }
}
