#![no_main]
//! `tollgate::fuzzing::auth_extract` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::auth_extract(data);
});
