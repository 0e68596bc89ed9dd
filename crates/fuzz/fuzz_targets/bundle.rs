#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealserve_fuzz::checks::bundle(data));
