//! `kvbench --flat`: does a member's memory stay flat under a steady overwrite load with
//! automatic compaction on? One single-member server of each kind, all started at once with
//! `--auto-compaction-mode periodic --auto-compaction-retention RETENTION`, each driven at
//! the same fixed rate of puts (`--flat-rate`, spread over `--clients` connections) that
//! overwrite `--flat-keys` keys with `--value-bytes` values, for `--flat-minutes`. Every
//! 10 s it prints each server's resident memory; at the end, each server's memory after the
//! first minute, its highest after that, and the last, with the highest as a ratio of the
//! first-minute figure (the target: within 1.2).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvstore::proto::etcdserverpb::{PutRequest, kv_client::KvClient};

use super::{Args, Token, connect, rss, start_ready_with};

/// One server's samples: (seconds since the load began, resident MB, puts acknowledged).
type Curve = Vec<(u64, f64, u64)>;

fn flat_key(i: u64) -> Bytes {
    Bytes::from(format!("flat/{i:06}"))
}

/// Drives `endpoint` at `rate` puts a second over `clients` connections until `until`;
/// counts acknowledged puts into `done`.
async fn drive(
    endpoint: String,
    a: &Args,
    until: Instant,
    done: Arc<AtomicU64>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let value = Bytes::from(vec![b'v'; a.value_bytes]);
    let clients = a.clients.max(1) as u64;
    let every = Duration::from_secs_f64(clients as f64 / a.flat_rate.max(1) as f64);
    let keys = a.flat_keys.max(1) as u64;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(connect(&endpoint, &Token::default()).await?);
        let (value, done) = (value.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = c;
            while Instant::now() < until {
                tick.tick().await;
                kv.put(PutRequest {
                    key: flat_key(i % keys),
                    value: value.clone(),
                    ..Default::default()
                })
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += clients;
            }
            anyhow::Ok(())
        }));
    }
    Ok(tasks)
}

pub async fn run(bins: &[(String, std::path::PathBuf)], a: &Args) -> anyhow::Result<()> {
    let flags = [
        "--auto-compaction-mode".to_string(),
        "periodic".to_string(),
        "--auto-compaction-retention".to_string(),
        a.flat_retention.clone(),
    ];
    let mut servers = Vec::new();
    for (label, bin) in bins {
        let s = start_ready_with(bin, 1, &flags).await?;
        servers.push((label.clone(), s));
    }
    let minutes = a.flat_minutes.max(1);
    println!(
        "flat: {} puts/s to each server over {} clients, {} keys of {} bytes overwritten, \
         auto-compaction periodic {}, {minutes} min",
        a.flat_rate, a.clients, a.flat_keys, a.value_bytes, a.flat_retention
    );
    let start = Instant::now();
    let until = start + Duration::from_secs(60 * minutes);
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for (_, s) in &servers {
        let done = Arc::new(AtomicU64::new(0));
        tasks.extend(drive(s[0].endpoint.clone(), a, until, done.clone()).await?);
        counters.push(done);
    }
    let pids: Vec<u32> = servers.iter().map(|(_, s)| s[0].child.id()).collect();
    let mut curves: Vec<Curve> = vec![Vec::new(); servers.len()];
    let header: Vec<String> = servers.iter().map(|(l, _)| format!("{l:>14}")).collect();
    println!(
        "{:>6} {}   (resident MB, puts done)",
        "t (s)",
        header.join(" ")
    );
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = start.elapsed().as_secs();
        let mut row = Vec::new();
        for (i, pid) in pids.iter().enumerate() {
            let mb = rss(*pid).unwrap_or(0.0);
            let puts = counters[i].load(Ordering::Relaxed);
            curves[i].push((t, mb, puts));
            row.push(format!("{mb:>7.1} {puts:>6}"));
        }
        println!("{t:>6} {}", row.join(" "));
    }
    for t in tasks {
        t.await??;
    }
    println!();
    println!("| server | puts/s | MB at 1 min | highest after | last | highest / at 1 min |");
    println!("|---|---|---|---|---|---|");
    for ((label, _), curve) in servers.iter().zip(&curves) {
        let at_minute = curve
            .iter()
            .find(|(t, _, _)| *t >= 60)
            .map_or(0.0, |(_, mb, _)| *mb);
        let highest = curve
            .iter()
            .filter(|(t, _, _)| *t > 60)
            .map(|(_, mb, _)| *mb)
            .fold(0.0, f64::max);
        let (last_t, last, puts) = curve.last().copied().unwrap_or_default();
        println!(
            "| {label} | {:.0} | {at_minute:.1} | {highest:.1} | {last:.1} | {:.2} |",
            puts as f64 / last_t.max(1) as f64,
            highest / at_minute.max(0.1)
        );
    }
    Ok(())
}
