//! kvbench: drives any etcd v3 endpoint with concurrent clients and reports throughput and
//! latency percentiles for puts, linearizable and serializable ranges and watch fan-out.
//!
//! ```text
//! kvbench --endpoint http://127.0.0.1:2379            # one endpoint
//! kvbench --compare                                   # kvstore vs etcd 3.4 and 3.5.1, side by side
//! kvbench --cluster 3                                 # the same with 3-member clusters
//! kvbench --endpoint https://127.0.0.1:2379 --tls-dir pki   # over TLS (netd certs layout)
//! kvbench --compare --auth                            # both with authentication on
//! kvbench --compare --scale --overwrites 5            # a million 1 KiB keys (scale.rs)
//! kvbench --compare --flat --clients 8                # memory under overwrites with auto-compaction (flat.rs)
//! kvbench --compare --restart-leader --clients 8 --flat-rate 500   # a planned leader restart (restart.rs)
//! kvbench --endpoint http://127.0.0.1:2379 --auth --user bench:secret
//! ```
//! `--compare` starts a single-member kvstore (the release binary next to this example),
//! a single-member etcd 3.4 (Debian's `/usr/bin/etcd`) and etcd 3.5.1 (`$KVBENCH_ETCD35`,
//! or where `scripts/install-deps.sh bench` puts it) on free loopback ports in temporary data
//! dirs, runs the same workloads against each, and prints the ratios. Beside them it
//! measures the floor (floor.rs): one thread's fsync loop on the same disk, and a server
//! that is tonic and a group-committed fsync with no store behind it, driven by the same
//! workloads; each server's figure is also given as a fraction of the floor's. Both run from the
//! start; each workload runs `--rounds` times per server, alternating between them, and
//! the median run is reported (the machine's slow spells then hit both alike).
//! `--cluster N` does the same with an N-member cluster of each on loopback; clients are
//! spread round-robin over the members (client i talks to member i mod N, as etcd's own
//! benchmark tool spreads them), so followers forward writes and serve linearizable reads by ReadIndex;
//! watchers are spread the same way and the writer talks to the first member. Memory is
//! measured last, on a fresh server (cluster) of each kind loaded with `--memory-keys`
//! puts: the largest resident set among its members.
//! `--auth` sets up, on every server kvbench starts, what an operator would with etcdctl:
//! user `root` with role `root`, a role `bench` that may read and write the benchmark's key
//! prefixes and nothing else, a user `bench` with that role; then enables authentication,
//! logs in as `bench` once per server and sends that token with every request of every
//! client. Against `--endpoint`, it logs in as `--user` instead (auth set up by its owner).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use kvstore::client::req::prefix_end;
use kvstore::proto::authpb::{Permission, permission};
use kvstore::proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest, auth_client::AuthClient, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod flat;
mod floor;
mod restart;
mod scale;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark an etcd v3 endpoint (or kvstore beside etcd 3.4 and 3.5.1 with --compare)"
)]
struct Args {
    /// Endpoint to drive (ignored with --compare).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// Start kvstore and etcd and benchmark both.
    #[arg(long)]
    compare: bool,
    /// Like --compare, with clusters of this many members (e.g. 3).
    #[arg(long)]
    cluster: Option<usize>,
    /// With --compare or --cluster: the servers to start, in order: kvstore, etcd (Debian's
    /// 3.4), etcd-3.5 (3.5.1: $KVBENCH_ETCD35, or /opt/etcd-3.5.1/etcd-3.5.1 where
    /// `scripts/install-deps.sh bench` installs it), or the path of another build of any
    /// of them (two builds compared in one run). The first is compared with each other.
    #[arg(long, value_delimiter = ',', default_value = "kvstore,etcd,etcd-3.5")]
    servers: Vec<String>,
    /// With --compare or --cluster: skip the floor (the fsync loop and the floor server).
    #[arg(long)]
    no_floor: bool,
    /// Internal: serve as the floor server with its journal in DIR (see floor.rs).
    #[arg(long, hide = true, value_name = "DIR")]
    floor_server: Option<PathBuf>,
    /// Concurrent clients for the throughput workloads.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests per throughput workload.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Watchers for the fan-out workload.
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// Puts the writer makes in the fan-out workload, 2 ms apart (every watcher receives
    /// each). A run's p99 rests on its slowest 1% of puts: more puts, a steadier figure.
    #[arg(long, default_value_t = 2000)]
    watch_events: usize,
    /// Run only the workloads whose name contains this (e.g. "put").
    #[arg(long)]
    only: Option<String>,
    /// Runs of each workload per server, alternating between the servers (all started
    /// up front); the median run is reported, so a slow spell of the machine does not
    /// land on one server only.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keys put into fresh servers before measuring their resident memory (compare and
    /// cluster modes, not with --auth; 0 skips it).
    #[arg(long, default_value_t = 100_000)]
    memory_keys: usize,
    /// TLS towards an https:// --endpoint: DIR/ca.pem, plus DIR/client.pem and
    /// DIR/client-key.pem when present (as `netd certs --client client` writes them).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Authentication on: on the servers kvbench starts it adds users root and `bench`
    /// (readwrite on the benchmark's key prefixes only), enables auth and sends `bench`'s
    /// token with every request; with --endpoint, give --user. Skips the memory phase.
    #[arg(long)]
    auth: bool,
    /// Instead of the workloads: load --scale-keys keys into a fresh server of each kind and
    /// measure load rate, memory, disk, restart, full ranges and compaction (see scale.rs).
    #[arg(long, conflicts_with = "auth")]
    scale: bool,
    /// With --scale: keys loaded.
    #[arg(long, default_value_t = 1_000_000)]
    scale_keys: usize,
    /// With --scale: bytes of each value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// With --scale: times each key is written again after the first load.
    #[arg(long, default_value_t = 0)]
    overwrites: usize,
    /// Instead of the workloads: memory under a steady overwrite load with automatic
    /// compaction, on one fresh server of each kind at once (see flat.rs).
    #[arg(long, conflicts_with_all = ["auth", "scale"])]
    flat: bool,
    /// With --flat: minutes of load.
    #[arg(long, default_value_t = 10)]
    flat_minutes: u64,
    /// With --flat: puts a second to each server.
    #[arg(long, default_value_t = 1000)]
    flat_rate: u64,
    /// With --flat: keys overwritten in turn.
    #[arg(long, default_value_t = 1000)]
    flat_keys: usize,
    /// With --flat: the servers' --auto-compaction-retention (periodic mode).
    #[arg(long, default_value = "1m")]
    flat_retention: String,
    /// Instead of the workloads: a planned restart (SIGTERM) of the leader of a 3-member
    /// cluster of each kind under a steady load of --flat-rate puts/s (see restart.rs).
    #[arg(long, conflicts_with_all = ["auth", "scale", "flat"])]
    restart_leader: bool,
    /// With --restart-leader: seconds of load before the stop, and after the restart.
    #[arg(long, default_value_t = 5)]
    restart_after: u64,
    /// With --auth and --endpoint: the user to log in as.
    #[arg(
        long,
        value_name = "NAME:PASSWORD",
        requires = "auth",
        conflicts_with_all = ["compare", "cluster"]
    )]
    user: Option<String>,
}

