//! The netd project's root package: it owns the cross-crate examples (`examples/`: the demo,
//! the throughput benchmark) and the end-to-end tests (`tests/`) that build multi-host worlds in
//! network namespaces with [`testbed`].
pub use kvstore;
pub use netd;
pub use testbed;
