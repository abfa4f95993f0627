//! A small stable hash for names and rule fingerprints.
//!
//! Chain names, ipset names and the per-rule `sv:HASH` comments are derived from rendered
//! text, so they must be identical across runs, versions and machines (the agent reconciles
//! after a restart by comparing them). `std`'s hashers promise no such stability, so this is
//! 64-bit FNV-1a, finished with a 64-bit mixer (splitmix64's finaliser) so that short,
//! similar inputs still spread over all bits.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A streaming stable hasher; feed parts with [`StableHasher::part`] (each part is length
/// delimited, so `("ab","c")` and `("a","bc")` differ).
#[derive(Debug, Clone)]
pub(crate) struct StableHasher(u64);

impl StableHasher {
    pub(crate) fn new() -> Self {
        Self(FNV_OFFSET)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub(crate) fn part(mut self, part: &str) -> Self {
        self.bytes(&(part.len() as u64).to_le_bytes());
        self.bytes(part.as_bytes());
        self
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// `len` (at most 12) base-32 characters of the hash of `parts`: 5 bits per character, so 12
/// characters carry 60 bits.
pub(crate) fn short_hash(parts: &[&str], len: usize) -> String {
    let mut hasher = StableHasher::new();
    for part in parts {
        hasher = hasher.part(part);
    }
    let mut h = hasher.finish();
    let mut out = String::with_capacity(len);
    for _ in 0..len.min(12) {
        out.push(char::from(ALPHABET[(h & 31) as usize]));
        h >>= 5;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_delimited() {
        // Pinned: these values are part of the on-kernel naming; changing the hash renames
        // every chain and set (a reviewed change, like a golden file).
        assert_eq!(short_hash(&["abc"], 12), short_hash(&["abc"], 12));
        assert_ne!(short_hash(&["ab", "c"], 12), short_hash(&["a", "bc"], 12));
        assert_ne!(short_hash(&["a"], 12), short_hash(&["b"], 12));
        assert_eq!(short_hash(&["x"], 5).len(), 5);
        assert_eq!(short_hash(&["x"], 40).len(), 12);
        assert_eq!(short_hash(&[""], 12), "j0vc3hie1of2");
    }
}