/// Client TLS from --tls-dir, applied to every channel.
static TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> = std::sync::OnceLock::new();

#[derive(Debug, Default, Clone)]
struct Stats {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration) -> Stats {
    lat.sort_unstable();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Stats {
        ops_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
    }
}

/// Sends the auth token, if any, with every request (etcd's gRPC metadata `token`).
#[derive(Clone, Default)]
struct Token(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// One connection to one member; every request on it carries the token.
type Conn = InterceptedService<Channel, Token>;

async fn connect(endpoint: &str, token: &Token) -> anyhow::Result<Conn> {
    let mut ep = Channel::from_shared(endpoint.to_string())?;
    if let Some(tls) = TLS.get() {
        ep = ep.tls_config(tls.clone())?;
    }
    Ok(InterceptedService::new(ep.connect().await?, token.clone()))
}

/// Every key the put and range workloads use starts with this: `key` makes 8 digits below
/// 100,000. The watch fan-out's keys start with `WATCH_PREFIX`. With --auth, the `bench`
/// user may read and write under these two prefixes and nowhere else.
const KEY_PREFIX: &str = "000";
const WATCH_PREFIX: &str = "fanout";

fn key(i: usize) -> Bytes {
    Bytes::from(format!("{:08}", i % 100_000))
}

/// Names the likely cause when a server refuses the token: kvbench logs in once per server
/// and does not renew the token (etcd's simple tokens live 300 s unused).
fn explain(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) if s.code() == tonic::Code::Unauthenticated => {
            e.context("the server refused kvbench's auth token (it is not renewed)")
        }
        _ => e,
    }
}

