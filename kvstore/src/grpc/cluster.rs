//! The Cluster service (membership) and the Maintenance service (Status, Alarm).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberRemoveRequest, MemberRemoveResponse, StatusRequest, StatusResponse,
    alarm_request::AlarmAction, cluster_server::Cluster, maintenance_server::Maintenance,
};
use crate::server::Member;

/// The version reported in Status: the etcd API level this member speaks.
pub const API_VERSION: &str = "3.4.0";

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> Self {
        ClusterService { member }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Error::Unimplemented("kvstore: membership changes are not supported yet").into())
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Error::Unimplemented("kvstore: membership changes are not supported yet").into())
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.member.header(self.member.current_revision()),
            members: self.member.members.clone(),
        }))
    }
}

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> Self {
        MaintenanceService { member }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        match AlarmAction::try_from(req.action) {
            // No alarm is ever raised (no quota, no corruption check), so the list is empty
            // and disarming is a no-op.
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => {
                Ok(Response::new(AlarmResponse {
                    header: self.member.header(self.member.current_revision()),
                    alarms: Vec::new(),
                }))
            }
            _ => Err(Error::Unimplemented("kvstore: raising alarms is not supported").into()),
        }
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.member.status();
        let size = self.member.backend.size_on_disk() as i64;
        Ok(Response::new(StatusResponse {
            header: self.member.header(self.member.current_revision()),
            version: API_VERSION.to_string(),
            db_size: size,
            leader: s.leader.load(Ordering::Relaxed),
            raft_index: s.last_index.load(Ordering::Relaxed),
            raft_term: s.term.load(Ordering::Relaxed),
            raft_applied_index: s.applied.load(Ordering::Relaxed),
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: false,
        }))
    }
}
