//! One run of the experiment against one kind of server: writers of unique keys through the
//! stock client while the leader is SIGKILLed and restarted on a schedule, then every
//! acknowledged key read back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{Client, GetOptions};

use crate::cluster::Cluster;

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub members: usize,
    pub writers: usize,
    pub duration: Duration,
    /// Time between the cluster's recovery from one kill and the next kill.
    pub kill_every: Duration,
    /// How long a killed leader stays down before it is started again.
    pub down_for: Duration,
    /// A writer's pause after a failed put before it sends the put again.
    pub retry_pause: Duration,
    /// A put unanswered this long counts as failed (and is sent again).
    pub give_up: Duration,
    /// The client the writers put through.
    pub client: ClientKind,
}

/// The client the writers put through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// The stock `etcd-client` crate: one client of all three members per writer, its
    /// connections kept for the whole run.
    Crate,
    /// The stock `etcdctl` (etcd's Go client, clientv3): one `etcdctl put` process per put, given
    /// all three members, as a script or an operator uses it.
    Etcdctl,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub kills: usize,
    pub acked: usize,
    pub lost: usize,
    /// The longest time between two successful puts (of any writer).
    pub longest_gap: Duration,
    /// The slowest successful put.
    pub slowest_put: Duration,
    /// Failed puts (each retried by its writer), by error text.
    pub errors: BTreeMap<String, u64>,
    /// `/proc/loadavg`'s one-minute figure at the start and at the end of the run.
    pub load: (String, String),
}

