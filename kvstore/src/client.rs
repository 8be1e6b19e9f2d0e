//! An etcd v3 client over the stubs this crate generates from its own `.proto` files, so every
//! part of the workspace that talks to a store (netd, the benchmarks, the tests) builds with
//! Rust alone: no system `protoc`, no third-party client.
//!
//! It speaks only the etcd v3 wire API, so it drives a kvstore member and a real etcd alike.
//! What it adds over the raw stubs is what every caller needed: several endpoints behind one
//! channel (requests go to whichever answers), TLS, connect and request timeouts, HTTP/2
//! keep-alive, and etcd's user/password authentication with the token renewed when the
//! server says it expired. Requests are the generated message types; [`req`] builds the
//! common ones.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// TLS settings for [`ConnectOptions::with_tls`] (what [`crate::tls::client_config`] builds).
pub use tonic::transport::ClientTlsConfig;
use tonic::{Code, Status};

use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, AuthenticateRequest, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, alarm_request::AlarmAction,
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// The server (or the transport under it) answered with a gRPC status. etcd's own
    /// errors carry their `etcdserver: …` text as the message.
    #[error("{}", status_line(.0))]
    Status(#[from] Status),
    #[error("the {0} stream ended before its first answer")]
    StreamEnded(&'static str),
}

/// `message (code)`, one line, the way etcdctl prints a failed request.
fn status_line(s: &Status) -> String {
    let msg = s.message().trim();
    let msg = if msg.is_empty() {
        "no message"
    } else {
        msg.lines().next().unwrap_or("")
    };
    format!("{msg} ({:?})", s.code())
}

impl Error {
    /// The gRPC status code when the server answered, `None` for local errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to reach the store.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    keep_alive: Option<(Duration, Duration)>,
    user: Option<(String, String)>,
}

impl std::fmt::Debug for ConnectOptions {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("keep_alive", &self.keep_alive)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl ConnectOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// TLS for `https://` endpoints (and endpoints given without a scheme).
    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long establishing a connection may take.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// How long a unary request may take (a stream: until its first answer headers).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// HTTP/2 PING every `interval`; the connection is dropped when one is not answered
    /// within `timeout`.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// etcd's user/password authentication: the client logs in at connect and again
    /// whenever the server says the token is no longer valid.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }
}

/// The auth token every request carries once logged in.
#[derive(Default)]
struct Session {
    user: Option<(String, String)>,
    token: RwLock<Option<AsciiMetadataValue>>,
}

/// Adds the session's token (etcd's `token` metadata) to each request.
#[derive(Clone)]
pub struct TokenInterceptor(Arc<Session>);

impl Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, Status> {
        if let Some(t) = self.0.token.read().clone() {
            req.metadata_mut().insert("token", t);
        }
        Ok(req)
    }
}

/// The channel every generated stub of a [`Client`] runs over.
pub type Service = InterceptedService<Channel, TokenInterceptor>;

