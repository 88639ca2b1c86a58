//! API key format (SPEC §2.1): `<prefix>_<32 base62 random chars><6 base62 chars of CRC32(random)>`.
//!
//! The checksum lets the gateway reject a mistyped or made-up key before any cache or store access.
//! Only the SHA-256 of the whole key is stored; the hint is the prefix plus the first six random
//! characters.

use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::ids::BASE62;
pub const RANDOM_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 6;

/// A freshly generated key. The plaintext leaves the process exactly once, in the creation
/// response; `Debug` never shows it.
pub struct NewKey {
    pub plaintext: String,
    pub hash: KeyHash,
    pub hint: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a key: the only form the store and caches hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &hex::encode(&self.0[..4]))
    }
}

pub fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = u64::from(crc32fast::hash(random));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Generates a new key with the given prefix.
pub fn generate(prefix: &str) -> NewKey {
    let mut rng = rand::rng();
    let mut random = [0u8; RANDOM_LEN];
    for b in random.iter_mut() {
        // Rejection-free uniform choice: random_range is unbiased.
        *b = BASE62[rng.random_range(0..62usize)];
    }
    let mut plaintext = String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
    plaintext.push_str(prefix);
    plaintext.push('_');
    plaintext.extend(random.iter().map(|&b| b as char));
    plaintext.extend(checksum(&random).iter().map(|&b| b as char));
    let hash = KeyHash::of(&plaintext);
    let hint = hint_of(prefix, &random);
    NewKey {
        plaintext,
        hash,
        hint,
    }
}

fn hint_of(prefix: &str, random: &[u8]) -> String {
    let mut hint = String::with_capacity(prefix.len() + 7);
    hint.push_str(prefix);
    hint.push('_');
    hint.extend(random[..6].iter().map(|&b| b as char));
    hint
}

/// Does this string look like one of our keys (right prefix)? Used to classify a Bearer value.
pub fn has_prefix(candidate: &str, prefix: &str) -> bool {
    candidate.len() > prefix.len()
        && candidate.as_bytes()[prefix.len()] == b'_'
        && candidate.starts_with(prefix)
}

/// Checks shape and checksum with no I/O. Returns the hash to look up on success.
pub fn verify_format(candidate: &str, prefix: &str) -> Option<KeyHash> {
    if !has_prefix(candidate, prefix) {
        return None;
    }
    let body = &candidate.as_bytes()[prefix.len() + 1..];
    if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let (random, sum) = body.split_at(RANDOM_LEN);
    if checksum(random) != sum {
        return None;
    }
    Some(KeyHash::of(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_and_have_expected_shape() {
        for _ in 0..200 {
            let k = generate("tgk");
            assert_eq!(k.plaintext.len(), 4 + RANDOM_LEN + CHECKSUM_LEN);
            assert!(k.plaintext.starts_with("tgk_"));
            assert_eq!(verify_format(&k.plaintext, "tgk"), Some(k.hash));
            assert_eq!(k.hint, &k.plaintext[..10]);
        }
    }

    #[test]
    fn entropy_is_at_least_190_bits() {
        let bits = RANDOM_LEN as f64 * 62f64.log2();
        assert!(bits >= 190.0, "{bits}");
    }

    #[test]
    fn any_single_character_typo_is_caught() {
        let k = generate("sgk");
        let bytes = k.plaintext.as_bytes();
        for i in 4..bytes.len() {
            for &c in BASE62.iter() {
                if c == bytes[i] {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                // CRC32 detects every single-symbol change in the random part; a changed checksum
                // character can never match either.
                assert_eq!(verify_format(&typo, "sgk"), None, "{typo}");
            }
        }
    }

    #[test]
    fn rejects_wrong_prefix_length_and_charset() {
        let k = generate("tgk");
        assert_eq!(verify_format(&k.plaintext, "sgk"), None);
        assert_eq!(
            verify_format(&k.plaintext[..k.plaintext.len() - 1], "tgk"),
            None
        );
        assert_eq!(verify_format("tgk_", "tgk"), None);
        assert_eq!(verify_format("tgk", "tgk"), None);
        let mut s = k.plaintext.clone();
        s.replace_range(5..6, "-");
        assert_eq!(verify_format(&s, "tgk"), None);
        assert!(!format!("{k:?}").contains(&k.plaintext));
    }
}
