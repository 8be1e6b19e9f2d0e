//! The raft node: one OS thread owns the raft `RawNode` and runs [`raft_loop`]; every other
//! module talks to it through what this module defines: [`Msg`] (what a caller asks of the
//! loop), [`Shared`] (the state machine and the raft status the loop publishes), the loop's
//! [`NodeOptions`] and [`RequestIds`] (ids that answer callers).
//!
//! Only the loop's thread mutates the state machine; readers take its lock briefly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use raft::eraftpb::ConfChange;
use tokio::sync::oneshot;

use crate::apply::{Applied, StateMachine};
use crate::error::Result;

mod appends;
mod raft_loop;
mod resend;

pub use appends::raft_config;

pub(crate) use raft_loop::NodeLoop;
/// What callers send to the node loop.
pub enum Msg {
    /// Replicate and apply `req`; answer on `tx` once applied.
    /// `data` is the encoded `InternalRequest` whose id is `id` (encoded by the caller, so
    /// the single raft thread does not).
    /// `proposed` is set once raft has taken it (a leader was known): a request that times
    /// out before that is answered as etcd answers one that never reached a leader.
    Propose {
        id: u64,
        data: Vec<u8>,
        tx: oneshot::Sender<Result<Applied>>,
        proposed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
    /// Propose a membership change whose context carries request id `id`; answer on
    /// `tx` once applied.
    ConfChange {
        id: u64,
        cc: ConfChange,
        tx: oneshot::Sender<Result<Applied>>,
    },
    /// Answer on `tx` once the local state machine reflects every write committed before
    /// this call (ReadIndex): the barrier linearizable reads wait on.
    ReadIndex { tx: oneshot::Sender<Result<()>> },
    /// A raft message from a peer.
    Raft(Box<raft::eraftpb::Message>),
    /// A message to this peer could not be delivered.
    Unreachable(u64),
    /// Connections to this peer are refused: its process is gone (see
    /// [`crate::peer::conn::refused`]).
    PeerGone(u64),
    /// The outcome of streaming a snapshot to a peer.
    SnapshotStatus { to: u64, failed: bool },
    /// A peer refused this member's messages: it was removed from the cluster.
    Removed,
    /// Answer on `tx` which peers this member, as the leader, hears from (not the leader:
    /// "no leader").
    PeerActivity {
        tx: oneshot::Sender<Result<crate::reconfig::Activity>>,
    },
    /// Hand leadership to member `to` (this member being the leader); callers watch
    /// [`RaftStatus::leader`] for the outcome.
    TransferLeader { to: u64 },
    /// If this member leads, hand leadership to its most caught-up peer (a graceful stop).
    HandOffLeadership,
    /// Defragment the backend once every write handed to it so far is written (the backend
    /// writer does it, in its turn); answer on `tx`.
    Defragment {
        tx: oneshot::Sender<Result<crate::defrag::Defragmented>>,
    },
    /// Stop the loop (pending callers get "server stopped").
    Stop,
}
/// Raft status, published by the loop for headers and `Status`.
#[derive(Default)]
pub struct RaftStatus {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub last_index: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// The read index this member can answer a ReadIndex with on its own: nonzero only while
    /// it leads a configuration in which it is the only voter, has committed an entry of its
    /// term and has no membership change pending. raft answers such a leader's ReadIndex
    /// from its commit index with no round trip; published here, a linearizable read skips
    /// the hand-off to the raft thread (see [`crate::replica::Replica::read_barrier`]).
    /// Cleared before this member sends anything (a vote) that could let another lead.
    pub solo_read_index: AtomicU64,
    /// Whether this member is a learner (a non-voting member): it then refuses most client
    /// requests, as etcd's learners do (see `grpc::learner_gate`).
    pub learner: std::sync::atomic::AtomicBool,
    /// When this member last saw a leader elected (a new leader after none or another):
    /// a request that times out tells from it whether the previous leader's failure is the
    /// likely cause (see [`crate::replica::Replica`]'s timeouts).
    pub leader_elected: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// State shared between the node loop and the request handlers.
pub struct Shared {
    pub sm: RwLock<StateMachine>,
    pub status: RaftStatus,
    /// The current revision, published after each apply; watchers wait on it.
    pub revision: tokio::sync::watch::Sender<i64>,
    /// Set when the member stops (shutdown or a fatal storage error); streams end on it.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Set when this member applied its own removal from the cluster.
    pub removed: std::sync::atomic::AtomicBool,
    /// What `/metrics` reports (see [`crate::metrics`]).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub tick: Duration,
    /// Applied entries after which the log is truncated.
    pub snapshot_count: u64,
    /// Entries kept behind the truncation point for slow followers.
    pub catch_up_entries: u64,
    /// How long a read waits for its read index before "request timed out".
    pub read_timeout: Duration,
    /// How often an unanswered ReadIndex is asked again (raft drops them silently, e.g.
    /// while a new leader has not committed in its term yet).
    pub read_retry: Duration,
    /// How long a peer may stay silent and still count as active (the election timeout).
    pub peer_timeout: Duration,
}
/// Generates request ids unique across members and restarts: the member id's low 16 bits,
/// then a counter seeded from the clock.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new(member_id: u64) -> RequestIds {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        RequestIds {
            prefix: (member_id & 0xffff) << 48,
            counter: AtomicU64::new((now << 8) & ((1 << 48) - 1)),
        }
    }

    pub fn next(&self) -> u64 {
        self.prefix | (self.counter.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1))
    }
}
