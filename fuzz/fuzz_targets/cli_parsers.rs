#![no_main]
//! See `eskv_fuzz::cli_parsers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| eskv_fuzz::cli_parsers(data));
