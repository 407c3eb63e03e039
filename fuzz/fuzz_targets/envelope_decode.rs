#![no_main]
//! See `eskv_fuzz::envelope_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| eskv_fuzz::envelope_decode(data));
