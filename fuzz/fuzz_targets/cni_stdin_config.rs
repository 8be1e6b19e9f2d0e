#![no_main]
//! netd-cni: see `netd_cni::fuzz::stdin_config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| netd_cni::fuzz::stdin_config(data));
