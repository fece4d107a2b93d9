#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pov_proto::fuzz::seal(data));
