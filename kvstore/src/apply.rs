//! The state machine: applies committed requests to the keyspace and the lease table,
//! and records what changed in a write batch so the disk copy stays identical.
//!
//! Applying is deterministic: every member applies the same entries to the same state and
//! gets the same answer, errors included (an error leaves the state untouched). An active
//! alarm refuses requests here, before they change anything (see [`crate::alarm`]), and so
//! does a client's missing permission while authentication is on (see [`crate::auth`]).

use bytes::Bytes;
use prost::Message;

use crate::alarm::Alarms;
use crate::auth::{AuthStore, Changed, tokens::Tokens};
use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::membership::Members;
use crate::mvcc::{KeyRange, Mvcc, Rev, WriteTxn};
use crate::proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantResponse, LeaseRevokeResponse, Member, PutRequest, PutResponse, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare, request_op,
    response_op,
};
use crate::proto::kvstorepb::{InternalRequest, StoredLease, internal_request};
use crate::proto::mvccpb::KeyValue;

/// The answer to one applied request (headers carry only the revision until served).
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// A membership change: the member list after it.
    Members(Vec<Member>),
    /// An alarm activated or deactivated (or listed): the alarms it concerned.
    Alarm(AlarmResponse),
    /// An Auth service write; a login's token (empty for the others).
    Auth {
        revision: i64,
        token: String,
    },
    /// An entry with no client request (e.g. a new leader's empty entry).
    Nothing,
}

/// Keyspace + leases + members + alarms + the raft index they reflect.
#[derive(Debug, Default)]
pub struct StateMachine {
    pub mvcc: Mvcc,
    pub lessor: Lessor,
    pub members: Members,
    pub alarms: Alarms,
    /// Users, roles and whether authentication is on.
    pub auth: AuthStore,
    /// This member's login tokens: not replicated state (see [`crate::auth::tokens`]), but
    /// filled as logins are applied.
    pub tokens: Tokens,
    pub applied: u64,
    /// Positions of records a compaction removed from the keyspace that the disk still
    /// holds: deleted [`SWEEP_BATCH`] at a time ([`StateMachine::sweep`]), as etcd deletes
    /// compacted revisions in batches, so one compaction of a large history is neither one
    /// huge write nor a stall of the writes behind it. Readers never see them (the keyspace
    /// reads the disk through its index), and a restart finds them again.
    pub unswept: std::collections::VecDeque<Rev>,
    /// Records swept since `unswept` was last empty.
    pub(crate) swept: usize,
}

/// Compacted records deleted from the disk per batch. sled's memory grows with the deletes
/// in one batch, and glibc keeps the peak: measured on one member, a compaction of 60,000
/// records of 1 KiB took the resident memory from 163 to 560 MB in runs of 4,096, and left it
/// at 155 MB in runs of 512 (every 100 ms when idle: 5,000 records a second).
pub const SWEEP_BATCH: usize = 512;

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

