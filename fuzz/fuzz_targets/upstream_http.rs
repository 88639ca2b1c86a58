#![no_main]
//! `tollgate::fuzzing::upstream_http` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("upstream_http", data) {
        return;
    }
    tollgate::fuzzing::upstream_http(data);
});
