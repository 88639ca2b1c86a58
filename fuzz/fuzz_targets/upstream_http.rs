#![no_main]
//! `tollgate::fuzzing::upstream_http` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::upstream_http(data);
});
