#![no_main]
//! `tollgate::fuzzing::rfc3339` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("rfc3339", data) {
        return;
    }
    tollgate::fuzzing::rfc3339(data);
});
