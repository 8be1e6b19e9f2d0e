//! `Replica`: this member's replica of the store, the facade the gRPC adapters call. Propose a request (or a membership
//! change) and wait for its result, wait for a linearizable read barrier, build response
//! headers, and serve lease requests only the leader can answer: locally on the leader,
//! forwarded over the peer service from any other member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use raft::eraftpb::{ConfChange, ConfChangeType};
use tokio::sync::oneshot;

use crate::apply::{Applied, StateMachine};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::node::{Msg, RaftStatus, RequestIds, Shared};
use crate::peer::client::PeerClients;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, LeaseKeepAliveRequest,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, Member, ResponseHeader,
    alarm_request::AlarmAction,
};
use crate::proto::kvstorepb::{ClientAuth, ConfChangeContext, InternalRequest, internal_request};

/// Pause between attempts of a request waiting for a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The member as the gRPC layer sees it.
pub struct Replica {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: std::sync::mpsc::Sender<Msg>,
    pub(crate) ids: Arc<RequestIds>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_txn_ops: usize,
    /// `--quota-backend-bytes` (see [`crate::quota`]).
    pub(crate) quota: crate::quota::Quota,
    /// bcrypt cost of new password hashes (`--bcrypt-cost`).
    pub(crate) bcrypt_cost: u32,
    /// HTTP/2 streams one client connection may have open (`--max-concurrent-streams`).
    pub(crate) max_concurrent_streams: u32,
    /// How long a request waits for raft before etcd's "request timed out".
    pub(crate) request_timeout: Duration,
    /// The raft election timeout: a request that started less than two of these before the
    /// current leader's election and timed out is answered "possibly due to previous leader
    /// failure" (see [`Replica::timed_out`]).
    pub(crate) election_timeout: Duration,
    pub(crate) peers: PeerClients,
    /// Refuse membership changes that would break a quorum (etcd's
    /// `--strict-reconfig-check`).
    pub(crate) strict_reconfig_check: bool,
    /// Client certificates' Common Names name users (`--client-cert-auth`; see
    /// [`crate::grpc::caller`]).
    pub(crate) client_cert_auth: bool,
    /// Where watchers far behind walk the history (see [`crate::catch_up`]).
    pub(crate) catch_up: crate::catch_up::CatchUp,
}

