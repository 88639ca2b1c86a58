#![no_main]
//! `tollgate::fuzzing::jws_claims` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::jws_claims(data);
});
