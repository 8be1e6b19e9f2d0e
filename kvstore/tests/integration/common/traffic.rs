//! A recorded client of the fault tests: each operation it runs on the etcd v3 API (get,
//! put, compare-and-swap by value or by mod_revision, delete, compare-and-delete, a
//! transaction writing two keys, a put attached to a fresh lease and that lease's revoke) is
//! noted in a `history::Recorder` as invoked just before it is sent and completed as soon as
//! its answer arrives, with its outcome classified for the checker: answered, surely without
//! effect (a read that failed, a request refused before it was sent), or unknown. The
//! revisions of acknowledged writes are noted too, for the watch check.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kvstore::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, compare, kv_client::KvClient, lease_client::LeaseClient, request_op,
    response_op,
};
use tonic::transport::Channel;

use super::history::{Change, Op, Outcome, Recorder, Ret, Value};

/// Whether the request surely never left the client: the connection was refused.
pub fn never_sent(e: &tonic::Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// How a failed write ended: without effect only if it was never sent.
pub fn write_failure(rec: &Recorder, e: &tonic::Status) -> Outcome {
    let outcome = if never_sent(e) {
        Outcome::Failed
    } else {
        Outcome::Unknown
    };
    rec.note_error(format!("write {outcome:?}: {:?} {}", e.code(), e.message()));
    outcome
}

fn text(b: &[u8]) -> Value {
    String::from_utf8_lossy(b).into_owned()
}

fn bytes(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: bytes(k),
            value: bytes(v),
            ..Default::default()
        })),
    }
}

/// Lease TTL: far longer than any run, so a lease goes only by its revoke.
const LEASE_TTL: i64 = 600;

/// One client process: a connection to one member and what it last saw of each key
/// (value and mod_revision), from which it builds its compare-and-swaps. Each operation
/// returns whether it ended in an error.
pub struct Client {
    pub id: usize,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    rec: Arc<Recorder>,
    seen: HashMap<String, (Option<Value>, i64)>,
    writes: u64,
    /// The lease last attached to a key (by `lease_step`), to revoke next.
    held: Option<(String, i64)>,
}