impl Replica {
    /// A full response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.shared.status.term.load(Ordering::Relaxed),
        })
    }

    /// Completes a header that apply filled with a revision only.
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h
            .as_ref()
            .map_or_else(|| self.current_revision(), |h| h.revision);
        *h = self.header(rev);
    }

    pub fn current_revision(&self) -> i64 {
        *self.shared.revision.borrow()
    }

    /// The replicated member list.
    pub fn members(&self) -> Vec<Member> {
        self.shared.sm.read().members.list()
    }

    /// The raft leader's id (0 when none is known).
    pub fn leader(&self) -> u64 {
        self.shared.status.leader.load(Ordering::Relaxed)
    }

    pub(crate) fn raft_tx(&self) -> &std::sync::mpsc::Sender<Msg> {
        &self.tx
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        wait_by(rx, tokio::time::Instant::now() + self.request_timeout).await
    }

    /// The error for a proposal started at `started` that timed out, as etcd words it
    /// (`parseProposeCtxErr`): when the request began within two election timeouts before the
    /// current leader was elected, the previous leader's failure most likely lost it
    /// ("possibly due to previous leader failure"); otherwise "request timed out".
    fn timed_out(&self, started: Instant) -> Error {
        let elected = *self.shared.status.leader_elected.lock();
        timeout_error(started, elected, self.election_timeout)
    }

    /// Polls the published leader until `done` holds for it; false once `within` has passed.
    pub(crate) async fn wait_for_leader(
        &self,
        within: Duration,
        done: impl Fn(u64) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self.leader()) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Replicates `request`, which the members make themselves, through raft and waits
    /// until it is applied.
    pub async fn propose(&self, request: internal_request::Request) -> Result<Applied> {
        self.propose_as(request, None).await
    }

    /// Replicates a client's `request` through raft and waits until it is applied. `user`
    /// is whom the client authenticated as (see [`crate::auth`]); a client request always
    /// carries it (empty without credentials), so apply checks it while auth is on.
    pub async fn propose_as(
        &self,
        request: internal_request::Request,
        user: Option<&str>,
    ) -> Result<Applied> {
        let id = self.ids.next();
        let data = prost::Message::encode_to_vec(&InternalRequest {
            id,
            request: Some(request),
            auth: user.map(|u| ClientAuth {
                username: u.to_string(),
            }),
        });
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        // A proposal lost to a leader change (certainly never applied: an entry of a newer
        // term was applied first, and a late copy of it is skipped on every member, see
        // `node::raft_loop`) is proposed again, as long as the request has time left,
        // rather than failing a client that did nothing wrong. Proposals that arrive with no
        // leader wait in the raft loop until there is one. What still runs out of time is
        // answered as etcd answers it.
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let proposed = Arc::new(AtomicBool::new(false));
        loop {
            let (tx, rx) = oneshot::channel();
            self.tx
                .send(Msg::Propose {
                    id,
                    data: data.clone(),
                    tx,
                    proposed: proposed.clone(),
                })
                .map_err(|_| Error::Stopped)?;
            match wait_by(rx, deadline).await {
                Err(Error::LeaderChanged) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(id, "proposal lost to a leader change; proposing it again");
                }
                Err(Error::LeaderChanged) => return Err(Error::TimeoutDueToLeaderFail),
                // Never taken by raft: no leader the whole time. etcd's proposal then
                // waits for raft to take it until its context ends, and the context's
                // error is the answer.
                Err(Error::Timeout) if !proposed.load(Ordering::Acquire) => {
                    return Err(Error::DeadlineExceeded);
                }
                Err(Error::Timeout) => return Err(self.timed_out(started)),
                other => return other,
            }
        }
    }

    /// Adds (`member` given) or removes member `node_id` through a raft conf change;
    /// returns the member list once the change is applied.
    pub async fn change_membership(
        &self,
        change: ConfChangeType,
        node_id: u64,
        member: Option<Member>,
    ) -> Result<Vec<Member>> {
        self.conf_change(change, node_id, member, false).await
    }

    /// Whether this member is a learner (see [`RaftStatus::learner`]).
    pub fn is_learner(&self) -> bool {
        self.shared.status.learner.load(Ordering::Relaxed)
    }

    /// etcd's MemberPromote: learner `node_id` becomes a voter once the leader sees its log
    /// in sync (at least 90% of the leader's); with `--strict-reconfig-check`, only if the
    /// started voters and the learner make a quorum of the grown cluster. Checked again
    /// when applied: a member that is not a learner is "can only promote a learner member".
    pub async fn promote_learner(&self, node_id: u64) -> Result<Vec<Member>> {
        let activity = self.leader_activity().await?;
        crate::reconfig::check_learner_ready(node_id, &activity)?;
        if self.strict_reconfig_check {
            crate::reconfig::check_started_promote(&self.members())?;
        }
        self.conf_change(ConfChangeType::AddNode, node_id, None, true)
            .await
    }

    async fn conf_change(
        &self,
        change: ConfChangeType,
        node_id: u64,
        member: Option<Member>,
        promote: bool,
    ) -> Result<Vec<Member>> {
        let id = self.ids.next();
        let ctx = ConfChangeContext {
            request_id: id,
            member,
            promote,
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = node_id;
        cc.context = prost::Message::encode_to_vec(&ctx).into();
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        self.tx
            .send(Msg::ConfChange { id, cc, tx })
            .map_err(|_| Error::Stopped)?;
        let applied = match self.wait(rx).await {
            Err(Error::Timeout) => return Err(self.timed_out(started)),
            other => other?,
        };
        match applied {
            Applied::Members(list) => Ok(list),
            other => Err(Error::Corrupt(format!(
                "conf change answered with {other:?}"
            ))),
        }
    }

    /// With `--strict-reconfig-check`, refuses adding (`node_id` unused) or removing member
    /// `node_id` when that would leave too few started members (checked here, on the
    /// replicated member list) or too few members the leader hears from (the leader's
    /// view, asked over the peer service when this member is not the leader).
    pub async fn may_change_membership(&self, change: ConfChangeType, node_id: u64) -> Result<()> {
        if !self.strict_reconfig_check {
            return Ok(());
        }
        let members = self.members();
        // Removing a learner touches no quorum (etcd's mayRemoveMember).
        if change == ConfChangeType::RemoveNode
            && members.iter().any(|m| m.id == node_id && m.is_learner)
        {
            return Ok(());
        }
        match change {
            ConfChangeType::RemoveNode => crate::reconfig::check_started_remove(&members, node_id)?,
            // A learner does not vote: adding one needs no quorum of started members.
            ConfChangeType::AddLearnerNode => {}
            _ => crate::reconfig::check_started_add(&members)?,
        }
        let activity = self.leader_activity().await?;
        let voters: Vec<u64> = crate::reconfig::voters(&members)
            .iter()
            .map(|m| m.id)
            .collect();
        match change {
            ConfChangeType::RemoveNode => {
                crate::reconfig::check_active_remove(&voters, node_id, &activity)
            }
            _ => crate::reconfig::check_active_add(&voters, &activity),
        }
    }

    /// The leader's view of its peers (asked over the peer service when this member is not
    /// the leader).
    async fn leader_activity(&self) -> Result<crate::reconfig::Activity> {
        self.until_leader(|| async {
            match self.leader_url()? {
                None => self.peer_activity_here().await,
                Some(url) => {
                    let r = self.peers.peer_activity(&url).await?;
                    Ok(crate::reconfig::Activity {
                        leader: r.leader,
                        active_for: r
                            .peers
                            .into_iter()
                            .map(|p| (p.id, Duration::from_millis(p.active_ms)))
                            .collect(),
                        matched: r.matched,
                    })
                }
            }
        })
        .await
    }

    /// Which peers this member, the leader, hears from ("no leader" on a follower).
    pub async fn peer_activity_here(&self) -> Result<crate::reconfig::Activity> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::PeerActivity { tx })
            .map_err(|_| Error::Stopped)?;
        self.wait(rx).await
    }

    /// Hands leadership to member `target` and waits until it leads (etcd's `MoveLeader`):
    /// only the leader may be asked; the target must be a member; a transfer that has not
    /// finished within `within` is "leader transfer took too long".
    pub async fn move_leader(&self, target: u64, within: Duration) -> Result<()> {
        if self.leader() != self.member_id {
            return Err(Error::NotLeader);
        }
        if !self
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            return Err(Error::BadLeaderTransferee);
        }
        self.tx
            .send(Msg::TransferLeader { to: target })
            .map_err(|_| Error::Stopped)?;
        // etcd polls its leader once a tick; the status is published by the raft loop.
        if self.wait_for_leader(within, |l| l == target).await {
            Ok(())
        } else {
            Err(Error::LeaderTransferTimeout)
        }
    }

    /// Waits until this member has applied everything committed before the call.
    ///
    /// A leader that is its configuration's only voter knows its commit index without asking
    /// anyone (raft answers its ReadIndex at once): once that index is applied, the read
    /// needs nothing from the raft thread. Otherwise the raft loop runs a ReadIndex round.
    pub async fn read_barrier(&self) -> Result<()> {
        let status = &self.shared.status;
        let solo = status.solo_read_index.load(Ordering::Acquire);
        if solo != 0 && status.applied.load(Ordering::Acquire) >= solo {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::ReadIndex { tx })
            .map_err(|_| Error::Stopped)?;
        self.wait(rx).await
    }

    pub fn status(&self) -> &RaftStatus {
        &self.shared.status
    }

    pub fn state(&self) -> &RwLock<StateMachine> {
        &self.shared.sm
    }

    /// etcd's Alarm. ACTIVATE and DEACTIVATE are replicated through raft and answered once
    /// applied, with the alarm they changed; GET reads this member's list after a
    /// linearizable read barrier (etcd proposes a GET too: the barrier gives the same
    /// guarantee without a log entry). A quota or corruption check raises its alarm through
    /// here: an ACTIVATE with its own member id (see [`crate::alarm`]).
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse> {
        let mut resp = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                self.read_barrier().await?;
                AlarmResponse {
                    header: None,
                    alarms: self.shared.sm.read().alarms.get(req.alarm),
                }
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                match self.propose(internal_request::Request::Alarm(req)).await? {
                    Applied::Alarm(r) => r,
                    other => {
                        return Err(Error::Corrupt(format!("alarm answered with {other:?}")));
                    }
                }
            }
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "kvstore: unknown alarm action {}",
                    req.action
                )));
            }
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// Every active alarm on this member's replica, as `Status.errors` and `/health` report
    /// them.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.shared.sm.read().alarms.get(AlarmType::None as i32)
    }

    /// A receiver that changes whenever the current revision does.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.revision.subscribe()
    }

    /// The peer URL of the leader, or `None` when this member is the leader.
    fn leader_url(&self) -> Result<Option<String>> {
        let leader = self.leader();
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if leader == self.member_id {
            return Ok(None);
        }
        let sm = self.shared.sm.read();
        match sm.members.peer_url(leader) {
            Some(u) => Ok(Some(u.to_string())),
            None => Err(Error::NoLeader),
        }
    }

    /// Refreshes a lease's countdown on the leader, wherever the request arrived;
    /// returns its TTL (0 for an unknown lease, as etcd answers).
    /// Like etcd, a request that finds no leader (an election is on) is retried until
    /// the request timeout.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        self.until_leader(|| async {
            match self.leader_url()? {
                None => self.renew_lease_here(id),
                Some(url) => Ok(self
                    .peers
                    .lease_keep_alive(&url, LeaseKeepAliveRequest { id })
                    .await?
                    .ttl),
            }
        })
        .await
    }

    /// Runs `f` until it succeeds or fails with something else than the lack of a
    /// (reachable) leader, for at most the request timeout.
    async fn until_leader<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            match f().await {
                Err(Error::NoLeader | Error::Timeout)
                    if tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Refreshes a lease on this member, which must be the leader.
    pub fn renew_lease_here(&self, id: i64) -> Result<i64> {
        if self.leader() != self.member_id {
            return Err(Error::NoLeader);
        }
        let ttl = self.shared.sm.write().lessor.renew(id);
        if ttl.is_some() {
            self.shared.metrics.lease.renewed.inc();
        }
        Ok(ttl.unwrap_or(0))
    }

    /// A lease's remaining time, as the leader (which alone counts down) sees it.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.until_leader(|| async {
            match self.leader_url()? {
                None => self.lease_time_to_live_here(&req),
                Some(url) => {
                    let mut r = self.peers.lease_time_to_live(&url, req).await?;
                    r.header = self.header(self.current_revision());
                    Ok(r)
                }
            }
        })
        .await
    }

    /// Answers TimeToLive on this member, which must be the leader.
    pub fn lease_time_to_live_here(
        &self,
        req: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        if self.leader() != self.member_id {
            return Err(Error::NoLeader);
        }
        let info = self.shared.sm.read().lessor.time_to_live(req.id);
        let header = self.header(self.current_revision());
        Ok(match info {
            Some((granted, remaining, keys)) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: remaining,
                granted_ttl: granted,
                keys: if req.keys { keys } else { Vec::new() },
            },
            // An unknown lease answers TTL -1 with no error, as etcd does.
            None => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        })
    }
}

