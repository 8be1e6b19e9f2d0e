//! The netd project's root package: it owns the cross-crate examples (`examples/`)
//! and the end-to-end tests (`tests/`) that build multi-host worlds in network namespaces.
pub use kvstore;
pub use netd;
