//! A running member: opens storage, decides its identity (`bootstrap`), starts the raft
//! node loop and the peer transport, serves the peer service on the peer URLs and the
//! etcd v3 gRPC API on the client URLs until shut down, and publishes its name and client
//! URLs to the replicated member list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use raft::RawNode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::backend::{Backend, SledBackend};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::grpc;
use crate::node::{Msg, NodeLoop, NodeOptions, RaftStatus, RequestIds, Shared};
use crate::peer;
use crate::proto::kvstorepb::{MemberAttributes, internal_request};
use crate::replica::Replica;

/// A started member: its client addresses and the handle to stop it.
pub struct Server {
    /// Addresses the client API is served on.
    pub client_addrs: Vec<SocketAddr>,
    /// Addresses the peer service is served on.
    pub peer_addrs: Vec<SocketAddr>,
    /// Addresses `/health`, `/version` and `/metrics` are served on.
    pub metrics_addrs: Vec<SocketAddr>,
    /// Metrics and peer listeners, publishing: aborted when the member stops.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    member: Arc<Replica>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: tokio::task::JoinHandle<Result<()>>,
    node: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Opens the data dir, restores state, starts raft and binds the peer and client
    /// listeners, in that order of steps: [`Listeners::bind`] (a port in use fails the start
    /// before anything is written), storage and identity ([`crate::bootstrap`]), the initial
    /// corruption check when asked ([`crate::corrupt`]), [`raft_node`],
    /// [`start_raft_thread`], then [`serve`].
    pub async fn start(cfg: Config) -> Result<Server> {
        cfg.validate()?;
        let tls = crate::tls::MemberTls::load(&cfg)?;
        let dir = cfg.data_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("cannot create data dir {}: {e}", dir.display())))?;
        let listeners = Listeners::bind(&cfg, &tls).await?;
        let backend: Arc<dyn Backend> = SledBackend::open(&dir.join("db"))?;
        let wal = crate::wal::recover(&dir.join("wal"), backend.as_ref())?;
        let mut start = crate::bootstrap::start(&cfg, backend.as_ref(), &listeners.dialer).await?;
        start.sm.tokens =
            crate::auth::tokens::Tokens::new(std::time::Duration::from_secs(cfg.auth_token_ttl));
        let (me, cluster_id) = (start.me, start.cluster_id);
        if cfg.experimental_initial_corrupt_check {
            let within = cfg.request_timeout();
            crate::corrupt::initial_check(me, cluster_id, &start.sm, &listeners.dialer, within)
                .await?;
        }
        let raw = raft_node(&cfg, &start)?;
        let request_timeout = cfg.request_timeout();
        let raft = start_raft_thread(&cfg, raw, start, backend.clone(), &listeners.dialer, wal)?;
        let member = Arc::new(Replica {
            shared: raft.shared,
            tx: raft.tx,
            ids: raft.ids,
            member_id: me,
            cluster_id,
            backend,
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            quota: crate::quota::Quota::from_flag(cfg.quota_backend_bytes),
            bcrypt_cost: cfg.bcrypt_cost,
            request_timeout,
            election_timeout: Duration::from_millis(cfg.election_timeout),
            peers: peer::client::PeerClients::new(listeners.dialer.clone()),
            strict_reconfig_check: cfg.strict_reconfig_check,
            client_cert_auth: cfg.client_cert_auth,
            catch_up: crate::catch_up::CatchUp::start()?,
            max_concurrent_streams: cfg.max_concurrent_streams,
        });
        member
            .shared
            .metrics
            .server
            .quota_backend_bytes
            .set(crate::quota::Quota::metric(cfg.quota_backend_bytes));
        let mut served = serve(&cfg, &tls, &member, listeners).await?;
        served.tasks.extend(crate::compactor::spawn(
            member.clone(),
            cfg.auto_compaction()?,
            Duration::from_millis(cfg.auto_compaction_revision_interval_ms.max(1)),
        ));
        served.tasks.extend(crate::corrupt::spawn(
            member.clone(),
            cfg.corrupt_check_time()?,
        ));
        tracing::info!(
            name = %cfg.name,
            member_id = format!("{me:x}"),
            cluster_id = format!("{cluster_id:x}"),
            data_dir = %dir.display(),
            clients = ?served.client_addrs,
            peers = ?served.peer_addrs,
            "kvstore member serving"
        );
        Ok(Server {
            client_addrs: served.client_addrs,
            peer_addrs: served.peer_addrs,
            metrics_addrs: served.metrics_addrs,
            tasks: served.tasks,
            member,
            shutdown: Some(served.shutdown),
            serving: served.serving,
            node: Some(raft.thread),
        })
    }

    /// The member facade (for embedders that want in-process access).
    pub fn member(&self) -> &Arc<Replica> {
        &self.member
    }

    /// Resolves when the member stops by itself (a fatal storage error).
    pub async fn stopped(&self) {
        let mut rx = self.member.shared.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops serving, stops raft and flushes storage.
    pub async fn shutdown(mut self) -> Result<()> {
        self.hand_off_leadership().await;
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
        // The raft thread writes what it still holds and flushes the backend as it ends.
        // Bounded: after a storage failure (say the data dir was deleted under it) sled's
        // flush can wait forever, and the process would never exit. The journal holds
        // whatever the flush would have made durable.
        if let Some(node) = self.node.take() {
            let joined = tokio::task::spawn_blocking(move || node.join());
            tokio::time::timeout(FINAL_FLUSH, joined)
                .await
                .map_err(|_| {
                    Error::Shutdown(format!(
                        "storage flush did not finish in {} s",
                        FINAL_FLUSH.as_secs()
                    ))
                })?
                .map_err(|e| Error::Shutdown(format!("waiting for the raft thread: {e}")))?
                .map_err(|_| Error::Shutdown("the raft thread panicked".into()))??;
        }
        match served {
            Ok(r) => r,
            Err(e) => Err(Error::Shutdown(format!("the client serving task: {e}"))),
        }
    }
}

