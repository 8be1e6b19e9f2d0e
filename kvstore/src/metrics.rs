//! A member's metrics, as etcd 3.4 names and shapes them, and the `/metrics` page made of
//! them (served on `--listen-metrics-urls` and the client port, see `http`).
//!
//! What is exported is what etcd's alerting rules and its Grafana dashboard read (the list,
//! and what differs from etcd, is in `docs/kvstore.md`): leader and proposal state, the WAL
//! fsync and backend commit latencies with etcd's buckets, database size, MVCC operation
//! counts, watchers, leases, per-peer traffic and round-trip time, gRPC calls by method and
//! code, and the process metrics.
//!
//! One [`Metrics`] per member, owned by its [`crate::node::Shared`] (no global registry).
//! Counters that events move are atomics bumped where the event happens ([`prom`]); values
//! the member already keeps (raft indexes, revision, database size, member list) are read
//! when the page is rendered. Submodules: [`prom`] (primitives and the text format),
//! [`peer`] (per-peer families), [`grpc`] (the gRPC layer and its families), [`process`]
//! (`/proc`).

pub mod grpc;
pub mod peer;
pub mod process;
pub mod prom;

use std::time::Duration;

use prom::{Counter, Gauge, Histogram, Text};

use crate::apply::Applied;
use crate::proto::etcdserverpb::response_op::Response as Op;
use crate::proto::kvstorepb::internal_request::Request;
use crate::replica::Replica;

pub use grpc::GrpcLayer;

/// An apply slower than this counts in `etcd_server_slow_apply_total` (etcd's
/// `warnApplyDuration`).
pub const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Raft and server state (`etcd_server_*`) that events move.
#[derive(Debug)]
pub struct Server {
    pub leader_changes: Counter,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub heartbeat_send_failures: Counter,
    pub slow_apply: Counter,
    pub slow_read_indexes: Counter,
    pub read_indexes_failed: Counter,
    /// Times this member, a follower, found its leader's peer port refusing connections and
    /// stopped waiting out the leader's lease (kvstore's own; etcd has no such shortcut).
    pub leader_gone: Counter,
    pub snapshot_apply_in_progress: Gauge,
    /// The backend quota in bytes; negative: none is enforced (etcd's meaning).
    pub quota_backend_bytes: Gauge,
}

/// Disk latencies and volumes (`etcd_disk_*`).
#[derive(Debug)]
pub struct Disk {
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub wal_write_bytes: Counter,
}

/// Keyspace operations and watchers (`etcd_mvcc_*`, `etcd_debugging_mvcc_*`).
#[derive(Debug)]
pub struct Mvcc {
    pub put: Counter,
    pub delete: Counter,
    pub range: Counter,
    pub txn: Counter,
    pub put_bytes: Counter,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub slow_watchers: Gauge,
    pub events: Counter,
    pub index_compaction_pause_ms: Histogram,
}

/// Leases (`etcd_debugging_lease_*`).
#[derive(Debug)]
pub struct Lease {
    pub granted: Counter,
    pub revoked: Counter,
    pub renewed: Counter,
    pub expired: Counter,
    pub ttl: Histogram,
}

