//! `kvbench --scale`: a large keyspace on each server, one server at a time, each fresh.
//!
//! Loads `--scale-keys` keys of `--value-bytes` (each written `1 + --overwrites` times, the
//! overwrites in later passes so that history piles up), then measures what an operator of
//! a big store lives with: the load rate, resident memory and disk use after the load, the
//! time from a restart (SIGKILL, then the same data dir) to serving a linearizable read and
//! the memory after it, a full-range `--keys-only` read and a full range with values (time
//! and the member's peak resident memory during each, sampled every 20 ms), and a compaction
//! of all history at the latest revision (when there is history to drop).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvstore::proto::etcdserverpb::{
    CompactionRequest, PutRequest, RangeRequest, kv_client::KvClient,
};

use super::{Args, Server, Token, connect, rss, start_ready_with, wait_ready};

/// What one server measured.
#[derive(Debug, Default)]
struct Scale {
    name: String,
    load_secs: f64,
    puts: usize,
    rss_loaded: f64,
    disk_mb: f64,
    restart_secs: f64,
    rss_restarted: f64,
    keys_only_secs: f64,
    keys_only_peak: f64,
    values_secs: f64,
    values_peak: f64,
    values_bytes: usize,
    compact_secs: Option<f64>,
    rss_compacted: Option<f64>,
    disk_compacted_mb: Option<f64>,
}

fn scale_key(i: usize) -> Bytes {
    Bytes::from(format!("scale/{i:08}"))
}

/// Bytes under `dir`, in MB.
fn disk_mb(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if meta.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            // Allocated blocks: preallocated journal segments count as what they hold on disk.
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512
        }
    }
    walk(dir) as f64 / 1e6
}

/// Runs `f` while sampling `pid`'s resident memory every 20 ms; returns its result, the
/// seconds it took and the peak in MB.
async fn peak_during<T>(
    pid: u32,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64, f64)> {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = rss(pid).unwrap_or(0.0);
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    peak = peak.max(rss(pid).unwrap_or(0.0));
                }
            }
        }
        peak.max(rss(pid).unwrap_or(0.0))
    });
    let start = Instant::now();
    let out = f.await;
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let peak = sampler.await?;
    Ok((out?, secs, peak))
}

