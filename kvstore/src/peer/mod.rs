//! Peer traffic: what members send each other on the peer port (`--listen-peer-urls`).
//!
//! - [`conn`]: the one place peer servers and client channels are built, plain or mutual
//!   TLS (`https://` peer URLs); its `Dialer` carries the peer client TLS to every caller.
//! - [`dial`]: the TCP connections under those channels, which give up on a stalled
//!   connection and redial quickly, so that peers find each other again as soon as a
//!   network fault ends.
//! - [`transport`]: per-peer sender tasks carrying raft messages and streaming snapshots,
//!   fed by the raft thread without ever blocking it.
//! - [`service`]: the `peerpb.Peer` gRPC service receiving them, plus the member list and
//!   the lease requests followers forward to the leader.
//! - [`client`]: calls a member makes to another (joining, lease forwarding).

pub mod client;
pub mod conn;
pub mod dial;
pub mod service;
pub mod transport;

pub use transport::Transport;
