//! Fleet simulator (issue 20): N simulated hosts making against a 3-member store the requests
//! netd makes against its store, in netd's order (see `host_light`): read the config, list the
//! subnets, keep its own record or create a new one with a compare-and-swap under a fresh KV
//! lease, list again and watch from the next revision, renew the lease every `--lease-ttl`
//! minus netd's margin rule, re-list when a watch breaks. Each host opens the connections
//! netd opens (one per member, balanced). With `--netd-code` each host runs netd's own code
//! instead ([`netd::lease::acquire`], [`netd::watch::run`], [`netd::lease::renew`]), which
//! parses every listing record by record: at thousands of hosts, all on this machine's cores,
//! that parsing (work spread over N machines in a real fleet) becomes the bottleneck. Nothing
//! touches the kernel: the hosts are tasks of this one process, on loopback.
//!
//! For each server (`--servers`: `kvstore` is the release binary beside this program,
//! `etcd` is Debian's etcd 3.4, any other word a path to an etcd-compatible binary) and each
//! fleet size (`--hosts`), on a fresh 3-member cluster, it measures:
//!
//! 1. **Cold start**: all N hosts start at once; the time until every one holds its lease and
//!    has received its first listing from the watcher (then it is watching).
//! 2. **Steady state**: each member's resident memory and CPU (share of one core) over
//!    `--steady-secs`, with renewals running.
//! 3. **Fan-out**: `--probes` changes of one record, 300 ms apart; for each, the time from the
//!    start of the put until each of the N watchers has the event: p50, p99 and max over all
//!    N x probes deliveries, and how many arrived.
//! 4. **Restart storm**: every host restarts (drops its connections, watch and tasks, then
//!    starts again as a restarted netd does: acquire finds its own record and keeps its lease)
//!    at a random moment within 10 s; the time until all are watching again.
//! 5. **Member kill**: the leader is SIGKILLed under the full fleet; the time until a record
//!    change reaches every watcher again, and the fan-out of the probes after it.
//!
//! Errors (a failed request, a broken watch) are counted per phase and retried as netd
//! retries them. Each host holds one connection per member, so 5,000 hosts need about 16,000
//! open files. Run:
//!
//! ```sh
//! cargo build --release -p kvstore --bin kvstore && cargo build --release -p netd --example fleet
//! target/release/examples/fleet --hosts 1000,5000 --servers kvstore,etcd
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use netd::kv::Kv;
use netd::lease::{LeaseTiming, OwnLease};
use netd::netconf::NetworkConfig;
use netd::subnet::{LeaseAttrs, MacAddr, SubnetKey, VxlanData};
use netd::watch::PeerEvent;
use testbed::etcd::{ETCD, Member, initial_cluster};
use tokio::sync::{mpsc, watch};

/// 65,536 /24 subnets: room for 10,000 hosts with few compare-and-swap collisions.
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
/// The record the probes change (a reservation: no lease, never taken by a host).
const PROBE_KEY: &str = "10.255.255.0-24";
/// The probe record's PublicIP (outside the simulated hosts' 100.64.0.0/16).
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 254);
/// How long a phase may take before the simulator reports it as not reached.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

#[derive(Parser)]
#[command(about = "N simulated netd hosts against a 3-member store (see the source's header)")]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    hosts: Vec<usize>,
    /// Servers, comma-separated: kvstore, etcd, or a path to an etcd-compatible binary.
    #[arg(long, value_delimiter = ',', default_value = "kvstore,etcd")]
    servers: Vec<String>,
    /// Each host's KV lease TTL in seconds (netd's default is a day; a shorter one makes the
    /// renewals part of the steady load). Renewed every TTL minus netd's margin rule.
    #[arg(long, default_value_t = 60)]
    lease_ttl: u64,
    /// Record changes timed through every watcher, per fan-out measurement.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Seconds of steady state over which the members' CPU is measured.
    #[arg(long, default_value_t = 20)]
    steady_secs: u64,
    /// Run netd's own lease and watcher code in each host (`netd::lease`, `netd::watch`),
    /// which parses every listing record by record: at thousands of hosts the simulator's
    /// own CPU then limits what is measured (every host's parsing runs on this machine).
    #[arg(long)]
    netd_code: bool,
    /// Skip the restart storm and the member kill.
    #[arg(long)]
    no_faults: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    check_open_files(args.hosts.iter().copied().max().unwrap_or(0))?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for &n in &args.hosts {
        for server in &args.servers {
            let bin = server_binary(server)?;
            println!("\n== {server}, {n} hosts ==");
            // Ctrl-C or SIGTERM drops the run, and with it the cluster: its members are killed.
            let row = rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = run_one(&args, &bin, n) => r,
                    _ = tokio::signal::ctrl_c() => bail!("interrupted"),
                    _ = term.recv() => bail!("terminated"),
                }
            })?;
            rows.push((server.clone(), n, row));
        }
    }
    println!("\n{}", Row::header());
    for (server, n, row) in &rows {
        println!("{}", row.line(server, *n));
    }
    Ok(())
}