impl Server {
    /// A leader that stops first hands leadership to its most caught-up peer and waits (up to
    /// the request timeout) until that peer leads, as etcd's graceful stop does: the cluster
    /// then never waits an election timeout for a new leader on a planned restart.
    async fn hand_off_leadership(&self) {
        let m = &self.member;
        if m.leader() != m.member_id || m.members().len() < 2 {
            return;
        }
        if m.tx.send(Msg::HandOffLeadership).is_err() {
            return;
        }
        let started = tokio::time::Instant::now();
        let me = m.member_id;
        // Until another member leads (not merely until this one stepped down: it may then
        // stop while the transferee's election is still under way, and a vote it no
        // longer gives can cost an election timeout).
        if !m
            .wait_for_leader(m.request_timeout, |l| l != me && l != 0)
            .await
        {
            tracing::warn!("leadership transfer before stopping took too long; stopping anyway");
            return;
        }
        tracing::info!(
            new_leader = format!("{:x}", m.leader()),
            took_ms = started.elapsed().as_millis() as u64,
            "handed leadership over before stopping"
        );
    }
}

impl Drop for Server {
    /// A member dropped without `shutdown` still stops: serving ends, the raft loop exits.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.member.shared.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.member.tx.send(Msg::Stop);
    }
}

/// The listeners, bound before anything is written, and how to dial other members.
struct Listeners {
    peer: Vec<(TcpListener, tonic::transport::Server)>,
    client: Vec<(TcpListener, Option<Arc<rustls::ServerConfig>>)>,
    dialer: peer::conn::Dialer,
}

impl Listeners {
    /// Binds the peer and client URLs, with TLS where the URL is https.
    async fn bind(cfg: &Config, tls: &crate::tls::MemberTls) -> Result<Listeners> {
        let mut peer = Vec::new();
        for (l, u) in bind_all(&cfg.listen_peer_urls)
            .await?
            .into_iter()
            .zip(&cfg.listen_peer_urls)
        {
            let server_tls = match &tls.peer {
                Some(t) if config::is_https(u) => Some(t.grpc_server()),
                _ => None,
            };
            peer.push((l, peer::conn::server(server_tls)?));
        }
        let mut client = Vec::new();
        for (l, url) in bind_all(&cfg.listen_client_urls)
            .await?
            .into_iter()
            .zip(&cfg.listen_client_urls)
        {
            client.push((l, tls.grpc_for(url)?));
        }
        let dialer = match &tls.peer {
            Some(t) if t.has_ca() => peer::conn::Dialer::new(Some(t.grpc_client()?)),
            _ => peer::conn::Dialer::default(),
        };
        Ok(Listeners {
            peer,
            client,
            dialer,
        })
    }
}