/// `requests` operations spread over `clients` connections; `op(client, i)` does one.
async fn load<F, Fut>(t: &Target, clients: usize, requests: usize, op: F) -> anyhow::Result<Stats>
where
    F: Fn(KvClient<Conn>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let mut conns = Vec::new();
    for c in 0..clients {
        conns.push(KvClient::new(
            connect(&t.endpoints[c % t.endpoints.len()], &t.token).await?,
        ));
    }
    let per = requests / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in conns.into_iter().enumerate() {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                op(client.clone(), c * per + i).await.map_err(explain)?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(stats(all, start.elapsed()))
}

async fn put_load(t: &Target, clients: usize, requests: usize) -> anyhow::Result<Stats> {
    let value = Bytes::from(vec![b'v'; 256]);
    load(t, clients, requests, move |mut c, i| {
        let value = value.clone();
        async move {
            c.put(PutRequest {
                key: key(i),
                value,
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    })
    .await
}

async fn range_load(
    t: &Target,
    clients: usize,
    requests: usize,
    serializable: bool,
) -> anyhow::Result<Stats> {
    load(t, clients, requests, move |mut c, i| async move {
        c.range(RangeRequest {
            key: key(i % 1000),
            serializable,
            ..Default::default()
        })
        .await?;
        Ok(())
    })
    .await
}

/// `watchers` watch one prefix; one writer puts `events` keys, 2 ms apart; latency is from
/// just before each put to each watcher's receipt of the event. Watcher i watches at
/// member i mod N; the writer writes at the first member.
async fn watch_fanout(t: &Target, watchers: usize, events: usize) -> anyhow::Result<Stats> {
    let prefix = format!("{WATCH_PREFIX}{}/", std::process::id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut ready = Vec::new();
    for w in 0..watchers {
        let mut w = WatchClient::new(connect(&t.endpoints[w % t.endpoints.len()], &t.token).await?);
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(1);
        req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: Bytes::from(prefix.clone()),
                    range_end: prefix_end(prefix.as_bytes()),
                    ..Default::default()
                })),
            })
            .await?;
        let mut stream = w
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| explain(s.into()))?
            .into_inner();
        let created = stream.message().await?;
        anyhow::ensure!(created.is_some_and(|c| c.created), "watch not created");
        let tx = tx.clone();
        ready.push(tokio::spawn(async move {
            let _keep = req_tx;
            while let Ok(Some(resp)) = stream.message().await {
                for e in resp.events {
                    let idx =
                        e.kv.as_ref()
                            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                            .unwrap_or(usize::MAX);
                    let _ = tx.send((idx, Instant::now()));
                }
            }
        }));
    }
    drop(tx);
    let mut kv = KvClient::new(connect(&t.endpoints[0], &t.token).await?);
    let mut sent = Vec::with_capacity(events);
    let start = Instant::now();
    for i in 0..events {
        sent.push(Instant::now());
        kv.put(PutRequest {
            key: Bytes::from(format!("{prefix}{i}")),
            value: Bytes::from(i.to_string()),
            ..Default::default()
        })
        .await
        .map_err(|s| explain(s.into()))?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut lat = Vec::with_capacity(events * watchers);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.len() < events * watchers {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((idx, at))) => {
                if let Some(s) = sent.get(idx) {
                    lat.push(at.duration_since(*s));
                }
            }
            _ => anyhow::bail!(
                "only {} of {} watch deliveries arrived",
                lat.len(),
                events * watchers
            ),
        }
    }
    for t in ready {
        t.abort();
    }
    Ok(stats(lat, start.elapsed()))
}

