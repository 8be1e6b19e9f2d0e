//! kvbench: drives any etcd v3 endpoint with concurrent clients and reports throughput and
//! latency percentiles for puts, linearizable and serializable ranges and watch fan-out.
//!
//! ```text
//! kvbench --endpoint http://127.0.0.1:2379            # one endpoint
//! kvbench --compare                                   # kvstore vs etcd 3.4, side by side
//! kvbench --cluster 3                                 # the same with 3-member clusters
//! kvbench --endpoint https://127.0.0.1:2379 --tls-dir pki   # over TLS (netd certs layout)
//! ```
//! `--compare` starts a single-member kvstore (the release binary next to this example)
//! and a single-member etcd (`/usr/bin/etcd`) on free loopback ports in temporary data
//! dirs, runs the same workloads against each, and prints the ratios. Both run from the
//! start; each workload runs `--rounds` times per server, alternating between them, and
//! the median run is reported (the machine's slow spells then hit both alike).
//! `--cluster N` does the same with an N-member cluster of each on loopback; clients are
//! spread round-robin over the members (client i talks to member i mod N, as etcd's own
//! benchmark tool spreads them), so followers forward writes and serve linearizable reads by ReadIndex;
//! watchers are spread the same way and the writer talks to the first member. Memory is
//! measured last, on a fresh server (cluster) of each kind loaded with `--memory-keys`
//! puts: the largest resident set among its members.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use kvstore::proto::etcdserverpb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Benchmark an etcd v3 endpoint (or kvstore beside etcd 3.4 with --compare)")]
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
    /// With --compare or --cluster: the servers to start, in order: kvstore, etcd, or the
    /// path of another build of either (two builds compared in one run).
    #[arg(long, value_delimiter = ',', default_value = "kvstore,etcd")]
    servers: Vec<String>,
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
    /// cluster modes; 0 skips it).
    #[arg(long, default_value_t = 100_000)]
    memory_keys: usize,
    /// TLS towards an https:// --endpoint: DIR/ca.pem, plus DIR/client.pem and
    /// DIR/client-key.pem when present (as `netd certs --client client` writes them).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
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

async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let mut ep = Channel::from_shared(endpoint.to_string())?;
    if let Some(tls) = TLS.get() {
        ep = ep.tls_config(tls.clone())?;
    }
    Ok(ep.connect().await?)
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("{:08}", i % 100_000))
}

