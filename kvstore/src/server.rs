//! A running member: opens storage, restores the state machine, starts the raft node
//! loop and serves the etcd v3 gRPC API until shut down. `Member` is the facade the gRPC
//! adapters call: propose a request and wait for its result, wait for a linearizable read
//! barrier, build response headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::RwLock;
use raft::RawNode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::apply::{Applied, StateMachine};
use crate::backend::{Backend, SledBackend, WriteBatch};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::grpc;
use crate::node::{Msg, NodeLoop, NodeOptions, RaftStatus, RequestIds, Shared};
use crate::proto::etcdserverpb::{Member as PbMember, ResponseHeader};
use crate::proto::kvstorepb::{InternalRequest, internal_request};
use crate::raft_log::RaftLog;

/// How long a request waits for raft before etcd's "request timed out".
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// The member as the gRPC layer sees it.
pub struct Member {
    pub(crate) shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<Msg>,
    pub(crate) ids: Arc<RequestIds>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub(crate) members: Vec<PbMember>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_txn_ops: usize,
}

impl Member {
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

    /// Replicates `request` through raft and waits until it is applied.
    pub async fn propose(&self, request: internal_request::Request) -> Result<Applied> {
        let id = self.ids.next();
        let data = prost::Message::encode_to_vec(&InternalRequest {
            id,
            request: Some(request),
        });
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Propose { id, data, tx })
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Waits until this member has applied everything committed before the call.
    pub async fn read_barrier(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::ReadIndex { tx })
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    pub fn status(&self) -> &RaftStatus {
        &self.shared.status
    }

    pub fn state(&self) -> &RwLock<StateMachine> {
        &self.shared.sm
    }

    /// A receiver that changes whenever the current revision does.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.revision.subscribe()
    }
}