impl StateMachine {
    /// Loads the state machine from disk (a data dir of the older chunked layout is
    /// converted first, see [`crate::history`]).
    pub fn load(backend: &dyn Backend) -> Result<StateMachine> {
        crate::history::migrate_chunks(backend)?;
        let compacted = match backend.get(keys::COMPACTED)? {
            Some(v) => decode_i64(&v)?,
            None => 0,
        };
        let applied = match backend.get(keys::APPLIED)? {
            Some(v) => decode_i64(&v)? as u64,
            None => 0,
        };
        let (mvcc, leftovers) = Mvcc::load(backend.share(), compacted)?;
        let mut lessor = Lessor::default();
        for (_, v) in backend.scan_prefix(keys::LEASE_PREFIX)? {
            let l = StoredLease::decode(v.as_slice())?;
            lessor.grant(l.id, l.ttl);
        }
        // Attachments are derived from the live keys' lease field.
        let mut attached = Vec::new();
        mvcc.scan_entries(
            &KeyRange::new(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0")),
            mvcc.current_revision(),
            |key, e| {
                if e.lease != 0 {
                    attached.push((e.lease, key.clone()));
                }
                Ok(true)
            },
        )?;
        for (id, key) in attached {
            lessor.attach(id, &key);
        }
        let members = Members::load(backend)?.unwrap_or_default();
        let alarms = Alarms::load(backend)?;
        let auth = AuthStore::load(backend)?;
        Ok(StateMachine {
            mvcc,
            lessor,
            members,
            alarms,
            auth,
            tokens: Tokens::default(),
            applied,
            unswept: leftovers.into(),
            swept: 0,
        })
    }

    /// Lets the keyspace drop from memory the records the backend has been given (see
    /// [`Mvcc::release_written`]); called after each run of applied entries.
    pub fn release_written(&mut self) {
        self.mvcc.release_written();
    }

    /// Adds the deletion of up to `limit` compacted records to `batch`; returns how many.
    pub fn sweep(&mut self, batch: &mut WriteBatch, limit: usize) -> usize {
        let n = limit.min(self.unswept.len());
        for r in self.unswept.drain(..n) {
            batch.delete(keys::rev(r.main, r.sub));
        }
        self.swept += n;
        if n > 0 && self.unswept.is_empty() {
            // As etcd logs "finished scheduled compaction".
            tracing::info!(
                records = self.swept,
                compacted = self.mvcc.compact_revision(),
                "finished deleting compacted records from the disk"
            );
            self.swept = 0;
        }
        n
    }

    /// Applies one request, adding its disk writes to `batch`.
    pub fn apply(&mut self, req: &InternalRequest, batch: &mut WriteBatch) -> Result<Applied> {
        failpoint!("applyBeforeEntry");
        let applied = self.apply_request(req, batch);
        failpoint!("applyAfterEntry");
        applied
    }

    fn apply_request(&mut self, req: &InternalRequest, batch: &mut WriteBatch) -> Result<Applied> {
        use internal_request::Request;
        let Some(r) = &req.request else {
            return Ok(Applied::Nothing);
        };
        if let Some(who) = &req.auth {
            self.auth.check(r, Some(&who.username), &self.lessor)?;
        }
        self.alarms.check(r)?;
        match r {
            Request::Put(p) => {
                let mut txn = self.mvcc.write();
                check_put(&txn, &self.lessor, p)?;
                let resp = put(&mut txn, &mut self.lessor, p)?;
                let rev = txn.read_rev();
                crate::history::persist(txn.finish(), batch);
                Ok(Applied::Put(PutResponse {
                    header: header(rev),
                    ..resp
                }))
            }
            Request::DeleteRange(d) => {
                let mut txn = self.mvcc.write();
                let resp = delete(&mut txn, &mut self.lessor, d)?;
                let rev = txn.read_rev();
                crate::history::persist(txn.finish(), batch);
                Ok(Applied::DeleteRange(DeleteRangeResponse {
                    header: header(rev),
                    ..resp
                }))
            }
            Request::Txn(t) => {
                let mut txn = self.mvcc.write();
                let resp = run_txn(&mut txn, &mut self.lessor, t)?;
                let rev = txn.read_rev();
                crate::history::persist(txn.finish(), batch);
                Ok(Applied::Txn(TxnResponse {
                    header: header(rev),
                    ..resp
                }))
            }
            Request::Compaction(c) => {
                failpoint!("compactBeforeApply");
                let removed = self.mvcc.compact(c.revision)?;
                self.unswept.extend(removed);
                batch.put(keys::COMPACTED, c.revision.to_be_bytes().to_vec());
                self.sweep(batch, SWEEP_BATCH);
                failpoint!("compactAfterApply");
                Ok(Applied::Compact(CompactionResponse {
                    header: header(self.mvcc.current_revision()),
                }))
            }
            Request::LeaseGrant(g) => {
                if self.lessor.exists(g.id) {
                    return Err(Error::LeaseExists);
                }
                let ttl = self.lessor.grant(g.id, g.ttl);
                let stored = StoredLease { id: g.id, ttl };
                batch.put(keys::lease(g.id), stored.encode_to_vec());
                Ok(Applied::LeaseGrant(LeaseGrantResponse {
                    header: header(self.mvcc.current_revision()),
                    id: g.id,
                    ttl,
                    error: String::new(),
                }))
            }
            Request::LeaseRevoke(r) => {
                let keys_attached = self.lessor.revoke(r.id).ok_or(Error::LeaseNotFound)?;
                batch.delete(keys::lease(r.id));
                let mut txn = self.mvcc.write();
                for key in keys_attached {
                    txn.delete_range(&KeyRange::Single(key), false)?;
                }
                let rev = txn.read_rev();
                crate::history::persist(txn.finish(), batch);
                Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
                    header: header(rev),
                }))
            }
            Request::Publish(attrs) => {
                self.members.publish(attrs)?;
                self.members.persist(batch);
                Ok(Applied::Nothing)
            }
            Request::MemberUpdate(u) => {
                self.members.update_peer_urls(u.id, &u.peer_ur_ls)?;
                self.members.persist(batch);
                Ok(Applied::Members(self.members.list()))
            }
            Request::Alarm(a) => {
                let (mut resp, changed) = self.alarms.apply(a);
                if changed {
                    self.alarms.persist(batch);
                }
                resp.header = header(self.mvcc.current_revision());
                Ok(Applied::Alarm(resp))
            }
            Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::Authenticate(_)
            | Request::UserAdd(_)
            | Request::UserDelete(_)
            | Request::UserChangePassword(_)
            | Request::UserGrantRole(_)
            | Request::UserRevokeRole(_)
            | Request::RoleAdd(_)
            | Request::RoleDelete(_)
            | Request::RoleGrantPermission(_)
            | Request::RoleRevokePermission(_) => {
                let mut token = String::new();
                match self.auth.apply(r, req.id)? {
                    Changed::Nothing => {}
                    Changed::TokensOf(user) => self.tokens.invalidate(&user),
                    Changed::AllTokens => self.tokens.clear(),
                    Changed::Token { token: t, user } => {
                        self.tokens.insert(t.clone(), user);
                        token = t;
                    }
                }
                // A login changes no replicated state.
                if !matches!(r, Request::Authenticate(_)) {
                    self.auth.persist(batch);
                }
                Ok(Applied::Auth {
                    revision: self.mvcc.current_revision(),
                    token,
                })
            }
        }
    }
}

