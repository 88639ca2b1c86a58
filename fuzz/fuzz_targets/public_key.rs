#![no_main]
//! `tollgate::fuzzing::public_key` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("public_key", data) {
        return;
    }
    tollgate::fuzzing::public_key(data);
});
