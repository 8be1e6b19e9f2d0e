//! The raft node loop: one OS thread owns the raft `RawNode`. It batches every queued
//! proposal and read into one `Ready`, so concurrent writers share one fsync (group
//! commit); it sends raft messages through the peer transport (the leader's before its
//! fsync, a follower's acks and votes after, its forwarded proposals and reads at once),
//! applies entries raft reports committed (durable here and on a quorum) before fsyncing
//! the newer ones, installs snapshots, applies conf changes and answers each waiting
//! caller by request id, never by log index. A proposal lost to a leader change
//! is answered with an error as soon as that is certain, never left hanging.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use prost::Message;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::resend::{Appended, Forwarded};
use super::{Msg, NodeOptions, RequestIds, Shared};
use crate::apply::Applied;
use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::peer::Transport;
use crate::proto::etcdserverpb::LeaseRevokeRequest;
use crate::proto::kvstorepb::{ConfChangeContext, InternalRequest, internal_request};
use crate::raft_log::RaftLog;
use crate::wal::{RecordRef, Wal};
use crate::writer::Writer;
/// Clears [`super::RaftStatus::solo_read_index`] when dropped: when the loop ends.
struct ClearSoloRead(Arc<Shared>);

impl Drop for ClearSoloRead {
    fn drop(&mut self) {
        self.0.status.solo_read_index.store(0, Ordering::Release);
    }
}

/// A caller waiting for its proposal, and the raft term it was proposed in.
struct Waiter {
    term: u64,
    tx: oneshot::Sender<Result<Applied>>,
    /// The request as forwarded to the leader, when a follower proposed it (sent again
    /// while unanswered: see [`super::resend`]).
    forwarded: Option<Forwarded>,
}

/// A proposal waiting for raft to take proposals again.
struct HeldProposal {
    id: u64,
    data: Vec<u8>,
    tx: oneshot::Sender<Result<Applied>>,
    since: Instant,
    /// Set once raft takes the proposal (see [`Msg::Propose`]).
    proposed: Arc<std::sync::atomic::AtomicBool>,
}

/// A batch of reads sent to raft as one ReadIndex request.
struct ReadBatch {
    started: Instant,
    last_try: Instant,
    waiters: Vec<ReadWaiter>,
}

type ReadWaiter = oneshot::Sender<Result<()>>;
/// A request id and the result of applying it.
type Answer = (u64, Result<Applied>);

pub(crate) struct NodeLoop {
    pub raw: RawNode<RaftLog>,
    pub log: RaftLog,
    pub backend: Arc<dyn Backend>,
    pub shared: Arc<Shared>,
    pub opts: NodeOptions,
    pub ids: Arc<RequestIds>,
    transport: Arc<Transport>,
    me: u64,
    waiters: HashMap<u64, Waiter>,
    /// As leader: the forwarded requests appended in this term (see [`super::resend`]).
    appended: Appended,
    /// The term of the last applied entry: once an entry of a newer term is applied, no
    /// entry proposed in an older term can commit any more.
    applied_term: u64,
    pending_reads: Vec<ReadWaiter>,
    /// Read batches sent to raft, by request context.
    inflight_reads: HashMap<Vec<u8>, ReadBatch>,
    /// Read batches whose read index is known, waiting for apply to reach it.
    reads_after_apply: Vec<(u64, Vec<ReadWaiter>)>,
    revoking: HashSet<i64>,
    read_seq: u64,
    stop_requested: bool,
    /// Proposals that arrived while no leader was known or leadership was being handed over:
    /// they wait here (as etcd's do) until raft takes proposals again, instead of failing.
    held: Vec<HeldProposal>,
    /// Requests removing this very member: if a peer's refusal is how this member learns
    /// of its removal (the leader stops replicating to it once the change commits), the
    /// refusal proves the change committed, and these callers get the new member list.
    self_removals: Vec<u64>,
    /// The thread that writes to the backend (in order, off this thread).
    writer: Writer,
    /// The journal that makes each `Ready` durable before the backend has it.
    wal: Wal,
    /// Backend writes not yet handed to the writer thread: a `Ready`'s log append and hard
    /// state, and the state machine's writes (and commit index) since; they go after the
    /// journal's fsync, as one batch.
    unsynced: WriteBatch,
    /// When each peer was last heard from: which ones the leader counts as active.
    activity: crate::reconfig::PeerActivity,
}

