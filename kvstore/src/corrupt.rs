//! Corruption checks, as etcd 3.4's (`etcdserver/corrupt.go`): members that applied the same
//! revisions must hold the same keyspace, so comparing their HashKV at one revision finds a
//! member whose data changed under it (a flipped bit on disk, a bad restore, a bug).
//!
//! - **Initial check** (`--experimental-initial-corrupt-check`): before raft starts and before
//!   anything is served, the member hashes its keyspace at its own latest revision and asks
//!   every peer for its hash at that revision. A peer with a different hash at the same
//!   compaction revision is a mismatch; any mismatch refuses the start with etcd's
//!   "`<id>` found data inconsistency with peers". A peer that cannot answer (down, behind,
//!   compacted past the revision, or at another compaction revision) is logged and skipped,
//!   so a cluster still starts when peers are down.
//! - **Periodic check** (`--experimental-corrupt-check-time`): every period, the leader hashes
//!   its keyspace, asks every peer for its hash at that revision, passes a linearizable read
//!   barrier and hashes again; then it raises a CORRUPT alarm (through raft, so every member
//!   lists it and refuses writes, see [`crate::alarm`]) for itself if its own two hashes of
//!   one revision and compaction differ, or for a peer that reports a revision or compaction
//!   revision past the leader's, or the leader's first compaction revision with another hash
//!   ([`leader_verdict`]). One alarm per pass, as in etcd.
//!
//! etcd asks over its peer HTTP API (`/members/hashkv`); kvstore asks over its peer gRPC
//! service (`peerpb.Peer/HashKV`), the same port and the same peer TLS, so a check needs no
//! client credentials and works with client certificate auth or authentication on, as etcd's.
//!
//! A hash reads every record from disk: it runs on a blocking thread and takes the state
//! machine's lock for 1,024 records at a time (`hash_in_steps`), so writes never wait for a
//! whole hash. The hash itself is [`crate::mvcc::Mvcc::hash_kv`]: every record held up to
//! the revision, compacted ones excluded (etcd hashes its key bucket the same way, with CRC-32C of the raw
//! bucket bytes; kvstore's CRC-32 of its own record fields gives other numbers for the same
//! data, so only kvstore members can be compared with each other).

use std::sync::Arc;
use std::time::Duration;

use crate::apply::StateMachine;
use crate::error::{Error, Result};
use crate::peer::client::PeerClients;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmType, HashKvResponse, Member, alarm_request::AlarmAction,
};
use crate::replica::Replica;

/// One hash of a keyspace: at which revision, with which compaction revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
}

impl Sample {
    /// The hash of `sm`'s keyspace at its latest revision (etcd's `HashByRev(0)`), in one
    /// pass (before raft starts, nothing waits for the lock).
    pub fn of(sm: &StateMachine) -> Result<Sample> {
        Ok(Sample {
            hash: sm.mvcc.hash_kv(0)?,
            revision: sm.mvcc.current_revision(),
            compact_revision: sm.mvcc.compact_revision(),
        })
    }

    /// The same of a running member's state, hashed in steps ([`hash_in_steps`]) on a
    /// blocking thread.
    async fn of_running(member: &Arc<Replica>) -> Result<Sample> {
        let m = member.clone();
        let (hash, compact_revision, revision) =
            blocking(move || hash_in_steps(m.state(), 0)).await?;
        Ok(Sample {
            hash,
            revision,
            compact_revision,
        })
    }
}

/// What a peer answered: its id and, in `revision`, its own latest revision (the response
/// header's), with its compaction revision and its hash at the revision asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHash {
    pub id: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub hash: u32,
}

/// Records hashed per hold of the state machine's lock: applying waits for at most one step
/// (a few milliseconds), not for a whole hash (measured 0.4-0.6 s for 100,000 records of
/// 1 KiB in one hold, during which every write waited).
const HASH_STEP_RECORDS: usize = 1024;

