#![no_main]
//! `tollgate::fuzzing::config_toml` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("config_toml", data) {
        return;
    }
    tollgate::fuzzing::config_toml(data);
});
