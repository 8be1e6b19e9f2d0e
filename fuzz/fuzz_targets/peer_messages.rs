#![no_main]
//! kvstore: see `kvstore::fuzz::peer_messages`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::peer_messages(data));
