#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bdev_pov::fuzz::pov_device(data));
