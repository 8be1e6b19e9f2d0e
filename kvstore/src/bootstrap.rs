//! Who this member is and what it starts from, decided once at start:
//!
//! - a data dir that already holds a member: its stored id and cluster id, whatever the
//!   `--initial-*` flags say (as etcd ignores them then);
//! - a fresh member of a new cluster (`--initial-cluster-state new`): ids derived from
//!   the initial cluster (peer URLs and token), so every initial member computes the same
//!   ones; raft starts as if from a snapshot at index 1 holding the initial voters;
//! - a fresh member joining a running cluster (`existing`): it asks the peers named in
//!   `--initial-cluster` for the member list, finds itself there by its peer URLs (it
//!   must have been added with `member add` first), and starts with an empty log; the
//!   leader catches it up with a snapshot.

use crate::apply::StateMachine;
use crate::backend::{Backend, WriteBatch, keys};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::membership::Members;
use crate::peer::{self, conn::Dialer};
use crate::proto::etcdserverpb::Member;
use crate::raft_log::RaftLog;

/// What a member starts from.
pub struct Start {
    pub me: u64,
    pub cluster_id: u64,
    pub log: RaftLog,
    pub sm: StateMachine,
}

fn read_u64(backend: &dyn Backend, key: &[u8]) -> Result<Option<u64>> {
    match backend.get(key)? {
        None => Ok(None),
        Some(b) => {
            let arr: [u8; 8] = b
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt(format!("id of {} bytes", b.len())))?;
            Ok(Some(u64::from_be_bytes(arr)))
        }
    }
}

fn save_identity(batch: &mut WriteBatch, me: u64, cluster_id: u64) {
    batch.put(keys::SELF_ID, me.to_be_bytes().to_vec());
    batch.put(keys::CLUSTER_ID, cluster_id.to_be_bytes().to_vec());
}

/// The initial cluster as members (client URLs are published by each member once it
/// runs), and the cluster id every initial member derives from it.
fn initial_cluster(cfg: &Config) -> Result<(Vec<Member>, u64)> {
    let token = &cfg.initial_cluster_token;
    let members: Vec<Member> = cfg
        .initial_members()?
        .into_iter()
        .map(|m| Member {
            id: config::member_id(&m.peer_urls, token),
            name: m.name,
            peer_ur_ls: m.peer_urls,
            client_ur_ls: Vec::new(),
            is_learner: false,
        })
        .collect();
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let id_strings: Vec<String> = ids.iter().map(|i| format!("{i:x}")).collect();
    let id_refs: Vec<&str> = id_strings.iter().map(String::as_str).collect();
    Ok((members, config::stable_id(&id_refs)))
}

/// This member's id in `members`, found by its name.
fn own_id(cfg: &Config, members: &[Member]) -> Result<u64> {
    members
        .iter()
        .find(|m| m.name == cfg.name)
        .map(|m| m.id)
        .ok_or_else(|| Error::Config("this member is missing from --initial-cluster".into()))
}

/// Opens (or creates) this member's raft log and state machine; `dialer` reaches the
/// running members when joining an existing cluster.
pub async fn start(cfg: &Config, backend: &dyn Backend, dialer: &Dialer) -> Result<Start> {
    if let (Some(me), Some(cluster_id)) = (
        read_u64(backend, keys::SELF_ID)?,
        read_u64(backend, keys::CLUSTER_ID)?,
    ) {
        let (log, _) = RaftLog::open(backend, &[])?;
        if cfg.force_new_cluster {
            force_new_cluster(me, &log, backend)?;
        }
        let sm = StateMachine::load(backend)?;
        return Ok(Start {
            me,
            cluster_id,
            log,
            sm,
        });
    }
    let has_raft_state = backend.get(keys::HARD_STATE)?.is_some();
    if has_raft_state {
        return upgrade_single_member(cfg, backend);
    }
    match cfg.initial_cluster_state.as_str() {
        "existing" => join(cfg, backend, dialer).await,
        _ => new_cluster(cfg, backend),
    }
}

/// A fresh member of a new cluster; whatever keyspace `backend` already holds (a restored
/// backup's) becomes the new cluster's.
pub(crate) fn new_cluster(cfg: &Config, backend: &dyn Backend) -> Result<Start> {
    let (members, cluster_id) = initial_cluster(cfg)?;
    let me = own_id(cfg, &members)?;
    let (log, _) = RaftLog::open(backend, &[])?;
    let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
    let members = Members::new(members);
    let mut batch = WriteBatch::default();
    log.bootstrap(&voters, &mut batch)?;
    members.persist(&mut batch);
    batch.put(keys::APPLIED, 1i64.to_be_bytes().to_vec());
    save_identity(&mut batch, me, cluster_id);
    backend.write(batch)?;
    backend.sync()?;
    let sm = StateMachine::load(backend)?;
    Ok(Start {
        me,
        cluster_id,
        log,
        sm,
    })
}