/// The binary for `--servers` word `s`.
fn server_binary(s: &str) -> Result<PathBuf> {
    let bin = match s {
        "kvstore" => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no parent directory")?
            .join("kvstore"),
        "etcd" => PathBuf::from(ETCD),
        path => PathBuf::from(path),
    };
    if !bin.exists() {
        bail!(
            "{} is missing (build kvstore in release mode, or install etcd-server)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Each host holds one connection per member: the open-files limit must allow them all.
fn check_open_files(n: usize) -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let need = 3 * n as u64 + 1_000;
    if soft < need {
        bail!(
            "{n} hosts need about {need} open files, the limit is {soft}: run `ulimit -n {need}` first"
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A 3-member cluster on loopback, killed on drop.
struct Cluster {
    members: Vec<(Member, Option<Child>)>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(bin: &Path) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let mut members = Vec::new();
        for i in 0..3 {
            let client = format!("http://127.0.0.1:{}", free_port()?);
            let peer = format!("http://127.0.0.1:{}", free_port()?);
            members.push(Member::new(
                &format!("m{i}"),
                &dir.path().join(format!("m{i}")),
                &client,
                &peer,
            ));
        }
        let initial = initial_cluster(
            members
                .iter()
                .map(|m| (m.name.as_str(), m.peer_url.as_str())),
        );
        let mut started = Vec::new();
        for mut m in members {
            m.initial_cluster = Some(initial.clone());
            m.token = Some(format!("fleet-{}", std::process::id()));
            // etcd 3.4's 2 GiB default quota is not the point here.
            m.extra = vec!["--quota-backend-bytes".into(), "8589934592".into()];
            let log = std::fs::File::create(dir.path().join(format!("{}.log", m.name)))?;
            let child = m
                .command(bin, None)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            started.push((m, Some(child)));
        }
        let endpoints = started.iter().map(|(m, _)| m.client_url.clone()).collect();
        Ok(Cluster {
            members: started,
            endpoints,
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.members
            .iter()
            .map(|(_, c)| c.as_ref().map(Child::id))
            .collect()
    }

    /// The index of the member that leads, as the live members report it.
    async fn leader(&self) -> Result<usize> {
        let mut ids = HashMap::new();
        let mut leader = 0;
        for (i, (m, child)) in self.members.iter().enumerate() {
            if child.is_none() {
                continue;
            }
            let c = kvstore::client::Client::connect([m.client_url.as_str()], None).await?;
            if let Ok(st) = c.status().await {
                ids.insert(st.header.map(|h| h.member_id).unwrap_or(0), i);
                leader = st.leader;
            }
        }
        ids.get(&leader)
            .copied()
            .context("no member names a leader")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// What the hosts share with the conductor.
struct Shared {
    endpoints: Vec<String>,
    timing: LeaseTiming,
    /// Hosts holding a lease and watching.
    ready: AtomicUsize,
    /// Failed requests and broken watches, retried.
    errors: AtomicU64,
    /// The errors by kind (their message without numbers), for the phase's report.
    kinds: std::sync::Mutex<HashMap<String, u64>>,
    /// Probe deliveries: (mod revision of the probe record, when a watcher had it).
    deliveries: mpsc::UnboundedSender<(i64, Instant)>,
    metrics: Arc<netd::metrics::Metrics>,
}

impl Shared {
    fn error(&self, msg: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let kind: String = msg
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(90)
            .collect();
        if let Ok(mut k) = self.kinds.lock() {
            *k.entry(kind).or_default() += 1;
        }
    }

    /// The errors since the last call, and the most frequent kinds, printed.
    fn take_errors(&self, phase: &str) -> u64 {
        let n = self.errors.swap(0, Ordering::Relaxed);
        if let Ok(mut k) = self.kinds.lock() {
            let mut v: Vec<_> = k.drain().collect();
            v.sort_by_key(|k| std::cmp::Reverse(k.1));
            for (kind, count) in v.iter().take(4) {
                println!("  {phase} errors: {count} x {kind}");
            }
        }
        n
    }
}

/// Host `i`'s record attributes: its own PublicIP and VTEP MAC.
fn attrs(i: usize) -> LeaseAttrs {
    let ip = Ipv4Addr::from(0x6440_0000u32 + i as u32 + 1); // 100.64.0.0/10
    let b = (i as u32).to_be_bytes();
    LeaseAttrs {
        public_ip: ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: MacAddr([0x02, 0x42, b[0], b[1], b[2], b[3]]),
        }),
        backend_v6_data: None,
    }
}

/// Retries `f` as netd's daemon does (a short pause, counted as an error) until it succeeds.
async fn retry<T, F, Fut>(sh: &Shared, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = netd::error::Result<T>>,
{
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                sh.error(&e.to_string());
                tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 300)).await;
            }
        }
    }
}

/// One simulated netd: runs generation after generation; a change of `restart` ends the
/// current one (after a random pause within 10 s) and starts the next, as a restarted netd.
async fn host(i: usize, sh: Arc<Shared>, mut restart: watch::Receiver<u64>) {
    let attrs = attrs(i);
    let mut previous: Option<SubnetKey> = None;
    loop {
        let kv = retry(&sh, || Kv::connect(&sh.endpoints, netd::kv::DEFAULT_PREFIX)).await;
        let config: NetworkConfig = retry(&sh, || kv.get_config()).await;
        let own: OwnLease = retry(&sh, || {
            netd::lease::acquire(&kv, &config, &attrs, previous, sh.timing)
        })
        .await;
        previous = Some(own.subnet);
        let (tx, mut rx) = mpsc::channel(1024);
        let watcher = tokio::spawn(netd::watch::run(
            kv.clone(),
            config.clone(),
            tx,
            sh.metrics.clone(),
        ));
        let mut ready = false;
        // Renewals run beside the watch, as in netd, so that a slow keep-alive never delays
        // the receipt of an event.
        let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<()>();
        let renewer = {
            let (kv, sh) = (kv.clone(), sh.clone());
            tokio::spawn(async move {
                let mut renew = tokio::time::interval(sh.timing.renew_interval());
                renew.reset();
                loop {
                    renew.tick().await;
                    match netd::lease::renew(&kv, &own).await {
                        Ok(()) => {}
                        Err(e) => {
                            sh.error(&e.to_string());
                            if matches!(e, netd::error::Error::LeaseLost(_)) {
                                break;
                            }
                        }
                    }
                }
                let _ = lost_tx.send(());
            })
        };
        let restarted = loop {
            tokio::select! {
                _ = &mut lost_rx => break false,
                ev = rx.recv() => match ev {
                    Some(PeerEvent::Snapshot(_)) if !ready => {
                        ready = true;
                        sh.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(PeerEvent::Put(r)) if r.attrs.public_ip == PROBE_IP => {
                        let _ = sh.deliveries.send((r.mod_revision, Instant::now()));
                    }
                    Some(_) => {}
                    None => break false,
                },
                r = restart.changed() => {
                    if r.is_err() {
                        watcher.abort();
                        renewer.abort();
                        return;
                    }
                    break true;
                }
            }
        };
        watcher.abort();
        renewer.abort();
        drop(kv);
        if ready {
            sh.ready.fetch_sub(1, Ordering::Relaxed);
        }
        if restarted {
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 10_000)).await;
        }
    }
}

/// One simulated host making netd's requests in netd's order, but with a light client: the
/// listings are not parsed record by record (a host finds its own record by its PublicIP in
/// the raw values), so that the simulator, which runs every host on this machine's cores,
/// spends its time waiting on the store rather than decoding JSON. The requests: read the
/// config; list the subnets; a live own record is kept with one keep-alive, otherwise a lease
/// is granted and a random free /24 created with a compare-and-swap (version 0); list again
/// and watch from the next revision (with progress notifications, as netd); keep-alives every
/// renew interval; a broken watch re-lists and watches again.
async fn host_light(i: usize, sh: Arc<Shared>, mut restart: watch::Receiver<u64>) {
    use kvstore::client::req;
    use kvstore::proto::etcdserverpb::compare::CompareResult;
    let a = attrs(i);
    let needle = format!("\"PublicIP\":\"{}\"", a.public_ip);
    let value = serde_json::to_vec(&a).unwrap_or_default();
    let prefix = format!(
        "{}/subnets/",
        netd::kv::DEFAULT_PREFIX.trim_end_matches('/')
    );
    let config_key = format!("{}/config", netd::kv::DEFAULT_PREFIX.trim_end_matches('/'));
    let ttl = sh.timing.ttl.as_secs() as i64;
    let mine = |v: &[u8]| v.windows(needle.len()).any(|w| w == needle.as_bytes());
    loop {
        let opts = || {
            kvstore::client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(5))
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        };
        let client = retry(&sh, || async {
            Ok(kvstore::client::Client::connect(&sh.endpoints, Some(opts())).await?)
        })
        .await;
        retry(&sh, || async { Ok(client.get(&config_key).await?) }).await;
        let lease = loop {
            let listing = retry(&sh, || async { Ok(client.get_prefix(&prefix).await?) }).await;
            if let Some(kv) = listing.kvs.iter().find(|kv| mine(&kv.value)) {
                if kv.lease != 0
                    && retry(&sh, || async {
                        Ok(client.lease_keep_alive_once(kv.lease).await?)
                    })
                    .await
                        > 0
                {
                    break kv.lease;
                }
                let _ = client.delete_range(req::delete(&kv.key)).await;
                continue;
            }
            let key = loop {
                let k = format!(
                    "{prefix}10.{}.{}.0-24",
                    rand::random::<u8>(),
                    rand::random::<u8>()
                );
                if !listing.kvs.iter().any(|kv| kv.key == k.as_bytes())
                    && !k.contains("10.255.255.")
                {
                    break k;
                }
            };
            let lease = retry(&sh, || async { Ok(client.lease_grant(ttl).await?.id) }).await;
            let mut put = req::put(&key, &value);
            put.lease = lease;
            let txn = req::txn(
                [req::version_is(&key, CompareResult::Equal, 0)],
                [req::op_put(put)],
                [],
            );
            let won = retry(&sh, || async {
                Ok(client.txn(txn.clone()).await?.succeeded)
            })
            .await;
            if won {
                break lease;
            }
            let _ = client.lease_revoke(lease).await;
        };
        let mut ready = false;
        // Keep-alives run beside the watch, as netd's renewals do beside its watcher, so that
        // a slow keep-alive never delays the receipt of an event. A lease the store no longer
        // has (it expired while the host could not renew it) means acquiring again.
        let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<()>();
        let renewer = {
            let (client, sh) = (client.clone(), sh.clone());
            tokio::spawn(async move {
                let mut renew = tokio::time::interval(sh.timing.renew_interval());
                renew.reset();
                loop {
                    renew.tick().await;
                    match client.lease_keep_alive_once(lease).await {
                        Ok(ttl) if ttl > 0 => {}
                        Ok(_) => break,
                        Err(e) => {
                            let lost = e.to_string().contains("lease not found");
                            sh.error(&e.to_string());
                            if lost {
                                break;
                            }
                        }
                    }
                }
                let _ = lost_tx.send(());
            })
        };
        let restarted = 'watching: loop {
            let listing = retry(&sh, || async { Ok(client.get_prefix(&prefix).await?) }).await;
            let rev = listing.header.map(|h| h.revision).unwrap_or(0);
            let mut create = req::watch_prefix(&prefix, rev + 1);
            create.progress_notify = true;
            let mut stream = retry(&sh, || async { Ok(client.watch(create.clone()).await?) }).await;
            if !ready {
                ready = true;
                sh.ready.fetch_add(1, Ordering::Relaxed);
            }
            loop {
                tokio::select! {
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) if !resp.canceled => {
                            let now = Instant::now();
                            for ev in &resp.events {
                                if let Some(kv) = &ev.kv
                                    && kv.key.ends_with(PROBE_KEY.as_bytes())
                                {
                                    let _ = sh.deliveries.send((kv.mod_revision, now));
                                }
                            }
                        }
                        other => {
                            sh.error(&match other {
                                Err(e) => e.to_string(),
                                Ok(Some(r)) => format!("watch canceled: {}", r.cancel_reason),
                                _ => "watch stream ended".into(),
                            });
                            continue 'watching;
                        }
                    },
                    _ = &mut lost_rx => break 'watching false,
                    r = restart.changed() => {
                        if r.is_err() {
                            renewer.abort();
                            return;
                        }
                        break 'watching true;
                    }
                }
            }
        };
        renewer.abort();
        drop(client);
        if ready {
            sh.ready.fetch_sub(1, Ordering::Relaxed);
        }
        if restarted {
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 10_000)).await;
        }
    }
}

