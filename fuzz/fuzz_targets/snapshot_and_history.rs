#![no_main]
//! kvstore: see `kvstore::fuzz::snapshot_and_history`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::snapshot_and_history(data));