/// The raft node this member runs, from its stored log and state.
fn raft_node(
    cfg: &Config,
    start: &crate::bootstrap::Start,
) -> Result<RawNode<crate::raft_log::RaftLog>> {
    let me = start.me;
    let state = raft::Storage::initial_state(&start.log)?;
    let voters = state.conf_state.voters;
    // What this member restarts from, as etcd logs it ("restarting local member"): a log
    // shorter than what a leader believes this member holds shows here.
    let (first, last) = start.log.span();
    tracing::info!(
        first_index = first,
        last_index = last,
        term = state.hard_state.term,
        commit = state.hard_state.commit,
        applied = start.sm.applied,
        "raft log loaded"
    );
    let raft_cfg = crate::node::raft_config(me, cfg.election_ticks(), start.sm.applied);
    raft_cfg.validate()?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&raft_cfg, start.log.clone(), &logger)?;
    if voters == [me] {
        // A lone voter need not wait out an election timeout.
        raw.campaign()?;
    }
    Ok(raw)
}

/// The running raft thread and what the member shares with it.
struct RaftThread {
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<Msg>,
    ids: Arc<RequestIds>,
    thread: std::thread::JoinHandle<Result<()>>,
}

/// Starts the raft loop on a thread of its own; when it ends (on a storage error, or when
/// told to stop), the member is marked stopping.
fn start_raft_thread(
    cfg: &Config,
    raw: RawNode<crate::raft_log::RaftLog>,
    start: crate::bootstrap::Start,
    backend: Arc<dyn Backend>,
    dialer: &peer::conn::Dialer,
    wal: crate::wal::Wal,
) -> Result<RaftThread> {
    let me = start.me;
    let (rev_tx, _) = tokio::sync::watch::channel(start.sm.mvcc.current_revision());
    let (stopping, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        sm: RwLock::new(start.sm),
        status: RaftStatus::default(),
        revision: rev_tx,
        stopping,
        removed: Default::default(),
        metrics: Arc::new(crate::metrics::Metrics::new()),
    });
    let ids = Arc::new(RequestIds::new(me));
    let (tx, rx) = std::sync::mpsc::channel();
    let transport = Arc::new(peer::Transport::new(
        me,
        start.cluster_id,
        tx.clone(),
        tokio::runtime::Handle::current(),
        dialer.clone(),
        shared.metrics.clone(),
    ));
    let node_loop = NodeLoop::new(
        raw,
        start.log,
        backend,
        shared.clone(),
        NodeOptions {
            tick: cfg.tick(),
            snapshot_count: cfg.snapshot_count.max(1),
            catch_up_entries: cfg.snapshot_count.clamp(1, 5000),
            read_timeout: cfg.request_timeout(),
            read_retry: (cfg.tick() * 3).max(Duration::from_millis(100)),
            peer_timeout: Duration::from_millis(cfg.election_timeout.max(1)),
        },
        ids.clone(),
        transport,
        me,
        wal,
    )?;
    let node_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let res = node_loop.run(rx);
            if let Err(e) = &res {
                tracing::error!(error = %e, "raft node stopped on a storage error");
            }
            node_shared.stopping.send_replace(true);
            res
        })?;
    Ok(RaftThread {
        shared,
        tx,
        ids,
        thread,
    })
}

/// What [`serve`] started.
struct Serving {
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    metrics_addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<()>>,
}