/// Everything a member counts.
pub struct Metrics {
    pub server: Server,
    pub disk: Disk,
    pub mvcc: Mvcc,
    pub lease: Lease,
    pub peers: peer::Peers,
    pub grpc: grpc::Grpc,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let quota = Gauge::default();
        quota.set(-1);
        Metrics {
            server: Server {
                leader_changes: Counter::default(),
                proposals_pending: Gauge::default(),
                proposals_failed: Counter::default(),
                heartbeat_send_failures: Counter::default(),
                slow_apply: Counter::default(),
                slow_read_indexes: Counter::default(),
                read_indexes_failed: Counter::default(),
                leader_gone: Counter::default(),
                snapshot_apply_in_progress: Gauge::default(),
                quota_backend_bytes: quota,
            },
            disk: Disk {
                wal_fsync: Histogram::exponential(0.001, 2.0, 14),
                backend_commit: Histogram::exponential(0.001, 2.0, 14),
                wal_write_bytes: Counter::default(),
            },
            mvcc: Mvcc {
                put: Counter::default(),
                delete: Counter::default(),
                range: Counter::default(),
                txn: Counter::default(),
                put_bytes: Counter::default(),
                watch_streams: Gauge::default(),
                watchers: Gauge::default(),
                slow_watchers: Gauge::default(),
                events: Counter::default(),
                index_compaction_pause_ms: Histogram::exponential(0.5, 2.0, 14),
            },
            lease: Lease {
                granted: Counter::default(),
                revoked: Counter::default(),
                renewed: Counter::default(),
                expired: Counter::default(),
                ttl: Histogram::exponential(1.0, 2.0, 24),
            },
            peers: peer::Peers::default(),
            grpc: grpc::Grpc::default(),
        }
    }

    /// Counts one applied request (`req`, answered `res`, applied in `took`) as etcd's
    /// apply and MVCC layers count it: the keyspace operations it did (a transaction's
    /// branch that ran, each range, put and delete-range; a transaction of more than one
    /// operation in `txn_total`), leases granted and revoked, compaction pauses, slow applies.
    pub fn applied(&self, req: &Request, res: &crate::Result<Applied>, took: Duration) {
        if took > SLOW_APPLY {
            self.server.slow_apply.inc();
        }
        let Ok(res) = res else { return };
        match (req, res) {
            (Request::Put(p), Applied::Put(_)) => {
                self.mvcc.put.inc();
                self.mvcc
                    .put_bytes
                    .add((p.key.len() + p.value.len()) as u64);
            }
            (Request::DeleteRange(_), Applied::DeleteRange(_)) => self.mvcc.delete.inc(),
            (Request::Txn(_), Applied::Txn(t)) => {
                let mut ops = OpCount::default();
                ops.add(&t.responses);
                self.mvcc.range.add(ops.range);
                self.mvcc.put.add(ops.put);
                self.mvcc.delete.add(ops.delete);
                if ops.range + ops.put + ops.delete > 1 {
                    self.mvcc.txn.inc();
                }
            }
            (Request::Compaction(_), Applied::Compact(_)) => self
                .mvcc
                .index_compaction_pause_ms
                .observe(took.as_secs_f64() * 1000.0),
            (Request::LeaseGrant(g), Applied::LeaseGrant(_)) => {
                self.lease.granted.inc();
                self.lease.ttl.observe(g.ttl as f64);
            }
            (Request::LeaseRevoke(_), Applied::LeaseRevoke(_)) => self.lease.revoked.inc(),
            _ => {}
        }
    }
}

/// Keyspace operations a transaction's responses show.
#[derive(Default)]
struct OpCount {
    range: u64,
    put: u64,
    delete: u64,
}

impl OpCount {
    fn add(&mut self, ops: &[crate::proto::etcdserverpb::ResponseOp]) {
        for op in ops {
            match &op.response {
                Some(Op::ResponseRange(_)) => self.range += 1,
                Some(Op::ResponsePut(_)) => self.put += 1,
                Some(Op::ResponseDeleteRange(_)) => self.delete += 1,
                Some(Op::ResponseTxn(t)) => self.add(&t.responses),
                None => {}
            }
        }
    }
}

/// Counts one in a gauge of `metrics` (a watcher, a watch stream) for as long as it lives.
pub struct Held {
    metrics: std::sync::Arc<Metrics>,
    gauge: fn(&Metrics) -> &Gauge,
}

impl Held {
    pub fn new(metrics: std::sync::Arc<Metrics>, gauge: fn(&Metrics) -> &Gauge) -> Held {
        gauge(&metrics).add(1);
        Held { metrics, gauge }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).add(-1);
    }
}