/// `requests` operations spread over `clients` connections; `op(client, i)` does one.
async fn load<F, Fut>(
    endpoints: &[String],
    clients: usize,
    requests: usize,
    op: F,
) -> anyhow::Result<Stats>
where
    F: Fn(KvClient<Channel>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let mut conns = Vec::new();
    for c in 0..clients {
        conns.push(KvClient::new(
            channel(&endpoints[c % endpoints.len()]).await?,
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
                op(client.clone(), c * per + i).await?;
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

async fn put_load(endpoints: &[String], clients: usize, requests: usize) -> anyhow::Result<Stats> {
    let value = Bytes::from(vec![b'v'; 256]);
    load(endpoints, clients, requests, move |mut c, i| {
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
    endpoints: &[String],
    clients: usize,
    requests: usize,
    serializable: bool,
) -> anyhow::Result<Stats> {
    load(endpoints, clients, requests, move |mut c, i| async move {
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
async fn watch_fanout(
    endpoints: &[String],
    watchers: usize,
    events: usize,
) -> anyhow::Result<Stats> {
    let prefix = format!("fanout{}/", std::process::id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut ready = Vec::new();
    for w in 0..watchers {
        let mut w = WatchClient::new(channel(&endpoints[w % endpoints.len()]).await?);
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(1);
        req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: Bytes::from(prefix.clone()),
                    range_end: Bytes::from(format!("{}0", &prefix[..prefix.len() - 1])),
                    ..Default::default()
                })),
            })
            .await?;
        let mut stream = w
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await?
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
    let mut kv = KvClient::new(channel(&endpoints[0]).await?);
    let mut sent = Vec::with_capacity(events);
    let start = Instant::now();
    for i in 0..events {
        sent.push(Instant::now());
        kv.put(PutRequest {
            key: Bytes::from(format!("{prefix}{i}")),
            value: Bytes::from(i.to_string()),
            ..Default::default()
        })
        .await?;
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

async fn run(w: Workload, endpoints: &[String], a: &Args) -> anyhow::Result<Stats> {
    match w {
        Workload::Put { clients, requests } => put_load(endpoints, clients, requests).await,
        Workload::Range { serializable } => {
            range_load(endpoints, a.clients, a.requests * 2, serializable).await
        }
        Workload::Watch => watch_fanout(endpoints, a.watchers, a.watch_events).await,
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

/// One server under test: its name and its members' client endpoints.
struct Target {
    name: String,
    endpoints: Vec<String>,
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
                let s = run(*w, &t.endpoints, a).await?;
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
    let endpoints: Vec<String> = servers.iter().map(|s| s.endpoint.clone()).collect();
    put_load(&endpoints, clients, keys).await?;
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
/// temporary data dir.
fn start(bin: &Path, n: usize) -> anyhow::Result<Vec<Server>> {
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
        let child = member
            .command(bin, None)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log"))?)
            .spawn()?;
        members.push(Server {
            child,
            dir,
            endpoint: client,
        });
    }
    Ok(members)
}

/// `start`, then waits until every member answers.
async fn start_ready(bin: &Path, n: usize) -> anyhow::Result<Vec<Server>> {
    let mut servers = start(bin, n)?;
    for s in &mut servers {
        wait_ready(s).await?;
    }
    Ok(servers)
}

/// Waits until the member answers a linearizable read; fails with its log if it exits.
async fn wait_ready(server: &mut Server) -> anyhow::Result<()> {
    let endpoint = server.endpoint.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = server.child.try_wait()? {
            let log = std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default();
            anyhow::bail!("{endpoint} exited ({st}): {log}");
        }
        if let Ok(ch) = channel(&endpoint).await
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

fn print(reports: &[Report], memory_keys: usize) {
    println!();
    print!("| workload |");
    for r in reports {
        print!(
            " {} ops/s | {} p50 ms | {} p99 ms |",
            r.name, r.name, r.name
        );
    }
    if reports.len() == 2 {
        print!(
            " ratio (throughput {} / {}) |",
            reports[0].name, reports[1].name
        );
    }
    println!();
    println!(
        "|---|{}{}",
        "---|---|---|".repeat(reports.len()),
        if reports.len() == 2 { "---|" } else { "" }
    );
    for i in 0..reports[0].rows.len() {
        print!("| {} |", reports[0].rows[i].0);
        for r in reports {
            let s = &r.rows[i].1;
            print!(
                " {:.0} | {:.2} | {:.2} |",
                s.ops_per_sec, s.p50_ms, s.p99_ms
            );
        }
        if reports.len() == 2 {
            let (a, b) = (&reports[0].rows[i].1, &reports[1].rows[i].1);
            if reports[0].rows[i].0.starts_with("watch") {
                print!(" p99 {:.2}x |", a.p99_ms / b.p99_ms.max(1e-9));
            } else {
                print!(" {:.2}x |", a.ops_per_sec / b.ops_per_sec.max(1e-9));
            }
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(dir) = &a.tls_dir {
        let (cert, key) = (dir.join("client.pem"), dir.join("client-key.pem"));
        let identity = cert.exists().then_some((cert.as_path(), key.as_path()));
        let _ = TLS.set(kvstore::tls::client_config(&dir.join("ca.pem"), identity)?);
    }
    let members = match (a.compare, a.cluster) {
        (_, Some(n)) if n > 0 => n,
        (true, _) => 1,
        _ => {
            let target = Target {
                name: "endpoint".to_string(),
                endpoints: vec![a.endpoint.clone()],
            };
            let reports = run_all(std::slice::from_ref(&target), &a).await?;
            print(&reports, a.memory_keys);
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
            path if path.contains('/') => PathBuf::from(path),
            other => anyhow::bail!("unknown server {other:?} (kvstore, etcd or a binary's path)"),
        };
        let label = bin
            .file_name()
            .map_or(name.clone(), |f| f.to_string_lossy().into_owned());
        bins.push((label, bin));
    }
    // Every server runs from the start (they idle while another is measured).
    let mut running = Vec::new();
    let mut targets = Vec::new();
    for (label, bin) in &bins {
        let servers = start_ready(bin, members).await?;
        targets.push(Target {
            name: if members > 1 {
                format!("{label} x{members}")
            } else {
                label.clone()
            },
            endpoints: servers.iter().map(|s| s.endpoint.clone()).collect(),
        });
        running.push(servers);
    }
    let mut reports = run_all(&targets, &a).await?;
    drop(running);
    // Memory after `memory_keys` keys, on fresh servers, one kind at a time: the
    // workloads above leave different amounts of history behind with each `--rounds`.
    if a.memory_keys > 0 {
        for (r, (_, bin)) in reports.iter_mut().zip(&bins) {
            r.rss_mb = Some(memory_after(bin, members, a.memory_keys, a.clients).await?);
        }
    }
    print(&reports, a.memory_keys);
    Ok(())
}
