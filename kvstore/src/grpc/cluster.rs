//! The Cluster service (membership: add, add as a learner, promote and remove through raft
//! conf changes, peer URL updates through a normal entry, list) and the Maintenance service (Status, Alarm,
//! Defragment, Hash, HashKV, MoveLeader).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::eraftpb::ConfChangeType;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::config;
use crate::error::Error;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, cluster_server::Cluster, maintenance_server::Maintenance,
};
use crate::proto::kvstorepb::internal_request;
use crate::replica::Replica;

/// The client's deadline from its `grpc-timeout` header (e.g. `4998m`), when it sent one.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Refuses a caller without the root role while authentication is on (etcd's
/// `IsAdminPermitted`, which guards membership changes, Hash and HashKV).
fn admin<T>(member: &Replica, req: &Request<T>) -> Result<(), Status> {
    let who = super::caller::caller(member, req)?;
    member.state().read().auth.admin(who.as_deref())?;
    Ok(())
}

/// Peer URLs a member can be given: at least one, each one kvstore can listen on and dial.
fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|u| config::parse_url(u).is_ok())
}

pub struct ClusterService {
    member: Arc<Replica>,
}

impl ClusterService {
    pub fn new(member: Arc<Replica>) -> Self {
        ClusterService { member }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        admin(&self.member, &req)?;
        let req = req.into_inner();
        if !valid_peer_urls(&req.peer_ur_ls) {
            return Err(Error::BadPeerUrls.into());
        }
        let id = {
            let sm = self.member.state().read();
            if sm.members.with_peer_url(&req.peer_ur_ls).is_some() {
                return Err(Error::PeerUrlExists.into());
            }
            // etcd's way: the peer URLs, the cluster and the time (so a member re-added on
            // the same URLs after a removal gets a new id).
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .to_string();
            let cluster = format!("{:x}", self.member.cluster_id);
            let mut parts: Vec<&str> = req.peer_ur_ls.iter().map(String::as_str).collect();
            parts.sort_unstable();
            parts.push(&cluster);
            parts.push(&now);
            let id = config::stable_id(&parts);
            if sm.members.get(id).is_some() || sm.members.is_removed(id) {
                return Err(Error::MemberExists.into());
            }
            let learners = sm.members.list().iter().filter(|m| m.is_learner).count();
            if req.is_learner && learners >= crate::reconfig::MAX_LEARNERS {
                return Err(Error::TooManyLearners.into());
            }
            id
        };
        let change = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.member.may_change_membership(change, id).await?;
        let added = Member {
            id,
            name: String::new(),
            peer_ur_ls: req.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        let members = self
            .member
            .change_membership(change, id, Some(added.clone()))
            .await?;
        Ok(Response::new(MemberAddResponse {
            header: self.member.header(self.member.current_revision()),
            member: Some(added),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        admin(&self.member, &req)?;
        let id = req.into_inner().id;
        {
            let sm = self.member.state().read();
            // A removed id is "not found", as etcd answers.
            if sm.members.get(id).is_none() {
                return Err(Error::MemberNotFound.into());
            }
        }
        self.member
            .may_change_membership(ConfChangeType::RemoveNode, id)
            .await?;
        let members = self
            .member
            .change_membership(ConfChangeType::RemoveNode, id, None)
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.member.header(self.member.current_revision()),
            members,
        }))
    }

    /// etcd's MemberUpdate: new peer URLs for a member, replicated as a normal raft entry
    /// (raft's configuration is unchanged) and checked when applied, as etcd checks its
    /// `ConfChangeUpdateNode`: "member not found", "Peer URLs already exists". Malformed
    /// URLs are refused as MemberAdd refuses them (etcd 3.4's server commits them, and then
    /// its other members panic building a transport to them; its etcdctl refuses them
    /// before sending).
    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let who = super::caller::caller(&self.member, &req)?;
        let req = req.into_inner();
        if !valid_peer_urls(&req.peer_ur_ls) {
            return Err(Error::BadPeerUrls.into());
        }
        let members = match self
            .member
            .propose_as(
                internal_request::Request::MemberUpdate(req),
                Some(who.as_deref().unwrap_or("")),
            )
            .await?
        {
            crate::apply::Applied::Members(list) => list,
            other => {
                return Err(
                    Error::Corrupt(format!("member update answered with {other:?}")).into(),
                );
            }
        };
        Ok(Response::new(MemberUpdateResponse {
            header: self.member.header(self.member.current_revision()),
            members,
        }))
    }

