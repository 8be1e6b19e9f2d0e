//! Defragmentation (`etcdctl defrag`), the same test code against kvstore and etcd 3.4 (3
//! members): after a write load and a compaction, defragmenting each member in turn while
//! writers and readers keep going through every member shrinks its `dbSize`; no request
//! fails, during or after, and every acknowledged write is held. Printed: how long each
//! `etcdctl defrag` took, and the time kvstore logs in "finished defragmenting directory"
//! (etcd 3.4 logs its own only with `--logger zap`).

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Kind;
use common::cluster::Cluster;
use kvstore::client::{Client, req};

const KEYS: u64 = 64;
const VALUE_LEN: usize = 4 * 1024;

fn value(seq: u64) -> String {
    format!("{seq:010}-{}", "x".repeat(VALUE_LEN - 11))
}

fn db_size(c: &Cluster, i: usize) -> u64 {
    let v = c.members[i].json(&["endpoint", "status", "-w", "json"]);
    v[0]["Status"]["dbSize"].as_u64().expect("dbSize")
}

/// Writer `w` overwrites its keys through `endpoint` until `stop`; the last acknowledged
/// sequence number of each key. Every put must succeed.
async fn write(
    kind: Kind,
    endpoint: String,
    w: usize,
    stop: Arc<AtomicBool>,
    puts: Arc<AtomicU64>,
) -> BTreeMap<String, u64> {
    let cl = Client::connect(vec![endpoint], None)
        .await
        .expect("connect");
    let mut acked = BTreeMap::new();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!("w{w}/k{:02}", seq % KEYS);
        let started = Instant::now();
        cl.put(req::put(&key, value(seq)))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: writer {w} put {seq}: {e}"));
        let took = started.elapsed();
        if took > Duration::from_secs(1) {
            eprintln!("{kind:?}: writer {w}: a put took {took:?}");
        }
        puts.fetch_add(1, Ordering::Relaxed);
        acked.insert(key, seq);
    }
    acked
}

/// Reads through `endpoint` until `stop`; every read must succeed.
async fn read(kind: Kind, endpoint: String, stop: Arc<AtomicBool>) -> u64 {
    let cl = Client::connect(vec![endpoint], None)
        .await
        .expect("connect");
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w0/k{:02}", n % KEYS);
        cl.get(&key)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: read {n}: {e}"));
        n += 1;
    }
    n
}

/// The `took` of the last "finished defragmenting directory" line of a member's log.
fn took(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("finished defragmenting directory"))?;
    let rest = &line[line.find("took")?..];
    Some(
        rest.trim_start_matches("took")
            .trim_start_matches(['=', '"', ':'])
            .split([' ', ',', '"', '}'])
            .next()?
            .to_string(),
    )
}

fn defrag_under_load(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &["--snapshot-count", "500"]);
    c.wait_leader(Duration::from_secs(10));
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|w| rt.spawn(write(kind, eps[w].clone(), w, stop.clone(), puts.clone())))
        .collect();
    let readers: Vec<_> = (0..3)
        .map(|i| rt.spawn(read(kind, eps[i].clone(), stop.clone())))
        .collect();

    // A history of overwrites, then a compaction: most of the file is dead.
    while puts.load(Ordering::Relaxed) < 3_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rev = c.status(0).expect("status").revision;
    c.members[0].ok(&["compact", &rev.to_string(), "--physical"]);
    let before: Vec<u64> = (0..3).map(|i| db_size(&c, i)).collect();

    // Each member in turn, the load going on through all three.
    let mut after = Vec::new();
    for i in 0..3 {
        let at = puts.load(Ordering::Relaxed);
        let started = Instant::now();
        let out = c.members[i].ok(&["defrag"]);
        let call = started.elapsed();
        assert!(
            out.starts_with("Finished defragmenting etcd member["),
            "{kind:?}: {out}"
        );
        after.push(db_size(&c, i));
        eprintln!(
            "{kind:?}: member {i}: dbSize {} -> {}, etcdctl defrag {call:?}, logged {}, {} puts meanwhile",
            before[i],
            after[i],
            took(&c.members[i].log()).unwrap_or_else(|| "nothing".into()),
            puts.load(Ordering::Relaxed) - at
        );
    }
    // A little more load after the last one.
    let at = puts.load(Ordering::Relaxed);
    while puts.load(Ordering::Relaxed) < at + 300 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    rt.block_on(async {
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
        for r in readers {
            assert!(
                r.await.expect("reader") > 0,
                "{kind:?}: no read went through"
            );
        }
    });
    for i in 0..3 {
        assert!(
            after[i] < before[i],
            "{kind:?}: member {i}: {} after defrag, {} before",
            after[i],
            before[i]
        );
    }
    c.wait_converged(Duration::from_secs(10));
    for i in 0..3 {
        let held: BTreeMap<String, u64> = c
            .full_range(i)
            .into_iter()
            .map(|(k, v)| (k, v.get(..10).and_then(|s| s.parse().ok()).unwrap_or(0)))
            .collect();
        assert_eq!(held, acked, "{kind:?}: member {i}");
    }
}

#[test]
fn defrag_under_load_kvstore() {
    defrag_under_load(Kind::Kvstore);
}

#[test]
fn defrag_under_load_etcd() {
    defrag_under_load(Kind::Etcd);
}
