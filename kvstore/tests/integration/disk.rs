//! Disk use under a steady write load: with the raft log truncated every
//! `--snapshot-count` entries, the MVCC history compacted periodically (as etcd's
//! auto-compaction does) and the journal checkpointed whenever a segment fills, a
//! member's data dir stops growing; the journal never holds more than a few segments;
//! a member killed with SIGKILL comes back with the same data as the others. And on a
//! single member: a journal that rotated several times, SIGKILLed in the middle of a
//! stream of acknowledged writes, loses none of them.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Kind, Proc};
use kvstore::client::{Client, req};

/// What one walk of a data dir found.
#[derive(Debug, Clone, Copy, Default)]
struct DirUse {
    /// Sum of the files' sizes (a preallocated journal segment counts in full).
    bytes: u64,
    /// The part of it in the journal.
    wal_bytes: u64,
    /// Journal segments present.
    segments: usize,
    /// The highest segment number seen (how many times the journal rotated).
    last_segment: u64,
}

fn walk(dir: &Path, out: &mut DirUse, in_wal: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        // Files come and go (sled's segments, checkpointed journal segments).
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let wal = in_wal || e.file_name() == "wal";
        if meta.is_dir() {
            walk(&path, out, wal);
        } else if meta.is_file() {
            out.bytes += meta.len();
            if wal {
                out.wal_bytes += meta.len();
            }
            if let Some(seq) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                out.segments += 1;
                out.last_segment = out.last_segment.max(seq);
            }
        }
    }
}

fn dir_use(dir: &Path) -> DirUse {
    let mut u = DirUse::default();
    walk(dir, &mut u, dir.file_name().is_some_and(|n| n == "wal"));
    u
}

const MIB: f64 = 1024.0 * 1024.0;