struct Report {
    name: String,
    rows: Vec<(String, Stats)>,
    rss_mb: Option<f64>,
}

#[derive(Clone, Copy)]
enum Workload {
    Put { clients: usize, requests: usize },
    Range { serializable: bool },
    Watch,
}

/// The workloads selected by `--only`, with their names.
fn workloads(a: &Args) -> Vec<(String, Workload)> {
    let all = [
        (
            "put, 1 client".to_string(),
            Workload::Put {
                clients: 1,
                requests: 2_000,
            },
        ),
        (
            format!("put, {} clients", a.clients),
            Workload::Put {
                clients: a.clients,
                requests: a.requests,
            },
        ),
        (
            format!("range linearizable, {} clients", a.clients),
            Workload::Range {
                serializable: false,
            },
        ),
        (
            format!("range serializable, {} clients", a.clients),
            Workload::Range { serializable: true },
        ),
        (
            format!("watch fan-out, {} watchers (latency)", a.watchers),
            Workload::Watch,
        ),
    ];
    all.into_iter()
        .filter(|(w, _)| a.only.as_ref().is_none_or(|o| w.contains(o.as_str())))
        .collect()
}

async fn run(w: Workload, t: &Target, a: &Args) -> anyhow::Result<Stats> {
    match w {
        Workload::Put { clients, requests } => put_load(t, clients, requests).await,
        Workload::Range { serializable } => {
            range_load(t, a.clients, a.requests * 2, serializable).await
        }
        Workload::Watch => watch_fanout(t, a.watchers, a.watch_events).await,
    }
}

/// The median of a workload's runs: by throughput, or by p99 latency for watch fan-out.
fn median(w: Workload, mut runs: Vec<Stats>) -> Stats {
    match w {
        Workload::Watch => runs.sort_by(|x, y| x.p99_ms.total_cmp(&y.p99_ms)),
        _ => runs.sort_by(|x, y| x.ops_per_sec.total_cmp(&y.ops_per_sec)),
    }
    runs.get(runs.len() / 2).cloned().unwrap_or_default()
}

/// One server under test: its name, its members' client endpoints and the token its
/// clients send (none without --auth).
struct Target {
    name: String,
    endpoints: Vec<String>,
    token: Token,
}

/// Runs every selected workload `--rounds` times on each target, alternating between the
/// targets, and reports the median run.
async fn run_all(targets: &[Target], a: &Args) -> anyhow::Result<Vec<Report>> {
    let selected = workloads(a);
    let mut reports: Vec<Report> = targets
        .iter()
        .map(|t| Report {
            name: t.name.clone(),
            rows: Vec::new(),
            rss_mb: None,
        })
        .collect();
    for (name, w) in &selected {
        let mut runs = vec![Vec::new(); targets.len()];
        for round in 0..a.rounds.max(1) {
            for (t, runs) in targets.iter().zip(&mut runs) {
                let s = run(*w, t, a).await?;
                eprintln!("   {name}, round {}: {}: {s:?}", round + 1, t.name);
                runs.push(s);
            }
        }
        for (r, runs) in reports.iter_mut().zip(runs) {
            r.rows.push((name.clone(), median(*w, runs)));
        }
    }
    Ok(reports)
}

