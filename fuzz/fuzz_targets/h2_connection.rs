#![no_main]
//! kvstore: see `kvstore::fuzz::h2_connection`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::h2_connection(data));