/// Puts every key once per pass, `clients` at once.
async fn load(endpoint: &str, a: &Args) -> anyhow::Result<usize> {
    let value = Bytes::from(vec![b'v'; a.value_bytes]);
    let passes = 1 + a.overwrites;
    let mut done = 0;
    for _ in 0..passes {
        let mut tasks = Vec::new();
        for c in 0..a.clients {
            let mut kv = KvClient::new(connect(endpoint, &Token::default()).await?);
            let value = value.clone();
            let (keys, clients) = (a.scale_keys, a.clients);
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while i < keys {
                    kv.put(PutRequest {
                        key: scale_key(i),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await?;
                    i += clients;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        done += a.scale_keys;
    }
    Ok(done)
}

/// A full range over the scale keys; returns the keys and bytes received.
async fn full_range(endpoint: &str, keys_only: bool) -> anyhow::Result<(usize, usize)> {
    let ch = connect(endpoint, &Token::default()).await?;
    let mut kv = KvClient::new(ch).max_decoding_message_size(usize::MAX);
    let resp = kv
        .range(RangeRequest {
            key: Bytes::from("scale/"),
            range_end: Bytes::from("scale0"),
            keys_only,
            ..Default::default()
        })
        .await?
        .into_inner();
    let bytes = resp
        .kvs
        .iter()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum();
    Ok((resp.kvs.len(), bytes))
}

async fn measure(name: &str, bin: &Path, a: &Args) -> anyhow::Result<Scale> {
    // etcd refuses writes past its 2 GiB default quota (NOSPACE), which history of a million
    // 1 KiB keys written a few times exceeds, and kvstore enforces the same quota: both get
    // etcd's largest, 8 GiB.
    let extra = vec!["--quota-backend-bytes=8589934592".to_string()];
    let mut servers = start_ready_with(bin, 1, &extra).await?;
    let server: &mut Server = servers
        .first_mut()
        .ok_or_else(|| anyhow::anyhow!("no server started"))?;
    let endpoint = server.endpoint.clone();
    let mut s = Scale {
        name: name.to_string(),
        ..Default::default()
    };
    eprintln!(
        "kvbench: {name}: loading {} puts",
        a.scale_keys * (1 + a.overwrites)
    );
    let start = Instant::now();
    s.puts = load(&endpoint, a).await?;
    s.load_secs = start.elapsed().as_secs_f64();
    // Let background flushes settle before reading memory and disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.rss_loaded = rss(server.child.id()).unwrap_or(0.0);
    s.disk_mb = disk_mb(&server.dir.path().join("data"));

    eprintln!("kvbench: {name}: restart");
    server.child.kill()?;
    server.child.wait()?;
    let start = Instant::now();
    server.respawn(bin, "log2")?;
    wait_ready(server).await?;
    s.restart_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.rss_restarted = rss(server.child.id()).unwrap_or(0.0);

    eprintln!("kvbench: {name}: full ranges");
    let pid = server.child.id();
    let ((n, _), secs, peak) = peak_during(pid, full_range(&endpoint, true)).await?;
    anyhow::ensure!(n == a.scale_keys, "{name}: keys-only range gave {n} keys");
    (s.keys_only_secs, s.keys_only_peak) = (secs, peak);
    let ((n, bytes), secs, peak) = peak_during(pid, full_range(&endpoint, false)).await?;
    anyhow::ensure!(n == a.scale_keys, "{name}: full range gave {n} keys");
    (s.values_secs, s.values_peak, s.values_bytes) = (secs, peak, bytes);

    if a.overwrites > 0 {
        eprintln!("kvbench: {name}: compaction");
        let mut kv = KvClient::new(connect(&endpoint, &Token::default()).await?);
        let rev = kv
            .range(RangeRequest {
                key: scale_key(0),
                ..Default::default()
            })
            .await?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        let start = Instant::now();
        kv.compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await?;
        s.compact_secs = Some(start.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.rss_compacted = rss(pid);
        s.disk_compacted_mb = Some(disk_mb(&server.dir.path().join("data")));
    }
    Ok(s)
}

/// Runs the scale measurement on each server in turn and prints the table.
pub async fn run(bins: &[(String, std::path::PathBuf)], a: &Args) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for (name, bin) in bins {
        all.push(measure(name, bin, a).await?);
    }
    println!(
        "\n{} keys of {} bytes, each written {} time(s); one member each\n",
        a.scale_keys,
        a.value_bytes,
        1 + a.overwrites
    );
    print!("| measure |");
    for s in &all {
        print!(" {} |", s.name);
    }
    if all.len() >= 2 {
        print!(" {} / {} |", all[0].name, all[1].name);
    }
    println!(
        "\n|---|{}",
        "---|".repeat(all.len() + usize::from(all.len() >= 2))
    );
    let row = |label: &str, f: &dyn Fn(&Scale) -> Option<f64>, unit: &str| {
        print!("| {label} |");
        for s in &all {
            match f(s) {
                Some(v) => print!(" {v:.1} {unit} |"),
                None => print!(" - |"),
            }
        }
        if all.len() >= 2 {
            match (f(&all[0]), f(&all[1])) {
                (Some(x), Some(y)) if y > 0.0 => print!(" {:.2}x |", x / y),
                _ => print!(" - |"),
            }
        }
        println!();
    };
    row(
        "load rate",
        &|s| Some(s.puts as f64 / s.load_secs),
        "puts/s",
    );
    row(
        "resident memory after the load",
        &|s| Some(s.rss_loaded),
        "MB",
    );
    row("disk use after the load", &|s| Some(s.disk_mb), "MB");
    row(
        "restart (SIGKILL) to serving",
        &|s| Some(s.restart_secs),
        "s",
    );
    row(
        "resident memory after the restart",
        &|s| Some(s.rss_restarted),
        "MB",
    );
    row("full range, keys only", &|s| Some(s.keys_only_secs), "s");
    row("peak memory during it", &|s| Some(s.keys_only_peak), "MB");
    row("full range with values", &|s| Some(s.values_secs), "s");
    row("peak memory during it", &|s| Some(s.values_peak), "MB");
    row("compaction of all history", &|s| s.compact_secs, "s");
    row("resident memory after it", &|s| s.rss_compacted, "MB");
    row("disk use after it", &|s| s.disk_compacted_mb, "MB");
    Ok(())
}