/// etcd's words for a request started at `started` that timed out, the current leader having
/// been elected at `elected`: "possibly due to previous leader failure" when the request began
/// before that election and less than two election timeouts before it (its proposal most
/// likely went to the leader that failed), else "request timed out".
fn timeout_error(started: Instant, elected: Option<Instant>, election_timeout: Duration) -> Error {
    match elected {
        Some(at) if started < at && at.duration_since(started) < 2 * election_timeout => {
            Error::TimeoutDueToLeaderFail
        }
        _ => Error::Timeout,
    }
}

/// The answer on `rx`, "request timed out" at `deadline`, "server stopped" if the raft loop
/// dropped the request.
async fn wait_by<T>(rx: oneshot::Receiver<Result<T>>, deadline: tokio::time::Instant) -> Result<T> {
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(res)) => res,
        Ok(Err(_)) => Err(Error::Stopped),
        Err(_) => Err(Error::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_blamed_on_the_previous_leader_only_just_before_an_election() {
        let election = Duration::from_secs(1);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Started 1.5 s before the current leader's election: the old leader lost it.
        assert!(matches!(
            timeout_error(t0, Some(at(1500)), election),
            Error::TimeoutDueToLeaderFail
        ));
        // Started longer ago than two election timeouts before it, or after it, or with no
        // leader ever seen: a plain timeout.
        assert!(matches!(
            timeout_error(t0, Some(at(2500)), election),
            Error::Timeout
        ));
        assert!(matches!(
            timeout_error(at(100), Some(t0), election),
            Error::Timeout
        ));
        assert!(matches!(timeout_error(t0, None, election), Error::Timeout));
        assert_eq!(
            Error::TimeoutDueToLeaderFail.to_string(),
            "etcdserver: request timed out, possibly due to previous leader failure"
        );
    }
}
