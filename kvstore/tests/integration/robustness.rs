//! The CI-sized robustness run, modelled on etcd's `tests/robustness`, the same code against
//! etcd 3.4 and kvstore: a 3-member cluster in network namespaces serves traffic of every
//! kind at once (linearizable gets, puts, compare-and-swaps by value and by mod_revision,
//! deletes, compare-and-deletes, transactions writing two keys, puts attached to a lease and
//! the lease's revoke; `common::traffic`), compactions every 2 s (below what the watchers
//! have seen, so none needs a compacted revision to resume) and two watchers of the whole keyspace (one from
//! the start, one joining later from the same first revision, replaying history), while faults are
//! injected in turn: the leader SIGKILLed and restarted, a follower SIGKILLed and restarted
//! (one a watcher is on: its stream breaks and resumes on another member), a follower
//! blackholed (nftables drops its peer traffic both ways) and healed, the leader partitioned
//! from the rest and healed; on kvstore, then a follower restarted with a write-path
//! failpoint armed (`kvstore::failpoints`: journal append or fsync, apply, backend write),
//! which must crash there mid-traffic, and started again unarmed. Afterwards every member is healthy again, every key is read at
//! every member, and the run is validated: the KV history per key for linearizability
//! (`common::history`, deletes and leases included) and the watch streams for etcd's watch
//! guarantees (`common::watch_check`), against the acknowledged writes and their revisions;
//! the watchers ask for a progress notification every 500 ms, and each must be truthful.
//! Zero violations allowed.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Kind;
use common::history::{Change, Recorder, Verdict};
use common::netns::NetCluster;
use common::traffic::Client;
use common::watch_check::{self, Event, Stream, WatchLog};
use kvstore::proto::etcdserverpb::{
    CompactionRequest, RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion,
};
use kvstore::proto::mvccpb::event::EventType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const KEYS: usize = 8;
const CLIENTS: usize = 6;
/// How long the traffic runs; the faults fill the first 31 s of it (kvstore: 35 s or so).
const WORKLOAD: Duration = Duration::from_secs(38);
/// When the second watcher joins (from the first revision of the run, replaying history).
const LATE_WATCHER: Duration = Duration::from_secs(8);

fn key(k: usize) -> String {
    format!("rob/{k}")
}

/// A client's loop until `stop`: operations of every kind on random keys; after an error
/// it backs off a little (so a dead member does not flood the history with unknown writes).
async fn client_loop(mut c: Client, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let k = key(rng.random_range(0..KEYS));
        let failed = match rng.random_range(0..20) {
            0..=5 => c.get(&k).await,
            6..=8 => c.put(&k).await,
            9..=10 => c.cas(&k, false).await,
            11..=12 => c.cas(&k, true).await,
            13 => c.delete(&k).await,
            14 => c.cas_delete(&k).await,
            15..=16 => {
                let other = key(rng.random_range(0..KEYS));
                if other == k {
                    c.put(&k).await
                } else {
                    c.pair(&k, &other).await
                }
            }
            _ => c.lease_step(&k).await,
        };
        let pause = if failed {
            rng.random_range(50..150)
        } else {
            rng.random_range(5..30)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// What a watcher shares with the test: its log, and the member its stream is on.
struct Watcher {
    log: Mutex<WatchLog>,
    member: AtomicUsize,
}

impl Watcher {
    fn log(&self) -> std::sync::MutexGuard<'_, WatchLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn watch_all_from(rev: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            start_revision: rev,
            ..Default::default()
        })),
    }
}

