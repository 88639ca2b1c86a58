#![no_main]
//! `tollgate::fuzzing::scopes` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("scopes", data) {
        return;
    }
    tollgate::fuzzing::scopes(data);
});