/// The probe record's key.
fn probe_key() -> String {
    format!(
        "{}/subnets/{PROBE_KEY}",
        netd::kv::DEFAULT_PREFIX.trim_end_matches('/')
    )
}

/// The probe record's value: a valid record of a host that is not simulated.
fn probe_value(seq: usize) -> String {
    let a = LeaseAttrs {
        public_ip: PROBE_IP,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: MacAddr([0x02, 0x43, 0, 0, (seq >> 8) as u8, seq as u8]),
        }),
        backend_v6_data: None,
    };
    serde_json::to_string(&a).unwrap_or_default()
}

/// Latency figures of one fan-out measurement.
#[derive(Default, Clone, Copy)]
struct FanOut {
    p50: Duration,
    p99: Duration,
    max: Duration,
    delivered: usize,
    expected: usize,
}

impl FanOut {
    fn show(&self) -> String {
        format!(
            "p50 {:.1} / p99 {:.1} / max {:.1} ms ({} of {})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.delivered,
            self.expected
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Puts `probes` changes of the probe record, 300 ms apart, and times each through every one
/// of `n` watchers (deliveries after `grace` past the last put are counted as missing).
async fn fan_out(
    client: &kvstore::client::Client,
    rx: &mut mpsc::UnboundedReceiver<(i64, Instant)>,
    n: usize,
    probes: usize,
    first_seq: usize,
) -> Result<FanOut> {
    while rx.try_recv().is_ok() {}
    let key = probe_key();
    let mut sent: HashMap<i64, Instant> = HashMap::new();
    for s in 0..probes {
        let t = Instant::now();
        // A put that fails (its connection went to a killed member) is retried, as a client
        // would; the time counts from the first try.
        let mut tries = 0;
        let resp = loop {
            match client.put_kv(key.clone(), probe_value(first_seq + s)).await {
                Ok(r) => break r,
                Err(e) if tries >= 20 => return Err(e.into()),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        sent.insert(rev, t);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let grace = Instant::now() + Duration::from_secs(5);
    let mut lat = Vec::with_capacity(n * probes);
    let mut counts: HashMap<i64, usize> = HashMap::new();
    while lat.len() < n * probes {
        let left = grace.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((rev, at))) => {
                if let Some(t) = sent.get(&rev) {
                    lat.push(at.saturating_duration_since(*t));
                    *counts.entry(rev).or_default() += 1;
                }
            }
            _ => break,
        }
    }
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(FanOut {
        p50: pick(0.50),
        p99: pick(0.99),
        max: lat.last().copied().unwrap_or_default(),
        delivered: lat.len(),
        expected: n * probes,
    })
}

/// Resident MB of `pid`.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    // /proc counts in USER_HZ, 100 on Linux.
    let ticks = 100.0;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map(|t| t / ticks)
        .unwrap_or(0.0)
}

/// Waits until `ready` reaches `n`; the time it took from `since`, or None past the limit.
async fn until_ready(sh: &Shared, n: usize, since: Instant) -> Option<Duration> {
    loop {
        if sh.ready.load(Ordering::Relaxed) >= n {
            return Some(since.elapsed());
        }
        if since.elapsed() > PHASE_LIMIT {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One server's figures at one fleet size.
#[derive(Default)]
struct Row {
    cold: Option<Duration>,
    cold_errors: u64,
    rss: Vec<f64>,
    cpu: Vec<f64>,
    fan: FanOut,
    storm: Option<Duration>,
    storm_errors: u64,
    kill_recovery: Option<Duration>,
    kill_fan: FanOut,
    kill_errors: u64,
}

fn opt_s(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "not reached".into())
}

impl Row {
    fn header() -> String {
        "| server | hosts | cold start | errors | RSS per member (MB) | CPU per member (% of a core) | fan-out p50 / p99 / max | restart storm | errors | after a leader kill: all see a change | fan-out p99 | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|".into()
    }

    fn line(&self, server: &str, n: usize) -> String {
        let join = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        format!(
            "| {server} | {n} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} ms ({}/{}) | {} | {} | {} | {:.1} ms ({}/{}) | {} |",
            opt_s(self.cold),
            self.cold_errors,
            join(&self.rss),
            join(&self.cpu),
            ms(self.fan.p50),
            ms(self.fan.p99),
            ms(self.fan.max),
            self.fan.delivered,
            self.fan.expected,
            opt_s(self.storm),
            self.storm_errors,
            opt_s(self.kill_recovery),
            ms(self.kill_fan.p99),
            self.kill_fan.delivered,
            self.kill_fan.expected,
            self.kill_errors,
        )
    }
}

async fn run_one(args: &Args, bin: &Path, n: usize) -> Result<Row> {
    let mut cluster = Cluster::start(bin)?;
    let client = kvstore::client::Client::connect(&cluster.endpoints, None).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .put_kv(
                format!("{}/config", netd::kv::DEFAULT_PREFIX.trim_end_matches('/')),
                CONFIG,
            )
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("the cluster never served: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let (dtx, mut drx) = mpsc::unbounded_channel();
    let sh = Arc::new(Shared {
        endpoints: cluster.endpoints.clone(),
        timing: LeaseTiming {
            ttl: Duration::from_secs(args.lease_ttl),
            renew_margin: Duration::from_secs(args.lease_ttl * 2 / 3),
        },
        ready: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
        kinds: Default::default(),
        deliveries: dtx,
        metrics: Arc::new(netd::metrics::Metrics::new()),
    });
    let mut row = Row::default();

    // 1. Cold start.
    let (restart_tx, restart_rx) = watch::channel(0u64);
    let started = Instant::now();
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        hosts.push(if args.netd_code {
            tokio::spawn(host(i, sh.clone(), restart_rx.clone()))
        } else {
            tokio::spawn(host_light(i, sh.clone(), restart_rx.clone()))
        });
    }
    row.cold = until_ready(&sh, n, started).await;
    row.cold_errors = sh.take_errors("cold start");
    println!(
        "cold start: {} ({} errors)",
        opt_s(row.cold),
        row.cold_errors
    );
    if row.cold.is_none() {
        println!("only {} of {n} ready", sh.ready.load(Ordering::Relaxed));
    }

    // 2. Steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids = cluster.pids();
    let before: Vec<f64> = pids
        .iter()
        .map(|p| p.map(cpu_secs).unwrap_or(0.0))
        .collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let spent = t.elapsed().as_secs_f64();
    row.cpu = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| (p.map(cpu_secs).unwrap_or(0.0) - b) / spent * 100.0)
        .collect();
    row.rss = pids.iter().map(|p| p.map(rss_mb).unwrap_or(0.0)).collect();
    println!(
        "steady: RSS {:?} MB, CPU {:?} % of a core",
        row.rss, row.cpu
    );

    // 3. Fan-out.
    row.fan = fan_out(&client, &mut drx, n, args.probes, 0).await?;
    println!("fan-out: {}", row.fan.show());
    sh.take_errors("steady");

    if !args.no_faults {
        // 4. Restart storm.
        let storm = Instant::now();
        restart_tx.send_modify(|g| *g += 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        row.storm = until_ready(&sh, n, storm).await;
        row.storm_errors = sh.take_errors("restart storm");
        println!(
            "restart storm: {} ({} errors)",
            opt_s(row.storm),
            row.storm_errors
        );

        // 5. The leader killed.
        let leader = cluster.leader().await?;
        let killed = Instant::now();
        cluster.kill(leader);
        println!("killed member m{leader} (the leader)");
        let key = probe_key();
        let mut seq = 10_000;
        row.kill_recovery = loop {
            while drx.try_recv().is_ok() {}
            seq += 1;
            let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(5),
                client.put_kv(key.clone(), probe_value(seq)),
            )
            .await
            else {
                if killed.elapsed() > PHASE_LIMIT {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let rev = resp.header.map(|h| h.revision).unwrap_or(0);
            let mut got = 0;
            let until = Instant::now() + Duration::from_secs(2);
            while got < n {
                match tokio::time::timeout(
                    until.saturating_duration_since(Instant::now()),
                    drx.recv(),
                )
                .await
                {
                    Ok(Some((r, _))) if r == rev => got += 1,
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            if got >= n {
                break Some(killed.elapsed());
            }
            if killed.elapsed() > PHASE_LIMIT {
                break None;
            }
        };
        row.kill_fan = fan_out(&client, &mut drx, n, args.probes, 20_000).await?;
        row.kill_errors = sh.take_errors("leader kill");
        println!(
            "after the kill: every watcher saw a change after {}; fan-out {} ({} errors)",
            opt_s(row.kill_recovery),
            row.kill_fan.show(),
            row.kill_errors
        );
    }
    drop(restart_tx);
    for h in hosts {
        h.abort();
    }
    Ok(row)
}
