//! Host-side code netd and netd-cni share, so the two can never disagree about it. It is
//! synchronous and pulls in no async runtime: netd-cni starts once per container and must stay
//! small and quick to start.
//!
//! - [`file_trust`]: which runtime files and directories a root process may trust.

pub mod file_trust;