/// A client of one store (one or more endpoints). Cheap to clone; clones share the
/// connections and the login.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    session: Arc<Session>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// `host:port` becomes `http://host:port` (`https://` with TLS), as etcdctl reads endpoints.
fn endpoint_url(e: &str, tls: bool) -> String {
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl Client {
    /// A client of the store at `endpoints`. Connections are made on first use (a store that
    /// is down is not an error here, the first request says so), except that with a user set
    /// the client logs in now, so wrong credentials fail at once.
    pub async fn connect<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
        options: Option<ConnectOptions>,
    ) -> Result<Client> {
        let opts = options.unwrap_or_default();
        let mut list = Vec::new();
        for e in endpoints {
            let e = e.as_ref().trim();
            if e.is_empty() {
                continue;
            }
            list.push(Self::endpoint(e, &opts)?);
        }
        let channel = match list.len() {
            0 => return Err(Error::NoEndpoints),
            1 => list.remove(0).connect_lazy(),
            _ => Channel::balance_list(list.into_iter()),
        };
        let client = Client {
            channel,
            session: Arc::new(Session {
                user: opts.user,
                token: RwLock::new(None),
            }),
        };
        if client.session.user.is_some() {
            client.authenticate().await?;
        }
        Ok(client)
    }

    fn endpoint(e: &str, opts: &ConnectOptions) -> Result<Endpoint> {
        let bad = |reason: String| Error::Endpoint {
            endpoint: e.to_string(),
            reason,
        };
        let url = endpoint_url(e, opts.tls.is_some());
        let mut ep = Endpoint::from_shared(url).map_err(|err| bad(err.to_string()))?;
        if let Some(d) = opts.connect_timeout {
            ep = ep.connect_timeout(d);
        }
        if let Some(d) = opts.timeout {
            ep = ep.timeout(d);
        }
        if let Some((interval, timeout)) = opts.keep_alive {
            ep = ep
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        if let Some(tls) = &opts.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|err| bad(err.to_string()))?;
        }
        Ok(ep)
    }

    /// Logs in with the configured user and keeps the token for the requests that follow.
    async fn authenticate(&self) -> Result<()> {
        let Some((name, password)) = self.session.user.clone() else {
            return Ok(());
        };
        let resp = AuthClient::new(self.channel.clone())
            .authenticate(AuthenticateRequest { name, password })
            .await?
            .into_inner();
        let token = AsciiMetadataValue::try_from(resp.token.as_str())
            .map_err(|_| Status::internal("the server sent an auth token that is not ASCII"))?;
        *self.session.token.write() = Some(token);
        Ok(())
    }

    /// Runs `call`; when the server says the token expired, logs in again and runs it once
    /// more.
    async fn with_login<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        match call().await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if self.token_rejected(&s) => {
                self.authenticate().await?;
                Ok(call().await?.into_inner())
            }
            Err(s) => Err(s.into()),
        }
    }

    fn token_rejected(&self, s: &Status) -> bool {
        self.session.user.is_some()
            && s.code() == Code::Unauthenticated
            && s.message().contains("invalid auth token")
    }

    fn interceptor(&self) -> TokenInterceptor {
        TokenInterceptor(self.session.clone())
    }

    /// The generated KV stub, for requests the helpers below do not cover.
    pub fn kv_client(&self) -> KvClient<Service> {
        KvClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    pub fn watch_client(&self) -> WatchClient<Service> {
        WatchClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    pub fn lease_client(&self) -> LeaseClient<Service> {
        LeaseClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    pub fn cluster_client(&self) -> ClusterClient<Service> {
        ClusterClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    pub fn maintenance_client(&self) -> MaintenanceClient<Service> {
        MaintenanceClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        self.with_login(|| {
            let mut c = self.kv_client();
            let r = r.clone();
            async move { c.range(r).await }
        })
        .await
    }

    /// One key (the latest revision, linearizable).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<RangeResponse> {
        self.range(req::get(key)).await
    }

    /// Every key starting with `prefix`.
    pub async fn get_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<RangeResponse> {
        self.range(req::prefix(prefix)).await
    }

    pub async fn put(&self, r: PutRequest) -> Result<PutResponse> {
        self.with_login(|| {
            let mut c = self.kv_client();
            let r = r.clone();
            async move { c.put(r).await }
        })
        .await
    }

    /// `key = value`, no lease.
    pub async fn put_kv(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<PutResponse> {
        self.put(req::put(key, value)).await
    }

    pub async fn delete_range(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.with_login(|| {
            let mut c = self.kv_client();
            let r = r.clone();
            async move { c.delete_range(r).await }
        })
        .await
    }

    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse> {
        self.with_login(|| {
            let mut c = self.kv_client();
            let r = r.clone();
            async move { c.txn(r).await }
        })
        .await
    }

    /// Compacts history before `revision`; `physical` waits until it is gone from the backend.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        self.with_login(|| {
            let mut c = self.kv_client();
            async move { c.compact(CompactionRequest { revision, physical }).await }
        })
        .await
    }

    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        self.with_login(|| {
            let mut c = self.lease_client();
            async move { c.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await }
        })
        .await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.with_login(|| {
            let mut c = self.lease_client();
            async move { c.lease_revoke(LeaseRevokeRequest { id }).await }
        })
        .await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.with_login(|| {
            let mut c = self.lease_client();
            async move {
                c.lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                    .await
            }
        })
        .await
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        self.with_login(|| {
            let mut c = self.lease_client();
            async move { c.lease_leases(LeaseLeasesRequest {}).await }
        })
        .await
    }

    /// A keep-alive stream for lease `id`; each [`LeaseKeeper::keep_alive`] is one renewal
    /// on it. The stream opens with the first renewal (a gRPC server may hold back a
    /// stream's response headers until it has an answer to send).
    pub fn lease_keep_alive(&self, id: i64) -> LeaseKeeper {
        LeaseKeeper {
            client: self.clone(),
            id,
            stream: None,
        }
    }

    /// One keep-alive round trip on a stream of its own; returns the lease's TTL after it
    /// (0 or less: the lease no longer exists).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        self.lease_keep_alive(id).keep_alive().await
    }

    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.with_login(|| {
            let mut c = self.cluster_client();
            async move {
                c.member_list(MemberListRequest {
                    linearizable: false,
                })
                .await
            }
        })
        .await
    }

    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse> {
        self.with_login(|| {
            let mut c = self.cluster_client();
            let peer_ur_ls = peer_urls.clone();
            async move {
                c.member_add(MemberAddRequest {
                    peer_ur_ls,
                    is_learner,
                })
                .await
            }
        })
        .await
    }

    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        self.with_login(|| {
            let mut c = self.cluster_client();
            async move { c.member_remove(MemberRemoveRequest { id }).await }
        })
        .await
    }

    /// Gives member `id` new peer URLs (etcd's MemberUpdate); the member list after it.
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse> {
        self.with_login(|| {
            let mut c = self.cluster_client();
            let peer_ur_ls = peer_urls.clone();
            async move {
                c.member_update(MemberUpdateRequest { id, peer_ur_ls })
                    .await
            }
        })
        .await
    }

    /// etcd's Alarm: `action` (GET, ACTIVATE, DEACTIVATE) on the alarm of type `alarm` of
    /// member `member_id`; GET with NONE lists every alarm.
    pub async fn alarm(
        &self,
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    ) -> Result<AlarmResponse> {
        self.with_login(|| {
            let mut c = self.maintenance_client();
            let r = AlarmRequest {
                action: action as i32,
                member_id,
                alarm: alarm as i32,
            };
            async move { c.alarm(r).await }
        })
        .await
    }

    /// The status of whichever member answers.
    pub async fn status(&self) -> Result<StatusResponse> {
        self.with_login(|| {
            let mut c = self.maintenance_client();
            async move { c.status(StatusRequest {}).await }
        })
        .await
    }

    /// Opens a watch and waits until the server has created it. The stream's first message
    /// is then the first after creation (events, a progress notification, or a cancel).
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<WatchStream> {
        match self.open_watch(create.clone()).await {
            Err(Error::Status(s)) if self.token_rejected(&s) => {
                self.authenticate().await?;
                self.open_watch(create).await
            }
            other => other,
        }
    }

    async fn open_watch(&self, create: WatchCreateRequest) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(4);
        // The channel was just made with room to spare, so this cannot fail.
        let _ = tx.try_send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        });
        let responses = self
            .watch_client()
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        WatchStream::created(tx, responses).await
    }
}

