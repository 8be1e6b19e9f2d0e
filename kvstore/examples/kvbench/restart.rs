//! `kvbench --restart-leader`: what a planned restart of the leader costs its clients. One
//! 3-member cluster of each kind, in turn; `--clients` connections spread over the two
//! followers put at a steady `--flat-rate` in all; after `--restart-after` seconds the
//! leader gets SIGTERM (a graceful stop: both kvstore and etcd 3.4 hand leadership to
//! another member first), is started again on its data a second after it exits, and the
//! load runs as long again after it serves. Reported per server: puts acknowledged, puts
//! failed, p50/p99/max latency in the steady phase before the stop and from the stop until
//! the member serves again, the longest gap between two acknowledged puts, and whether
//! leadership moved before the old leader stopped (no election timeout in between).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvstore::proto::etcdserverpb::{
    PutRequest, StatusRequest, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use parking_lot::Mutex;

use super::{Args, Token, connect, start_ready, wait_ready};

/// One put: when it was sent, how long it took, whether it succeeded.
type Sample = (Instant, Duration, bool);

async fn leader_of(endpoint: &str) -> anyhow::Result<(u64, u64, u64)> {
    let s = MaintenanceClient::new(connect(endpoint, &Token::default()).await?)
        .status(StatusRequest {})
        .await?
        .into_inner();
    let me = s.header.map_or(0, |h| h.member_id);
    Ok((me, s.leader, s.raft_term))
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// p50, p99, max in ms of the acknowledged puts sent in `from..to`.
fn latencies(samples: &[Sample], from: Instant, to: Instant) -> (f64, f64, f64) {
    let mut lat: Vec<Duration> = samples
        .iter()
        .filter(|(at, _, ok)| *ok && *at >= from && *at < to)
        .map(|(_, d, _)| *d)
        .collect();
    lat.sort_unstable();
    (
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    )
}

struct Outcome {
    name: String,
    acked: usize,
    failed: usize,
    steady: (f64, f64, f64),
    around: (f64, f64, f64),
    longest_gap_ms: f64,
    moved_first: bool,
    terms: (u64, u64),
}

async fn measure(name: &str, bin: &std::path::Path, a: &Args) -> anyhow::Result<Outcome> {
    let mut servers = start_ready(bin, 3).await?;
    let mut leader_idx = None;
    let mut ids = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let (me, leader, _) = leader_of(&s.endpoint).await?;
        ids.push(me);
        if me == leader {
            leader_idx = Some(i);
        }
    }
    let leader_idx = leader_idx.ok_or_else(|| anyhow::anyhow!("{name}: no leader"))?;
    let followers: Vec<String> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_idx)
        .map(|(_, s)| s.endpoint.clone())
        .collect();
    let (_, _, term_before) = leader_of(&followers[0]).await?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = a.clients.max(1);
    let every = Duration::from_secs_f64(clients as f64 / a.flat_rate.max(1) as f64);
    let value = Bytes::from(vec![b'v'; 100]);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(connect(&followers[c % 2], &Token::default()).await?);
        let (samples, stop, value) = (samples.clone(), stop.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                let ok = kv
                    .put(PutRequest {
                        key: Bytes::from(format!("restart/{:04}", i % 1000)),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .is_ok();
                samples.lock().push((at, at.elapsed(), ok));
                i += clients;
            }
        }));
    }
    let wait = Duration::from_secs(a.restart_after.max(1));
    tokio::time::sleep(wait).await;
    let stopping = Instant::now();
    let leader = &mut servers[leader_idx];
    // SIGTERM: the graceful stop an init system sends.
    let pid = leader.child.id();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    leader.child.wait()?;
    let (_, new_leader, _) = leader_of(&followers[0]).await?;
    let moved_first = new_leader != 0 && new_leader != ids[leader_idx];
    tokio::time::sleep(Duration::from_secs(1)).await;
    leader.respawn(bin, "log2")?;
    wait_ready(leader).await?;
    let serving = Instant::now();
    tokio::time::sleep(wait).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let (_, _, term_after) = leader_of(&followers[0]).await?;
    let mut samples = std::mem::take(&mut *samples.lock());
    samples.sort_by_key(|s| s.0 + s.1);
    let acked: Vec<Instant> = samples
        .iter()
        .filter(|s| s.2)
        .map(|(at, d, _)| *at + *d)
        .collect();
    let longest_gap_ms = acked
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let start = samples.first().map_or(stopping, |s| s.0);
    Ok(Outcome {
        name: name.to_string(),
        acked: acked.len(),
        failed: samples.iter().filter(|s| !s.2).count(),
        steady: latencies(&samples, start, stopping),
        around: latencies(&samples, stopping, serving),
        longest_gap_ms,
        moved_first,
        terms: (term_before, term_after),
    })
}

pub async fn run(bins: &[(String, std::path::PathBuf)], a: &Args) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for (label, bin) in bins {
        eprintln!("kvbench: {label}: a planned restart of the leader");
        out.push(measure(label, bin, a).await?);
    }
    println!(
        "planned restart of the leader (SIGTERM, restarted 1 s after it exits), {} puts/s over {} clients on the followers",
        a.flat_rate, a.clients
    );
    println!(
        "| server | puts acknowledged | failed | steady p50 / p99 / max ms | stop to serving again p50 / p99 / max ms | longest gap ms | leadership moved before the stop | terms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in out {
        println!(
            "| {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.0} | {} | {} -> {} |",
            o.name,
            o.acked,
            o.failed,
            o.steady.0,
            o.steady.1,
            o.steady.2,
            o.around.0,
            o.around.1,
            o.around.2,
            o.longest_gap_ms,
            if o.moved_first { "yes" } else { "no" },
            o.terms.0,
            o.terms.1
        );
    }
    Ok(())
}
