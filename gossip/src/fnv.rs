//! FNV-1a 64 over little-endian `u64` words: the digest hash of gossip channels. Stable across
//! builds and platforms, unlike std's `DefaultHasher`, so peers running different builds
//! still agree when their states are equal.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(OFFSET_BASIS)
    }
}

impl Fnv64 {
    pub fn word(&mut self, word: u64) {
        for byte in word.to_le_bytes() {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_of_eight_zero_bytes() {
        let mut h = Fnv64::default();
        h.word(0);
        // FNV-1a 64 of eight 0x00 bytes.
        assert_eq!(h.finish(), 0xa8c7_f832_281a_39c5);
        assert_eq!(Fnv64::default().finish(), OFFSET_BASIS);
    }
}