/// Starts a fresh `members`-member cluster of `bin`, puts `keys` keys (256-byte values,
/// `clients` at once) and returns the largest member's resident memory in MB.
async fn memory_after(
    bin: &Path,
    members: usize,
    keys: usize,
    clients: usize,
) -> anyhow::Result<f64> {
    let servers = start_ready(bin, members).await?;
    let target = Target {
        name: bin.display().to_string(),
        endpoints: servers.iter().map(|s| s.endpoint.clone()).collect(),
        token: Token::default(),
    };
    put_load(&target, clients, keys).await?;
    servers
        .iter()
        .filter_map(|s| rss(s.child.id()))
        .reduce(f64::max)
        .ok_or_else(|| anyhow::anyhow!("cannot read the members' resident memory"))
}

fn rss(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One member process; killed on drop.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
    /// How it was started (to start it again).
    member: testbed::etcd::Member,
}

impl Server {
    /// Starts the member again on its data (after it exited), logging to `log` in its dir.
    fn respawn(&mut self, bin: &Path, log: &str) -> anyhow::Result<()> {
        self.child = self
            .member
            .command(bin, None)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(log))?)
            .spawn()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts an `n`-member cluster of `bin` on free loopback ports, each member with its own
/// temporary data dir and the flags `extra`.
fn start_with(bin: &Path, n: usize, extra: &[String]) -> anyhow::Result<Vec<Server>> {
    anyhow::ensure!(
        bin.exists(),
        "{} not found (build it first: cargo build --release -p kvstore)",
        bin.display()
    );
    let mut urls = Vec::new();
    for _ in 0..n {
        urls.push((
            format!("http://127.0.0.1:{}", free_port()?),
            format!("http://127.0.0.1:{}", free_port()?),
        ));
    }
    let initial: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("bench{i}={peer}"))
        .collect();
    let token = format!("kvbench-{}", std::process::id());
    let mut members = Vec::new();
    for (i, (client, peer)) in urls.into_iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let mut member = testbed::etcd::Member::new(
            &format!("bench{i}"),
            &dir.path().join("data"),
            &client,
            &peer,
        );
        member.initial_cluster = Some(initial.join(","));
        member.token = Some(token.clone());
        member.extra = extra.iter().map(Into::into).collect();
        let child = member
            .command(bin, None)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log"))?)
            .spawn()?;
        members.push(Server {
            child,
            dir,
            endpoint: client,
            member,
        });
    }
    Ok(members)
}

/// `start_with` and no further flags, then waits until every member answers.
async fn start_ready(bin: &Path, n: usize) -> anyhow::Result<Vec<Server>> {
    start_ready_with(bin, n, &[]).await
}

/// `start_with`, then waits until every member answers.
async fn start_ready_with(bin: &Path, n: usize, extra: &[String]) -> anyhow::Result<Vec<Server>> {
    let mut servers = start_with(bin, n, extra)?;
    for s in &mut servers {
        wait_ready(s).await?;
    }
    Ok(servers)
}

/// Waits until the member answers a linearizable read; fails with its log if it exits.
async fn wait_ready(server: &mut Server) -> anyhow::Result<()> {
    let endpoint = server.endpoint.clone();
    // A restart of a large data dir takes longer than a fresh start.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(st) = server.child.try_wait()? {
            let log = std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default();
            anyhow::bail!("{endpoint} exited ({st}): {log}");
        }
        if let Ok(ch) = connect(&endpoint, &Token::default()).await
            && KvClient::new(ch)
                .range(RangeRequest {
                    key: Bytes::from("ready"),
                    ..Default::default()
                })
                .await
                .is_ok()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{endpoint} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Password of root and `bench` on the throwaway servers kvbench starts.