async fn join(cfg: &Config, backend: &dyn Backend, dialer: &Dialer) -> Result<Start> {
    let mine = cfg.advertise_peer_urls();
    let others: Vec<String> = cfg
        .initial_members()?
        .into_iter()
        .flat_map(|m| m.peer_urls)
        .filter(|u| !mine.contains(u))
        .collect();
    let resp = peer::client::fetch_members(dialer, &others).await?;
    let me = resp
        .members
        .iter()
        .find(|m| m.peer_ur_ls.iter().any(|u| mine.contains(u)))
        .map(|m| m.id)
        .ok_or_else(|| {
            Error::Config(format!(
                "the existing cluster has no member with peer URLs {mine:?}: add it with `etcdctl member add` first"
            ))
        })?;
    tracing::info!(
        member_id = format!("{me:x}"),
        cluster_id = format!("{:x}", resp.cluster_id),
        "joining an existing cluster"
    );
    // The list lets this member answer the leader; the snapshot replaces it.
    let members = Members::new(resp.members);
    let (log, _) = RaftLog::open(backend, &[])?;
    let mut batch = WriteBatch::default();
    members.persist(&mut batch);
    save_identity(&mut batch, me, resp.cluster_id);
    backend.write(batch)?;
    backend.sync()?;
    let sm = StateMachine::load(backend)?;
    Ok(Start {
        me,
        cluster_id: resp.cluster_id,
        log,
        sm,
    })
}

/// etcd's `--force-new-cluster` on a member's existing data: entries removing every other
/// member (voters and learners) are appended to the log and committed with all before
/// them, so applying the log leaves a one-member cluster holding all the data, from which
/// `member add` grows it again. The removals are entries like any other, so the member
/// list and raft's configuration change together, and a restart without the flag finds
/// the same one-member cluster.
///
/// One difference from etcd: etcd drops the log's tail past the commit index this member
/// knew; here it is kept and committed, as it would be had this member won an election.
/// A follower learns that an entry is committed only with the leader's next message, so
/// the tail can hold writes the old cluster acknowledged; etcd loses those (and, having
/// applied some of them already, can serve them from this member while the members added
/// later never get them).
fn force_new_cluster(me: u64, log: &RaftLog, backend: &dyn Backend) -> Result<()> {
    use protobuf::Message as _;
    use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};

    let state = raft::Storage::initial_state(log)?;
    let mut hs = state.hard_state;
    let cs = state.conf_state;
    let others: Vec<u64> = cs
        .voters
        .iter()
        .chain(&cs.learners)
        .copied()
        .filter(|id| *id != me)
        .collect();
    let (_, last) = log.span();
    let mut ents = Vec::new();
    for (i, id) in others.iter().enumerate() {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = *id;
        cc.context = prost::Message::encode_to_vec(&crate::proto::kvstorepb::ConfChangeContext {
            request_id: 0,
            member: None,
            promote: false,
        })
        .into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = hs.term;
        e.index = last + 1 + i as u64;
        e.data = cc.write_to_bytes()?.into();
        ents.push(e);
    }
    let uncommitted = last.saturating_sub(hs.commit);
    hs.commit = ents.last().map_or(last, |e| e.index);
    let mut batch = WriteBatch::default();
    log.append(&ents, &mut batch)?;
    log.set_hard_state(&hs, &mut batch)?;
    backend.write(batch)?;
    backend.sync()?;
    tracing::warn!(
        member_id = format!("{me:x}"),
        removed = ?others.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        kept_uncommitted = uncommitted,
        commit = hs.commit,
        "forcing a new one-member cluster (--force-new-cluster)"
    );
    Ok(())
}

/// A data dir written before members were replicated: a single member whose ids come
/// from its flags. Its identity and member list are stored now, and its log is made to
/// start after index 1 (as a new cluster's does) so members added later get a snapshot.
fn upgrade_single_member(cfg: &Config, backend: &dyn Backend) -> Result<Start> {
    let (members, cluster_id) = initial_cluster(cfg)?;
    let me = own_id(cfg, &members)?;
    let (log, _) = RaftLog::open(backend, &[me])?;
    let mut sm = StateMachine::load(backend)?;
    let mut batch = WriteBatch::default();
    if sm.members.ids().is_empty() {
        sm.members = Members::new(members);
        sm.members.persist(&mut batch);
    }
    let (first, _) = log.span();
    if first == 1 && sm.applied >= 1 {
        log.truncate_prefix(1, &mut batch)?;
    }
    save_identity(&mut batch, me, cluster_id);
    backend.write(batch)?;
    backend.sync()?;
    Ok(Start {
        me,
        cluster_id,
        log,
        sm,
    })
}
