#![no_main]
//! netd: see `netd::fuzz::subnet_env`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzz::subnet_env(data));