impl Client {
    pub fn new(id: usize, channel: Channel, rec: Arc<Recorder>) -> Client {
        Client {
            id,
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel),
            rec,
            seen: HashMap::new(),
            writes: 0,
            held: None,
        }
    }

    fn fresh_value(&mut self) -> Value {
        self.writes += 1;
        format!("c{}-{}", self.id, self.writes)
    }

    /// A linearizable read.
    pub async fn get(&mut self, k: &str) -> bool {
        let id = self.rec.invoke(self.id, k, Op::Get);
        let r = self
            .kv
            .range(RangeRequest {
                key: bytes(k),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let kv = r.into_inner().kvs.into_iter().next();
                let v = kv.as_ref().map(|kv| text(&kv.value));
                self.rec.complete(id, Outcome::Ok(Ret::GetOk(v.clone())));
                self.seen
                    .insert(k.to_string(), (v, kv.map_or(0, |kv| kv.mod_revision)));
                false
            }
            Err(e) => {
                self.rec
                    .note_error(format!("read: {:?} {}", e.code(), e.message()));
                // A read has no effect: it is dropped from the history.
                self.rec.complete(id, Outcome::Failed);
                true
            }
        }
    }

    pub async fn put(&mut self, k: &str) -> bool {
        self.put_with(k, 0).await
    }

    async fn put_with(&mut self, k: &str, lease: i64) -> bool {
        let v = self.fresh_value();
        let op = if lease == 0 {
            Op::Put(v.clone())
        } else {
            Op::PutLease {
                value: v.clone(),
                lease,
            }
        };
        let id = self.rec.invoke(self.id, k, op);
        let r = self
            .kv
            .put(PutRequest {
                key: bytes(k),
                value: bytes(&v),
                lease,
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                self.rec.complete(id, Outcome::Ok(Ret::PutOk));
                let rev = r.into_inner().header.map_or(0, |h| h.revision);
                self.rec.acked(k, rev, Change::Put(v.clone()));
                self.seen.insert(k.to_string(), (Some(v), rev));
                false
            }
            Err(e) => {
                self.rec.complete(id, write_failure(&self.rec, &e));
                true
            }
        }
    }

    /// The comparison of a compare-and-swap: the key's mod_revision (with `by_revision`)
    /// or value as this client last saw it. mod_revision 0 compares equal for an absent
    /// key; every write writes a distinct value, so the revision a value was seen at names
    /// that value.
    fn expectation(&self, k: &str, by_revision: bool) -> (Option<Value>, Compare) {
        let (expect, rev) = self.seen.get(k).cloned().unwrap_or((None, 0));
        let (target, union) = if by_revision {
            (
                compare::CompareTarget::Mod,
                compare::TargetUnion::ModRevision(rev),
            )
        } else {
            match &expect {
                Some(v) => (
                    compare::CompareTarget::Value,
                    compare::TargetUnion::Value(bytes(v)),
                ),
                None => (
                    compare::CompareTarget::Version,
                    compare::TargetUnion::Version(0),
                ),
            }
        };
        let cmp = Compare {
            result: compare::CompareResult::Equal as i32,
            target: target as i32,
            key: bytes(k),
            target_union: Some(union),
            ..Default::default()
        };
        (expect, cmp)
    }

    /// Compare-and-swap from the last value (or, with `by_revision`, the last
    /// mod_revision) this client saw; on failure the transaction reads the current value.
    pub async fn cas(&mut self, k: &str, by_revision: bool) -> bool {
        let (expect, cmp) = self.expectation(k, by_revision);
        let new = self.fresh_value();
        let op = Op::Cas {
            expect,
            new: new.clone(),
        };
        self.conditional(k, op, cmp, put_op(k, &new), Change::Put(new.clone()))
            .await
    }

    /// Compare-and-delete: a transaction deleting the key if it holds the value this client
    /// last saw; on failure it reads the current value.
    pub async fn cas_delete(&mut self, k: &str) -> bool {
        let (expect, cmp) = self.expectation(k, false);
        let del = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: bytes(k),
                    ..Default::default()
                },
            )),
        };
        self.conditional(k, Op::CasDelete { expect }, cmp, del, Change::Delete)
            .await
    }

    /// A transaction: `then` if `cmp` holds, else a read of `k`.
    async fn conditional(
        &mut self,
        k: &str,
        op: Op,
        cmp: Compare,
        then: RequestOp,
        change: Change,
    ) -> bool {
        let req = TxnRequest {
            compare: vec![cmp],
            success: vec![then],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: bytes(k),
                    ..Default::default()
                })),
            }],
        };
        let id = self.rec.invoke(self.id, k, op);
        let r = match self.kv.txn(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.rec.complete(id, write_failure(&self.rec, &e));
                return true;
            }
        };
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        if r.succeeded {
            self.rec.complete(id, Outcome::Ok(Ret::CasOk));
            let changed = r.responses.iter().any(|op| match &op.response {
                Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted > 0,
                Some(response_op::Response::ResponsePut(_)) => true,
                _ => false,
            });
            if changed {
                self.rec.acked(k, rev, change.clone());
            }
            let now = match change {
                Change::Put(v) => (Some(v), rev),
                Change::Delete => (None, 0),
            };
            self.seen.insert(k.to_string(), now);
            return false;
        }
        let kv = r.responses.into_iter().find_map(|op| match op.response {
            Some(response_op::Response::ResponseRange(rr)) => Some(rr.kvs.into_iter().next()),
            _ => None,
        });
        let Some(kv) = kv else {
            // An answer without the failure branch's read: record it as impossible for the
            // model rather than guess.
            self.rec.complete(
                id,
                Outcome::Ok(Ret::CasFailed(Some("<no range response>".into()))),
            );
            return false;
        };
        let v = kv.as_ref().map(|kv| text(&kv.value));
        self.rec
            .complete(id, Outcome::Ok(Ret::CasFailed(v.clone())));
        self.seen
            .insert(k.to_string(), (v, kv.map_or(0, |kv| kv.mod_revision)));
        false
    }

    /// Deletes the key.
    pub async fn delete(&mut self, k: &str) -> bool {
        let id = self.rec.invoke(self.id, k, Op::Delete);
        let r = self
            .kv
            .delete_range(DeleteRangeRequest {
                key: bytes(k),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                self.rec.complete(id, Outcome::Ok(Ret::Deleted(r.deleted)));
                if r.deleted > 0 {
                    let rev = r.header.map_or(0, |h| h.revision);
                    self.rec.acked(k, rev, Change::Delete);
                }
                self.seen.insert(k.to_string(), (None, 0));
                false
            }
            Err(e) => {
                self.rec.complete(id, write_failure(&self.rec, &e));
                true
            }
        }
    }

    /// One transaction putting `a` and `b` (two keys at one revision), recorded as a put on
    /// each.
    pub async fn pair(&mut self, a: &str, b: &str) -> bool {
        let (va, vb) = (self.fresh_value(), self.fresh_value());
        let ia = self.rec.invoke(self.id, a, Op::Put(va.clone()));
        let ib = self.rec.invoke(self.id, b, Op::Put(vb.clone()));
        let req = TxnRequest {
            success: vec![put_op(a, &va), put_op(b, &vb)],
            ..Default::default()
        };
        match self.kv.txn(req).await {
            Ok(r) => {
                let rev = r.into_inner().header.map_or(0, |h| h.revision);
                for (id, k, v) in [(ia, a, va), (ib, b, vb)] {
                    self.rec.complete(id, Outcome::Ok(Ret::PutOk));
                    self.rec.acked(k, rev, Change::Put(v.clone()));
                    self.seen.insert(k.to_string(), (Some(v), rev));
                }
                false
            }
            Err(e) => {
                let outcome = write_failure(&self.rec, &e);
                self.rec.complete(ia, outcome.clone());
                self.rec.complete(ib, outcome);
                true
            }
        }
    }

    /// Revokes the lease this client last attached to a key, if any; otherwise grants a
    /// fresh lease and puts `k` with it.
    pub async fn lease_step(&mut self, k: &str) -> bool {
        if let Some((key, lease)) = self.held.take() {
            let id = self.rec.invoke(self.id, &key, Op::Revoke(lease));
            return match self
                .lease
                .lease_revoke(LeaseRevokeRequest { id: lease })
                .await
            {
                Ok(_) => {
                    self.rec.complete(id, Outcome::Ok(Ret::Revoked));
                    false
                }
                Err(e) => {
                    self.rec.complete(id, write_failure(&self.rec, &e));
                    true
                }
            };
        }
        let grant = self
            .lease
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL,
                id: 0,
            })
            .await;
        let lease = match grant {
            Ok(r) => r.into_inner().id,
            Err(e) => {
                self.rec
                    .note_error(format!("lease grant: {:?} {}", e.code(), e.message()));
                return true;
            }
        };
        // Revoked next time whatever became of the put: the key may hold it.
        self.held = Some((k.to_string(), lease));
        self.put_with(k, lease).await
    }
}
