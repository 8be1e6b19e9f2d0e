//! netd-cni's integration tests, one binary (one link for all of them): the real plugin binary
//! run the way a container runtime runs it, in namespaces the tests create (`common`).

mod common;

mod chaining;
mod conflists;
mod dual_stack;
mod errors;
mod file_trust;
mod lifecycle;
mod masquerade;
mod parallel;
mod versions;