/// Writers overwriting `keys` keys with `value_len`-byte values until `total` bytes are
/// written; each returns how many puts it made.
fn spawn_overwriters(
    endpoints: &str,
    writers: usize,
    keys: usize,
    value_len: usize,
    written: Arc<AtomicU64>,
    total: u64,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|w| {
            let eps: Vec<String> = endpoints.split(',').map(str::to_string).collect();
            let written = written.clone();
            tokio::spawn(async move {
                let c = Client::connect(eps, None).await.expect("connect");
                let mut puts = 0u64;
                let mut i = w;
                while written.load(Ordering::Relaxed) < total {
                    let key = format!("disk/{:04}", i % keys);
                    let mut value = format!("{w}:{puts}:").into_bytes();
                    value.resize(value_len, b'x' + (puts % 3) as u8);
                    if let Err(e) = c.put_kv(key, value).await {
                        // A leader change, say: try again.
                        eprintln!("put failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    written.fetch_add(value_len as u64, Ordering::Relaxed);
                    puts += 1;
                    i += writers;
                }
                puts
            })
        })
        .collect()
}

/// The requirement: disk use stays bounded under a steady write load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_stays_bounded_under_steady_writes() {
    const TOTAL: u64 = 192 * 1024 * 1024;
    const VALUE: usize = 8192;
    const KEYS: usize = 500;
    let mut c = Cluster::start(Kind::Kvstore, 3, &["--snapshot-count", "1000"]);
    let dirs: Vec<std::path::PathBuf> = c.members.iter().map(|m| m.data_dir()).collect();
    let eps = c.endpoints();

    // Samples of every member's data dir, every 250 ms, until the load ends.
    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, written, dirs) = (done.clone(), written.clone(), dirs.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(u64, Vec<DirUse>)> = Vec::new();
            loop {
                let w = written.load(Ordering::Relaxed);
                samples.push((w, dirs.iter().map(|d| dir_use(d)).collect()));
                if done.load(Ordering::Relaxed) {
                    return samples;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    // The periodic compaction, to the current revision, as etcd's auto-compaction does.
    let compactor = {
        let (done, eps) = (done.clone(), eps.clone());
        tokio::spawn(async move {
            let eps: Vec<String> = eps.split(',').map(str::to_string).collect();
            let c = Client::connect(eps, None).await.expect("connect");
            let mut compactions = 0u32;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let rev = c
                    .get("disk/")
                    .await
                    .expect("get")
                    .header
                    .map_or(0, |h| h.revision);
                // Nothing written since the last one: "already compacted".
                if c.compact(rev, true).await.is_ok() {
                    compactions += 1;
                }
            }
            compactions
        })
    };

    let started = Instant::now();
    let writers = spawn_overwriters(&eps, 32, KEYS, VALUE, written.clone(), TOTAL);
    let mut puts = 0;
    for w in writers {
        puts += w.await.expect("writer");
    }
    let load = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let compactions = compactor.await.expect("compactor");
    let samples = tokio::task::spawn_blocking(move || sampler.join().expect("sampler"))
        .await
        .expect("sampler");
    println!(
        "{puts} puts of {VALUE} B over {KEYS} keys ({:.0} MiB) in {load:?}, {compactions} compactions",
        TOTAL as f64 / MIB
    );
    for (w, s) in &samples {
        let cells: Vec<String> = s
            .iter()
            .map(|u| {
                format!(
                    "{:6.1} MiB (wal {:4.1} MiB, {} seg, last {})",
                    u.bytes as f64 / MIB,
                    u.wal_bytes as f64 / MIB,
                    u.segments,
                    u.last_segment
                )
            })
            .collect();
        println!(
            "{:6.1} MiB written | {}",
            *w as f64 / MIB,
            cells.join(" | ")
        );
    }
    assert!(
        compactions >= 3,
        "only {compactions} compactions during the load"
    );

    for m in 0..dirs.len() {
        let last = samples.last().map(|(_, s)| s[m]).unwrap_or_default();
        // The journal rotated (the load is several segments' worth) and old segments
        // were checkpointed away: never more than a few at once.
        assert!(
            last.last_segment >= 4,
            "m{}: the journal did not rotate as often as expected: {last:?}",
            m + 1
        );
        let max_segments = samples.iter().map(|(_, s)| s[m].segments).max();
        assert!(
            max_segments <= Some(3),
            "m{}: up to {max_segments:?} journal segments",
            m + 1
        );
        // Disk use levels off. The backend grows until the key set and a full raft log
        // are written (well before a quarter of the load), then sled reclaims space
        // lazily and in bursts, so it still creeps up and swings by tens of MiB between
        // samples. So compare levels, not peaks: the median of the backend's size over
        // the last quarter of the load against the median over its second quarter
        // (the journal is bounded by the segment count above). A journal never
        // checkpointed, a log never truncated or a history never compacted grows by at
        // least what is written in between (the values are in all three; with the log
        // never truncated it measured +136%, while the real thing measured +18% to
        // +63%): allow at most as much as was written.
        let level = |from: u64, to: u64| {
            let mut v: Vec<u64> = samples
                .iter()
                .filter(|(w, _)| *w >= from && *w <= to)
                .map(|(_, s)| s[m].bytes - s[m].wal_bytes)
                .collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let (early, late) = (level(TOTAL / 4, TOTAL / 2), level(TOTAL * 3 / 4, TOTAL));
        let between = TOTAL / 2;
        let growth = late.saturating_sub(early);
        println!(
            "m{}: backend {:.1} MiB (median, second quarter) -> {:.1} MiB (median, last quarter): +{:.1} MiB for {:.1} MiB written",
            m + 1,
            early as f64 / MIB,
            late as f64 / MIB,
            growth as f64 / MIB,
            between as f64 / MIB
        );
        assert!(
            growth <= between,
            "m{}: data dir still growing: backend {:.1} MiB -> {:.1} MiB while {:.1} MiB were written",
            m + 1,
            early as f64 / MIB,
            late as f64 / MIB,
            between as f64 / MIB
        );
    }

    // A member killed with SIGKILL comes back with the same data as the others.
    tokio::task::block_in_place(|| {
        let victim = 1;
        c.members[victim].kill();
        c.members[victim].restart();
        c.wait_converged(Duration::from_secs(30));
        let reference = c.full_range(0);
        assert_eq!(reference.len(), KEYS);
        for i in 1..c.members.len() {
            assert!(
                c.full_range(i) == reference,
                "m{} differs from m1 after the restart",
                i + 1
            );
        }
    });
}

/// Writers putting fresh `w<n>/<seq>` keys with `value_len`-byte values until stopped;
/// each returns the writes acknowledged.
fn spawn_writers(
    endpoint: String,
    n: usize,
    value_len: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, usize)>>> {
    (0..n)
        .map(|w| {
            let (endpoint, stop) = (endpoint.clone(), stop.clone());
            tokio::spawn(async move {
                let c = Client::connect([endpoint], None).await.expect("connect");
                let mut acked = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}/{i:08}");
                    let mut value = format!("{i}:").into_bytes();
                    value.resize(value_len, b'v');
                    // Long enough for a loaded machine: a writer that gives up stops writing.
                    match tokio::time::timeout(Duration::from_secs(10), c.put_kv(&key, value)).await
                    {
                        Ok(Ok(_)) => acked.push((key, i)),
                        _ => break,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect()
}

/// A single member whose journal rotated (and was checkpointed) several times is killed
/// with SIGKILL in the middle of a stream of acknowledged writes: after a restart every
/// one of them is there, and the journal held only a few segments at the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_rotation_checkpoint_and_crash() {
    const VALUE: usize = 8192;
    let mut p = Proc::start_with(Kind::Kvstore, &["--snapshot-count", "1000"]);
    let wal = p.data_dir().join("wal");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(p.endpoint(), 8, VALUE, stop.clone());
    // Until the journal is on its fourth segment (over 96 MiB journaled), then a little
    // further into it. About 12,000 puts: under 20 s on an idle machine, over 60 s beside
    // the whole suite.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut max_segments = 0;
    loop {
        let u = dir_use(&wal);
        max_segments = max_segments.max(u.segments);
        if u.last_segment >= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the journal did not reach its fourth segment: {u:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.kill();
    stop.store(true, Ordering::Relaxed);
    let at_kill = dir_use(&wal);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    println!(
        "{} writes of {VALUE} B acknowledged; journal at the kill: {at_kill:?}, at most {max_segments} segments seen",
        acked.len()
    );
    assert!(
        at_kill.segments <= 2 && max_segments <= 3,
        "old journal segments were not checkpointed: {at_kill:?}, up to {max_segments}"
    );

    tokio::task::block_in_place(|| p.restart());
    let c = Client::connect([p.endpoint()], None)
        .await
        .expect("connect");
    let mut stored: HashMap<String, Vec<u8>> = HashMap::new();
    for w in 0..8 {
        // In pages: the whole range is over a client's 4 MiB message limit.
        let (mut from, end) = (format!("w{w}/").into_bytes(), format!("w{w}0"));
        loop {
            let mut page = req::get(&from);
            page.range_end = end.clone().into();
            page.limit = 256;
            let got = c.range(page).await.expect("get");
            for kv in &got.kvs {
                stored.insert(
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value.to_vec(),
                );
            }
            match got.kvs.last() {
                Some(last) if got.more => {
                    from = last.key.to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    common::assert_none_lost("", &acked, |(k, i)| {
        stored
            .get(k)
            .is_some_and(|v| v.len() == VALUE && v.starts_with(format!("{i}:").as_bytes()))
    });
    // The restart replayed the journal onto the backend and started it afresh.
    let after = dir_use(&wal);
    assert_eq!(after.segments, 1, "{after:?}");
}
