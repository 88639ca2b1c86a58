#![no_main]
//! `tollgate::fuzzing::auth_extract` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("auth_extract", data) {
        return;
    }
    tollgate::fuzzing::auth_extract(data);
});
