#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voicegate_fuzz::targets::sip_message(data));
