#![no_main]
//! kvstore: see `kvstore::fuzz::backup_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvstore::fuzz::backup_file(data));
