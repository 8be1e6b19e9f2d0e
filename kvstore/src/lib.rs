//! kvstore: a Raft-replicated MVCC key-value store serving the etcd v3 gRPC API.
//!
//! # Layout
//! Layers as etcd's, top to bottom:
//! - [`grpc`]: thin adapters for the KV, Watch, Lease, Cluster and Maintenance services;
//!   the one place errors become gRPC statuses is [`error`]. `gateway`: etcd's HTTP/JSON
//!   gateway on the client port, calling those services in process. `http` answers `/health`,
//!   `/version`, `/metrics` (on `--listen-metrics-urls` and the client port); [`version`]: the
//!   versions reported.
//! - [`metrics`]: what `/metrics` shows, with etcd's metric names, types and buckets, counted
//!   where the work happens.
//! - [`server`]: a running member; [`bootstrap`]: who it is and what it starts from;
//!   [`replica`]: this member's replica of the store, the facade the adapters call (propose and
//!   wait, read barrier, leases).
//! - [`node`]: the raft loop (raft-rs), batching proposals so writers share fsyncs.
//! - [`peer`]: the peer service and transport (raft messages, snapshots, forwarding).
//! - [`compactor`]: automatic compaction (etcd's `--auto-compaction-*`), proposed by the leader.
//! - [`corrupt`]: the corruption checks (etcd's `--experimental-initial-corrupt-check` and
//!   `--experimental-corrupt-check-time`): members' HashKV compared, CORRUPT raised.
//! - [`apply`]: the deterministic state machine applying committed requests.
//! - [`mvcc`]: the multi-version keyspace (its key index in memory, its records in the
//!   backend); [`lease`]: the lease table; [`membership`]:
//!   the replicated member list; [`alarm`]: the replicated alarms and what they refuse;
//!   [`quota`]: the backend quota that raises NOSPACE;
//!   [`snapshot`]: the state machine as one transferable blob.
//! - [`raft_log`] and [`backend`]: raft storage and the state machine on one sled keyspace;
//!   [`history`]: how the keyspace's records sit in it; [`defrag`]: rewriting the backend to
//!   its live data.
//! - [`tls`]: TLS for the client and peer listeners and peer clients (etcd's flags);
//!   [`certs`]: a small CA issuing member and client certificates for tests and small clusters.
//! - [`failpoints`]: the failpoints of the `failpoints` feature, for the robustness tests.
//! - [`client`]: an etcd v3 client (kvstore's or etcd's servers alike) that netd, the tools and
//!   the tests use, from the same generated stubs as the server.
//!
//! Every write, even on a single member, goes through raft; with one voter nothing goes
//! on the network.

/// A failpoint named `$name` (see [`failpoints`]): nothing at all unless the crate is built
/// with the `failpoints` feature.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

pub mod alarm;
pub mod apply;
pub mod auth;
pub mod backend;
pub mod backup;
pub mod bootstrap;
pub mod catch_up;
pub mod certs;
pub mod client;
pub mod compactor;
pub mod config;
pub mod corrupt;
pub mod defrag;
pub mod error;
pub mod failpoints;
#[doc(hidden)]
pub mod fuzz;
mod gateway;
mod grpc;
pub mod history;
mod http;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod peer;
pub mod proto;
pub mod quota;
pub mod raft_log;
pub mod reconfig;
pub mod replica;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod version;
pub mod wal;
mod writer;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{Server, run};