    /// etcd's MemberPromote: a learner in sync with the leader becomes a voter
    /// ([`Replica::promote_learner`]).
    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        admin(&self.member, &req)?;
        let id = req.into_inner().id;
        let members = self.member.promote_learner(id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.member.header(self.member.current_revision()),
            members,
        }))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.member.header(self.member.current_revision()),
            members: self.member.members(),
        }))
    }
}

pub struct MaintenanceService {
    member: Arc<Replica>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Replica>) -> Self {
        MaintenanceService { member }
    }
}

/// A backup's bytes as etcd's Snapshot responses.
type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = SnapshotStream;

    /// etcd's Snapshot: a backup of this member's keyspace, leases and users, taken
    /// without stopping it ([`crate::backup::save`]), in blobs of at most 1 MiB.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        admin(&self.member, &req)?;
        let rx = crate::backup::save::stream(self.member.clone());
        let member = self.member.clone();
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |chunk| {
            let blob = chunk.map_err(Status::from)?;
            Ok(SnapshotResponse {
                header: member.header(member.current_revision()),
                // The size is known only at the end; etcd's clients do not read it.
                remaining_bytes: 0,
                blob: blob.into(),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
    /// etcd's Alarm: GET, ACTIVATE and DEACTIVATE of the replicated alarm list
    /// ([`Replica::alarm`], [`crate::alarm`]).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(self.member.alarm(req.into_inner()).await?))
    }

    /// etcd's Defragment: this member's backend rewritten to its live data
    /// ([`crate::defrag`]); root only while authentication is on, as etcd's.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        admin(&self.member, &req)?;
        tracing::info!("starting defragment");
        self.member
            .defragment()
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "failed to defragment"))?;
        Ok(Response::new(DefragmentResponse {
            header: self.member.header(self.member.current_revision()),
        }))
    }

    /// etcd's HashKV: a checksum of this member's keyspace history up to a revision, equal on
    /// members that applied the same revisions ([`crate::corrupt::hash_kv`]).
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        admin(&self.member, &req)?;
        let rev = req.into_inner().revision;
        Ok(Response::new(
            crate::corrupt::hash_kv(&self.member, rev).await?,
        ))
    }

    /// etcd's Hash (meant for tests): here, the keyspace's HashKV at the latest revision.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        admin(&self.member, &req)?;
        let r = crate::corrupt::hash_kv(&self.member, 0).await?;
        Ok(Response::new(HashResponse {
            header: r.header,
            hash: r.hash,
        }))
    }

    /// etcd's MoveLeader: the leader hands leadership to the target and answers once the
    /// target leads (within the client's deadline, or the request timeout).
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let within = grpc_timeout(&req).unwrap_or(self.member.request_timeout);
        let target = req.into_inner().target_id;
        self.member.move_leader(target, within).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.member.header(self.member.current_revision()),
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.member.status();
        let size = self.member.backend.size_on_disk() as i64;
        let leader = s.leader.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push(Error::NoLeader.to_string());
        }
        // As etcd 3.4: each active alarm, as it prints one (`memberID:… alarm:NOSPACE `).
        errors.extend(self.member.alarms().iter().map(crate::alarm::compact_text));
        Ok(Response::new(StatusResponse {
            header: self.member.header(self.member.current_revision()),
            version: crate::version::ETCD_SERVER.to_string(),
            db_size: size,
            leader,
            // etcd 3.4 reports the committed index as the raft index.
            raft_index: s.commit.load(Ordering::Relaxed),
            raft_term: s.term.load(Ordering::Relaxed),
            raft_applied_index: s.applied.load(Ordering::Relaxed),
            errors,
            db_size_in_use: size,
            is_learner: self.member.is_learner(),
        }))
    }
}
