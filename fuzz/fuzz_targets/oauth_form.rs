#![no_main]
//! `tollgate::fuzzing::oauth_form` under libFuzzer (see that function for the input format).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if tollgate::fuzzing::pending::skips("oauth_form", data) {
        return;
    }
    tollgate::fuzzing::oauth_form(data);
});
