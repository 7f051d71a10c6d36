#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voicegate_fuzz::targets::rtp(data));