const PASSWORD: &str = "kvbench";

/// Sets auth up on a cluster kvbench started, as etcdctl would: user root with role root,
/// role `bench` with readwrite on each benchmark prefix, user `bench` with that role; then
/// enables auth and returns `bench`'s token once every member accepts it.
async fn enable_auth(endpoints: &[String]) -> anyhow::Result<Token> {
    let mut auth = AuthClient::new(connect(&endpoints[0], &Token::default()).await?);
    for (user, role) in [("root", "root"), ("bench", "bench")] {
        auth.role_add(AuthRoleAddRequest { name: role.into() })
            .await?;
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?;
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await?;
    }
    for prefix in [KEY_PREFIX, WATCH_PREFIX] {
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "bench".into(),
            perm: Some(Permission {
                perm_type: permission::Type::Readwrite.into(),
                key: Bytes::from(prefix),
                range_end: prefix_end(prefix.as_bytes()),
            }),
        })
        .await?;
    }
    auth.auth_enable(AuthEnableRequest {}).await?;
    let token = login(&endpoints[0], "bench", PASSWORD).await?;
    for ep in endpoints {
        wait_token(ep, &token).await?;
    }
    Ok(token)
}

/// Logs in at `endpoint`.
async fn login(endpoint: &str, name: &str, password: &str) -> anyhow::Result<Token> {
    let token = AuthClient::new(connect(endpoint, &Token::default()).await?)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .with_context(|| format!("logging in as {name} at {endpoint}"))?
        .into_inner()
        .token;
    Ok(Token(Some(token.parse().with_context(|| {
        format!("{endpoint} answered a token that is not ASCII")
    })?)))
}

/// Waits until the member takes `token`: a member knows a login once it applied it.
async fn wait_token(endpoint: &str, token: &Token) -> anyhow::Result<()> {
    let mut kv = KvClient::new(connect(endpoint, token).await?);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = kv.range(RangeRequest {
            key: key(0),
            serializable: true,
            ..Default::default()
        });
        match read.await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => return Err(s).with_context(|| format!("{endpoint} refuses bench's token")),
        }
    }
}

/// The figure workload `name` is judged by, and whether lower is better: p99 latency for
/// watch fan-out, throughput for the others.
fn figure(name: &str, s: &Stats) -> (f64, bool) {
    if name.starts_with("watch") {
        (s.p99_ms, true)
    } else {
        (s.ops_per_sec, false)
    }
}

/// How close `s` comes to `floor` on workload `name`, 1.0 being at the floor: throughput
/// over the floor's, or for watch fan-out the floor's p99 over this p99.
fn of_floor(name: &str, s: &Stats, floor: &Stats) -> f64 {
    let ((x, lower_is_better), (f, _)) = (figure(name, s), figure(name, floor));
    if lower_is_better {
        f / x.max(1e-9)
    } else {
        x / f.max(1e-9)
    }
}

/// The first server against another: the ratio of their figures (marked p99 where lower
/// is better).
fn versus(name: &str, a: &Stats, b: &Stats) -> String {
    let ((x, lower_is_better), (y, _)) = (figure(name, a), figure(name, b));
    let mark = if lower_is_better { "p99 " } else { "" };
    format!("{mark}{:.2}x", x / y.max(1e-9))
}

