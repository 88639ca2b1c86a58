#![no_main]
//! `tollgate::fuzzing::scopes` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::scopes(data);
});
