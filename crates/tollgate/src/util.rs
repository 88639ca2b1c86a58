//! Small shared helpers: ids, clocks, time formatting, owner-only directories and files.

use rand::RngExt;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

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

/// Milliseconds since the Unix epoch: the store's time format.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC, millisecond precision) for epoch milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            let t = t
                .replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000)
                .ok()?;
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The first and last epoch milliseconds [`rfc3339`] can format: 0000-01-01T00:00:00.000Z and
/// 9999-12-31T23:59:59.999Z (RFC 3339 has four-digit years).
pub const RFC3339_MIN_MS: i64 = -62_167_219_200_000;
pub const RFC3339_MAX_MS: i64 = 253_402_300_799_999;

/// Parses RFC 3339 into epoch milliseconds (sub-millisecond digits round down). An offset can
/// carry a time written in year 0000 or 9999 out of RFC 3339's range once in UTC
/// (`9999-12-31T23:59:59-01:00`): that is `None`, so every parsed instant formats again.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()?;
    (RFC3339_MIN_MS..=RFC3339_MAX_MS)
        .contains(&ms)
        .then_some(ms)
}

/// Serialises an optional epoch-ms timestamp as RFC 3339 or null.
pub fn opt_rfc3339(ms: Option<i64>) -> serde_json::Value {
    ms.map(|m| serde_json::Value::String(rfc3339(m)))
        .unwrap_or(serde_json::Value::Null)
}

/// Creates `dir` and its missing parents readable by the owner only (mode 0700 on Unix):
/// `data_dir` holds the database, the key files and the email outbox.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates `path` empty with mode 0600 unless it exists (an existing file is left untouched).
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The permission bits of `path` when it exists and grants more than `max` (e.g. `0o600`).
pub fn mode_wider_than(path: &std::path::Path, max: u32) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & !max != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, max);
        None
    }
}

/// Logs a warning when `path` exists and grants more than `max`; returns whether it did.
pub fn warn_if_wider(path: &std::path::Path, max: u32) -> bool {
    match mode_wider_than(path, max) {
        Some(mode) => {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                expected = format_args!("{max:04o}"),
                "readable by other local users (it holds password and key hashes or secrets); \
                 restrict it, e.g. chmod {max:o}"
            );
            true
        }
        None => false,
    }
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
    fn rfc3339_round_trips() {
        let ms = 1_763_812_345_678;
        let s = rfc3339(ms);
        assert_eq!(s, "2025-11-22T11:52:25.678Z");
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(
            parse_rfc3339("2025-11-22T12:52:25+01:00"),
            Some(1_763_812_345_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[cfg(unix)]
    #[test]
    fn private_paths_are_owner_only_and_wider_ones_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        create_private_dir(&dir).unwrap();
        for d in [tmp.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", d.display());
        }
        let f = dir.join("f");
        create_private_file(&f).unwrap();
        assert_eq!(mode_wider_than(&f, 0o600), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private_file(&f).unwrap(); // an existing file is left as it is
        assert_eq!(mode_wider_than(&f, 0o600), Some(0o644));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(mode_wider_than(&dir, 0o700), Some(0o755));
        assert_eq!(mode_wider_than(&dir.join("missing"), 0o600), None);
        // The warning names the path and both modes.
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        let warned = tracing::subscriber::with_default(sub, || warn_if_wider(&f, 0o600));
        assert!(warned);
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains("WARN") && out.contains("0644") && out.contains("0600"),
            "{out}"
        );
        assert!(out.contains(&f.display().to_string()), "{out}");
    }

    #[cfg(unix)]
    struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    #[cfg(unix)]
    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rfc3339_refuses_instants_it_cannot_format() {
        // Found by fuzzing: in range as written, year 10000 (or -1) in UTC.
        assert_eq!(parse_rfc3339("9999-12-31T23:59:30-23:50"), None);
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00+00:01"), None);
        for ms in [RFC3339_MIN_MS, RFC3339_MAX_MS, -1, 0] {
            let s = rfc3339(ms);
            assert!(!s.is_empty(), "{ms}");
            assert_eq!(parse_rfc3339(&s), Some(ms), "{s}");
        }
        assert_eq!(rfc3339(RFC3339_MAX_MS + 1), "");
        assert_eq!(rfc3339(RFC3339_MIN_MS - 1), "");
        // Sub-millisecond digits round down, before the epoch too.
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.9995Z"), Some(-1));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.0005Z"), Some(0));
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("key");
        assert!(a.starts_with("key_") && a.len() == 24);
        assert_ne!(a, new_id("key"));
    }
}
