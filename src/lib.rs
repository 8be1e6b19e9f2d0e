//! The netd project's root package: it owns the cross-crate examples (`examples/`) and the
//! end-to-end tests (`tests/`) that build multi-host worlds in network namespaces.
//!
//! Layout of the shared end-to-end harness:
//! - [`world`]: hosts in namespaces on an underlay bridge, each running the real `netd`
//!   (host 1 with the embedded KV member), containers attached through `netd-cni`; all removed
//!   on drop.
//! - [`cni`]: invoking `netd-cni` exactly as a container runtime does.
//! - [`traffic`]: verified TCP traffic between namespaces (echo, long-lived paced stream).
//! - [`netns`]: creating, deleting and entering named network namespaces; a probe from one.
//! - [`probe`]: an ICMP echo written in Rust (no `ping` binary needed).
//! - [`binaries`]: building and finding the `netd` and `netd-cni` binaries.
//! - [`cmd`]: running external tools with their stderr in the error.
pub use kvstore;
pub use netd;

pub mod binaries;
pub mod cmd;
pub mod cni;
pub mod netns;
pub mod probe;
pub mod traffic;
pub mod world;
