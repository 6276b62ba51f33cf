#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    previewd_github::fuzz_targets::names(data);
});
