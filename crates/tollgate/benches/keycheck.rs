//! Micro-benchmark of the API key check on the hot path, side by side with its parts.
//!
//! `cargo bench -p tollgate --bench keycheck`
//!
//! - `format_only`: shape + CRC32 checksum (what a typo costs);
//! - `sha256_only`: hashing the key (the floor of any hash-at-rest design);
//! - `warm_cached_check`: checksum + hash + cache lookup + status check;
//! - `warm_full_verify`: the whole verifier as a request runs it, including registering the
//!   request for in-flight revocation and recording last use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use futures_util::FutureExt;
use sha2::Digest;
use tollgate::auth::{Auth, RawCredential};
use tollgate_core::apikey;

struct Fixture {
    auth: Auth,
    key: String,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let (auth, key) = rt.block_on(async {
            let store = tollgate::store::Store::connect(&url).await.unwrap();
            let out = tollgate::bootstrap::init(&store, "tgk", "bench@example.com", "bench", None)
                .await
                .unwrap();
            let auth = Auth::new(
                store,
                "tgk".into(),
                "http://127.0.0.1".into(),
                std::time::Duration::from_secs(3600),
            );
            auth.verify(RawCredential::ApiKey(&out.api_key))
                .await
                .unwrap();
            (auth, out.api_key)
        });
        Fixture {
            auth,
            key,
            _rt: rt,
            _dir: dir,
        }
    })
}

#[divan::bench]
fn format_only(b: divan::Bencher) {
    let f = fixture();
    b.bench(|| apikey::verify_format(divan::black_box(&f.key), "tgk"));
}

#[divan::bench]
fn sha256_only(b: divan::Bencher) {
    let f = fixture();
    b.bench(|| sha2::Sha256::digest(divan::black_box(f.key.as_bytes())));
}

#[divan::bench]
fn warm_cached_check(b: divan::Bencher) {
    let f = fixture();
    b.bench(|| {
        f.auth
            .check_key_cached(divan::black_box(&f.key))
            .unwrap()
            .unwrap()
    });
}

#[divan::bench]
fn warm_full_verify(b: divan::Bencher) {
    let f = fixture();
    b.bench(|| {
        // Warm path: never awaits, so one poll completes it.
        f.auth
            .verify(RawCredential::ApiKey(divan::black_box(&f.key)))
            .now_or_never()
            .unwrap()
            .unwrap()
    });
}

fn main() {
    divan::main();
}