/// A watcher of the whole keyspace from `from` until `stop`: one stream at a time on one
/// member; when the stream breaks (its member killed) it opens a new one on the next
/// member from the last revision it saw + 1, as etcd's clients do.
async fn watch_loop(w: Arc<Watcher>, channels: Vec<Channel>, mut from: i64, stop: Arc<AtomicBool>) {
    let mut member = w.member.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        w.member.store(member, Ordering::Relaxed);
        w.log().streams.push(Stream {
            member,
            from,
            responses: Vec::new(),
            progress: Vec::new(),
        });
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.send(watch_all_from(from)).await;
        // Asks for a progress notification every 500 ms (while the stream lives).
        let asker = {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let ask = WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    if tx.send(ask).await.is_err() {
                        break;
                    }
                }
            })
        };
        let opened = WatchClient::new(channels[member].clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let why = match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop.load(Ordering::Relaxed) { break "stopped".to_string() }
                            continue;
                        }
                    };
                    let resp = match next {
                        Ok(Some(r)) => r,
                        Ok(None) => break "stream ended".to_string(),
                        Err(e) => break format!("{:?} {}", e.code(), e.message()),
                    };
                    if resp.canceled {
                        break format!("canceled: {}", resp.cancel_reason);
                    }
                    if resp.events.is_empty() {
                        // Not the creation's answer: a progress notification.
                        if !resp.created {
                            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
                            let mut log = w.log();
                            if let Some(s) = log.streams.last_mut() {
                                let before = s.responses.len();
                                s.progress.push((before, rev));
                            }
                        }
                        continue;
                    }
                    let events: Vec<Event> = resp
                        .events
                        .iter()
                        .map(|e| {
                            let kv = e.kv.clone().unwrap_or_default();
                            Event {
                                rev: kv.mod_revision,
                                key: String::from_utf8_lossy(&kv.key).into_owned(),
                                change: if e.r#type == EventType::Delete as i32 {
                                    Change::Delete
                                } else {
                                    Change::Put(String::from_utf8_lossy(&kv.value).into_owned())
                                },
                            }
                        })
                        .collect();
                    let top = events.iter().map(|e| e.rev).max().unwrap_or(from - 1);
                    from = from.max(top + 1);
                    let mut log = w.log();
                    if let Some(s) = log.streams.last_mut() {
                        s.responses.push(events);
                    }
                }
            }
            Err(e) => format!("open: {:?} {}", e.code(), e.message()),
        };
        asker.abort();
        drop(tx);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        eprintln!("watcher on member {member}: {why}; resuming from {from} on the next member");
        member = (member + 1) % channels.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Compacts every 2 s until `stop`, through each member in turn, at 10 revisions below the
/// oldest revision any watcher has seen (once both watchers have seen one), so that no
/// watcher ever needs a compacted revision to resume; returns how many compactions were
/// acknowledged.
async fn compactor(
    watchers: Vec<Arc<Watcher>>,
    channels: Vec<Channel>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut done = 0;
    let mut last = 0;
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let oldest = watchers
            .iter()
            .map(|w| w.log().last_rev())
            .min()
            .unwrap_or(0);
        let rev = oldest - 10;
        if rev <= last {
            continue;
        }
        turn += 1;
        let mut kv = KvClient::new(channels[turn % channels.len()].clone());
        let req = CompactionRequest {
            revision: rev,
            physical: false,
        };
        match tokio::time::timeout(Duration::from_secs(2), kv.compact(req)).await {
            Ok(Ok(_)) => {
                done += 1;
                last = rev;
            }
            Ok(Err(e)) => rec.note_error(format!("compact: {:?} {}", e.code(), e.message())),
            Err(_) => rec.note_error("compact: no answer in 2 s".into()),
        }
    }
    done
}

/// What the nemesis did, for the report and the test's own sanity check.
#[derive(Debug, Default)]
struct Faults {
    leader_kills: usize,
    follower_kills: usize,
    blackholes: usize,
    leader_partitions: usize,
    /// kvstore only: a member crashed at a failpoint and started again.
    failpoint_crashes: usize,
}

/// The write-path failpoints the kvstore run crashes a member at (one, chosen by the seed);
/// `failpoints.rs` crashes at every point, one test each.
const CRASH_POINTS: &[&str] = &[
    "walBeforeAppend",
    "walAfterAppend",
    "walBeforeFsync",
    "walAfterFsync",
    "applyBeforeEntry",
    "applyAfterEntry",
    "backendBeforeWrite",
    "backendAfterWrite",
];

