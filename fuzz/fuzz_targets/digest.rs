//! libFuzzer target: `regcache::fuzz::digest` (see src/fuzz.rs for what it
//! checks). Never run in CI, which runs the committed corpus instead.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz::digest(data));