/// A started member: its client addresses and the handle to stop it.
pub struct Server {
    /// Addresses the client API is served on.
    pub client_addrs: Vec<SocketAddr>,
    /// Addresses `/health` and `/metrics` are served on.
    pub metrics_addrs: Vec<SocketAddr>,
    metrics_tasks: Vec<tokio::task::JoinHandle<()>>,
    member: Arc<Member>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: tokio::task::JoinHandle<Result<()>>,
    node: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Opens the data dir, restores state, starts raft and binds the client listeners.
    pub async fn start(cfg: Config) -> Result<Server> {
        cfg.validate()?;
        let tls = crate::tls::MemberTls::load(&cfg)?;
        let members = cfg.initial_members()?;
        let token = cfg.initial_cluster_token.clone();
        let pb_members: Vec<PbMember> = members
            .iter()
            .map(|m| PbMember {
                id: config::member_id(&m.peer_urls, &token),
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: if m.name == cfg.name {
                    cfg.advertise_client_urls()
                } else {
                    Vec::new()
                },
                is_learner: false,
            })
            .collect();
        let me = pb_members
            .iter()
            .find(|m| m.name == cfg.name)
            .map(|m| m.id)
            .ok_or_else(|| Error::Config("this member is missing from --initial-cluster".into()))?;
        let mut ids: Vec<u64> = pb_members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        let id_strings: Vec<String> = ids.iter().map(|i| format!("{i:x}")).collect();
        let id_refs: Vec<&str> = id_strings.iter().map(String::as_str).collect();
        let cluster_id = config::stable_id(&id_refs);

        let dir = cfg.data_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("cannot create data dir {}: {e}", dir.display())))?;
        let backend: Arc<dyn Backend> = SledBackend::open(&dir.join("db"))?;
        let sm = StateMachine::load(backend.as_ref())?;
        let applied = sm.applied;
        let (log, fresh) = RaftLog::open(backend.as_ref(), &ids)?;
        if fresh {
            let mut batch = WriteBatch::default();
            let cs = raft::Storage::initial_state(&log)?.conf_state;
            log.save_conf_state(&cs, &mut batch)?;
            backend.write(batch)?;
            backend.sync()?;
        }
        let raft_cfg = raft::Config {
            id: me,
            election_tick: cfg.election_ticks(),
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&raft_cfg, log.clone(), &logger)?;
        if ids.len() == 1 {
            // A lone voter need not wait out an election timeout.
            raw.campaign()?;
        }

        let (rev_tx, _) = tokio::sync::watch::channel(sm.mvcc.current_revision());
        let (stopping, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            sm: RwLock::new(sm),
            status: RaftStatus::default(),
            revision: rev_tx,
            stopping,
        });
        let request_ids = Arc::new(RequestIds::new(me));
        let (tx, rx) = std::sync::mpsc::channel();
        let node_loop = NodeLoop::new(
            raw,
            log,
            backend.clone(),
            shared.clone(),
            NodeOptions {
                tick: cfg.tick(),
                snapshot_count: cfg.snapshot_count.max(1),
                catch_up_entries: cfg.snapshot_count.clamp(1, 5000),
            },
            request_ids.clone(),
        )?;
        let node_shared = shared.clone();
        let node = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                let res = node_loop.run(rx);
                if let Err(e) = &res {
                    tracing::error!(error = %e, "raft node stopped on a storage error");
                }
                node_shared.stopping.send_replace(true);
                res
            })?;

        let member = Arc::new(Member {
            shared,
            tx,
            ids: request_ids,
            member_id: me,
            cluster_id,
            members: pb_members,
            backend,
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
        });

        let mut listeners = Vec::new();
        let mut client_addrs = Vec::new();
        for url in &cfg.listen_client_urls {
            let addr = config::parse_url(url)?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("cannot listen on {url}: {e}")))?;
            client_addrs.push(l.local_addr()?);
            listeners.push((l, tls.grpc_for(url)));
        }
        let mut metrics_addrs = Vec::new();
        let mut metrics_tasks = Vec::new();
        for url in &cfg.listen_metrics_urls {
            let addr = config::parse_url(url)?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("cannot listen on {url}: {e}")))?;
            metrics_addrs.push(l.local_addr()?);
            let l_tls = tls.http_for(url)?;
            metrics_tasks.push(tokio::spawn(crate::http::serve(member.clone(), l, l_tls)));
        }
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(grpc::serve(member.clone(), listeners, shutdown_rx));
        tracing::info!(
            name = %cfg.name,
            member_id = format!("{me:x}"),
            cluster_id = format!("{cluster_id:x}"),
            data_dir = %dir.display(),
            clients = ?client_addrs,
            "kvstore member serving"
        );
        Ok(Server {
            client_addrs,
            metrics_addrs,
            metrics_tasks,
            member,
            shutdown: Some(shutdown_tx),
            serving,
            node: Some(node),
        })
    }

    /// The member facade (for embedders that want in-process access).
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Resolves when the member stops by itself (a fatal storage error).
    pub async fn stopped(&self) {
        let mut rx = self.member.shared.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops serving, stops raft and flushes storage.
    pub async fn shutdown(mut self) -> Result<()> {
        self.member.shared.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = match tokio::time::timeout(Duration::from_secs(2), &mut self.serving).await {
            Ok(r) => r,
            Err(_) => {
                self.serving.abort();
                Ok(Ok(()))
            }
        };
        let _ = self.member.tx.send(Msg::Stop);
        let flushed = self.member.backend.sync();
        if let Some(node) = self.node.take() {
            tokio::task::spawn_blocking(move || node.join())
                .await
                .map_err(|e| Error::Config(format!("raft thread: {e}")))?
                .map_err(|_| Error::Config("raft thread panicked".into()))??;
        }
        flushed?;
        match served {
            Ok(r) => r,
            Err(e) => Err(Error::Config(format!("server task: {e}"))),
        }
    }
}

impl Drop for Server {
    /// A member dropped without `shutdown` still stops: serving ends, the raft loop exits.
    fn drop(&mut self) {
        for t in &self.metrics_tasks {
            t.abort();
        }
        self.member.shared.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.member.tx.send(Msg::Stop);
    }
}

/// Runs a member until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let server = Server::start(cfg).await?;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = server.stopped() => tracing::error!("member stopped on its own"),
    }
    server.shutdown().await
}