/// The faults in turn (module doc), on a fixed schedule from the start of the traffic.
async fn nemesis(c: &NetCluster, watchers: &[Arc<Watcher>], rng: &mut StdRng) -> Faults {
    let start = Instant::now();
    let at = |s: f64| async move {
        let t = Duration::from_secs_f64(s);
        tokio::time::sleep(t.saturating_sub(start.elapsed())).await;
    };
    let say = |what: String| eprintln!("nemesis {:>6.2}s: {what}", start.elapsed().as_secs_f64());
    let mut f = Faults::default();
    // The current leader, and a follower (one a watcher is on, if any).
    let roles = |rng: &mut StdRng, leader: Option<usize>| {
        let l = leader.unwrap_or_else(|| rng.random_range(0..3));
        let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
        let watched = followers.iter().copied().find(|&i| {
            watchers
                .iter()
                .any(|w| w.member.load(Ordering::Relaxed) == i)
        });
        (l, watched.unwrap_or(followers[rng.random_range(0..2)]))
    };

    at(3.0).await;
    let (l, _) = roles(rng, c.leader().await);
    say(format!("SIGKILL leader {l}"));
    c.kill(l);
    f.leader_kills += 1;
    at(6.0).await;
    say(format!("restart {l}"));
    c.restart(l);

    at(10.0).await;
    let (_, fo) = roles(rng, c.leader().await);
    say(format!("SIGKILL follower {fo}"));
    c.kill(fo);
    f.follower_kills += 1;
    at(13.0).await;
    say(format!("restart {fo}"));
    c.restart(fo);

    at(17.0).await;
    let (_, fo) = roles(rng, c.leader().await);
    say(format!("blackhole follower {fo}"));
    c.isolate(fo);
    f.blackholes += 1;
    at(22.0).await;
    say("heal".into());
    c.heal();

    at(26.0).await;
    let (l, _) = roles(rng, c.leader().await);
    say(format!("partition leader {l} from the rest"));
    c.isolate(l);
    f.leader_partitions += 1;
    at(31.0).await;
    say("heal".into());
    c.heal();

    if c.kind == Kind::Kvstore {
        // A follower restarted with a write-path failpoint armed: it dies there, mid-traffic
        // (the 21st time it gets there: within a few seconds even for the backend's writes,
        // which are batched every 100 ms), and is started again unarmed.
        at(32.0).await;
        let (_, fo) = roles(rng, c.leader().await);
        let point = CRASH_POINTS[rng.random_range(0..CRASH_POINTS.len())];
        let spec = format!("{point}=20*off->panic");
        say(format!("restart follower {fo} with FAILPOINTS={spec}"));
        c.set_env(fo, &[("FAILPOINTS", &spec)]);
        c.restart(fo);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.is_running(fo) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let panicked = c.log(fo).contains(&format!("failpoint {point} panic"));
        assert!(
            panicked,
            "member {fo} did not crash at {point} within 10 s (running: {})",
            c.is_running(fo)
        );
        say(format!(
            "member {fo} crashed at {point}; restart it unarmed"
        ));
        c.set_env(fo, &[]);
        c.restart(fo);
        f.failpoint_crashes += 1;
    }
    f
}

