#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| banter_fuzz::config(data));