/// A keep-alive stream for one lease.
pub struct LeaseKeeper {
    client: Client,
    id: i64,
    stream: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        tonic::Streaming<LeaseKeepAliveResponse>,
    )>,
}

impl LeaseKeeper {
    /// Renews the lease once; returns its TTL after renewal (0 or less: it no longer exists).
    /// After an error the next call opens a new stream.
    pub async fn keep_alive(&mut self) -> Result<i64> {
        let answer = match &mut self.stream {
            Some((requests, responses)) => {
                let sent = requests.send(LeaseKeepAliveRequest { id: self.id }).await;
                match sent {
                    Ok(()) => responses.message().await.map_err(Error::from),
                    Err(_) => Err(Error::StreamEnded("lease keep-alive")),
                }
            }
            None => self.open().await,
        };
        match answer {
            Ok(Some(resp)) => Ok(resp.ttl),
            Ok(None) => {
                self.stream = None;
                Err(Error::StreamEnded("lease keep-alive"))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Opens the stream with the first renewal already queued and returns its answer.
    async fn open(&mut self) -> Result<Option<LeaseKeepAliveResponse>> {
        let client = self.client.clone();
        let id = self.id;
        let open = || async {
            let (tx, rx) = mpsc::channel(1);
            // The channel was just made with room for one, so this cannot fail.
            let _ = tx.try_send(LeaseKeepAliveRequest { id });
            let responses = client
                .lease_client()
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?
                .into_inner();
            Ok::<_, Error>((tx, responses))
        };
        let (tx, mut responses) = match open().await {
            Err(Error::Status(s)) if client.token_rejected(&s) => {
                client.authenticate().await?;
                open().await?
            }
            other => other?,
        };
        let first = responses.message().await?;
        self.stream = Some((tx, responses));
        Ok(first)
    }
}

/// One watch: its events arrive through [`WatchStream::message`]. Dropping it ends the
/// watch (the request stream closes, and the server cancels it).
pub struct WatchStream {
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
    watch_id: i64,
    pending: Option<WatchResponse>,
}

impl WatchStream {
    async fn created(
        requests: mpsc::Sender<WatchRequest>,
        mut responses: tonic::Streaming<WatchResponse>,
    ) -> Result<WatchStream> {
        let first = responses
            .message()
            .await?
            .ok_or(Error::StreamEnded("watch"))?;
        let watch_id = first.watch_id;
        // A plain "created" answer is consumed; one that also carries a cancel (a compacted
        // start revision, say) or events is handed to the caller.
        let pending = if first.created && !first.canceled && first.events.is_empty() {
            None
        } else {
            Some(first)
        };
        Ok(WatchStream {
            requests,
            responses,
            watch_id,
            pending,
        })
    }

    /// The id the server gave this watch.
    pub fn watch_id(&self) -> i64 {
        self.watch_id
    }

    /// The next response; `None` when the server closed the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        Ok(self.responses.message().await?)
    }

    /// Asks the server to cancel the watch; the stream then yields the cancel answer.
    pub async fn cancel(&mut self) -> Result<()> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: self.watch_id,
        }))
        .await
    }

    /// Asks for a progress notification (the store's current revision).
    pub async fn request_progress(&mut self) -> Result<()> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }

    async fn send(&mut self, r: RequestUnion) -> Result<()> {
        self.requests
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .map_err(|_| Error::StreamEnded("watch"))
    }
}

