#![no_main]
//! `tollgate::fuzzing::jwt_classify` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::jwt_classify(data);
});
