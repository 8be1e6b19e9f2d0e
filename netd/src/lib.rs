//! netd: the per-host daemon that leases a container subnet from the KV store
//! and programs routes to the other hosts' subnets.
pub mod config;
pub mod dataplane;
pub mod error;
pub mod subnet;