/// etcd's HashKV as this member answers it, to clients and to peers: its hash at `revision`
/// (0: the latest), its compaction revision, and a header at its latest revision. Read on a
/// blocking thread (it reads every record from disk), never on the runtime's.
pub async fn hash_kv(member: &Arc<Replica>, revision: i64) -> Result<HashKvResponse> {
    let m = member.clone();
    let (hash, compact_revision, current) =
        blocking(move || hash_in_steps(m.state(), revision)).await?;
    Ok(HashKvResponse {
        header: member.header(current),
        hash,
        compact_revision,
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Serve(format!("hashing the keyspace: {e}")))?
}

/// [`crate::mvcc::Mvcc::hash_kv`] at `revision`, taking the lock for one step of records at
/// a time. Records up to the revision change only by compaction: a compaction between two
/// steps starts the hash again (and a revision it compacted away is etcd's "compacted").
/// Returns the hash, the compaction revision and the latest revision when it began.
fn hash_in_steps(
    state: &parking_lot::RwLock<StateMachine>,
    revision: i64,
) -> Result<(u32, i64, i64)> {
    'again: loop {
        let (upto, compacted, current) = {
            let sm = state.read();
            (
                sm.mvcc.hash_upto(revision)?,
                sm.mvcc.compact_revision(),
                sm.mvcc.current_revision(),
            )
        };
        let mut h = crc32fast::Hasher::new();
        let mut from = Some(0);
        while let Some(start) = from {
            let sm = state.read();
            if sm.mvcc.compact_revision() != compacted {
                continue 'again;
            }
            from = sm.mvcc.hash_step(&mut h, start, upto, HASH_STEP_RECORDS)?;
        }
        return Ok((h.finalize(), compacted, current));
    }
}

/// The peers of the initial check that differ from `local`: a different hash at the same
/// compaction revision (etcd's `CheckInitialHashKV`). A different compaction revision cannot
/// be compared and is only logged.
pub fn initial_mismatches(local: Sample, peers: &[PeerHash]) -> Vec<u64> {
    let mut out = Vec::new();
    for p in peers {
        if p.hash == local.hash {
            continue;
        }
        if p.compact_revision == local.compact_revision {
            tracing::warn!(
                local_revision = local.revision,
                local_compact_revision = local.compact_revision,
                local_hash = local.hash,
                remote_peer_id = format!("{:x}", p.id),
                remote_peer_revision = p.revision,
                remote_peer_compact_revision = p.compact_revision,
                remote_peer_hash = p.hash,
                "found different hash values from remote peer"
            );
            out.push(p.id);
        } else {
            tracing::warn!(
                local_compact_revision = local.compact_revision,
                remote_peer_id = format!("{:x}", p.id),
                remote_peer_compact_revision = p.compact_revision,
                "found different compact revision values from remote peer"
            );
        }
    }
    out
}

/// The member the leader's periodic check raises CORRUPT for, if any (etcd's `checkHashKV`):
/// `first` is the leader's hash before asking the peers, `second` after the read barrier.
/// The leader itself when its two hashes of the same revision and compaction differ;
/// otherwise the first peer whose revision or compaction revision is past the leader's
/// (`second`), or whose compaction revision is the leader's first one and whose hash differs.
pub fn leader_verdict(me: u64, first: Sample, second: Sample, peers: &[PeerHash]) -> Option<u64> {
    if first.hash != second.hash
        && first.revision == second.revision
        && first.compact_revision == second.compact_revision
    {
        tracing::warn!(?first, ?second, "found hash mismatch");
        return Some(me);
    }
    for p in peers {
        let id = format!("{:x}", p.id);
        if p.revision > second.revision {
            tracing::warn!(
                leader_revision = second.revision,
                follower_revision = p.revision,
                follower_peer_id = id,
                "revision from follower must be less than or equal to leader's"
            );
            return Some(p.id);
        }
        if p.compact_revision > second.compact_revision {
            tracing::warn!(
                leader_compact_revision = second.compact_revision,
                follower_compact_revision = p.compact_revision,
                follower_peer_id = id,
                "compact revision from follower must be less than or equal to leader's"
            );
            return Some(p.id);
        }
        if p.compact_revision == first.compact_revision && p.hash != first.hash {
            tracing::warn!(
                leader_compact_revision = first.compact_revision,
                leader_hash = first.hash,
                follower_compact_revision = p.compact_revision,
                follower_hash = p.hash,
                follower_peer_id = id,
                "same compact revision then hashes must match"
            );
            return Some(p.id);
        }
    }
    None
}