impl NodeLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: RawNode<RaftLog>,
        log: RaftLog,
        backend: Arc<dyn Backend>,
        shared: Arc<Shared>,
        opts: NodeOptions,
        ids: Arc<RequestIds>,
        transport: Arc<Transport>,
        me: u64,
        mut wal: Wal,
    ) -> Result<NodeLoop> {
        let writer = Writer::spawn(backend.clone(), shared.metrics.clone())?;
        wal.count_into(shared.metrics.clone());
        let activity = crate::reconfig::PeerActivity::new(opts.peer_timeout);
        let source = shared.clone();
        log.set_snapshot_source(Box::new(move || {
            failpoint!("raftBeforeSaveSnap");
            let sm = source.sm.read();
            Ok((sm.applied, crate::snapshot::encode(&sm)?))
        }));
        let keep_appended = opts.read_timeout + std::time::Duration::from_secs(5);
        let node = NodeLoop {
            raw,
            log,
            backend,
            shared,
            opts,
            ids,
            transport,
            me,
            applied_term: 0,
            waiters: HashMap::new(),
            // Longer than a follower sends a request again (see `resend_forwarded`).
            appended: Appended::new(keep_appended),
            pending_reads: Vec::new(),
            inflight_reads: HashMap::new(),
            reads_after_apply: Vec::new(),
            revoking: HashSet::new(),
            read_seq: 0,
            stop_requested: false,
            held: Vec::new(),
            self_removals: Vec::new(),
            writer,
            wal,
            unsynced: WriteBatch::default(),
            activity,
        };
        node.update_peers();
        Ok(node)
    }

    /// This member was removed from the cluster: it stops serving.
    fn stop_removed(&mut self) {
        tracing::warn!("this member was removed from the cluster; stopping");
        self.shared.removed.store(true, Ordering::Release);
        self.stop_requested = true;
        if self.self_removals.is_empty() {
            return;
        }
        let members: Vec<_> = {
            let sm = self.shared.sm.read();
            sm.members
                .list()
                .into_iter()
                .filter(|m| m.id != self.me)
                .collect()
        };
        for id in std::mem::take(&mut self.self_removals) {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.tx.send(Ok(Applied::Members(members.clone())));
            }
        }
    }

    /// Points the transport at the members of the current member list.
    fn update_peers(&self) {
        let peers: Vec<(u64, String)> = {
            let sm = self.shared.sm.read();
            sm.members
                .ids()
                .into_iter()
                .filter_map(|id| sm.members.peer_url(id).map(|u| (id, u.to_string())))
                .collect()
        };
        self.transport.set_peers(&peers);
    }

    /// Runs until every sender of `rx` is gone. An error is a storage failure: the member
    /// must stop rather than serve from state it could not persist.
    pub fn run(mut self, rx: Receiver<Msg>) -> Result<()> {
        // However the loop ends (a stop, or a storage error), reads stop being answered
        // without it.
        let _solo = ClearSoloRead(self.shared.clone());
        let mut last_tick = Instant::now();
        loop {
            let wait = self.opts.tick.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop) => break,
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Group commit: take everything queued meanwhile into the same Ready.
            if self.stop_requested {
                break;
            }
            for _ in 0..8192 {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            if !self.pending_reads.is_empty() {
                self.start_read();
            }
            if !self.held.is_empty() {
                self.release_held();
            }
            if last_tick.elapsed() >= self.opts.tick {
                last_tick = Instant::now();
                self.raw.tick();
                self.on_tick();
            }
            self.on_ready()?;
        }
        self.fail_all(|| Error::Stopped);
        self.write_unsynced()?;
        self.writer.barrier()?;
        self.backend.sync()
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Propose {
                id,
                data,
                tx,
                proposed,
            } => self.propose(HeldProposal {
                id,
                data,
                tx,
                since: Instant::now(),
                proposed,
            }),
            Msg::ConfChange { id, cc, tx } => {
                if cc.get_change_type() == ConfChangeType::RemoveNode && cc.node_id == self.me {
                    self.self_removals.push(id);
                }
                if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
                    tracing::debug!(error = %e, "conf change dropped");
                    let _ = tx.send(Err(Error::NoLeader));
                    return;
                }
                let term = self.raw.raft.term;
                self.waiters.insert(
                    id,
                    Waiter {
                        term,
                        tx,
                        forwarded: None,
                    },
                );
            }
            Msg::ReadIndex { tx } => self.pending_reads.push(tx),
            Msg::Raft(m) => {
                self.activity.heard(m.from, Instant::now());
                if super::appends::malformed(&m) {
                    tracing::warn!(
                        from = format!("{:x}", m.from),
                        index = m.index,
                        first = m.entries.first().map(|e| e.index),
                        "append whose entries do not follow its index dropped"
                    );
                    return;
                }
                if m.get_msg_type() == MessageType::MsgPropose
                    && self.raw.raft.state == StateRole::Leader
                {
                    self.step_forwarded(*m);
                } else if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "raft message not stepped");
                }
            }
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::PeerGone(id) => self.on_peer_gone(id),
            Msg::TransferLeader { to } => self.raw.transfer_leader(to),
            Msg::Defragment { tx } => {
                // The writes applied so far go first, with every compacted record not yet
                // deleted (a defragmentation is for reclaiming them); the writer answers
                // `tx` (dropped, if the writer has stopped: "server stopped").
                {
                    let mut sm = self.shared.sm.write();
                    let all = sm.unswept.len();
                    sm.sweep(&mut self.unsynced, all);
                }
                if self.write_unsynced().is_ok() {
                    let _ = self.writer.defragment(tx);
                }
            }
            Msg::HandOffLeadership => {
                if self.raw.raft.state == StateRole::Leader {
                    let me = self.me;
                    let best = self
                        .raw
                        .raft
                        .prs()
                        .iter()
                        .filter(|(id, _)| **id != me)
                        .filter(|(id, _)| self.raw.raft.prs().conf().voters().contains(**id))
                        .max_by_key(|(_, p)| p.matched)
                        .map(|(id, _)| *id);
                    if let Some(to) = best {
                        self.raw.transfer_leader(to);
                    }
                }
            }
            Msg::Removed => self.stop_removed(),
            Msg::PeerActivity { tx } => {
                let res = if self.raw.raft.state == StateRole::Leader {
                    let mut a = self.activity.snapshot(self.me, Instant::now());
                    a.matched = self
                        .raw
                        .raft
                        .prs()
                        .iter()
                        .map(|(id, p)| (*id, p.matched))
                        .collect();
                    Ok(a)
                } else {
                    Err(Error::NoLeader)
                };
                let _ = tx.send(res);
            }
            Msg::SnapshotStatus { to, failed } => {
                let status = if failed {
                    SnapshotStatus::Failure
                } else {
                    SnapshotStatus::Finish
                };
                self.raw.report_snapshot(to, status);
            }
            // Seen while draining: finish this round; the next receive sees the channel.
            Msg::Stop => self.stop_requested = true,
        }
    }

    fn start_read(&mut self) {
        // No leader (an election is on, or quorum is lost): the reads wait for one, as
        // proposals do, until their callers give up (the request timeout, or the client's
        // deadline); a read whose caller is gone is dropped.
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let before = self.pending_reads.len();
            self.pending_reads.retain(|tx| !tx.is_closed());
            let gone = before - self.pending_reads.len();
            self.shared
                .metrics
                .server
                .read_indexes_failed
                .add(gone as u64);
            return;
        }
        // raft drops a ReadIndex silently until the leader has committed an entry in its
        // term; keep the reads queued until then instead of letting them time out.
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term() {
            return;
        }
        self.read_seq += 1;
        let ctx = self.read_seq.to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        let now = Instant::now();
        let batch = ReadBatch {
            started: now,
            last_try: now,
            waiters: std::mem::take(&mut self.pending_reads),
        };
        self.inflight_reads.insert(ctx, batch);
    }

    /// ReadIndex requests can be dropped silently by raft (during an election, or by a
    /// leader that has not committed in its term yet): ask again, and give up in time.
    fn retry_reads(&mut self) {
        let now = Instant::now();
        let timeout = self.opts.read_timeout;
        let expired: Vec<Vec<u8>> = self
            .inflight_reads
            .iter()
            .filter(|(_, b)| now.duration_since(b.started) > timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.shared.metrics.server.slow_read_indexes.inc();
            if let Some(b) = self.inflight_reads.remove(&k) {
                for tx in b.waiters {
                    let _ = tx.send(Err(Error::Timeout));
                }
            }
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        for (ctx, b) in self.inflight_reads.iter_mut() {
            if now.duration_since(b.last_try) >= self.opts.read_retry {
                b.last_try = now;
                self.raw.read_index(ctx.clone());
            }
        }
    }

    /// A peer's port refuses connections. If it is this follower's leader, its process is
    /// gone and no heartbeat will come: the follower stops honouring the leader's lease (it
    /// grants pre-votes at once) and brings its own campaign forward to a random point
    /// within one election timeout, instead of waiting one to two election timeouts from
    /// the last heartbeat. Pre-vote and check-quorum keep a wrong guess harmless: a live
    /// leader's next heartbeat makes it the leader here again, and the members that still
    /// hear from it refuse the pre-vote.
    fn on_peer_gone(&mut self, id: u64) {
        let r = &mut self.raw.raft;
        if r.state != StateRole::Follower || r.leader_id != id || id == raft::INVALID_ID {
            return;
        }
        tracing::info!(
            leader = format!("{id:x}"),
            "the leader's peer port refuses connections; not waiting out its lease"
        );
        self.shared.metrics.server.leader_gone.inc();
        r.leader_id = raft::INVALID_ID;
        r.election_elapsed = r.election_elapsed.max(r.election_timeout());
    }

    /// A follower's forwarded proposal, at the leader: the requests not appended yet in this
    /// term go to raft (a copy the follower sent again does not), and are remembered.
    fn step_forwarded(&mut self, mut m: raft::eraftpb::Message) {
        let (term, now) = (self.raw.raft.term, Instant::now());
        let entries = std::mem::take(&mut m.entries).into_vec();
        let before = entries.len();
        let (entries, ids) = self.appended.new_entries(term, entries, now);
        if entries.len() < before {
            tracing::debug!(
                from = format!("{:x}", m.from),
                copies = before - entries.len(),
                "forwarded requests already appended; copies dropped"
            );
        }
        if entries.is_empty() {
            return;
        }
        m.entries = entries.into();
        match self.raw.step(m) {
            Ok(()) => self.appended.record(term, &ids, now),
            Err(e) => tracing::debug!(error = %e, "forwarded proposal not taken"),
        }
    }

    /// A follower sends again the requests it forwarded that got no answer (see
    /// [`super::resend`]): proposed in the current term, still awaited by their callers.
    fn resend_forwarded(&mut self) {
        let r = &self.raw.raft;
        if r.state == StateRole::Leader || r.leader_id == raft::INVALID_ID {
            return;
        }
        let (term, now, horizon) = (r.term, Instant::now(), self.opts.read_timeout);
        let due: Vec<Vec<u8>> = self
            .waiters
            .values_mut()
            .filter(|w| w.term == term && !w.tx.is_closed())
            .filter_map(|w| w.forwarded.as_mut())
            .filter_map(|f| f.due(now, horizon).then(|| f.data.clone()))
            .collect();
        for data in due {
            match self.raw.propose(term.to_be_bytes().to_vec(), data) {
                Ok(()) => tracing::debug!("unanswered forwarded request sent again"),
                Err(e) => tracing::debug!(error = %e, "forwarded request not sent again"),
            }
        }
    }

    fn on_tick(&mut self) {
        self.retry_reads();
        self.resend_forwarded();
        self.sync_leadership();
        self.sweep_when_idle();
        // Only the leader expires leases, by proposing their revocation.
        if self.raw.raft.state == StateRole::Leader {
            let expired = self.shared.sm.read().lessor.expired();
            for id in expired {
                if self.revoking.insert(id) {
                    tracing::info!(lease = format!("{id:016x}"), "lease expired; revoking");
                    self.shared.metrics.lease.expired.inc();
                    let req = InternalRequest {
                        id: self.ids.next(),
                        request: Some(internal_request::Request::LeaseRevoke(LeaseRevokeRequest {
                            id,
                        })),
                        auth: None,
                    };
                    let origin = self.raw.raft.term.to_be_bytes().to_vec();
                    if self.raw.propose(origin, req.encode_to_vec()).is_err() {
                        self.revoking.remove(&id);
                    }
                }
            }
        }
    }

    /// Deletes a run of compacted records from the disk while no writes come (runs go with
    /// the applied entries' batches otherwise). Only when nothing else is pending: a
    /// pending batch may still write the very records to be deleted.
    fn sweep_when_idle(&mut self) {
        if !self.unsynced.is_empty() || self.shared.sm.read().unswept.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        if self
            .shared
            .sm
            .write()
            .sweep(&mut batch, crate::apply::SWEEP_BATCH)
            == 0
        {
            return;
        }
        if let Err(e) = self.writer.write(batch) {
            tracing::warn!(error = %e, "deleting compacted records failed");
        }
    }

    fn sync_leadership(&mut self) {
        let leader = self.raw.raft.state == StateRole::Leader;
        let mut sm = self.shared.sm.write();
        if leader && !sm.lessor.is_primary() {
            sm.lessor.promote();
        } else if !leader && sm.lessor.is_primary() {
            sm.lessor.demote();
            self.revoking.clear();
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        // Before anything is sent: a step down (and the vote it may carry) must clear the
        // solo read index first.
        self.publish_solo_read();
        let mut rd = self.raw.ready();
        // A leader's messages may go before its own fsync (raft's thesis, 10.2.1).
        self.transport
            .send(super::appends::coalesce(rd.take_messages()));
        // A follower's forwarded proposals and read requests promise nothing about its own
        // log, so they need not wait for its fsync either; everything else a follower says
        // (append acks, votes) does.
        let mut after_sync = rd.take_persisted_messages();
        if !after_sync.is_empty() {
            let (now, later): (Vec<_>, Vec<_>) = after_sync.into_iter().partition(|m| {
                matches!(
                    m.get_msg_type(),
                    MessageType::MsgPropose | MessageType::MsgReadIndex
                )
            });
            self.transport.send(now);
            after_sync = later;
        }
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot())?;
        }
        for rs in rd.take_read_states() {
            if let Some(b) = self.inflight_reads.remove(&rs.request_ctx) {
                self.reads_after_apply.push((rs.index, b.waiters));
            }
        }
        // Entries raft hands over as committed are already durable here and on a quorum:
        // apply them and answer their callers now, without waiting for the fsync of the
        // new entries below. The state machine's own writes need no fsync of their own;
        // they reach the backend in one batch with the next log append (a crash before
        // that re-applies them from the log).
        let answers = self.apply(rd.take_committed_entries())?;
        self.publish(answers);
        self.answer_reads();
        let mut batch = std::mem::take(&mut self.unsynced);
        let segment = self.log.append(rd.entries(), &mut batch)?;
        if let Some(hs) = rd.hs() {
            self.log.set_hard_state(hs, &mut batch)?;
        }
        // Durable first in the journal (one write, one fdatasync); the backend gets the
        // same writes afterwards, so it never holds raft state the journal lacks.
        let synced = rd.must_sync();
        if synced {
            let mut records = Vec::with_capacity(2);
            if !segment.is_empty() {
                records.push(RecordRef::Segment(&segment));
            }
            if let Some(hs) = rd.hs() {
                records.push(RecordRef::HardState(hs));
            }
            if let Some(before) = self.wal.append(&records)? {
                // The older segments' backend writes were all issued in earlier rounds.
                self.writer
                    .checkpoint(self.wal.dir().to_path_buf(), before)?;
            }
            self.wal.sync()?;
        }
        self.unsynced = batch;
        // A follower's answers (append acks, votes) only once what they promise is durable.
        self.transport.send(after_sync);
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit, &mut self.unsynced)?;
        }
        self.transport
            .send(super::appends::coalesce(light.take_messages()));
        let answers = self.apply(light.take_committed_entries())?;
        self.publish(answers);
        self.raw.advance_apply();
        self.publish_status();
        self.answer_reads();
        // Callers are answered; now the backend's copy (not flushed: the journal holds it).
        if synced {
            self.write_unsynced()?;
        }
        self.maybe_truncate_log()?;
        Ok(())
    }

    /// Hands the pending writes to the backend writer (the journal holds them).
    fn write_unsynced(&mut self) -> Result<()> {
        self.writer.write(std::mem::take(&mut self.unsynced))
    }

    /// Replaces the state machine with a snapshot received from the leader.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        // Older state machine writes must not land after (and over) the snapshot's.
        self.write_unsynced()?;
        self.writer.barrier()?;
        let meta = snap.get_metadata();
        // Journaled first: a replay then knows the records before it describe a log the
        // snapshot replaced (see `wal::recover`).
        let in_progress = &self.shared.metrics.server.snapshot_apply_in_progress;
        in_progress.set(1);
        self.wal.append(&[RecordRef::Snapshot(meta)])?;
        self.wal.sync()?;
        failpoint!("raftBeforeApplySnap");
        let sm = crate::snapshot::install(self.backend.as_ref(), &self.log, meta, snap.get_data())?;
        failpoint!("raftAfterApplySnap");
        // The backend is flushed with the snapshot: nothing older needs replaying.
        self.wal.reset()?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            revision = sm.mvcc.current_revision(),
            "snapshot installed"
        );
        in_progress.set(0);
        self.applied_term = self.applied_term.max(meta.term);
        let mut guard = self.shared.sm.write();
        // Login tokens are this member's, not part of the snapshot: keep them (a token of a
        // user the snapshot no longer has fails its permission checks).
        let mut sm = sm;
        sm.tokens = std::mem::take(&mut guard.tokens);
        *guard = sm;
        drop(guard);
        self.update_peers();
        Ok(())
    }

    /// Applies committed entries to the state machine, adding its disk writes to the
    /// pending batch; returns each request's answer by request id.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<Answer>> {
        let mut answers = Vec::new();
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(answers);
        };
        let mut pending = std::mem::take(&mut self.unsynced);
        let batch = &mut pending;
        let mut members_changed = false;
        let shared = self.shared.clone();
        let mut sm = Some(shared.sm.write());
        for e in &entries {
            let Some(guard) = sm.as_mut() else { break };
            if e.index <= guard.applied {
                continue;
            }
            self.applied_term = self.applied_term.max(e.term);
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() && stale_proposal(e) => {
                    // Proposed in an older term than the leader that appended it: a proposal
                    // message that outlived its term (held in a queue across a partition),
                    // which its proposer has already answered "leader changed" and proposed
                    // again. Skipped on every member alike, so a put is never applied twice.
                    tracing::debug!(index = e.index, term = e.term, "stale proposal skipped");
                }
                EntryType::EntryNormal if !e.data.is_empty() => {
                    match InternalRequest::decode(e.data.as_ref()) {
                        Ok(req) => {
                            let started = Instant::now();
                            let res = guard.apply(&req, batch);
                            if let Some(r) = &req.request {
                                shared.metrics.applied(r, &res, started.elapsed());
                            }
                            match &req.request {
                                Some(internal_request::Request::LeaseRevoke(r)) => {
                                    self.revoking.remove(&r.id);
                                }
                                Some(internal_request::Request::Publish(_)) => {
                                    members_changed = true;
                                }
                                Some(internal_request::Request::MemberUpdate(u)) if res.is_ok() => {
                                    tracing::info!(member = format!("{:x}", u.id), urls = ?u.peer_ur_ls, "member peer URLs updated");
                                    // The transport redials the member at its new URL.
                                    members_changed = true;
                                }
                                _ => {}
                            }
                            answers.push((req.id, res));
                        }
                        Err(err) => {
                            tracing::error!(index = e.index, %err, "undecodable raft entry skipped")
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    // raft may call back into the state machine (to build a snapshot for a
                    // new member) while applying a conf change: release it meanwhile.
                    guard.release_written();
                    drop(sm.take());
                    let answer = self.apply_conf_change(e, batch);
                    members_changed = true;
                    let mut guard = shared.sm.write();
                    if let Some((id, res)) = answer {
                        answers.push((id, res));
                    }
                    guard.applied = e.index;
                    sm = Some(guard);
                    continue;
                }
                _ => {}
            }
            guard.applied = e.index;
        }
        if let Some(guard) = sm.as_mut() {
            guard.sweep(batch, crate::apply::SWEEP_BATCH);
            guard.release_written();
        }
        drop(sm);
        batch.put(keys::APPLIED, (last as i64).to_be_bytes().to_vec());
        self.unsynced = pending;
        if members_changed {
            self.update_peers();
        }
        Ok(answers)
    }

    /// Applies one conf change entry: raft's configuration, then the member list.
    fn apply_conf_change(&mut self, e: &Entry, batch: &mut WriteBatch) -> Option<Answer> {
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(index = e.index, %err, "undecodable conf change skipped");
                return None;
            }
        };
        let ctx = ConfChangeContext::decode(cc.context.as_ref()).unwrap_or_default();
        let mut removed_me = false;
        let res = (|| {
            // A promotion is checked as etcd checks it when applied: the member must be a
            // learner; if not, raft's configuration stays as it is.
            if ctx.promote {
                match self.shared.sm.read().members.get(cc.node_id) {
                    None => return Err(Error::MemberNotFound),
                    Some(m) if !m.is_learner => return Err(Error::MemberNotLearner),
                    Some(_) => {}
                }
            }
            let cs = self.raw.apply_conf_change(&cc)?;
            self.log.set_conf_state(&cs, batch)?;
            let mut sm = self.shared.sm.write();
            match cc.get_change_type() {
                ConfChangeType::AddNode if ctx.promote => {
                    tracing::info!(member = format!("{:x}", cc.node_id), "learner promoted");
                    sm.members.promote(cc.node_id);
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(m) = ctx.member.clone() {
                        tracing::info!(member = format!("{:x}", m.id), urls = ?m.peer_ur_ls, "member added");
                        sm.members.add(m);
                    }
                }
                ConfChangeType::RemoveNode => {
                    tracing::info!(member = format!("{:x}", cc.node_id), "member removed");
                    sm.members.remove(cc.node_id);
                    removed_me = cc.node_id == self.me;
                }
            }
            sm.members.persist(batch);
            Ok(Applied::Members(sm.members.list()))
        })();
        if removed_me {
            self.stop_removed();
        }
        Some((ctx.request_id, res))
    }

    /// Publishes the new revision to watchers and answers the waiting callers.
    fn publish(&mut self, answers: Vec<Answer>) {
        let revision = self.shared.sm.read().mvcc.current_revision();
        self.shared.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        for (id, res) in answers {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.tx.send(res);
            }
        }
        // Entries of older terms can only sit before the first entry of the newest term
        // applied; anything proposed in an older term and still unanswered is lost.
        let term = self.applied_term;
        let lost: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.term < term)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.shared.metrics.server.proposals_failed.inc();
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.tx.send(Err(Error::LeaderChanged));
            }
        }
    }

    fn publish_status(&self) {
        let s = &self.shared.status;
        let r = &self.raw.raft;
        let m = &self.shared.metrics.server;
        s.term.store(r.term, Ordering::Relaxed);
        // etcd counts every change to a known leader (the first one included).
        let before = s.leader.swap(r.leader_id, Ordering::Relaxed);
        if r.leader_id != raft::INVALID_ID && r.leader_id != before {
            m.leader_changes.inc();
            *s.leader_elected.lock() = Some(Instant::now());
        }
        m.proposals_pending
            .set((self.waiters.len() + self.held.len()) as i64);
        s.last_index
            .store(r.raft_log.last_index(), Ordering::Relaxed);
        s.commit.store(r.raft_log.committed, Ordering::Relaxed);
        // Released before the solo read index: a reader that sees that index sees this
        // applied index or a newer one.
        s.applied.store(r.raft_log.applied, Ordering::Release);
        self.publish_solo_read();
        s.learner.store(
            r.prs().conf().learners().contains(&self.me),
            Ordering::Relaxed,
        );
    }

    /// Publishes [`super::RaftStatus::solo_read_index`]: the commit index while this member
    /// leads a configuration whose only voter it is, with an entry of its term committed
    /// and no membership change pending (raft's own conditions for answering a ReadIndex at
    /// once); 0 otherwise. No other member can lead then: any other would need this one's
    /// vote, and a vote is only sent after this is cleared (see [`Self::on_ready`]).
    fn publish_solo_read(&self) {
        let r = &self.raw.raft;
        let solo = r.state == StateRole::Leader
            && r.prs().is_singleton()
            && r.prs().conf().voters().contains(self.me)
            && !r.has_pending_conf()
            && r.commit_to_current_term();
        let index = if solo { r.raft_log.committed } else { 0 };
        self.shared
            .status
            .solo_read_index
            .store(index, Ordering::Release);
    }

    fn answer_reads(&mut self) {
        if self.reads_after_apply.is_empty() {
            return;
        }
        let applied = self.shared.sm.read().applied;
        self.reads_after_apply.retain_mut(|(index, txs)| {
            if *index <= applied {
                for tx in txs.drain(..) {
                    let _ = tx.send(Ok(()));
                }
                false
            } else {
                true
            }
        });
    }

    fn maybe_truncate_log(&mut self) -> Result<()> {
        let applied = self.shared.sm.read().applied;
        let (first, _) = self.log.span();
        let keep = self.opts.catch_up_entries;
        if applied >= first + self.opts.snapshot_count + keep {
            // The writer flushes before it truncates: the applied state must be in the
            // backend by then.
            self.write_unsynced()?;
            // Raft stops seeing the entries now; their removal from disk (thousands of
            // deletes, after an fsync) happens off this thread.
            let mut batch = WriteBatch::default();
            self.log.truncate_prefix(applied - keep, &mut batch)?;
            self.writer.truncate(batch)?;
            tracing::debug!(upto = applied - keep, "raft log truncated");
        }
        Ok(())
    }

    /// True when raft takes a proposal now: a leader is known and is not handing over.
    fn takes_proposals(&self) -> bool {
        let r = &self.raw.raft;
        r.leader_id != raft::INVALID_ID
            && !(r.state == StateRole::Leader && r.lead_transferee.is_some())
    }

    /// Proposes `p`, or holds it while raft takes no proposals.
    fn propose(&mut self, p: HeldProposal) {
        if !self.takes_proposals() {
            self.held.push(p);
            return;
        }
        // The entry carries the term it was proposed in (its context): see `stale_proposal`.
        let term = self.raw.raft.term;
        if let Err(e) = self
            .raw
            .propose(term.to_be_bytes().to_vec(), p.data.clone())
        {
            tracing::debug!(error = %e, "proposal dropped; holding it");
            self.held.push(p);
            return;
        }
        p.proposed.store(true, Ordering::Release);
        let forwarded = (self.raw.raft.state != StateRole::Leader)
            .then(|| Forwarded::new(p.data, Instant::now()));
        self.waiters.insert(
            p.id,
            Waiter {
                term,
                tx: p.tx,
                forwarded,
            },
        );
    }

    /// Proposes what was held once raft takes proposals again. A proposal whose caller has
    /// gone (its request timed out, or the client gave up) is dropped unproposed; one held
    /// longer than any caller waits (the request timeout and a second) is answered "request
    /// timed out" here, should its caller still listen.
    fn release_held(&mut self) {
        let now = Instant::now();
        let limit = self.opts.read_timeout + std::time::Duration::from_secs(1);
        let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|p| p.tx.is_closed() || now.duration_since(p.since) >= limit);
        for p in expired {
            self.shared.metrics.server.proposals_failed.inc();
            let _ = p.tx.send(Err(Error::Timeout));
        }
        if !self.takes_proposals() {
            self.held = keep;
            return;
        }
        for p in keep {
            self.propose(p);
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, w) in self.waiters.drain() {
            let _ = w.tx.send(Err(err()));
        }
        for p in self.held.drain(..) {
            let _ = p.tx.send(Err(err()));
        }
        for tx in self.pending_reads.drain(..) {
            let _ = tx.send(Err(err()));
        }
        for (_, b) in self.inflight_reads.drain() {
            for tx in b.waiters {
                let _ = tx.send(Err(err()));
            }
        }
        for (_, txs) in self.reads_after_apply.drain(..) {
            for tx in txs {
                let _ = tx.send(Err(err()));
            }
        }
    }
}

