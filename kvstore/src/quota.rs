//! The backend quota (etcd's `--quota-backend-bytes`): how much the member's backend may
//! hold before it refuses what would grow it, and the NOSPACE alarm it raises.
//!
//! As etcd 3.4 (`etcdserver/quota.go`, `api/v3rpc/quota.go`): 0 means the 2 GiB default, a
//! negative value turns the quota off, a quota above 8 GiB is taken with a warning. A Put,
//! a Txn and a LeaseGrant each have a cost (a put: 256 bytes of overhead + its key + its
//! value; a txn: the larger of its success and failure branches' top-level puts; a lease
//! grant: 64 bytes); a request of cost 0 always passes. The member that receives a request
//! checks it before proposing it: when the backend's size plus the cost is not below the
//! quota, it proposes an alarm ACTIVATE NOSPACE with its own member id and answers
//! `etcdserver: mvcc: database space exceeded`. From then on every member refuses those
//! requests while the alarm is listed ([`crate::alarm`]), whatever its own size, until an
//! operator makes room (compact, defrag) and disarms it.
//!
//! The backend's size is sled's `size_on_disk` (the data file and its blobs; what `Status`
//! reports as `dbSize`), read at most every [`SIZE_REFRESH`]: etcd's own size is updated by
//! its backend commits, every 100 ms.
//!
//! Two differences from etcd 3.4: etcd also checks at apply on every member (its quota
//! applier), applying the write and answering it with the same error when that member's
//! backend is over; here only the receiving member checks. And etcd proposes the ACTIVATE for
//! every request it refuses; here a member whose NOSPACE alarm is already listed does not
//! propose it again (the list and the answer are the same).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmType, PutRequest, RequestOp, TxnRequest, alarm_request::AlarmAction,
    request_op,
};
use crate::replica::Replica;

/// etcd's `DefaultQuotaBytes`: the quota when the flag is 0.
pub const DEFAULT_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// etcd's `MaxQuotaBytes`: a larger quota is taken, with a warning at start.
pub const MAX_BYTES: i64 = 8 * 1024 * 1024 * 1024;
/// etcd's estimate of what storing a lease costs.
pub const LEASE_OVERHEAD: u64 = 64;
/// etcd's estimate of what a key's metadata costs.
pub const KV_OVERHEAD: u64 = 256;
/// How long a size read from the backend is used before it is read again.
pub const SIZE_REFRESH: Duration = Duration::from_millis(100);

/// The member's quota: its limit and the backend size it last read.
#[derive(Debug)]
pub struct Quota {
    /// The limit in bytes; `None`: no quota (the flag was negative).
    limit: Option<u64>,
    /// The backend size last read, and when.
    size: AtomicU64,
    read_at: Mutex<Option<Instant>>,
}

impl Quota {
    /// The quota `--quota-backend-bytes` asks for, logged as etcd logs it (the warning above
    /// 8 GiB included).
    pub fn from_flag(bytes: i64) -> Quota {
        let limit = match bytes {
            b if b < 0 => {
                tracing::info!(quota_size_bytes = b, "disabled backend quota");
                None
            }
            0 => {
                tracing::info!(
                    quota_size_bytes = DEFAULT_BYTES,
                    quota_size = %human(DEFAULT_BYTES),
                    "enabled backend quota with default value"
                );
                Some(DEFAULT_BYTES as u64)
            }
            b => {
                if b > MAX_BYTES {
                    tracing::warn!(
                        quota_size_bytes = b,
                        quota_size = %human(b),
                        quota_maximum_size_bytes = MAX_BYTES,
                        quota_maximum_size = %human(MAX_BYTES),
                        "quota exceeds the maximum value"
                    );
                }
                tracing::info!(quota_size_bytes = b, quota_size = %human(b), "enabled backend quota");
                Some(b as u64)
            }
        };
        Quota {
            limit,
            size: AtomicU64::new(0),
            read_at: Mutex::new(None),
        }
    }

    /// What `etcd_server_quota_backend_bytes` shows: the quota in force, or the negative
    /// flag when there is none (etcd's gauge).
    pub fn metric(flag: i64) -> i64 {
        if flag == 0 { DEFAULT_BYTES } else { flag }
    }

