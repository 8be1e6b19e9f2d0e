#![no_main]
//! netd-cni: see `netd_cni::fuzz::cni_environment`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| netd_cni::fuzz::cni_environment(data));
