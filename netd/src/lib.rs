//! netd: the per-host daemon of cross-host container networking (flannel-compatible).
//!
//! # Layout
//! * [`cli`] — flags (flannel's names, `NETD_*` env vars) and subcommands; [`run`] is the daemon;
//!   [`flannel_args`] — flanneld's one-dash flag forms and `FLANNELD_*` variables.
//! * [`netconf`] — the network config JSON at `<prefix>/config`: defaults and validation
//!   (the daemon's own flags are [`cli::Config`]).
//! * [`subnet`] — subnet keys, record values, record checks, free-subnet choice (pure).
//! * [`kv`] — all KV access, etcd v3 API only; [`embedded`] — the in-process KV member seam.
//! * [`lease`] — acquiring and renewing this host's subnet lease, through the [`store`] seam
//!   (the etcd API, or its in-memory twin in tests).
//! * [`watch`] — list + watch of peer records with re-list and reconnect.
//! * [`peers`] — the peer table: events and reconcile applied to a [`dataplane::Dataplane`].
//! * [`dataplane`] — kernel entries, diffing, and the rtnetlink implementation (VXLAN, routes).
//! * [`subnet_file`], [`masq`] — subnet.env and the nftables masquerade table; [`file_trust`] —
//!   refusing runtime files and directories other users could write.
//! * [`http`], [`metrics`] — `/healthz`, `/readyz`, `/metrics`; [`sd_notify`] — `READY=1` to
//!   systemd (flannel's units are `Type=notify`).
//! * [`overlay`] — the VXLAN device or host-gw set-up, and the record it makes.
//! * [`daemon`] — start-up order and the main loop; [`ctl`] — the operator subcommands;
//!   [`certs`] — `netd certs`, a small CA for TLS test clusters.

pub mod certs;
pub mod cli;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod embedded;
pub mod error;
pub mod flannel_args;
/// Trust checks for runtime files (shared with netd-cni).
pub use hostnet::file_trust;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod kv;
pub mod lease;
pub mod masq;
pub mod metrics;
pub mod netconf;
pub mod overlay;
pub mod peers;
pub mod sd_notify;
pub mod store;
pub mod subnet;
pub mod subnet_file;
pub mod watch;

pub use cli::Config;
pub use daemon::run;
pub use error::{Error, Result};
