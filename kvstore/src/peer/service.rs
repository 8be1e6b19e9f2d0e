//! The `peerpb.Peer` service: receives raft messages and snapshots and hands them to the
//! raft thread; answers the member list; serves the lease requests followers forward and,
//! on the leader, which peers it hears from; answers the keyspace hash the corruption
//! checks compare ([`crate::corrupt`]).
//! Messages from another cluster (a different cluster id) are refused.

use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::node::Msg;
use crate::proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::peerpb::{
    Ack, MembersRequest, MembersResponse, PeerActive, PeerActivityRequest, PeerActivityResponse,
    RaftBatch, SnapshotChunk, peer_server::Peer,
};
use crate::replica::Replica;

/// What a removed member hears when it still sends raft messages.
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

pub struct PeerService {
    member: Arc<Replica>,
}

impl PeerService {
    pub fn new(member: Arc<Replica>) -> Self {
        PeerService { member }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.member.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member belongs to {:x}, the sender to {cluster_id:x}",
                self.member.cluster_id
            )));
        }
        Ok(())
    }

    fn deliver(&self, m: Message) -> Result<(), Status> {
        if self.member.state().read().members.is_removed(m.from) {
            // Tell the sender: it learns it was removed even if it missed the entry.
            return Err(Status::permission_denied(REMOVED));
        }
        if m.to != self.member.member_id {
            // Meant for a member that used to listen here; never step it.
            return Err(Status::failed_precondition(format!(
                "raft message for member {:x} reached member {:x}",
                m.to, self.member.member_id
            )));
        }
        self.member
            .raft_tx()
            .send(Msg::Raft(Box::new(m)))
            .map_err(|_| Status::from(Error::Stopped))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<Ack>, Status> {
        let mut batches = req.into_inner();
        // The sender's counters, looked up once per stream (one stream per sending peer).
        let mut from: Option<(u64, Arc<crate::metrics::peer::PeerStats>)> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            self.check_cluster(batch.cluster_id)?;
            for b in batch.messages {
                let m = Message::parse_from_bytes(&b)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                let stats = match &from {
                    Some((id, s)) if *id == m.from => s,
                    _ => {
                        let s = self.member.metrics().peers.get(m.from);
                        &from.insert((m.from, s)).1
                    }
                };
                stats.received_bytes.add(b.len() as u64);
                self.deliver(m)?;
            }
        }
        Ok(Response::new(Ack {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        let mut chunks = req.into_inner();
        let mut head: Option<Message> = None;
        let mut data = Vec::new();
        while let Some(c) = chunks.next().await {
            let c = c?;
            if head.is_none() {
                self.check_cluster(c.cluster_id)?;
                let m = Message::parse_from_bytes(&c.message)
                    .map_err(|e| Status::invalid_argument(format!("bad snapshot message: {e}")))?;
                head = Some(m);
            }
            data.extend_from_slice(&c.data);
        }
        let mut m = head.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        tracing::info!(
            from = format!("{:x}", m.from),
            index = m.get_snapshot().get_metadata().index,
            bytes = data.len(),
            "snapshot received"
        );
        let stats = self.member.metrics().peers.get(m.from);
        stats.received_bytes.add(data.len() as u64);
        m.mut_snapshot().set_data(data.into());
        self.deliver(m)?;
        Ok(Response::new(Ack {}))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.member.cluster_id,
            members: self.member.members(),
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        let ttl = self.member.renew_lease_here(id)?;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: self.member.header(self.member.current_revision()),
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(
            self.member.lease_time_to_live_here(&req.into_inner())?,
        ))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        Ok(Response::new(
            crate::corrupt::hash_kv(&self.member, rev).await?,
        ))
    }

    async fn peer_activity(
        &self,
        _req: Request<PeerActivityRequest>,
    ) -> Result<Response<PeerActivityResponse>, Status> {
        let a = self.member.peer_activity_here().await?;
        Ok(Response::new(PeerActivityResponse {
            leader: a.leader,
            peers: a
                .active_for
                .into_iter()
                .map(|(id, d)| PeerActive {
                    id,
                    active_ms: d.as_millis() as u64,
                })
                .collect(),
            matched: a.matched,
        }))
    }
}
