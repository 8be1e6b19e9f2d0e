//! The backend quota (`--quota-backend-bytes`), the same test code against kvstore and etcd
//! 3.4, 3 members each with a 16 MiB quota: writers fill it; the NOSPACE alarm shows on every
//! member (`etcdctl alarm list` against each endpoint); puts, txns with a put and lease
//! grants fail with etcd's error through every member while reads, deletes and compaction go
//! on; after compaction, `etcdctl defrag --cluster` (each dbSize shrinks) and `etcdctl alarm
//! disarm`, writes succeed again; every acknowledged write is still there.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Kind;
use common::cluster::Cluster;
use kvstore::client::{Client, req};
use tonic::Code;

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
const QUOTA: u64 = 16 * 1024 * 1024;
const VALUE_LEN: usize = 8 * 1024;
const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 16;

/// A value that names its sequence number first, padded to `VALUE_LEN`.
fn value(seq: u64) -> String {
    format!("{seq:010}-{}", "x".repeat(VALUE_LEN - 11))
}

fn seq_of(v: &str) -> u64 {
    v.get(..10).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Writer `w` overwrites its keys round robin until a put is refused for want of space;
/// the last acknowledged sequence number of each key.
async fn fill(kind: Kind, endpoint: String, w: usize) -> BTreeMap<String, u64> {
    let cl = Client::connect(vec![endpoint], None)
        .await
        .expect("connect");
    let mut acked = BTreeMap::new();
    for seq in 1..=50_000u64 {
        let key = format!("w{w}/k{:02}", seq as usize % KEYS_PER_WRITER);
        match cl.put(req::put(&key, value(seq))).await {
            Ok(_) => {
                acked.insert(key, seq);
            }
            Err(kvstore::client::Error::Status(s)) => {
                assert_eq!(
                    (s.code(), s.message()),
                    (Code::ResourceExhausted, NO_SPACE),
                    "{kind:?}: writer {w} at {seq}"
                );
                return acked;
            }
            Err(e) => panic!("{kind:?}: writer {w} at {seq}: {e}"),
        }
    }
    panic!("{kind:?}: writer {w} never reached the quota");
}

/// Member `i`'s `dbSize` from `endpoint status`.
fn db_size(c: &Cluster, i: usize) -> u64 {
    let v = c.members[i].json(&["endpoint", "status", "-w", "json"]);
    v[0]["Status"]["dbSize"].as_u64().expect("dbSize")
}

/// Every key's sequence number as member `i` holds it (serializable read).
fn held(c: &Cluster, i: usize) -> BTreeMap<String, u64> {
    c.full_range(i)
        .into_iter()
        .map(|(k, v)| (k, seq_of(&v)))
        .collect()
}

/// Fails unless every acknowledged write is held by every member: each key with the
/// acknowledged sequence number or a later one (a refused put may still have been applied:
/// etcd's quota applier applies a write and answers it with the quota error).
fn assert_all_held(kind: Kind, c: &Cluster, acked: &BTreeMap<String, u64>) {
    for i in 0..c.members.len() {
        let got = held(c, i);
        let lost: Vec<_> = acked
            .iter()
            .filter(|(k, s)| got.get(*k).is_none_or(|g| g < *s))
            .take(5)
            .collect();
        assert!(
            lost.is_empty(),
            "{kind:?}: member {i} lost acknowledged writes: {lost:?}"
        );
        assert_eq!(got.len(), acked.len(), "{kind:?}: member {i}: {got:?}");
    }
}

fn quota_fills_alarms_and_recovers(kind: Kind) {
    let quota = QUOTA.to_string();
    let mut c = Cluster::start(
        kind,
        3,
        &["--quota-backend-bytes", &quota, "--snapshot-count", "100"],
    );
    c.wait_leader(Duration::from_secs(10));
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let started = std::time::Instant::now();
    let mut acked = BTreeMap::new();
    rt.block_on(async {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(fill(kind, eps[w % eps.len()].clone(), w)))
            .collect();
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
    });
    let puts: u64 = acked.values().sum::<u64>();
    let sizes: Vec<u64> = (0..3).map(|i| db_size(&c, i)).collect();
    eprintln!(
        "{kind:?}: quota reached in {:?} (last sequence numbers sum {puts}); dbSize {sizes:?}",
        started.elapsed()
    );

    // The alarm is listed by every member alike, each raised for a member of the cluster.
    let ids: Vec<u64> = (0..3).map(|i| c.id(i)).collect();
    // Other members may still be raising their own NOSPACE (each member that refuses a
    // write raises one): read the lists until they agree.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lists: Vec<String> = loop {
        let lists: Vec<String> = (0..3)
            .map(|i| c.members[i].ok(&["alarm", "list"]))
            .collect();
        if lists.iter().all(|l| l == &lists[0]) || Instant::now() > deadline {
            break lists;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!lists[0].is_empty(), "{kind:?}: no alarm");
    for (i, l) in lists.iter().enumerate() {
        assert_eq!(l, &lists[0], "{kind:?}: member {i}'s list");
        for line in l.lines() {
            let id: u64 = line
                .strip_prefix("memberID:")
                .and_then(|r| r.strip_suffix(" alarm:NOSPACE "))
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("{kind:?}: alarm line {line:?}"));
            assert!(ids.contains(&id), "{kind:?}: {id} is not a member");
        }
    }

    // Writes that grow the store are refused through every member; reads and deletes go on.
    for (i, m) in c.members.iter().enumerate() {
        let err = m.fails(&["put", "after", "v"]);
        assert!(err.contains(NO_SPACE), "{kind:?}: put via {i}: {err}");
        let err = m.fails(&["lease", "grant", "60"]);
        assert!(err.contains(NO_SPACE), "{kind:?}: grant via {i}: {err}");
        let got = m.ok(&["get", "w0/k01", "--print-value-only"]);
        assert!(got.starts_with('0'), "{kind:?}: get via {i}: {got:?}");
    }
    let deleted = c.members[1].ok(&["del", "w1/k03"]);
    assert_eq!(deleted.trim(), "1", "{kind:?}");
    acked.remove("w1/k03");
    // Compaction goes on too.
    let rev = c.status(0).expect("status").revision;
    c.members[2].ok(&["compact", &rev.to_string(), "--physical"]);
    c.wait_converged(Duration::from_secs(10));
    let compacted: Vec<u64> = (0..3).map(|i| db_size(&c, i)).collect();
    eprintln!("{kind:?}: dbSize after compaction at {rev}: {compacted:?}");
    assert_all_held(kind, &c, &acked);

    // Defragmenting every member (`defrag --cluster`) makes room: each dbSize shrinks.
    let out = c.members[0].ok(&["defrag", "--cluster"]);
    let finished = out
        .lines()
        .filter(|l| l.starts_with("Finished defragmenting etcd member["))
        .count();
    assert_eq!(finished, 3, "{kind:?}: {out}");
    let defragged: Vec<u64> = (0..3).map(|i| db_size(&c, i)).collect();
    eprintln!("{kind:?}: dbSize after defrag: {defragged:?}");
    for i in 0..3 {
        assert!(
            defragged[i] < compacted[i] / 2,
            "{kind:?}: member {i}: {} after defrag, {} before",
            defragged[i],
            compacted[i]
        );
    }
    // Still refused until disarmed; once disarmed, writes succeed through every member.
    let err = c.members[1].fails(&["put", "after", "v"]);
    assert!(err.contains(NO_SPACE), "{kind:?}: {err}");
    c.members[2].ok(&["alarm", "disarm"]);
    for (i, m) in c.members.iter().enumerate() {
        assert_eq!(m.ok(&["alarm", "list"]), "", "{kind:?}: member {i}");
        let key = format!("after{i}");
        m.ok(&["put", &key, &value(0)]);
        acked.insert(key, 0);
    }
    c.wait_converged(Duration::from_secs(10));
    assert_all_held(kind, &c, &acked);
}

#[test]
fn quota_fills_alarms_and_recovers_kvstore() {
    quota_fills_alarms_and_recovers(Kind::Kvstore);
}

#[test]
fn quota_fills_alarms_and_recovers_etcd() {
    quota_fills_alarms_and_recovers(Kind::Etcd);
}
