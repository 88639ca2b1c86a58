#![no_main]
//! `tollgate::fuzzing::redirect_uri` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::redirect_uri(data);
});