/// Builders for the requests callers make most.
pub mod req {
    use super::*;
    use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use crate::proto::etcdserverpb::{Compare, RequestOp, request_op::Request};

    fn bytes(b: impl AsRef<[u8]>) -> Bytes {
        Bytes::copy_from_slice(b.as_ref())
    }

    /// The end of the range holding every key that starts with `prefix` (etcd's rule: the
    /// prefix with its last byte below 0xff incremented; all of the keyspace for an empty or
    /// all-0xff prefix).
    pub fn prefix_end(prefix: &[u8]) -> Bytes {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Bytes::from(end);
            }
        }
        Bytes::from_static(b"\0")
    }

    pub fn get(key: impl AsRef<[u8]>) -> RangeRequest {
        RangeRequest {
            key: bytes(key),
            ..Default::default()
        }
    }

    pub fn prefix(prefix: impl AsRef<[u8]>) -> RangeRequest {
        let p = prefix.as_ref();
        RangeRequest {
            key: bytes(p),
            range_end: prefix_end(p),
            ..Default::default()
        }
    }

    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> PutRequest {
        PutRequest {
            key: bytes(key),
            value: bytes(value),
            ..Default::default()
        }
    }

    pub fn delete(key: impl AsRef<[u8]>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: bytes(key),
            ..Default::default()
        }
    }

    pub fn delete_prefix(prefix: impl AsRef<[u8]>) -> DeleteRangeRequest {
        let p = prefix.as_ref();
        DeleteRangeRequest {
            key: bytes(p),
            range_end: prefix_end(p),
            ..Default::default()
        }
    }

    /// A watch of one key from `start_revision` (0: from now).
    pub fn watch(key: impl AsRef<[u8]>, start_revision: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: bytes(key),
            start_revision,
            ..Default::default()
        }
    }

    /// A watch of every key under `prefix` from `start_revision` (0: from now).
    pub fn watch_prefix(prefix: impl AsRef<[u8]>, start_revision: i64) -> WatchCreateRequest {
        let p = prefix.as_ref();
        WatchCreateRequest {
            key: bytes(p),
            range_end: prefix_end(p),
            start_revision,
            ..Default::default()
        }
    }

    fn compare(
        key: impl AsRef<[u8]>,
        result: CompareResult,
        target: CompareTarget,
        value: TargetUnion,
    ) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: bytes(key),
            target_union: Some(value),
            range_end: Bytes::new(),
        }
    }

    /// `version(key) <result> version` (version 0: the key does not exist).
    pub fn version_is(key: impl AsRef<[u8]>, result: CompareResult, version: i64) -> Compare {
        compare(
            key,
            result,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }

    /// `mod_revision(key) <result> revision`.
    pub fn mod_revision_is(key: impl AsRef<[u8]>, result: CompareResult, revision: i64) -> Compare {
        compare(
            key,
            result,
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision),
        )
    }

    /// `create_revision(key) <result> revision`.
    pub fn create_revision_is(
        key: impl AsRef<[u8]>,
        result: CompareResult,
        revision: i64,
    ) -> Compare {
        compare(
            key,
            result,
            CompareTarget::Create,
            TargetUnion::CreateRevision(revision),
        )
    }

    /// `value(key) <result> value`.
    pub fn value_is(
        key: impl AsRef<[u8]>,
        result: CompareResult,
        value: impl AsRef<[u8]>,
    ) -> Compare {
        compare(
            key,
            result,
            CompareTarget::Value,
            TargetUnion::Value(bytes(value)),
        )
    }

    pub fn op_put(p: PutRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(p)),
        }
    }

    pub fn op_range(r: RangeRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(r)),
        }
    }

    pub fn op_delete(d: DeleteRangeRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(d)),
        }
    }

    /// `if compare then success else failure`.
    pub fn txn(
        compare: impl IntoIterator<Item = Compare>,
        success: impl IntoIterator<Item = RequestOp>,
        failure: impl IntoIterator<Item = RequestOp>,
    ) -> TxnRequest {
        TxnRequest {
            compare: compare.into_iter().collect(),
            success: success.into_iter().collect(),
            failure: failure.into_iter().collect(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn prefix_end_follows_etcd() {
            assert_eq!(&prefix_end(b"a/")[..], b"a0");
            assert_eq!(&prefix_end(b"a\xff")[..], b"b");
            assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
            assert_eq!(&prefix_end(b"")[..], b"\0");
        }

        #[test]
        fn endpoints_get_a_scheme() {
            assert_eq!(endpoint_url("10.0.0.1:2379", false), "http://10.0.0.1:2379");
            assert_eq!(endpoint_url("10.0.0.1:2379", true), "https://10.0.0.1:2379");
            assert_eq!(endpoint_url("http://a:1", true), "http://a:1");
        }
    }
}