    /// Whether a request costing `cost` fits: etcd's `backendQuota.Available` (a request of
    /// cost 0 always fits; otherwise size + cost must stay below the quota). `size` reads
    /// the backend's size when the last read is older than [`SIZE_REFRESH`].
    pub fn available(&self, cost: u64, size: impl FnOnce() -> u64) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if cost == 0 {
            return true;
        }
        self.size(size).saturating_add(cost) < limit
    }

    fn size(&self, read: impl FnOnce() -> u64) -> u64 {
        let mut at = self.read_at.lock();
        if at.is_none_or(|t| t.elapsed() >= SIZE_REFRESH) {
            self.size.store(read(), Ordering::Relaxed);
            *at = Some(Instant::now());
        }
        self.size.load(Ordering::Relaxed)
    }
}

/// etcd's `costPut`.
pub fn cost_put(r: &PutRequest) -> u64 {
    KV_OVERHEAD + r.key.len() as u64 + r.value.len() as u64
}

/// etcd's `costTxn`: the dearer branch, counting its top-level puts only.
pub fn cost_txn(r: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => cost_put(p),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

impl Replica {
    /// etcd's `quotaAlarmer.check`: a request costing `cost` that does not fit raises NOSPACE
    /// for this member (proposed and applied before the answer; a failure to raise it is
    /// logged) and is refused with `etcdserver: mvcc: database space exceeded`.
    pub async fn check_quota(&self, cost: u64) -> Result<()> {
        if self.quota.available(cost, || self.backend.size_on_disk()) {
            return Ok(());
        }
        let raised = self
            .alarms()
            .iter()
            .any(|a| a.member_id == self.member_id && a.alarm == AlarmType::Nospace as i32);
        if !raised {
            tracing::warn!(
                backend_size = self.backend.size_on_disk(),
                cost,
                "backend quota exceeded; raising NOSPACE"
            );
            let req = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            if let Err(e) = self.alarm(req).await {
                tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
            }
        }
        Err(Error::NoSpace)
    }
}

/// Bytes as etcd's logs show them (go-humanize's SI units: "2.1 GB").
fn human(bytes: i64) -> String {
    let b = bytes as f64;
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", units[i])
    } else {
        format!("{v:.0} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize) -> PutRequest {
        PutRequest {
            key: key.to_string().into(),
            value: vec![b'x'; value_len].into(),
            ..Default::default()
        }
    }

    fn op(p: PutRequest) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        }
    }

    #[test]
    fn costs_as_etcd_counts_them() {
        assert_eq!(cost_put(&put("k", 10)), 256 + 1 + 10);
        let txn = TxnRequest {
            compare: Vec::new(),
            success: vec![op(put("a", 100)), op(put("b", 100))],
            failure: vec![op(put("c", 300))],
        };
        // The dearer branch: 2 * 357 against 557.
        assert_eq!(cost_txn(&txn), 714);
        // Nested txns are not looked into.
        let nested = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(txn)),
            }],
            ..Default::default()
        };
        assert_eq!(cost_txn(&nested), 0);
    }

    #[test]
    fn zero_is_the_default_and_negative_turns_it_off() {
        let q = Quota::from_flag(0);
        assert_eq!(q.limit, Some(DEFAULT_BYTES as u64));
        assert!(q.available(100, || DEFAULT_BYTES as u64 - 101));
        let q = Quota::from_flag(0);
        assert!(!q.available(100, || DEFAULT_BYTES as u64 - 100));
        let off = Quota::from_flag(-1);
        assert!(off.available(u64::MAX, || u64::MAX));
        assert_eq!(Quota::metric(0), DEFAULT_BYTES);
        assert_eq!(Quota::metric(-5), -5);
        assert_eq!(Quota::metric(1 << 20), 1 << 20);
    }

    #[test]
    fn a_request_of_no_cost_always_fits_and_the_size_is_cached() {
        let q = Quota::from_flag(1000);
        assert!(q.available(0, || 5000));
        assert!(!q.available(1, || 999));
        // Read again only after SIZE_REFRESH.
        assert!(!q.available(1, || 0));
        std::thread::sleep(SIZE_REFRESH);
        assert!(q.available(1, || 0));
        assert_eq!(human(DEFAULT_BYTES), "2.1 GB");
        assert_eq!(human(MAX_BYTES), "8.6 GB");
    }
}
