#![no_main]
//! `tollgate::fuzzing::jws_claims` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("jws_claims", data) {
        return;
    }
    tollgate::fuzzing::jws_claims(data);
});
