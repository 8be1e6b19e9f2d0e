#![no_main]
//! netd-cni: see `netd_cni::fuzz::subnet_env`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| netd_cni::fuzz::subnet_env(data));
