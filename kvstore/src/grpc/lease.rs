//! The Lease service: grant, revoke, keep-alive stream, time-to-live, list.
//! Grants and revokes are replicated; keep-alives refresh the leader's countdown only, and
//! reach it (like time-to-live queries) through the member wherever they arrive.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rand::Rng;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::Applied;
use crate::error::Error;
use crate::lease::MAX_TTL;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use crate::proto::kvstorepb::internal_request::Request as Internal;
use crate::replica::Replica;

pub struct LeaseService {
    member: Arc<Replica>,
}

impl LeaseService {
    pub fn new(member: Arc<Replica>) -> Self {
        LeaseService { member }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = super::caller::caller(&self.member, &req)?;
        let mut req = req.into_inner();
        self.member
            .check_quota(crate::quota::LEASE_OVERHEAD)
            .await?;
        if req.ttl > MAX_TTL {
            return Err(Error::LeaseTtlTooLarge.into());
        }
        if req.id == 0 {
            // Chosen before proposing so every member applies the same id.
            req.id = rand::rng().random_range(1..i64::MAX);
        }
        match self
            .member
            .propose_as(
                Internal::LeaseGrant(req),
                Some(who.as_deref().unwrap_or("")),
            )
            .await?
        {
            Applied::LeaseGrant(mut r) => {
                self.member.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = super::caller::caller(&self.member, &req)?;
        match self
            .member
            .propose_as(
                Internal::LeaseRevoke(req.into_inner()),
                Some(who.as_deref().unwrap_or("")),
            )
            .await?
        {
            Applied::LeaseRevoke(mut r) => {
                self.member.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let member = self.member.clone();
        let mut stopping = member.shared.stopping.subscribe();
        let out = async_stream(move |tx| async move {
            loop {
                let next = tokio::select! {
                    n = inbound.next() => n,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                let Some(Ok(r)) = next else { return };
                // An unknown lease answers TTL 0 with no error, as etcd does.
                let ttl = match member.lease_keep_alive(r.id).await {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header: member.header(member.current_revision()),
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(out))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.member.lease_time_to_live(req).await?))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let ids = self.member.state().read().lessor.ids();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.member.header(self.member.current_revision()),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}

/// Runs `f` with the sending half of a channel and returns the receiving half as a
/// response stream.
pub(crate) fn async_stream<T, F, Fut>(
    f: F,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
