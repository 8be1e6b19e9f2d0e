#![no_main]
//! kvstore: see `kvstore::fuzz::wal_segment`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::wal_segment(data));