fn decode_i64(b: &[u8]) -> Result<i64> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Corrupt(format!("integer of {} bytes", b.len())))?;
    Ok(i64::from_be_bytes(arr))
}

/// Checks a put against the current state before anything is written.
fn check_put(txn: &WriteTxn<'_>, lessor: &Lessor, p: &PutRequest) -> Result<()> {
    if (p.ignore_value || p.ignore_lease) && !txn.exists(&p.key) {
        return Err(Error::KeyNotFound);
    }
    if !p.ignore_lease && p.lease != 0 && !lessor.exists(p.lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

fn put(txn: &mut WriteTxn<'_>, lessor: &mut Lessor, p: &PutRequest) -> Result<PutResponse> {
    let (mut value, mut lease) = (p.value.clone(), p.lease);
    if p.ignore_value || p.ignore_lease {
        // check_put made sure the key exists.
        if let Some(prev) = txn.get(&p.key)? {
            if p.ignore_value {
                value = prev.value.clone();
            }
            if p.ignore_lease {
                lease = prev.lease;
            }
        }
    }
    let prev = txn.put(p.key.clone(), value, lease, p.prev_kv)?;
    if let Some(prev) = &prev
        && prev.lease != lease
    {
        lessor.detach(prev.lease, &prev.key);
    }
    lessor.attach(lease, &p.key);
    Ok(PutResponse {
        header: None,
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

fn delete(
    txn: &mut WriteTxn<'_>,
    lessor: &mut Lessor,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse> {
    let deleted = txn.delete_range(&KeyRange::new(&d.key, &d.range_end), d.prev_kv)?;
    for kv in &deleted {
        lessor.detach(kv.lease, &kv.key);
    }
    Ok(DeleteRangeResponse {
        header: None,
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
    })
}

/// True when every compare holds.
fn all_hold(txn: &WriteTxn<'_>, compares: &[Compare]) -> Result<bool> {
    for c in compares {
        if !compare_holds(txn, c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_holds(txn: &WriteTxn<'_>, c: &Compare) -> Result<bool> {
    let range = KeyRange::new(&c.key, &c.range_end);
    let target =
        compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    // Only a value compare reads values.
    let (mut any, mut all) = (false, true);
    txn.view().scan_at(
        &range,
        txn.read_rev(),
        target == compare::CompareTarget::Value,
        |kv| {
            any = true;
            all = compare_kv(c, target, &kv);
            all
        },
    )?;
    if !any {
        // A missing key compares as zeros, except that a value compare always fails.
        if target == compare::CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(all)
}

fn compare_kv(c: &Compare, target: compare::CompareTarget, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match target {
        CompareTarget::Value => {
            let want = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.as_ref(),
                _ => &[][..],
            };
            kv.value.as_ref().cmp(want)
        }
        _ => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version)
                | (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create)
                | (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod)
                | (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let have = match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                _ => kv.lease,
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => !ord.is_eq(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// Chooses the branch a txn takes (recursively, so nested txns are checked up front).
fn check_ops(txn: &WriteTxn<'_>, lessor: &Lessor, ops: &[RequestOp]) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => check_put(txn, lessor, p)?,
            Some(request_op::Request::RequestTxn(t)) => {
                let branch = if all_hold(txn, &t.compare)? {
                    &t.success
                } else {
                    &t.failure
                };
                check_ops(txn, lessor, branch)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_txn(txn: &mut WriteTxn<'_>, lessor: &mut Lessor, t: &TxnRequest) -> Result<TxnResponse> {
    let succeeded = all_hold(txn, &t.compare)?;
    let ops = if succeeded { &t.success } else { &t.failure };
    check_ops(txn, lessor, ops)?;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let res = txn.view().range(r, txn.read_rev())?;
                response_op::Response::ResponseRange(RangeResponse {
                    header: header(txn.read_rev()),
                    kvs: res.kvs,
                    more: res.more,
                    count: res.count,
                })
            }
            Some(request_op::Request::RequestPut(p)) => {
                let mut r = put(txn, lessor, p)?;
                r.header = header(txn.read_rev());
                response_op::Response::ResponsePut(r)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                let mut r = delete(txn, lessor, d)?;
                r.header = header(txn.read_rev());
                response_op::Response::ResponseDeleteRange(r)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                let mut r = run_txn(txn, lessor, inner)?;
                r.header = header(txn.read_rev());
                response_op::Response::ResponseTxn(r)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};

    fn put_req(k: &str, v: &str, lease: i64) -> InternalRequest {
        InternalRequest {
            auth: None,
            id: 1,
            request: Some(internal_request::Request::Put(PutRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
                lease,
                ..Default::default()
            })),
        }
    }

    /// A compaction deletes its records from the disk in runs of `SWEEP_BATCH`; records
    /// still on disk after a restart are out of the keyspace and swept again.
    #[test]
    fn compacted_records_leave_the_disk_in_runs() {
        use crate::backend::SledBackend;
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        let mut sm = StateMachine::load(be.as_ref()).expect("load");
        let keys = SWEEP_BATCH + 100;
        let mut b = WriteBatch::default();
        for round in 0..2 {
            for i in 0..keys {
                sm.apply(&put_req(&format!("k{i}"), &format!("v{round}"), 0), &mut b)
                    .expect("put");
            }
        }
        be.write(b).expect("write");
        let top = sm.mvcc.current_revision();
        let compact = InternalRequest {
            auth: None,
            id: 2,
            request: Some(internal_request::Request::Compaction(
                crate::proto::etcdserverpb::CompactionRequest {
                    revision: top,
                    physical: false,
                },
            )),
        };
        let mut b = WriteBatch::default();
        sm.apply(&compact, &mut b).expect("compact");
        // The first run goes with the compaction itself (and its COMPACTED key).
        assert_eq!(b.len(), SWEEP_BATCH + 1);
        assert_eq!(sm.unswept.len(), 100);
        be.write(b).expect("write");
        let count = |be: &SledBackend| {
            let mut n = 0;
            be.scan(keys::REV_PREFIX, keys::REV_END, &mut |_, _| {
                n += 1;
                Ok(true)
            })
            .expect("scan");
            n
        };
        assert_eq!(count(&be), keys + 100);
        // A restart before the rest is deleted: the keyspace does not hold those records,
        // and they are found again.
        let mut again = StateMachine::load(be.as_ref()).expect("reload");
        assert_eq!(again.unswept.len(), 100);
        assert_eq!(
            again.mvcc.hash_kv(0).expect("hash"),
            sm.mvcc.hash_kv(0).expect("hash")
        );
        let got = again.mvcc.get_at(b"k5", top).expect("get").expect("k5");
        assert_eq!(got.value.as_ref(), b"v1");
        let mut b = WriteBatch::default();
        assert_eq!(again.sweep(&mut b, SWEEP_BATCH), 100);
        be.write(b).expect("write");
        assert_eq!(count(&be), keys);
        assert_eq!(
            StateMachine::load(be.as_ref()).expect("load").unswept.len(),
            0
        );
    }

    #[test]
    fn alarms_are_applied_enforced_persisted_and_snapshotted() {
        use crate::backend::SledBackend;
        use crate::proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType, alarm_request};
        let alarm =
            |action: alarm_request::AlarmAction, member_id: u64, t: AlarmType| InternalRequest {
                auth: None,
                id: 3,
                request: Some(internal_request::Request::Alarm(AlarmRequest {
                    action: action as i32,
                    member_id,
                    alarm: t as i32,
                })),
            };
        let nospace = AlarmMember {
            member_id: 9,
            alarm: AlarmType::Nospace as i32,
        };
        let mut sm = StateMachine::default();
        let mut b = WriteBatch::default();
        sm.apply(&put_req("k", "v1", 0), &mut b).expect("put");
        let activate = alarm(alarm_request::AlarmAction::Activate, 9, AlarmType::Nospace);
        match sm.apply(&activate, &mut b).expect("activate") {
            Applied::Alarm(r) => {
                assert_eq!(r.alarms, vec![nospace]);
                assert_eq!(r.header.map(|h| h.revision), Some(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        sm.release_written();
        // A refused put changes nothing and writes nothing; a delete still runs.
        let mut refused = WriteBatch::default();
        assert!(matches!(
            sm.apply(&put_req("k", "v2", 0), &mut refused),
            Err(Error::NoSpace)
        ));
        sm.release_written();
        assert!(refused.is_empty());
        assert_eq!(sm.mvcc.current_revision(), 2);
        let del = InternalRequest {
            auth: None,
            id: 4,
            request: Some(internal_request::Request::DeleteRange(DeleteRangeRequest {
                key: "k".into(),
                ..Default::default()
            })),
        };
        assert!(matches!(
            sm.apply(&del, &mut b),
            Ok(Applied::DeleteRange(DeleteRangeResponse { deleted: 1, .. }))
        ));
        sm.release_written();

        // What a restarted member loads...
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        be.write(b).expect("write");
        let loaded = StateMachine::load(be.as_ref()).expect("load");
        assert_eq!(loaded.alarms.get(AlarmType::None as i32), vec![nospace]);
        // ...and what a member catching up by snapshot installs (over a list of its own).
        sm.applied = 5;
        let dir2 = tempfile::tempdir().expect("tempdir");
        let be2 = SledBackend::open(dir2.path()).expect("open");
        let mut stale = WriteBatch::default();
        let mut other = StateMachine::default();
        other
            .apply(
                &alarm(alarm_request::AlarmAction::Activate, 1, AlarmType::Corrupt),
                &mut stale,
            )
            .expect("activate");
        be2.write(stale).expect("write");
        let (log, _) = crate::raft_log::RaftLog::open(be2.as_ref(), &[]).expect("log");
        let meta = raft::eraftpb::SnapshotMetadata {
            index: 5,
            term: 1,
            ..Default::default()
        };
        let mut got = crate::snapshot::install(
            be2.as_ref(),
            &log,
            &meta,
            &crate::snapshot::encode(&sm).expect("encode"),
        )
        .expect("install");
        assert_eq!(got.alarms.get(AlarmType::None as i32), vec![nospace]);
        assert!(matches!(
            got.apply(&put_req("k", "v3", 0), &mut WriteBatch::default()),
            Err(Error::NoSpace)
        ));

        // DEACTIVATE lifts it at once, and the list on disk is empty.
        let mut b = WriteBatch::default();
        let deactivate = alarm(
            alarm_request::AlarmAction::Deactivate,
            9,
            AlarmType::Nospace,
        );
        assert!(matches!(
            got.apply(&deactivate, &mut b),
            Ok(Applied::Alarm(r)) if r.alarms == vec![nospace]
        ));
        got.apply(&put_req("k", "v3", 0), &mut b).expect("put");
        got.release_written();
        be2.write(b).expect("write");
        let reloaded = StateMachine::load(be2.as_ref()).expect("load");
        assert!(reloaded.alarms.is_empty());
    }

    #[test]
    fn member_update_is_applied_persisted_and_snapshotted() {
        use crate::backend::SledBackend;
        use crate::proto::etcdserverpb::MemberUpdateRequest;
        let member = |id: u64, url: &str| Member {
            id,
            name: format!("m{id}"),
            peer_ur_ls: vec![url.into()],
            ..Default::default()
        };
        let mut sm = StateMachine {
            members: Members::new(vec![member(1, "http://a:2380"), member(2, "http://b:2380")]),
            ..Default::default()
        };
        let update = |id: u64, url: &str| InternalRequest {
            auth: None,
            id: 7,
            request: Some(internal_request::Request::MemberUpdate(
                MemberUpdateRequest {
                    id,
                    peer_ur_ls: vec![url.into()],
                },
            )),
        };
        let mut b = WriteBatch::default();
        match sm
            .apply(&update(2, "http://b:2390"), &mut b)
            .expect("update")
        {
            Applied::Members(list) => {
                assert_eq!(list.len(), 2);
                assert_eq!(list[1].peer_ur_ls, vec!["http://b:2390".to_string()]);
                assert_eq!(list[1].name, "m2");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Refusals change nothing and write nothing.
        let mut refused = WriteBatch::default();
        assert!(matches!(
            sm.apply(&update(2, "http://a:2380"), &mut refused),
            Err(Error::PeerUrlExists)
        ));
        assert!(matches!(
            sm.apply(&update(9, "http://z:2380"), &mut refused),
            Err(Error::MemberNotFound)
        ));
        assert!(refused.is_empty());
        assert_eq!(sm.members.peer_url(2), Some("http://b:2390"));

        // What a restarted member loads...
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        be.write(b).expect("write");
        let loaded = Members::load(be.as_ref()).expect("load").expect("members");
        assert_eq!(loaded.peer_url(2), Some("http://b:2390"));
        // ...and what a member catching up by snapshot installs.
        sm.applied = 5;
        let dir2 = tempfile::tempdir().expect("tempdir");
        let be2 = SledBackend::open(dir2.path()).expect("open");
        let (log, _) = crate::raft_log::RaftLog::open(be2.as_ref(), &[]).expect("log");
        let meta = raft::eraftpb::SnapshotMetadata {
            index: 5,
            term: 1,
            ..Default::default()
        };
        let got = crate::snapshot::install(
            be2.as_ref(),
            &log,
            &meta,
            &crate::snapshot::encode(&sm).expect("encode"),
        )
        .expect("install");
        assert_eq!(got.members.peer_url(2), Some("http://b:2390"));
        assert_eq!(got.members.peer_url(1), Some("http://a:2380"));
    }

    #[test]
    fn cas_txn_and_lease_revoke() {
        let mut sm = StateMachine::default();
        let mut b = WriteBatch::default();
        sm.apply(&put_req("k", "v1", 0), &mut b).expect("put");
        let cas = |expect: &str| InternalRequest {
            auth: None,
            id: 2,
            request: Some(internal_request::Request::Txn(TxnRequest {
                compare: vec![Compare {
                    key: Bytes::from("k"),
                    target: compare::CompareTarget::Value as i32,
                    target_union: Some(compare::TargetUnion::Value(Bytes::copy_from_slice(
                        expect.as_bytes(),
                    ))),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: Bytes::from("k"),
                        value: Bytes::from("v2"),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })),
        };
        match sm.apply(&cas("nope"), &mut b).expect("txn") {
            Applied::Txn(t) => assert!(!t.succeeded),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(sm.mvcc.current_revision(), 2);
        match sm.apply(&cas("v1"), &mut b).expect("txn") {
            Applied::Txn(t) => assert!(t.succeeded),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(sm.mvcc.current_revision(), 3);

        assert!(matches!(
            sm.apply(&put_req("l", "x", 42), &mut b),
            Err(Error::LeaseNotFound)
        ));
        let grant = InternalRequest {
            auth: None,
            id: 3,
            request: Some(internal_request::Request::LeaseGrant(LeaseGrantRequest {
                ttl: 10,
                id: 42,
            })),
        };
        sm.apply(&grant, &mut b).expect("grant");
        assert!(matches!(sm.apply(&grant, &mut b), Err(Error::LeaseExists)));
        sm.apply(&put_req("l", "x", 42), &mut b)
            .expect("put with lease");
        let revoke = InternalRequest {
            auth: None,
            id: 4,
            request: Some(internal_request::Request::LeaseRevoke(LeaseRevokeRequest {
                id: 42,
            })),
        };
        sm.apply(&revoke, &mut b).expect("revoke");
        assert!(
            sm.mvcc
                .get_at(b"l", sm.mvcc.current_revision())
                .expect("read")
                .is_none()
        );
    }
}