impl Outcome {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failed puts that no server answered: the client could not connect to a member (the
    /// killed one, while it is down) or lost the connection with a request on it.
    pub fn failed_in_transport(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(e, _)| is_transport(e))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Whether an error text is the client's transport failing rather than a server's answer.
fn is_transport(e: &str) -> bool {
    [
        // etcd-client (tonic)
        "tcp connect error",
        "transport error",
        // etcdctl (grpc-go)
        "connection refused",
        "transport is closing",
        "error reading from server",
        "connection reset",
    ]
    .iter()
    .any(|t| e.contains(t))
}

/// What one writer saw.
#[derive(Default)]
struct WriterLog {
    /// Acknowledged sequence numbers, with when each was acknowledged.
    acked: Vec<(u64, Instant)>,
    slowest: Duration,
    errors: BTreeMap<String, u64>,
}

fn key(writer: usize, seq: u64) -> String {
    format!("lk/w{writer:02}/{seq:08}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The error text a user of the client would see: the gRPC code and message, or the
/// transport's failure.
fn describe(e: &etcd_client::Error) -> String {
    let text = match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    text.chars().take(110).collect()
}

/// How a writer sends its puts: a client of the crate, kept for the run, or one `etcdctl put`
/// process per put (etcd's Go client: its balancer picks only members it is connected to,
/// and a put waits for one; `--command-timeout` is the plan's give-up time so a server's own
/// time-out is what the writer sees).
enum Putter {
    Crate(Box<Client>),
    Etcdctl { endpoints: String, timeout: String },
}

impl Putter {
    async fn new(endpoints: &[String], plan: &Plan) -> Result<Putter> {
        Ok(match plan.client {
            ClientKind::Crate => Putter::Crate(Box::new(Client::connect(endpoints, None).await?)),
            ClientKind::Etcdctl => Putter::Etcdctl {
                endpoints: endpoints.join(","),
                timeout: format!("{}s", plan.give_up.as_secs().max(1)),
            },
        })
    }

    /// One put, given up after `give_up`: `Ok(Err(text))` is a failed put, counted by its
    /// text; `Err` ends the run (etcdctl could not be started).
    async fn put(&mut self, k: String, v: String, give_up: Duration) -> Result<Result<(), String>> {
        let no_answer = || format!("no answer within {give_up:?}");
        match self {
            Putter::Crate(c) => Ok(
                match tokio::time::timeout(give_up, c.put(k, v, None)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err(no_answer()),
                },
            ),
            Putter::Etcdctl { endpoints, timeout } => {
                let out = tokio::process::Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", endpoints, "--dial-timeout", "2s"])
                    .args(["--command-timeout", timeout, "put"])
                    .arg(k)
                    .arg(v)
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(give_up + Duration::from_secs(5), out).await {
                    Ok(Ok(o)) if o.status.success() => Ok(Ok(())),
                    Ok(Ok(o)) => Ok(Err(etcdctl_error(&String::from_utf8_lossy(&o.stderr)))),
                    Ok(Err(e)) => Err(e).context("running etcdctl (scripts/install-deps.sh test)"),
                    Err(_) => Ok(Err(no_answer())),
                }
            }
        }
    }
}

async fn writer(endpoints: Vec<String>, w: usize, until: Instant, plan: Plan) -> Result<WriterLog> {
    let mut putter = Putter::new(&endpoints, &plan).await?;
    let mut log = WriterLog::default();
    let mut seq = 0u64;
    while Instant::now() < until {
        let started = Instant::now();
        match putter
            .put(key(w, seq), seq.to_string(), plan.give_up)
            .await?
        {
            Ok(()) => {
                let now = Instant::now();
                log.slowest = log.slowest.max(now - started);
                log.acked.push((seq, now));
                seq += 1;
                continue;
            }
            Err(text) => *log.errors.entry(text).or_default() += 1,
        }
        tokio::time::sleep(plan.retry_pause).await;
    }
    Ok(log)
}

/// The error etcdctl reports on its last `Error: ` line (the lines before it are its client's
/// warnings, such as the retries it made).
fn etcdctl_error(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Error: "))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no message)");
    line.trim().chars().take(110).collect()
}

/// Kills the leader `plan.kill_every` after the cluster last had one, restarts it
/// `plan.down_for` later, until `until`; returns the number of kills.
async fn killer(cluster: &mut Cluster, until: Instant, plan: &Plan) -> Result<usize> {
    let mut kills = 0;
    loop {
        let next = Instant::now() + plan.kill_every;
        if next + plan.down_for > until {
            tokio::time::sleep_until(until.into()).await;
            return Ok(kills);
        }
        tokio::time::sleep_until(next.into()).await;
        let Some(leader) = cluster.wait_leader(Duration::from_secs(5)).await else {
            eprintln!("leaderkill: no agreed leader to kill; trying again");
            continue;
        };
        cluster.kill(leader);
        kills += 1;
        tokio::time::sleep(plan.down_for).await;
        cluster.launch(leader)?;
        // The next countdown starts once there is a leader again.
        let _ = cluster.wait_leader(Duration::from_secs(10)).await;
    }
}

/// Reads back every writer's keys (linearizable, through every member) and counts the
/// acknowledged ones missing or with another value.
async fn count_lost(endpoints: &[String], logs: &[WriterLog]) -> Result<usize> {
    let mut c = Client::connect(endpoints, None).await?;
    let mut lost = 0;
    for (w, log) in logs.iter().enumerate() {
        let prefix = format!("lk/w{w:02}/");
        let mut attempt = 0;
        let resp = loop {
            match c
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(r) => break r,
                Err(e) if attempt < 20 => {
                    eprintln!("leaderkill: reading back {prefix}: {e}; again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("reading back the acknowledged keys"),
            }
        };
        let stored: BTreeMap<&[u8], &[u8]> =
            resp.kvs().iter().map(|kv| (kv.key(), kv.value())).collect();
        for (seq, _) in &log.acked {
            let k = key(w, *seq);
            if stored.get(k.as_bytes()) != Some(&seq.to_string().as_bytes()) {
                lost += 1;
            }
        }
    }
    Ok(lost)
}

/// Runs the experiment against a fresh cluster of `bin`.
pub async fn run(bin: &Path, plan: &Plan) -> Result<Outcome> {
    let mut cluster = Cluster::start(bin, plan.members).await?;
    cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .context("the new cluster elected no leader")?;
    let endpoints = cluster.endpoints();
    let load_before = load_average();
    let until = Instant::now() + plan.duration;
    let writers: Vec<_> = (0..plan.writers)
        .map(|w| tokio::spawn(writer(endpoints.clone(), w, until, plan.clone())))
        .collect();
    let kills = killer(&mut cluster, until, plan).await?;
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await??);
    }
    let load_after = load_average();
    cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .context("no leader after the run")?;
    let lost = count_lost(&endpoints, &logs).await?;

    let mut times: Vec<Instant> = logs
        .iter()
        .flat_map(|l| l.acked.iter().map(|(_, t)| *t))
        .collect();
    times.sort();
    let longest_gap = times
        .windows(2)
        .map(|p| p[1] - p[0])
        .max()
        .unwrap_or_default();
    let mut errors = BTreeMap::new();
    for l in &logs {
        for (e, n) in &l.errors {
            *errors.entry(e.clone()).or_default() += n;
        }
    }
    Ok(Outcome {
        kills,
        acked: times.len(),
        lost,
        longest_gap,
        slowest_put: logs.iter().map(|l| l.slowest).max().unwrap_or_default(),
        errors,
        load: (load_before, load_after),
    })
}