impl Replica {
    /// This member's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

/// The `/metrics` page of `member`, in Prometheus text format 0.0.4.
pub fn render(member: &Replica) -> String {
    let m = member.metrics();
    let mut out = Text::default();
    server(member, &mut out);
    keyspace(member, &mut out);
    disk(m, &mut out);
    leases(m, &mut out);
    m.peers.render(&mut out);
    m.grpc.render(&mut out);
    process::render(&mut out);
    out.finish()
}

fn server(member: &Replica, out: &mut Text) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = member.metrics();
    let s = member.status();
    let leader = s.leader.load(Relaxed);
    let is_learner = member
        .state()
        .read()
        .members
        .get(member.member_id)
        .is_some_and(|me| me.is_learner);
    let flag = |b: bool| f64::from(u8::from(b));
    out.gauge(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        flag(leader != 0),
    );
    out.gauge(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        flag(leader != 0 && leader == member.member_id),
    );
    out.gauge(
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        flag(is_learner),
    );
    out.counter(
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        m.server.leader_changes.get() as f64,
    );
    // etcd exports these two as gauges set to raft's commit and apply indexes.
    out.gauge(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        s.commit.load(Relaxed) as f64,
    );
    out.gauge(
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        s.applied.load(Relaxed) as f64,
    );
    out.gauge(
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        m.server.proposals_pending.get() as f64,
    );
    let counters: [(&str, &str, &Counter); 6] = [
        (
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            &m.server.proposals_failed,
        ),
        (
            "etcd_server_heartbeat_send_failures_total",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            &m.server.heartbeat_send_failures,
        ),
        (
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            &m.server.slow_apply,
        ),
        (
            "etcd_server_slow_read_indexes_total",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            &m.server.slow_read_indexes,
        ),
        (
            "etcd_server_read_indexes_failed_total",
            "The total number of failed read indexes seen.",
            &m.server.read_indexes_failed,
        ),
        (
            "kvstore_server_leader_gone_total",
            "The total number of times this follower found its leader's peer port refusing connections and stopped waiting out the leader's lease.",
            &m.server.leader_gone,
        ),
    ];
    for (name, help, c) in counters {
        out.counter(name, help, c.get() as f64);
    }
    out.gauge(
        "etcd_server_snapshot_apply_in_progress_total",
        "1 if the server is applying the incoming snapshot. 0 if none.",
        m.server.snapshot_apply_in_progress.get() as f64,
    );
    out.gauge(
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        m.server.quota_backend_bytes.get() as f64,
    );
    let id = format!("{:x}", member.member_id);
    out.family(
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    )
    .sample("etcd_server_id", &[("server_id", &id)], 1.0);
    let version = crate::version::ETCD_SERVER;
    out.family(
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    )
    .sample("etcd_server_version", &[("server_version", version)], 1.0);
    // etcd labels its cluster version major.minor.
    let cluster = crate::version::ETCD_CLUSTER
        .rsplit_once('.')
        .map_or(crate::version::ETCD_CLUSTER, |(mm, _)| mm);
    out.family(
        "etcd_cluster_version",
        "gauge",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
    )
    .sample("etcd_cluster_version", &[("cluster_version", cluster)], 1.0);
    out.family(
        "kvstore_server_version",
        "gauge",
        "Which kvstore version is running (server_version), and which etcd release it answers as (etcd_version).",
    )
    .sample(
        "kvstore_server_version",
        &[
            ("server_version", crate::version::KVSTORE),
            ("etcd_version", version),
        ],
        1.0,
    );
}

