#![no_main]
//! netd: see `netd::fuzz::network_config_and_record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzz::network_config_and_record(data));
