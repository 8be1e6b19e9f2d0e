#![no_main]
//! kvstore: see `kvstore::fuzz::raft_log_segment`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::raft_log_segment(data));