fn robustness(kind: Kind) {
    let c = NetCluster::start(kind, 3);
    // A failure names its seed; ROBUSTNESS_SEED runs that seed again (the same operations and
    // choices of members and failpoint; the timing is the machine's).
    let seed: u64 = std::env::var("ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{kind:?}: seed {seed}");
    let rec = Arc::new(Recorder::default());
    let watchers: Vec<Arc<Watcher>> = (0..2)
        .map(|i| {
            Arc::new(Watcher {
                log: Mutex::new(WatchLog {
                    name: format!("watcher {i}"),
                    streams: Vec::new(),
                }),
                member: AtomicUsize::new(i),
            })
        })
        .collect();
    let (faults, until, compactions) = c.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let streams: Vec<Channel> = (0..3)
            .map(|i| c.channel(i, Duration::from_secs(600)))
            .collect();
        let start_rev = KvClient::new(c.channel(0, Duration::from_secs(5)))
            .range(RangeRequest {
                key: Bytes::from_static(b"rob/"),
                ..Default::default()
            })
            .await
            .expect("first read")
            .into_inner()
            .header
            .map_or(1, |h| h.revision + 1);
        let mut watch_tasks = vec![tokio::spawn(watch_loop(
            watchers[0].clone(),
            streams.clone(),
            start_rev,
            stop_watch.clone(),
        ))];
        let mut tasks = Vec::new();
        for id in 0..CLIENTS {
            let client = Client::new(
                id,
                c.channel(id % 3, Duration::from_millis(1500)),
                rec.clone(),
            );
            tasks.push(tokio::spawn(client_loop(
                client,
                seed.wrapping_add(id as u64),
                stop.clone(),
            )));
        }
        let late = {
            let (w, streams, stop) = (watchers[1].clone(), streams.clone(), stop_watch.clone());
            tokio::spawn(async move {
                tokio::time::sleep(LATE_WATCHER).await;
                watch_loop(w, streams, start_rev, stop).await
            })
        };
        watch_tasks.push(late);
        let compactions = tokio::spawn(compactor(
            watchers.clone(),
            streams.clone(),
            rec.clone(),
            stop.clone(),
        ));
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        let faults = nemesis(&c, &watchers, &mut rng).await;
        tokio::time::sleep(WORKLOAD.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
        let compactions = compactions.await.expect("compactor task");

        // Recovery: every member back and healthy, then a linearizable read of every key at
        // every member, recorded like any other read: it pins down the unknown writes.
        c.heal();
        for i in 0..3 {
            if !c.is_running(i) {
                c.restart(i);
            }
        }
        tokio::task::block_in_place(|| {
            for i in 0..3 {
                c.wait_healthy(i, Duration::from_secs(30));
            }
        });
        let mut until = 0;
        for m in 0..3 {
            let mut client = Client::new(
                CLIENTS + m,
                c.channel(m, Duration::from_secs(5)),
                rec.clone(),
            );
            for k in 0..KEYS {
                let deadline = Instant::now() + Duration::from_secs(15);
                while client.get(&key(k)).await {
                    assert!(
                        Instant::now() < deadline,
                        "{kind:?}: member {m} never served a linearizable read after recovery"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let rev = KvClient::new(c.channel(m, Duration::from_secs(5)))
                .range(RangeRequest {
                    key: Bytes::from_static(b"rob/"),
                    ..Default::default()
                })
                .await
                .expect("read the last revision")
                .into_inner()
                .header
                .map_or(0, |h| h.revision);
            until = until.max(rev);
        }
        // Every watcher catches up with the last revision.
        let deadline = Instant::now() + Duration::from_secs(30);
        while watchers.iter().any(|w| w.log().last_rev() < until) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_watch.store(true, Ordering::Relaxed);
        for t in watch_tasks {
            t.await.expect("watch task");
        }
        (faults, until, compactions)
    });

    let counts = rec.counts();
    eprintln!(
        "{kind:?}: faults {faults:?}; operations {counts:?}; {compactions} compactions; last \
         revision {until}"
    );
    for (e, n) in rec.errors() {
        eprintln!("{kind:?}: {n:>5} x {e}");
    }
    let reports = rec.check(Duration::from_secs(20));
    let mut bad = Vec::new();
    for r in &reports {
        eprintln!(
            "{kind:?}: {} {:?} ({} pruned): {:?} in {:?}",
            r.key, r.counts, r.pruned, r.verdict, r.elapsed
        );
        if r.verdict != Verdict::Linearizable {
            bad.push(format!("{} {:?}:\n{}", r.key, r.verdict, r.history));
        }
    }
    assert!(
        bad.is_empty(),
        "{kind:?}: {} key(s) not shown linearizable (seed {seed}):\n{}",
        bad.len(),
        bad.join("\n")
    );

    let logs: Vec<WatchLog> = watchers.iter().map(|w| w.log().clone()).collect();
    let acked = rec.acked_writes();
    for l in &logs {
        eprintln!(
            "{kind:?}: {}: {} events and {} progress notifications over {} streams (from {:?})",
            l.name,
            l.events(),
            l.streams.iter().map(|s| s.progress.len()).sum::<usize>(),
            l.streams.len(),
            l.streams
                .iter()
                .map(|s| (s.member, s.from))
                .collect::<Vec<_>>()
        );
    }
    let (lies, violations): (Vec<String>, Vec<String>) =
        watch_check::check(&logs, &acked, &rec.written(), until)
            .into_iter()
            .partition(|v| v.contains("progress notification"));
    // etcd 3.4.23 (Debian's) answers a progress request from a watcher still catching up
    // with the store's current revision, ahead of the events it has yet to send: etcd's own
    // robustness suite found it (etcd-io/etcd#15220, fixed in 3.4.24). Reported, not failed,
    // on etcd; kvstore must not.
    for l in &lies {
        eprintln!("{kind:?}: {l}");
    }
    if kind == Kind::Etcd && !lies.is_empty() {
        eprintln!(
            "{kind:?}: {} untruthful progress notification(s): etcd-io/etcd#15220, fixed in \
             etcd 3.4.24",
            lies.len()
        );
    } else {
        assert!(
            lies.is_empty(),
            "{kind:?}: {} untruthful progress notification(s) (seed {seed}):\n{}",
            lies.len(),
            lies.join("\n")
        );
    }
    assert!(
        violations.is_empty(),
        "{kind:?}: {} watch guarantee violation(s) (seed {seed}):\n{}",
        violations.len(),
        violations.join("\n")
    );

    // The run must be worth checking: each kind of operation and fault happened, and a
    // watch stream was resumed.
    let pairs = acked
        .windows(2)
        .filter(|w| w[0].rev == w[1].rev && w[0].key != w[1].key)
        .count();
    assert!(
        counts.ok >= 300
            && counts.cas_ok >= 10
            && counts.cas_failed >= 10
            && counts.deleted >= 10
            && counts.revoked >= 10
            && pairs >= 10,
        "{kind:?}: too little happened to check: {counts:?}, {pairs} two-key transactions"
    );
    assert!(
        logs.iter().any(|l| l.streams.len() > 1),
        "{kind:?}: no watch stream was broken and resumed"
    );
    assert!(
        compactions >= 3,
        "{kind:?}: only {compactions} compactions acknowledged"
    );
    assert_eq!(
        (
            faults.leader_kills,
            faults.follower_kills,
            faults.blackholes,
            faults.leader_partitions,
            faults.failpoint_crashes,
        ),
        (1, 1, 1, 1, usize::from(kind == Kind::Kvstore))
    );
}

mod on_etcd {
    #[test]
    fn robustness() {
        super::robustness(super::Kind::Etcd);
    }
}

mod on_kvstore {
    #[test]
    fn robustness() {
        super::robustness(super::Kind::Kvstore);
    }
}
