#![no_main]
//! kvstore: see `kvstore::fuzz::client_requests`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::client_requests(data));
