#![no_main]
//! See `eskv_fuzz::tuple_unpack`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| eskv_fuzz::tuple_unpack(data));
