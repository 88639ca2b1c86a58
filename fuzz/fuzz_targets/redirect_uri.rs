#![no_main]
//! `tollgate::fuzzing::redirect_uri` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("redirect_uri", data) {
        return;
    }
    tollgate::fuzzing::redirect_uri(data);
});
