//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::caller;
use super::validate;
use crate::apply::Applied;
use crate::auth::perms::Access;
use crate::error::Error;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use crate::proto::kvstorepb::internal_request::Request as Internal;
use crate::replica::Replica;

pub struct KvService {
    member: Arc<Replica>,
}

impl KvService {
    pub fn new(member: Arc<Replica>) -> Self {
        KvService { member }
    }
}

fn unexpected(a: Applied) -> Status {
    Status::internal(format!("unexpected apply result {a:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let req = req.into_inner();
        super::check_size(&self.member, &req)?;
        validate::range(&req)?;
        if !req.serializable {
            // A learner serves serializable reads only, as etcd's.
            if self.member.is_learner() {
                return Err(Error::NotSupportedForLearner.into());
            }
            self.member.read_barrier().await?;
        }
        let sm = self.member.state().read();
        // Checked against the state the read sees (after the barrier): a permission revoked
        // before the read began is gone.
        sm.auth
            .allowed(who.as_deref(), Access::Read, &req.key, &req.range_end)?;
        let current = sm.mvcc.current_revision();
        let res = sm.mvcc.range(&req, current)?;
        drop(sm);
        self.member.metrics().mvcc.range.inc();
        Ok(Response::new(RangeResponse {
            header: self.member.header(current),
            kvs: res.kvs,
            more: res.more,
            count: res.count,
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let req = req.into_inner();
        self.member
            .check_quota(crate::quota::cost_put(&req))
            .await?;
        super::check_size(&self.member, &req)?;
        validate::put(&req)?;
        match self
            .member
            .propose_as(Internal::Put(req), Some(who.as_deref().unwrap_or("")))
            .await?
        {
            Applied::Put(mut r) => {
                self.member.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let req = req.into_inner();
        super::check_size(&self.member, &req)?;
        validate::delete_range(&req)?;
        match self
            .member
            .propose_as(
                Internal::DeleteRange(req),
                Some(who.as_deref().unwrap_or("")),
            )
            .await?
        {
            Applied::DeleteRange(mut r) => {
                self.member.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let req = req.into_inner();
        self.member
            .check_quota(crate::quota::cost_txn(&req))
            .await?;
        super::check_size(&self.member, &req)?;
        validate::txn(&req, self.member.max_txn_ops)?;
        match self
            .member
            .propose_as(Internal::Txn(req), Some(who.as_deref().unwrap_or("")))
            .await?
        {
            Applied::Txn(mut r) => {
                self.member.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let req = req.into_inner();
        {
            // Fail fast without a raft round trip when this member has compacted there
            // already (compactions only move forward, so the cluster has too); apply checks
            // again. Not for a revision beyond this member's: a lagging member (restarted,
            // cut off a while) has not applied revisions the cluster committed and a client
            // may have seen; only the apply, in log order, knows (as in etcd, which checks
            // nothing before proposing).
            let sm = self.member.state().read();
            if req.revision <= sm.mvcc.compact_revision() {
                return Err(Error::Compacted.into());
            }
        }
        match self
            .member
            .propose_as(
                Internal::Compaction(req),
                Some(who.as_deref().unwrap_or("")),
            )
            .await?
        {
            Applied::Compact(mut r) => {
                self.member.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }
}
