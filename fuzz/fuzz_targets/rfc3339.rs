#![no_main]
//! `tollgate::fuzzing::rfc3339` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::rfc3339(data);
});
