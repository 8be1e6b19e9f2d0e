//! Host-side code netd and netd-cni share, so the two can never disagree about it. It is
//! synchronous and pulls in no async runtime: netd-cni starts once per container and must stay
//! small and quick to start.
//!
//! - [`subnet_env`]: `subnet.env`, the contract between netd and netd-cni.
//! - [`file_trust`]: which runtime files and directories a root process may trust.
//! - [`netns`]: network namespaces, and the one place that enters one.
//! - `netlink` (feature `netlink`): errno kinds, link lookup, addresses, the main table.
//! - `nftables` (feature `netlink`): nf_tables over netlink, batches applied atomically and
//!   the reads that check them; no `nft` process.
//! - [`error`]: the one error type.

pub mod error;
pub mod file_trust;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod netns;
#[cfg(feature = "netlink")]
pub mod nftables;
pub mod subnet_env;

pub use error::{Error, Result};
