#![no_main]
//! `tollgate::fuzzing::apikey` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("apikey", data) {
        return;
    }
    tollgate::fuzzing::apikey(data);
});
