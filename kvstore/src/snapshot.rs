//! State-machine snapshots: the whole keyspace history since compaction, the lease table,
//! the member list, the alarms and the auth state, taken at one applied index. A leader sends one to a
//! member whose next entry was truncated from its log (a member that was down, or a new
//! one); the receiver replaces its state machine and raft log with it in one atomic batch.

use prost::Message;
use raft::eraftpb::SnapshotMetadata;

use crate::apply::StateMachine;
use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::proto::kvstorepb::{StateSnapshot, StoredLease};
use crate::raft_log::RaftLog;

/// Encodes the state machine as it is now (the caller holds it still: the raft thread).
pub fn encode(sm: &StateMachine) -> Result<Vec<u8>> {
    let mut revisions = Vec::new();
    sm.mvcc.walk(i64::MIN, i64::MAX, |rev, rec| {
        revisions.push(crate::history::stored(rev, rec.clone()));
        Ok(true)
    })?;
    let leases = sm
        .lessor
        .ttls()
        .into_iter()
        .map(|(id, ttl)| StoredLease { id, ttl })
        .collect();
    Ok(StateSnapshot {
        applied: sm.applied,
        compacted: sm.mvcc.compact_revision(),
        revisions,
        leases,
        members: Some(sm.members.to_stored()),
        alarms: Some(sm.alarms.to_stored()),
        auth: Some(sm.auth.to_stored()),
    }
    .encode_to_vec())
}

/// Replaces the state machine and the raft log on disk with snapshot `data` taken at
/// `meta`, durably, and returns the state machine loaded from it.
pub fn install(
    backend: &dyn Backend,
    log: &RaftLog,
    meta: &SnapshotMetadata,
    data: &[u8],
) -> Result<StateMachine> {
    let snap = StateSnapshot::decode(data)?;
    if snap.applied != meta.index {
        return Err(Error::Corrupt(format!(
            "snapshot data at index {} for a snapshot at {}",
            snap.applied, meta.index
        )));
    }
    let mut batch = WriteBatch::default();
    for (prefix, end) in [
        (keys::REV_PREFIX, keys::REV_END),
        (keys::CHUNK_PREFIX, b"c0".as_slice()),
        (keys::LEASE_PREFIX, b"e0"),
        (keys::META_PREFIX, b"m0"),
    ] {
        backend.scan(prefix, end, &mut |k, _| {
            batch.delete(k.to_vec());
            Ok(true)
        })?;
    }
    if !(0..i64::MAX).contains(&snap.compacted) {
        return Err(Error::Corrupt(format!(
            "snapshot compaction point {}",
            snap.compacted
        )));
    }
    let mut records = Vec::with_capacity(snap.revisions.len());
    for r in snap.revisions {
        let (rev, rec) = crate::history::record(r)?;
        // Checked before anything is written.
        crate::mvcc::check_position(rev)?;
        records.push((rev, rec));
    }
    crate::history::persist(records, &mut batch);
    for l in snap.leases {
        batch.put(keys::lease(l.id), l.encode_to_vec());
    }
    if let Some(m) = snap.members {
        batch.put(keys::MEMBERS, m.encode_to_vec());
    }
    if let Some(a) = snap.alarms {
        batch.put(keys::ALARMS, a.encode_to_vec());
    }
    if let Some(a) = snap.auth {
        batch.put(keys::AUTH, a.encode_to_vec());
    }
    batch.put(keys::COMPACTED, snap.compacted.to_be_bytes().to_vec());
    batch.put(keys::APPLIED, (snap.applied as i64).to_be_bytes().to_vec());
    log.install_snapshot(meta, &mut batch)?;
    backend.write(batch)?;
    backend.sync()?;
    StateMachine::load(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SledBackend;
    use crate::proto::etcdserverpb::{LeaseGrantRequest, Member, PutRequest};
    use crate::proto::kvstorepb::{InternalRequest, internal_request::Request};

    #[test]
    fn round_trip_through_another_store() {
        let mut sm = StateMachine {
            members: crate::membership::Members::new(vec![Member {
                id: 7,
                name: "a".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let mut b = WriteBatch::default();
        let req = |r| InternalRequest {
            auth: None,
            id: 1,
            request: Some(r),
        };
        sm.apply(
            &req(Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 5 })),
            &mut b,
        )
        .expect("grant");
        for v in ["1", "2"] {
            sm.apply(
                &req(Request::Put(PutRequest {
                    key: "k".into(),
                    value: v.to_string().into(),
                    lease: 5,
                    ..Default::default()
                })),
                &mut b,
            )
            .expect("put");
        }
        sm.applied = 9;
        let data = encode(&sm).expect("encode");

        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        let (log, _) = RaftLog::open(be.as_ref(), &[]).expect("log");
        let meta = SnapshotMetadata {
            index: 9,
            term: 2,
            ..Default::default()
        };
        let got = install(be.as_ref(), &log, &meta, &data).expect("install");
        assert_eq!(got.applied, 9);
        assert_eq!(got.mvcc.current_revision(), 3);
        assert_eq!(
            got.mvcc.get_at(b"k", 2).expect("read").map(|kv| kv.version),
            Some(1)
        );
        assert_eq!(got.lessor.time_to_live(5).map(|t| t.2.len()), Some(1));
        assert_eq!(got.members.ids(), vec![7]);
        assert_eq!(log.span(), (10, 9));
        assert_eq!(raft::Storage::term(&log, 9).expect("term"), 2);
        let wrong = SnapshotMetadata {
            index: 8,
            ..Default::default()
        };
        assert!(install(be.as_ref(), &log, &wrong, &data).is_err());
    }
}
