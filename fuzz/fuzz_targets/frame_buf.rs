#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pov_runtime::transport::fuzz::frame_buf(data));
