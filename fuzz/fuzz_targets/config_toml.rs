#![no_main]
//! `tollgate::fuzzing::config_toml` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::config_toml(data);
});