/// Prints the servers' table (with the first server's ratio to each other one), then the
/// floor's (each server as a fraction of it) when `floor` is the last report.
fn print(
    reports: &[Report],
    floor: Option<&Report>,
    fsync: Option<(f64, f64)>,
    memory_keys: usize,
) {
    println!();
    print!("| workload |");
    for r in reports {
        print!(
            " {} ops/s | {} p50 ms | {} p99 ms |",
            r.name, r.name, r.name
        );
    }
    for r in reports.iter().skip(1) {
        print!(" {} / {} |", reports[0].name, r.name);
    }
    println!();
    println!(
        "|---|{}{}",
        "---|---|---|".repeat(reports.len()),
        "---|".repeat(reports.len().saturating_sub(1))
    );
    for i in 0..reports[0].rows.len() {
        let name = &reports[0].rows[i].0;
        print!("| {name} |");
        for r in reports {
            let s = &r.rows[i].1;
            print!(
                " {:.0} | {:.2} | {:.2} |",
                s.ops_per_sec, s.p50_ms, s.p99_ms
            );
        }
        for r in reports.iter().skip(1) {
            print!(" {} |", versus(name, &reports[0].rows[i].1, &r.rows[i].1));
        }
        println!();
    }
    for r in reports {
        if let Some(m) = r.rss_mb {
            println!(
                "\n{}: resident memory (largest member) of a fresh server after {memory_keys} puts: {m:.1} MB",
                r.name
            );
        }
    }
    if let Some((per_sec, p50)) = fsync {
        println!(
            "\nfsync floor: one thread appending 256 bytes and fdatasyncing, on the servers' disk: \
             {per_sec:.0} syncs/s, p50 {p50:.3} ms"
        );
    }
    let Some(floor) = floor else { return };
    println!(
        "\nfloor server (tonic, a group-committed fsync per put, no store; one process), and \
         each server as a fraction of it (1.00 = at the floor; watch: floor p99 / p99):\n"
    );
    print!("| workload | floor ops/s | floor p50 ms | floor p99 ms |");
    for r in reports {
        print!(" {} |", r.name);
    }
    println!();
    println!("|---|---|---|---|{}", "---|".repeat(reports.len()));
    for (i, (name, f)) in floor.rows.iter().enumerate() {
        print!(
            "| {name} | {:.0} | {:.2} | {:.2} |",
            f.ops_per_sec, f.p50_ms, f.p99_ms
        );
        for r in reports {
            print!(" {:.2} |", of_floor(name, &r.rows[i].1, f));
        }
        println!();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(dir) = &a.floor_server {
        return floor::serve(dir).await;
    }
    if let Some(dir) = &a.tls_dir {
        let (cert, key) = (dir.join("client.pem"), dir.join("client-key.pem"));
        let identity = cert.exists().then_some((cert.as_path(), key.as_path()));
        let _ = TLS.set(kvstore::tls::client_config(&dir.join("ca.pem"), identity)?);
    }
    let members = match (a.compare, a.cluster) {
        (_, Some(n)) if n > 0 => n,
        (true, _) => 1,
        _ => {
            let token = match (a.auth, &a.user) {
                (false, _) => Token::default(),
                (true, Some(user)) => {
                    let (name, password) =
                        user.split_once(':').context("--user takes NAME:PASSWORD")?;
                    login(&a.endpoint, name, password).await?
                }
                (true, None) => anyhow::bail!(
                    "--auth with --endpoint needs --user NAME:PASSWORD (kvbench sets up auth \
                     only on the servers it starts)"
                ),
            };
            let target = Target {
                name: "endpoint".to_string(),
                endpoints: vec![a.endpoint.clone()],
                token,
            };
            let reports = run_all(std::slice::from_ref(&target), &a).await?;
            print(&reports, None, None, a.memory_keys);
            return Ok(());
        }
    };
    let exe = std::env::current_exe()?;
    let kvstore_bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("kvstore"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the kvstore binary"))?;
    // Each server's binary and its name in the report (a binary given by path: its file name).
    let mut bins = Vec::new();
    for name in &a.servers {
        let bin = match name.as_str() {
            "kvstore" => kvstore_bin.clone(),
            "etcd" => PathBuf::from("/usr/bin/etcd"),
            "etcd-3.5" => etcd35()?,
            path if path.contains('/') => PathBuf::from(path),
            other => anyhow::bail!(
                "unknown server {other:?} (kvstore, etcd, etcd-3.5 or a binary's path)"
            ),
        };
        // Debian's etcd is 3.4; a binary given by path is named by its file name.
        let label = match name.as_str() {
            "etcd" => "etcd-3.4".to_string(),
            _ => bin
                .file_name()
                .map_or(name.clone(), |f| f.to_string_lossy().into_owned()),
        };
        refuse_failpoints(&bin)?;
        bins.push((label, bin));
    }
    if a.scale {
        return scale::run(&bins, &a).await;
    }
    if a.flat {
        return flat::run(&bins, &a).await;
    }
    if a.restart_leader {
        return restart::run(&bins, &a).await;
    }
    // Every server runs from the start (they idle while another is measured).
    let mut running = Vec::new();
    let mut targets = Vec::new();
    for (label, bin) in &bins {
        let servers = start_ready(bin, members).await?;
        let endpoints: Vec<String> = servers.iter().map(|s| s.endpoint.clone()).collect();
        let token = if a.auth {
            enable_auth(&endpoints)
                .await
                .with_context(|| format!("setting up auth on {label}"))?
        } else {
            Token::default()
        };
        let mut name = label.clone();
        if members > 1 {
            name += &format!(" x{members}");
        }
        if a.auth {
            name += " auth";
        }
        targets.push(Target {
            name,
            endpoints,
            token,
        });
        running.push(servers);
    }
    // The floor: the fsync loop now, while every server idles; the floor server beside them.
    let mut fsync = None;
    let mut floor_server = None;
    if !a.no_floor {
        let dir = tempfile::tempdir()?;
        fsync = Some(floor::fsync_floor(dir.path(), floor::FSYNC_SYNCS)?);
        let f = floor::FloorServer::start()?;
        targets.push(Target {
            name: "floor".into(),
            endpoints: vec![f.endpoint.clone()],
            // The floor server checks no token.
            token: Token::default(),
        });
        floor_server = Some(f);
    }
    let mut reports = run_all(&targets, &a).await?;
    drop(running);
    drop(floor_server);
    let floor = if a.no_floor { None } else { reports.pop() };
    // Memory after `memory_keys` keys, on fresh servers, one kind at a time: the
    // workloads above leave different amounts of history behind with each `--rounds`.
    // Not with --auth: those fresh servers would run without it.
    if a.memory_keys > 0 && !a.auth {
        for (r, (_, bin)) in reports.iter_mut().zip(&bins) {
            r.rss_mb = Some(memory_after(bin, members, a.memory_keys, a.clients).await?);
        }
    }
    print(&reports, floor.as_ref(), fsync, a.memory_keys);
    Ok(())
}

/// Refuses a kvstore built with failpoints (`cargo build --release -p kvstore --bins
/// --examples` in one command builds the server with the examples' dev-dependencies, and so
/// with the tests' failpoints): its figures would not be those of the release build.
fn refuse_failpoints(bin: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new(bin).arg("--version").output();
    if let Ok(out) = out
        && String::from_utf8_lossy(&out.stdout).contains("failpoints")
    {
        anyhow::bail!(
            "{} was built with failpoints (built in one command with the examples?); build it \
             on its own: cargo build --release -p kvstore --bins",
            bin.display()
        );
    }
    Ok(())
}

/// Where etcd 3.5.1 is: `$KVBENCH_ETCD35`, or where `scripts/install-deps.sh bench` puts it.
fn etcd35() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("KVBENCH_ETCD35").map_or_else(
        || PathBuf::from("/opt/etcd-3.5.1/etcd-3.5.1"),
        PathBuf::from,
    );
    anyhow::ensure!(
        path.exists(),
        "etcd 3.5.1 not found at {} (install it with `scripts/install-deps.sh bench`, point \
         KVBENCH_ETCD35 at it, or leave it out: --servers kvstore,etcd)",
        path.display()
    );
    Ok(path)
}