/// True when `e` was proposed in an older term than the one it was appended in. A proposal
/// carries its proposer's term in the entry context ([`NodeLoop::propose`]); a leader appends
/// a proposal in its own term, so the two differ only for a proposal message delivered after
/// a leader change (forwarded late, or re-forwarded by a deposed leader). Its proposer counts
/// it lost once an entry of a newer term is applied, and proposes it again: applying the late
/// copy too would apply the request twice. Entries without a context (older logs, internal
/// entries) are applied as they are.
fn stale_proposal(e: &Entry) -> bool {
    match <[u8; 8]>::try_from(e.context.as_ref()) {
        Ok(b) => u64::from_be_bytes(b) != e.term,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, context: Vec<u8>) -> Entry {
        Entry {
            term,
            context: context.into(),
            data: vec![1].into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_proposal_appended_in_a_later_term_is_stale() {
        assert!(!stale_proposal(&entry(7, 7u64.to_be_bytes().to_vec())));
        assert!(stale_proposal(&entry(8, 7u64.to_be_bytes().to_vec())));
        // Entries without the proposer's term (older logs, internal entries) are applied.
        assert!(!stale_proposal(&entry(8, Vec::new())));
        assert!(!stale_proposal(&entry(8, vec![1, 2, 3])));
    }
}
