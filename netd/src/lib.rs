//! netd: the per-host daemon that leases a container subnet from the KV store
//! and programs routes to the other hosts' subnets.
//!
//! The daemon is built in its own issue; this crate holds its place in the workspace.
