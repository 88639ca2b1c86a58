//! The fuzz corpus and every crash input found by fuzzing, replayed through the same harness
//! functions the fuzz targets call (`tollgate::fuzzing`), so CI guards them without a fuzzer.
//!
//! `fuzz/corpus/<target>/` holds each target's minimised corpus; `fuzz/artifacts/<target>/`
//! the inputs that crashed it once (kept after the fix, as regression inputs).

use std::path::{Path, PathBuf};

use tollgate::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one input, naming it if the harness panics.
fn replay(target: &str, run: fn(&[u8]), file: &Path) {
    let data = std::fs::read(file).unwrap();
    if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("fuzz target {target} fails on {}: {msg}", file.display());
    }
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_binary() {
    let fuzz = fuzz_dir();
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (target, _) in TARGETS {
        assert!(
            !inputs(&fuzz.join("corpus").join(target)).is_empty(),
            "fuzz/corpus/{target} is empty"
        );
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{target}.rs is missing"
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
}

#[test]
fn corpus_inputs_replay_cleanly() {
    let fuzz = fuzz_dir();
    let mut n = 0;
    for (target, run) in TARGETS {
        for file in inputs(&fuzz.join("corpus").join(target)) {
            replay(target, *run, &file);
            n += 1;
        }
    }
    assert!(n > 0);
}

#[test]
fn crash_inputs_stay_fixed() {
    let fuzz = fuzz_dir();
    for (target, run) in TARGETS {
        for file in inputs(&fuzz.join("artifacts").join(target)) {
            replay(target, *run, &file);
        }
    }
}