/// Serves `/health`, `/version` and `/metrics`, the peer service, and (once this member is published in
/// the member list) the client API.
async fn serve(
    cfg: &Config,
    tls: &crate::tls::MemberTls,
    member: &Arc<Replica>,
    listeners: Listeners,
) -> Result<Serving> {
    let mut client_addrs = Vec::new();
    for (l, _) in &listeners.client {
        client_addrs.push(l.local_addr()?);
    }
    let mut peer_addrs = Vec::new();
    for (l, _) in &listeners.peer {
        peer_addrs.push(l.local_addr()?);
    }
    let mut metrics_addrs = Vec::new();
    let mut tasks = Vec::new();
    for (url, l) in cfg
        .listen_metrics_urls
        .iter()
        .zip(bind_all(&cfg.listen_metrics_urls).await?)
    {
        metrics_addrs.push(l.local_addr()?);
        let l_tls = tls.http_for(url)?;
        tasks.push(tokio::spawn(crate::http::serve(member.clone(), l, l_tls)));
    }
    for (l, server) in listeners.peer {
        tasks.push(tokio::spawn(serve_peers(member.clone(), l, server)));
    }
    let attrs = MemberAttributes {
        id: member.member_id,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls(),
    };
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    // As etcd, clients are served once the member list shows this member's client URLs
    // (so `endpoint status --cluster` finds every serving member).
    let serving = tokio::spawn({
        let member = member.clone();
        let client = listeners.client;
        async move {
            publish(&member, attrs).await;
            grpc::serve(member, client, shutdown_rx).await
        }
    });
    Ok(Serving {
        client_addrs,
        peer_addrs,
        metrics_addrs,
        tasks,
        shutdown,
        serving,
    })
}

/// How long a stopping member waits for its raft thread's final writes and flush.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// Runs a member until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let server = Server::start(cfg).await?;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = server.stopped() => {
            if server.member.shared.removed.load(std::sync::atomic::Ordering::Acquire) {
                tracing::warn!("this member was removed from the cluster");
            } else {
                tracing::error!("member stopped on its own");
            }
        }
    }
    server.shutdown().await
}

/// Binds a listener for each URL, with the kernel's largest accept queue (as Go's listeners,
/// and so etcd's, take `net.core.somaxconn`): with the default of 128, thousands of clients
/// connecting at once (a fleet's hosts starting together) overflow the queue, their SYNs
/// are dropped and retried a second or more later, and their connect timeouts expire.
async fn bind_all(urls: &[String]) -> Result<Vec<TcpListener>> {
    let backlog = accept_backlog();
    let mut out = Vec::new();
    for url in urls {
        let addr = config::parse_url(url)?;
        let listen = || -> std::io::Result<TcpListener> {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            sock.bind(addr)?;
            sock.listen(backlog)
        };
        let l = listen().map_err(|source| Error::Listen {
            url: url.clone(),
            source,
        })?;
        out.push(l);
    }
    Ok(out)
}

/// `net.core.somaxconn` (the kernel caps a listener's queue there), 4096 when unreadable.
fn accept_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4096)
        .min(65_535)
}

/// Serves the peer service on `listener` with `server` (TLS or not) until the member stops.
async fn serve_peers(
    member: Arc<Replica>,
    listener: TcpListener,
    mut server: tonic::transport::Server,
) {
    let mut stopping = member.shared.stopping.subscribe();
    let svc = crate::proto::peerpb::peer_server::PeerServer::new(peer::service::PeerService::new(
        member.clone(),
    ))
    .max_decoding_message_size(peer::conn::MAX_PEER_MESSAGE)
    .max_encoding_message_size(peer::conn::MAX_PEER_MESSAGE);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let res = server
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopping.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "peer service stopped");
    }
}

/// Records this member's name and client URLs in the replicated member list (etcd's
/// publish), once a leader exists, unless the list already says so.
async fn publish(member: &Replica, attrs: MemberAttributes) {
    let stopping = member.shared.stopping.subscribe();
    while !*stopping.borrow() {
        let current = member
            .state()
            .read()
            .members
            .get(attrs.id)
            .map(|m| (m.name.clone(), m.client_ur_ls.clone()));
        if current == Some((attrs.name.clone(), attrs.client_urls.clone())) {
            return;
        }
        if current.is_some() && member.leader() != 0 {
            match member
                .propose(internal_request::Request::Publish(attrs.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!(name = %attrs.name, "published member attributes");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "publishing member attributes failed"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener's accept queue is the kernel's largest (`ss` shows a listener's queue
    /// limit as its Send-Q), not the 128 of a plain bind.
    #[tokio::test]
    async fn listeners_take_the_largest_accept_queue() {
        let ls = bind_all(&["http://127.0.0.1:0".to_string()])
            .await
            .expect("bind");
        let port = ls[0].local_addr().expect("addr").port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("ss printed {text:?}"));
        assert_eq!(send_q, accept_backlog());
        assert!(send_q > 128, "{send_q}");
    }
}
