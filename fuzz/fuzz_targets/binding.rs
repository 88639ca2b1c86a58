#![no_main]
//! `tollgate::fuzzing::binding` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzzing::binding(data);
});