fn keyspace(member: &Replica, out: &mut Text) {
    let m = &member.metrics().mvcc;
    let (revision, compacted, keys, in_use) = {
        let sm = member.state().read();
        (
            sm.mvcc.current_revision(),
            sm.mvcc.compact_revision(),
            sm.mvcc.live_keys(),
            sm.mvcc.stored_bytes(),
        )
    };
    let size = member.backend.size_on_disk() as f64;
    for name in [
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_db_total_size_in_bytes",
    ] {
        out.gauge(
            name,
            "Total size of the underlying database physically allocated in bytes.",
            size,
        );
    }
    out.gauge(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        in_use as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_keys_total",
        "Total number of keys.",
        keys as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        revision as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        compacted as f64,
    );
    // etcd 3.4 exports each operation count twice, under etcd_mvcc_ and etcd_debugging_mvcc_.
    let ops: [(&str, &str, &Counter); 4] = [
        (
            "put_total",
            "Total number of puts seen by this member.",
            &m.put,
        ),
        (
            "delete_total",
            "Total number of deletes seen by this member.",
            &m.delete,
        ),
        (
            "range_total",
            "Total number of ranges seen by this member.",
            &m.range,
        ),
        (
            "txn_total",
            "Total number of txns seen by this member.",
            &m.txn,
        ),
    ];
    for (suffix, help, c) in ops {
        for prefix in ["etcd_mvcc_", "etcd_debugging_mvcc_"] {
            out.counter(&format!("{prefix}{suffix}"), help, c.get() as f64);
        }
    }
    out.gauge(
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "The total size of put kv pairs seen by this member.",
        m.put_bytes.get() as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_watch_stream_total",
        "Total number of watch streams.",
        m.watch_streams.get() as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers.",
        m.watchers.get() as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_slow_watcher_total",
        "Total number of unsynced slow watchers.",
        m.slow_watchers.get() as f64,
    );
    out.counter(
        "etcd_debugging_mvcc_events_total",
        "Total number of events sent by this member.",
        m.events.get() as f64,
    );
    out.histogram_family(
        "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds",
        "Bucketed histogram of index compaction pause duration.",
        &m.index_compaction_pause_ms,
    );
}

fn disk(m: &Metrics, out: &mut Text) {
    out.histogram_family(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &m.disk.wal_fsync,
    );
    out.histogram_family(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &m.disk.backend_commit,
    );
    // A gauge in etcd 3.4, though it only grows.
    out.gauge(
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL.",
        m.disk.wal_write_bytes.get() as f64,
    );
}

fn leases(m: &Metrics, out: &mut Text) {
    let l = &m.lease;
    let counters: [(&str, &str, &Counter); 4] = [
        (
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            &l.granted,
        ),
        (
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            &l.revoked,
        ),
        (
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
            &l.renewed,
        ),
        (
            "etcd_debugging_server_lease_expired_total",
            "The total number of expired leases.",
            &l.expired,
        ),
    ];
    for (name, help, c) in counters {
        out.counter(name, help, c.get() as f64);
    }
    out.histogram_family(
        "etcd_debugging_lease_ttl_total",
        "Bucketed histogram of lease TTLs.",
        &l.ttl,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{
        PutRequest, PutResponse, ResponseOp, TxnRequest, TxnResponse,
    };

    #[test]
    fn applied_requests_count_as_etcd_counts_them() {
        let m = Metrics::new();
        let put = Request::Put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"vv".to_vec().into(),
            ..Default::default()
        });
        m.applied(
            &put,
            &Ok(Applied::Put(PutResponse::default())),
            Duration::ZERO,
        );
        let op = |r| ResponseOp { response: Some(r) };
        let txn = TxnResponse {
            responses: vec![
                op(Op::ResponseRange(Default::default())),
                op(Op::ResponsePut(Default::default())),
                op(Op::ResponseTxn(TxnResponse {
                    responses: vec![op(Op::ResponseDeleteRange(Default::default()))],
                    ..Default::default()
                })),
            ],
            ..Default::default()
        };
        m.applied(
            &Request::Txn(TxnRequest::default()),
            &Ok(Applied::Txn(txn)),
            SLOW_APPLY * 2,
        );
        m.applied(&put, &Err(crate::Error::NoSpace), Duration::ZERO);
        assert_eq!(m.mvcc.put.get(), 2);
        assert_eq!(m.mvcc.put_bytes.get(), 3);
        assert_eq!(m.mvcc.range.get(), 1);
        assert_eq!(m.mvcc.delete.get(), 1);
        assert_eq!(m.mvcc.txn.get(), 1);
        assert_eq!(m.server.slow_apply.get(), 1);
    }
}
