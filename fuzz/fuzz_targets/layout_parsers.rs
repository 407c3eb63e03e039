#![no_main]
//! See `eskv_fuzz::layout_parsers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| eskv_fuzz::layout_parsers(data));