/// Asks every member but `me` for its hash at `revision`, each through its peer URLs in turn
/// until one answers, all members at once, each URL for up to `within`. Members that answer
/// nothing usable are logged and left out (etcd's `getPeerHashKVs`).
async fn peer_hashes(
    clients: &PeerClients,
    cluster_id: u64,
    me: u64,
    members: &[Member],
    revision: i64,
    within: Duration,
) -> Vec<PeerHash> {
    let asks = members.iter().filter(|m| m.id != me).map(|m| async move {
        for url in &m.peer_ur_ls {
            match clients.hash_kv(url, revision, within).await {
                Ok(r) => {
                    let header = r.header.unwrap_or_default();
                    if header.cluster_id != cluster_id {
                        tracing::warn!(
                            remote_peer_id = format!("{:x}", m.id),
                            url,
                            remote_cluster_id = format!("{:x}", header.cluster_id),
                            "hash from a member of another cluster ignored"
                        );
                        continue;
                    }
                    return Some(PeerHash {
                        id: header.member_id,
                        revision: header.revision,
                        compact_revision: r.compact_revision,
                        hash: r.hash,
                    });
                }
                Err(s) => {
                    let why = if s.message() == Error::FutureRevision.to_string() {
                        "cannot fetch hash from slow remote peer"
                    } else if s.message() == Error::Compacted.to_string() {
                        "cannot fetch hash from remote peer; local member is behind"
                    } else {
                        "failed hash kv request"
                    };
                    tracing::warn!(
                        remote_peer_id = format!("{:x}", m.id),
                        url,
                        revision,
                        error = %crate::peer::conn::describe(&s),
                        "{why}"
                    );
                }
            }
        }
        None
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The initial check (see the module doc): `Ok` when no peer that could be compared differs,
/// [`Error::DataInconsistency`] otherwise. `sm` is this member's state as loaded from disk.
pub async fn initial_check(
    me: u64,
    cluster_id: u64,
    sm: &StateMachine,
    dialer: &crate::peer::conn::Dialer,
    within: Duration,
) -> Result<()> {
    tracing::info!(
        local_member_id = format!("{me:x}"),
        timeout = ?within,
        "starting initial corruption check"
    );
    let local = Sample::of(sm)?;
    let clients = PeerClients::new(dialer.clone());
    let members = sm.members.list();
    let peers = peer_hashes(&clients, cluster_id, me, &members, local.revision, within).await;
    if !initial_mismatches(local, &peers).is_empty() {
        return Err(Error::DataInconsistency(me));
    }
    tracing::info!(
        local_member_id = format!("{me:x}"),
        compared = peers.len(),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// Starts the periodic check on this member when `every` is not zero; it acts only while
/// the member leads.
pub fn spawn(member: Arc<Replica>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(monitor(member, every)))
}

async fn monitor(member: Arc<Replica>, every: Duration) {
    tracing::info!(
        local_member_id = format!("{:x}", member.member_id),
        interval = ?every,
        "enabled corruption checking"
    );
    let mut stopping = member.shared.stopping.subscribe();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        if member.leader() != member.member_id {
            continue;
        }
        if let Err(e) = check(&member).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}

/// One pass of the leader's periodic check.
async fn check(member: &Arc<Replica>) -> Result<()> {
    let first = Sample::of_running(member).await?;
    let members = member.members();
    let peers = peer_hashes(
        &member.peers,
        member.cluster_id,
        member.member_id,
        &members,
        first.revision,
        member.request_timeout,
    )
    .await;
    member.read_barrier().await?;
    let second = Sample::of_running(member).await?;
    if let Some(id) = leader_verdict(member.member_id, first, second, &peers) {
        tracing::error!(
            member_id = format!("{id:x}"),
            "corruption check found a member's keyspace inconsistent; raising CORRUPT"
        );
        member
            .alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: id,
                alarm: AlarmType::Corrupt as i32,
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, SledBackend, WriteBatch};
    use crate::mvcc::Mvcc;

    /// The hash of `m` at `upto` taken `limit` records at a time.
    fn stepped(m: &Mvcc, upto: i64, limit: usize) -> u32 {
        let mut h = crc32fast::Hasher::new();
        let mut from = Some(0);
        let mut steps = 0;
        while let Some(start) = from {
            from = m.hash_step(&mut h, start, upto, limit).unwrap();
            steps += 1;
            assert!(steps < 10_000);
        }
        h.finalize()
    }

    #[test]
    fn a_hash_in_steps_is_the_hash_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let (mut m, _) = Mvcc::load(backend.clone(), 0).unwrap();
        let mut batch = WriteBatch::default();
        let b = |s: String| bytes::Bytes::from(s);
        for i in 0..300 {
            let mut txn = m.write();
            // Revisions of one record and of several (a txn): a step never splits one.
            for k in 0..(1 + i % 3) {
                txn.put(
                    b(format!("k{}", (i + k) % 17)),
                    b(format!("v{i}")),
                    0,
                    false,
                )
                .unwrap();
            }
            crate::history::persist(txn.finish(), &mut batch);
            if i == 200 {
                // Most records in the backend only (reloaded), the latest in memory.
                backend.write(std::mem::take(&mut batch)).unwrap();
                m = Mvcc::load(backend.clone(), 0).unwrap().0;
            }
        }
        let (in_memory, _) = m.records_in_memory();
        assert!(in_memory > 0 && in_memory < 300, "{in_memory}");
        // Compacted away from the index; the backend still holds them (deleted a batch later).
        m.compact(150).unwrap();
        let now = m.current_revision();
        for upto in [151, 250, now] {
            let one = m.hash_kv(upto).unwrap();
            for limit in [1, 2, 7, 1024] {
                assert_eq!(stepped(&m, upto, limit), one, "upto {upto}, limit {limit}");
            }
        }
        assert_ne!(m.hash_kv(250).unwrap(), m.hash_kv(now).unwrap());
    }

    fn sample(hash: u32, revision: i64, compact_revision: i64) -> Sample {
        Sample {
            hash,
            revision,
            compact_revision,
        }
    }

    fn peer(id: u64, revision: i64, compact_revision: i64, hash: u32) -> PeerHash {
        PeerHash {
            id,
            revision,
            compact_revision,
            hash,
        }
    }

    #[test]
    fn initial_check_counts_only_comparable_differences() {
        let local = sample(7, 100, 40);
        assert!(initial_mismatches(local, &[]).is_empty());
        assert!(initial_mismatches(local, &[peer(2, 120, 40, 7), peer(3, 100, 40, 7)]).is_empty());
        // Another compaction revision cannot be compared.
        assert!(initial_mismatches(local, &[peer(2, 120, 60, 9)]).is_empty());
        assert_eq!(
            initial_mismatches(local, &[peer(2, 120, 40, 9), peer(3, 100, 40, 7)]),
            vec![2]
        );
    }

    #[test]
    fn leader_verdict_as_etcd_decides() {
        let me = 1;
        let s = sample(7, 100, 40);
        let healthy = [peer(2, 100, 40, 7), peer(3, 90, 40, 7)];
        assert_eq!(leader_verdict(me, s, s, &healthy), None);
        // A peer at another compaction revision below the leader's cannot be compared.
        assert_eq!(leader_verdict(me, s, s, &[peer(2, 100, 30, 8)]), None);
        // The leader's own hash of one revision changed: the leader is corrupt.
        assert_eq!(
            leader_verdict(me, s, sample(8, 100, 40), &healthy),
            Some(me)
        );
        // Writes in between (another revision) are no evidence.
        assert_eq!(leader_verdict(me, s, sample(8, 101, 40), &healthy), None);
        // Same compaction revision, another hash.
        assert_eq!(
            leader_verdict(me, s, s, &[peer(2, 100, 40, 7), peer(3, 100, 40, 9)]),
            Some(3)
        );
        // A follower past the leader's revision or compaction revision.
        assert_eq!(leader_verdict(me, s, s, &[peer(2, 101, 40, 7)]), Some(2));
        assert_eq!(leader_verdict(me, s, s, &[peer(2, 100, 41, 7)]), Some(2));
        // One alarm per pass: the first peer found.
        assert_eq!(
            leader_verdict(me, s, s, &[peer(2, 100, 40, 8), peer(3, 100, 40, 9)]),
            Some(2)
        );
    }
}
