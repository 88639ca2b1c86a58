//! Object and request ids, and the hasher for maps keyed by server-generated ids.

use rand::RngExt;

pub(crate) const BASE62: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The Fx hash (as in rustc), for maps keyed by server-generated ids (key, user, subscription,
/// scope ids): fast and unkeyed, so never for keys a client chooses (end-user ids, say), where
/// SipHash's keying is what stops collision floods.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

/// `BuildHasher` for [`FxHasher`].
pub type Fx = std::hash::BuildHasherDefault<FxHasher>;

/// A random base62 string of `len` characters from the thread CSPRNG.
pub fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..62usize)] as char)
        .collect()
}

/// A new object id such as `key_4f9XbQ...` (120 bits of randomness).
pub fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 21);
    s.push_str(prefix);
    s.push('_');
    s.push_str(&random_base62(20));
    s
}

/// A request id such as `req_4f9XbQ…` (20 base62 characters). Unique, not secret: drawn from a
/// per-thread SplitMix64 sequence whose seed comes from the CSPRNG once per thread, so the hot
/// path pays a few arithmetic instructions instead of a CSPRNG draw per character.
pub fn request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random::<u64>());
    }
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let (hi, lo) = STATE.with(|st| (next(st), next(st)));
    let mut s = String::with_capacity(24);
    s.push_str("req_");
    // Ten base62 digits from each half (62^10 < 2^64): 119 bits, with 64-bit divisions only.
    for mut n in [hi, lo] {
        for _ in 0..10 {
            s.push(BASE62[(n % 62) as usize] as char);
            n /= 62;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_well_formed_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 24, "{id}");
            assert!(id.starts_with("req_"));
            assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        let other = std::thread::spawn(request_id).join().unwrap();
        assert!(!ids.contains(&other));
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("key");
        assert!(a.starts_with("key_") && a.len() == 24);
        assert_ne!(a, new_id("key"));
    }
}
