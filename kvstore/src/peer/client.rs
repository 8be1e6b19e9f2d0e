//! Calls one member makes to another over the peer service: fetching the member list
//! when joining a running cluster, forwarding lease requests to the leader, asking it
//! which peers it hears from, and asking a member for its keyspace hash (the corruption
//! checks, [`crate::corrupt`]).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::Channel;

use super::conn::{self, Dialer};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::peerpb::{
    MembersRequest, MembersResponse, PeerActivityRequest, PeerActivityResponse,
    peer_client::PeerClient,
};

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the members at `urls`, in turn, for the cluster's member list.
pub async fn fetch_members(dialer: &Dialer, urls: &[String]) -> Result<MembersResponse> {
    let mut last = String::from("no peer URL to ask");
    for url in urls {
        let mut c = dialer.client(url)?;
        match tokio::time::timeout(FORWARD_TIMEOUT, c.members(MembersRequest {})).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(s)) => last = format!("{url}: {}", conn::describe(&s)),
            Err(_) => last = format!("{url}: timed out"),
        }
    }
    Err(Error::Config(format!(
        "cannot fetch the member list of the existing cluster ({last})"
    )))
}

/// Clients of other members, by peer URL, reused across calls.
pub struct PeerClients {
    dialer: Dialer,
    clients: Mutex<HashMap<String, PeerClient<Channel>>>,
}

impl PeerClients {
    pub fn new(dialer: Dialer) -> PeerClients {
        PeerClients {
            dialer,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, url: &str) -> Result<PeerClient<Channel>> {
        let mut all = self.clients.lock();
        if let Some(c) = all.get(url) {
            return Ok(c.clone());
        }
        let c = self.dialer.client(url)?;
        all.insert(url.to_string(), c.clone());
        Ok(c)
    }

    pub async fn lease_keep_alive(
        &self,
        url: &str,
        req: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse> {
        let mut c = self.get(url)?;
        forwarded(tokio::time::timeout(FORWARD_TIMEOUT, c.lease_keep_alive(req)).await)
    }

    pub async fn lease_time_to_live(
        &self,
        url: &str,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        let mut c = self.get(url)?;
        forwarded(tokio::time::timeout(FORWARD_TIMEOUT, c.lease_time_to_live(req)).await)
    }
}

impl PeerClients {
    /// The leader's view of its peers' activity (see `reconfig`).
    pub async fn peer_activity(&self, url: &str) -> Result<PeerActivityResponse> {
        let mut c = self.get(url)?;
        forwarded(
            tokio::time::timeout(FORWARD_TIMEOUT, c.peer_activity(PeerActivityRequest {})).await,
        )
    }

    /// The keyspace hash of the member at `url` at `revision`, or why it could not be had
    /// within `within` (a timeout reads as DEADLINE_EXCEEDED).
    pub async fn hash_kv(
        &self,
        url: &str,
        revision: i64,
        within: Duration,
    ) -> std::result::Result<HashKvResponse, tonic::Status> {
        let mut c = self.get(url).map_err(tonic::Status::from)?;
        match tokio::time::timeout(within, c.hash_kv(HashKvRequest { revision })).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {within:?}"
            ))),
        }
    }
}

/// A forwarded call's outcome: an unreachable or no-longer leader reads as "no leader"
/// (the client retries), a timeout as etcd's "request timed out".
fn forwarded<T>(
    r: std::result::Result<
        std::result::Result<tonic::Response<T>, tonic::Status>,
        tokio::time::error::Elapsed,
    >,
) -> Result<T> {
    match r {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Err(Error::LeaseNotFound),
        Ok(Err(_)) => Err(Error::NoLeader),
        Err(_) => Err(Error::Timeout),
    }
}
