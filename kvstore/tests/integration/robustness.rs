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
//! Zero violations allowed. On kvstore the run also delays, then partly drops, the leader's
//! raft messages through the network failpoints (`raftDelaySend`, `raftDropSend`), armed and
//! disarmed over each member's `FAILPOINTS_HTTP` control while the traffic runs.
//!
//! The same run, longer and with faults drawn at random one after another, is the soak
//! (`kvstore/tests/soak.rs`, a program: `scripts/soak.sh`): [`run`] with a [`Plan`] says how
//! long and which faults; the clients move to a fresh set of keys every epoch so that each
//! key's history stays short enough to check.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Kind;
use common::history::{Change, Counts, Recorder, Verdict};
use common::netns::{NetCluster, member_ip};
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
/// When the second watcher joins (from the first revision of the run, replaying history).
const LATE_WATCHER: Duration = Duration::from_secs(8);
/// Where a kvstore member answers its failpoint control (`FAILPOINTS_HTTP`), on its address.
const CONTROL_PORT: u16 = 22381;

/// How a run goes.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// How long the traffic runs.
    pub workload: Duration,
    /// The faults: the CI run's fixed schedule, or random ones until the traffic ends.
    pub faults: FaultPlan,
    /// The clients move to a fresh set of keys every `epoch` (none: one set).
    pub epoch: Option<Duration>,
    /// Random faults only of the kinds that apply to etcd too (kills, blackholes,
    /// partitions), so that kvstore's run and etcd's compare like with like.
    pub shared_faults_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPlan {
    Scripted,
    Random,
}

impl Plan {
    /// The CI-sized run: the faults fill the first 31 s (kvstore: 43 s).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn ci(kind: Kind) -> Plan {
        Plan {
            workload: Duration::from_secs(if kind == Kind::Kvstore { 48 } else { 38 }),
            faults: FaultPlan::Scripted,
            epoch: None,
            shared_faults_only: false,
        }
    }

    /// The soak: random faults for `workload`, a fresh set of keys every minute.
    #[cfg_attr(test, allow(dead_code))]
    pub fn soak(workload: Duration) -> Plan {
        Plan {
            workload,
            faults: FaultPlan::Random,
            epoch: Some(Duration::from_secs(60)),
            shared_faults_only: false,
        }
    }

    /// The epoch at `elapsed` into the traffic.
    fn epoch_at(&self, elapsed: Duration) -> u64 {
        match self.epoch {
            Some(e) => (elapsed.as_millis() / e.as_millis().max(1)) as u64,
            None => 0,
        }
    }
}

fn key(epoch: u64, k: usize) -> String {
    if epoch == 0 {
        format!("rob/{k}")
    } else {
        format!("rob/{epoch}/{k}")
    }
}

/// A client's loop until `stop`: operations of every kind on random keys of the current
/// epoch; after an error it backs off a little (so a dead member does not flood the history
/// with unknown writes).
async fn client_loop(
    mut c: Client,
    seed: u64,
    plan: Plan,
    started: Instant,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let epoch = plan.epoch_at(started.elapsed());
        let key = |k| key(epoch, k);
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    pub leader_kills: usize,
    pub follower_kills: usize,
    pub blackholes: usize,
    pub leader_partitions: usize,
    /// kvstore only: a member crashed at a failpoint and started again.
    pub failpoint_crashes: usize,
    /// kvstore only: a member's raft messages delayed, or partly dropped, for a while.
    pub peer_delays: usize,
    pub peer_drops: usize,
}

impl Faults {
    pub fn total(&self) -> usize {
        self.leader_kills
            + self.follower_kills
            + self.blackholes
            + self.leader_partitions
            + self.failpoint_crashes
            + self.peer_delays
            + self.peer_drops
    }
}

/// A kind of fault, for the figures per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    LeaderKill,
    FollowerKill,
    Blackhole,
    LeaderPartition,
    FailpointCrash,
    PeerDelay,
    PeerDrop,
}

impl FaultKind {
    /// Every kind, those that apply to etcd too first.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::LeaderKill,
        FaultKind::FollowerKill,
        FaultKind::Blackhole,
        FaultKind::LeaderPartition,
        FaultKind::FailpointCrash,
        FaultKind::PeerDelay,
        FaultKind::PeerDrop,
    ];
}

/// One fault, from just before it was injected until the cluster settled after it was lifted.
#[derive(Clone, Debug)]
pub struct Window {
    pub kind: FaultKind,
    /// The fault, in words ("leader 1 partitioned").
    pub what: String,
    pub from: Instant,
    pub to: Instant,
}

/// What the clients saw during the faults of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DuringFaults {
    pub faults: usize,
    /// Operations that failed (surely or of unknown outcome) while such a fault lasted.
    pub errors: usize,
    /// The longest time without a successful operation that overlapped such a fault.
    pub longest_gap: Duration,
}

/// The figures per kind of fault, from when operations ended (`Recorder::returns`).
fn during_faults(
    windows: &[Window],
    returns: &[(Instant, bool)],
) -> std::collections::BTreeMap<FaultKind, DuringFaults> {
    let oks: Vec<Instant> = returns.iter().filter(|r| r.1).map(|r| r.0).collect();
    let mut by_kind = std::collections::BTreeMap::new();
    for w in windows {
        let d: &mut DuringFaults = by_kind.entry(w.kind).or_default();
        d.faults += 1;
        let (a, b) = (
            returns.partition_point(|r| r.0 < w.from),
            returns.partition_point(|r| r.0 <= w.to),
        );
        d.errors += returns[a..b.max(a)].iter().filter(|r| !r.1).count();
        // The successes from the last one before the fault to the first one after it.
        let first = oks.partition_point(|&t| t <= w.from).saturating_sub(1);
        let last = oks.partition_point(|&t| t <= w.to);
        let span = &oks[first..(last + 1).min(oks.len())];
        for pair in span.windows(2) {
            d.longest_gap = d
                .longest_gap
                .max(pair[1].saturating_duration_since(pair[0]));
        }
    }
    by_kind
}

/// The `n` longest times without a successful operation, each explained: when it began
/// (seconds from `t0`), the faults from 5 s before it to its end (with when each began and
/// when the cluster settled after it, relative to the gap's start), and for the clients of each member (client `id % 3`)
/// how many operations failed within it and the longest of those that overlapped it.
fn explain_gaps(
    spans: &[(usize, Instant, Instant, bool)],
    windows: &[Window],
    t0: Instant,
    n: usize,
) -> Vec<String> {
    let mut oks: Vec<Instant> = spans.iter().filter(|s| s.3).map(|s| s.2).collect();
    oks.sort();
    let mut gaps: Vec<(Instant, Instant)> = oks.windows(2).map(|p| (p[0], p[1])).collect();
    gaps.sort_by_key(|&(a, b)| std::cmp::Reverse(b.saturating_duration_since(a)));
    let secs = |a: Instant, b: Instant| {
        if b >= a {
            b.duration_since(a).as_secs_f64()
        } else {
            -a.duration_since(b).as_secs_f64()
        }
    };
    gaps.into_iter()
        .take(n)
        .map(|(a, b)| {
            let faults: Vec<String> = windows
                .iter()
                .filter(|w| {
                    w.from <= b && w.to >= a.checked_sub(Duration::from_secs(5)).unwrap_or(a)
                })
                .map(|w| {
                    format!(
                        "{} (from {:+.2} s, settled {:+.2} s)",
                        w.what,
                        secs(a, w.from),
                        secs(a, w.to)
                    )
                })
                .collect();
            let members: Vec<String> = (0..3)
                .map(|m| {
                    let mine = spans
                        .iter()
                        .filter(|s| s.0 % 3 == m && s.1 <= b && s.2 >= a);
                    let (mut failed, mut longest) = (0, Duration::ZERO);
                    for s in mine {
                        failed += usize::from(!s.3 && s.2 <= b);
                        longest = longest.max(s.2.saturating_duration_since(s.1));
                    }
                    format!(
                        "member {m}'s clients: {failed} failed, longest {:.2} s",
                        longest.as_secs_f64()
                    )
                })
                .collect();
            format!(
                "{:.2} s from {:.1} s; faults: {}; {}",
                secs(a, b),
                secs(t0, a),
                if faults.is_empty() {
                    "none".to_string()
                } else {
                    faults.join(", ")
                },
                members.join(", ")
            )
        })
        .collect()
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

/// A request to member `i`'s failpoint control (`FAILPOINTS_HTTP`, gofail's API): `PUT`
/// arms `name` with `actions`, `DELETE` disarms it. Made from the runtime's threads (in the
/// client namespace, from which the members' addresses are reached).
async fn control(i: usize, method: &str, name: &str, actions: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = format!("{}:{CONTROL_PORT}", member_ip(i));
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let req = format!(
            "{method} /{name} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: \
             {}\r\n\r\n{actions}",
            actions.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(3), talk)
        .await
        .map_err(|_| format!("{method} /{name} on member {i}: no answer in 3 s"))?
        .map_err(|e| format!("{method} /{name} on member {i}: {e}"))?;
    if answer.starts_with("HTTP/1.1 204") {
        Ok(())
    } else {
        Err(format!(
            "{method} /{name} {actions:?} on member {i}: {}",
            answer.lines().next().unwrap_or("")
        ))
    }
}

/// The current leader, and a follower (one a watcher is on, if any).
fn roles(watchers: &[Arc<Watcher>], rng: &mut StdRng, leader: Option<usize>) -> (usize, usize) {
    let l = leader.unwrap_or_else(|| rng.random_range(0..3));
    let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let watched = followers.iter().copied().find(|&i| {
        watchers
            .iter()
            .any(|w| w.member.load(Ordering::Relaxed) == i)
    });
    (l, watched.unwrap_or(followers[rng.random_range(0..2)]))
}

/// Restarts follower `fo` with a write-path failpoint armed to panic after `after` passes;
/// waits until it dies there (true) or 10 s pass (false), then starts it again unarmed.
async fn crash_at_failpoint(c: &NetCluster, fo: usize, point: &str, after: u32) -> bool {
    let spec = format!("{point}={after}*off->panic");
    c.set_env(fo, &[("FAILPOINTS", &spec)]);
    c.restart(fo);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.is_running(fo) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let crashed = c.log(fo).contains(&format!("failpoint {point} panic"));
    c.set_env(fo, &[]);
    c.restart(fo);
    crashed
}

/// The faults in turn (module doc), on a fixed schedule from the start of the traffic.
async fn scripted_nemesis(c: &NetCluster, watchers: &[Arc<Watcher>], rng: &mut StdRng) -> Faults {
    let start = Instant::now();
    let at = |s: f64| async move {
        let t = Duration::from_secs_f64(s);
        tokio::time::sleep(t.saturating_sub(start.elapsed())).await;
    };
    let say = |what: String| eprintln!("nemesis {:>6.2}s: {what}", start.elapsed().as_secs_f64());
    let mut f = Faults::default();

    at(3.0).await;
    let (l, _) = roles(watchers, rng, c.leader().await);
    say(format!("SIGKILL leader {l}"));
    c.kill(l);
    f.leader_kills += 1;
    at(6.0).await;
    say(format!("restart {l}"));
    c.restart(l);

    at(10.0).await;
    let (_, fo) = roles(watchers, rng, c.leader().await);
    say(format!("SIGKILL follower {fo}"));
    c.kill(fo);
    f.follower_kills += 1;
    at(13.0).await;
    say(format!("restart {fo}"));
    c.restart(fo);

    at(17.0).await;
    let (_, fo) = roles(watchers, rng, c.leader().await);
    say(format!("blackhole follower {fo}"));
    c.isolate(fo);
    f.blackholes += 1;
    at(22.0).await;
    say("heal".into());
    c.heal();

    at(26.0).await;
    let (l, _) = roles(watchers, rng, c.leader().await);
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
        let (_, fo) = roles(watchers, rng, c.leader().await);
        let point = CRASH_POINTS[rng.random_range(0..CRASH_POINTS.len())];
        say(format!("restart follower {fo} with {point} armed to panic"));
        let crashed = crash_at_failpoint(c, fo, point, 20).await;
        assert!(
            crashed,
            "member {fo} did not crash at {point} within 10 s; its log:\n{}",
            c.log(fo)
        );
        say(format!("member {fo} crashed at {point}; restarted unarmed"));
        f.failpoint_crashes += 1;

        // The leader's raft messages delayed by 200 ms for 3 s, then a third of them lost
        // for 3 s.
        at(37.0).await;
        let (l, _) = roles(watchers, rng, c.leader().await);
        say(format!("delay leader {l}'s raft messages 200 ms"));
        control(l, "PUT", "raftDelaySend", "return(200)")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        f.peer_delays += 1;
        at(40.0).await;
        control(l, "DELETE", "raftDelaySend", "")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (l, _) = roles(watchers, rng, c.leader().await);
        say(format!("drop a third of leader {l}'s raft messages"));
        control(l, "PUT", "raftDropSend", "33%return")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        f.peer_drops += 1;
        at(43.0).await;
        control(l, "DELETE", "raftDropSend", "")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        say("network faults lifted".into());
    }
    f
}

/// Waits until every member runs and a majority agrees on a leader, up to `within`; false
/// when that did not happen.
async fn settled(c: &NetCluster, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if (0..c.len()).all(|i| c.is_running(i)) && c.leader().await.is_some() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What each member says when the cluster does not settle: the leader and term it knows,
/// or, for a member not running, the last lines of its log (why it stopped).
async fn members_view(c: &NetCluster) -> String {
    let mut out = String::new();
    for i in 0..c.len() {
        if !c.is_running(i) {
            let log = c.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
            out.push_str(&format!(
                "; member {i} is not running, its log ends: {tail}"
            ));
            continue;
        }
        match c.status(i).await {
            Ok(s) => out.push_str(&format!(
                "; member {i} ({:x}) knows leader {:x} in term {}",
                s.header.map_or(0, |h| h.member_id),
                s.leader,
                s.raft_term
            )),
            Err(e) => out.push_str(&format!("; member {i}: no status ({e})")),
        }
    }
    out
}

/// Faults drawn at random, one at a time, until `until`: each held for a random while, then
/// lifted, and the next drawn once the cluster has a leader again. On etcd, the faults that
/// apply to it (kills, blackholes, partitions); on kvstore also crashes at failpoints and
/// delayed or dropped raft messages. Returns what it did and the times the cluster did not
/// settle within 20 s after a fault (each named).
async fn random_nemesis(
    c: &NetCluster,
    watchers: &[Arc<Watcher>],
    rng: &mut StdRng,
    until: Instant,
    shared_faults_only: bool,
) -> (Faults, Vec<String>, Vec<Window>) {
    let start = Instant::now();
    let mut f = Faults::default();
    let mut unsettled = Vec::new();
    let mut windows = Vec::new();
    let kinds = if c.kind == Kind::Kvstore && !shared_faults_only {
        FaultKind::ALL.len()
    } else {
        4
    };
    let hold = |rng: &mut StdRng| Duration::from_millis(rng.random_range(300..1500));
    while Instant::now() + Duration::from_secs(5) < until {
        let (l, fo) = roles(watchers, rng, c.leader().await);
        let from = Instant::now();
        let kind = FaultKind::ALL[rng.random_range(0..kinds)];
        let what = match kind {
            FaultKind::LeaderKill => {
                c.kill(l);
                f.leader_kills += 1;
                tokio::time::sleep(hold(rng)).await;
                c.restart(l);
                format!("leader {l} killed")
            }
            FaultKind::FollowerKill => {
                c.kill(fo);
                f.follower_kills += 1;
                tokio::time::sleep(hold(rng)).await;
                c.restart(fo);
                format!("follower {fo} killed")
            }
            FaultKind::Blackhole => {
                c.isolate(fo);
                f.blackholes += 1;
                tokio::time::sleep(hold(rng)).await;
                c.heal();
                format!("follower {fo} blackholed")
            }
            FaultKind::LeaderPartition => {
                c.isolate(l);
                f.leader_partitions += 1;
                tokio::time::sleep(hold(rng)).await;
                c.heal();
                format!("leader {l} partitioned")
            }
            FaultKind::FailpointCrash => {
                let point = CRASH_POINTS[rng.random_range(0..CRASH_POINTS.len())];
                let after = rng.random_range(5..40);
                if crash_at_failpoint(c, fo, point, after).await {
                    f.failpoint_crashes += 1;
                } else {
                    unsettled.push(format!(
                        "member {fo} did not reach {point} {after} times in 10 s"
                    ));
                }
                format!("follower {fo} crashed at {point}")
            }
            FaultKind::PeerDelay => {
                let target = if rng.random_bool(0.5) { l } else { fo };
                let ms = rng.random_range(50..400);
                let armed = control(target, "PUT", "raftDelaySend", &format!("return({ms})")).await;
                tokio::time::sleep(hold(rng) * 2).await;
                let disarmed = control(target, "DELETE", "raftDelaySend", "").await;
                if let Err(e) = armed.and(disarmed) {
                    unsettled.push(e);
                }
                f.peer_delays += 1;
                format!("member {target}'s raft messages delayed {ms} ms")
            }
            FaultKind::PeerDrop => {
                let target = if rng.random_bool(0.5) { l } else { fo };
                let pct = rng.random_range(10..70);
                let armed = control(target, "PUT", "raftDropSend", &format!("{pct}%return")).await;
                tokio::time::sleep(hold(rng) * 2).await;
                let disarmed = control(target, "DELETE", "raftDropSend", "").await;
                if let Err(e) = armed.and(disarmed) {
                    unsettled.push(e);
                }
                f.peer_drops += 1;
                format!("{pct}% of member {target}'s raft messages dropped")
            }
        };
        if f.total() % 50 == 0 {
            eprintln!(
                "nemesis {:>7.1}s: {} faults ({what})",
                start.elapsed().as_secs_f64(),
                f.total()
            );
        }
        if !settled(c, Duration::from_secs(20)).await {
            unsettled.push(format!(
                "no leader within 20 s after: {what} (at {:.1} s){}",
                start.elapsed().as_secs_f64(),
                members_view(c).await
            ));
        }
        windows.push(Window {
            kind,
            what,
            from,
            to: Instant::now(),
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
    }
    (f, unsettled, windows)
}

/// What a run found: what was done, what the clients saw, and every violation.
#[derive(Debug)]
pub struct Report {
    pub kind: Kind,
    pub seed: u64,
    pub took: Duration,
    pub faults: Faults,
    pub counts: Counts,
    /// Two-key transactions acknowledged.
    pub pairs: usize,
    pub compactions: usize,
    pub last_revision: i64,
    /// Errors the clients saw, by message, with how often.
    pub errors: std::collections::BTreeMap<String, usize>,
    /// The longest time no client's operation succeeded, and how many such gaps passed 1 s.
    pub longest_gap: Duration,
    pub gaps_over_1s: usize,
    /// The longest gaps, explained (`explain_gaps`).
    pub gap_notes: Vec<String>,
    /// Keys checked, and those not shown linearizable (with their histories) or whose check
    /// ran out of time.
    pub keys_checked: usize,
    pub not_linearizable: Vec<String>,
    pub inconclusive: Vec<String>,
    /// Watch guarantee violations; of them, acknowledged writes a watcher never saw.
    pub watch_violations: Vec<String>,
    pub writes_lost: usize,
    /// Progress notifications ahead of undelivered events.
    pub untruthful_progress: Vec<String>,
    pub events_watched: usize,
    /// Whether a watch stream broke and was resumed on another member.
    pub streams_resumed: usize,
    /// Faults after which the cluster did not settle in time, and control requests that failed.
    pub unsettled: Vec<String>,
    /// What the clients saw during each kind of fault (random faults only).
    pub during: std::collections::BTreeMap<FaultKind, DuringFaults>,
}

impl Report {
    /// Client-visible errors: operations that failed, surely or of unknown outcome.
    #[cfg_attr(test, allow(dead_code))]
    pub fn client_errors(&self) -> usize {
        self.counts.failed + self.counts.unknown
    }

    /// What happened, a few lines.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{:?} (seed {}, {:.0} s): {} faults {:?}\n  operations: {} ok ({} two-key \
             transactions), {} failed, {} of unknown outcome; {} compactions; last revision {}\n  \
             longest time without a successful operation {:.2} s ({} gaps over 1 s); {} kinds of \
             client error\n  keys checked {}: {} not linearizable, {} inconclusive\n  watch: {} \
             events, {} streams resumed, {} violations ({} acknowledged writes never seen), {} \
             untruthful progress notifications\n  not settled: {}",
            self.kind,
            self.seed,
            self.took.as_secs_f64(),
            self.faults.total(),
            self.faults,
            c.ok,
            self.pairs,
            c.failed,
            c.unknown,
            self.compactions,
            self.last_revision,
            self.longest_gap.as_secs_f64(),
            self.gaps_over_1s,
            self.errors.len(),
            self.keys_checked,
            self.not_linearizable.len(),
            self.inconclusive.len(),
            self.events_watched,
            self.streams_resumed,
            self.watch_violations.len(),
            self.writes_lost,
            self.untruthful_progress.len(),
            if self.unsettled.is_empty() {
                "none".to_string()
            } else {
                self.unsettled.join("; ")
            }
        ) + &self
            .during
            .iter()
            .map(|(k, d)| {
                format!(
                    "\n  during {} {k:?} faults: {} client errors, longest time without a \
                     successful operation {:.2} s",
                    d.faults,
                    d.errors,
                    d.longest_gap.as_secs_f64()
                )
            })
            .collect::<String>()
            + &self
                .gap_notes
                .iter()
                .map(|g| format!("\n  gap: {g}"))
                .collect::<String>()
    }

    /// Whether the run found nothing wrong (etcd 3.4.23's known untruthful progress
    /// notifications aside, see `robustness`).
    #[cfg_attr(test, allow(dead_code))]
    pub fn clean(&self) -> bool {
        self.not_linearizable.is_empty()
            && self.inconclusive.is_empty()
            && self.watch_violations.is_empty()
            && (self.kind == Kind::Etcd || self.untruthful_progress.is_empty())
    }
}

/// One run of `plan` against a fresh 3-member cluster of `kind` (module doc); `seed` decides
/// the operations and the choices of members, faults and failpoints (the timing is the
/// machine's). The report says what happened; the caller decides what fails.
pub fn run(kind: Kind, plan: Plan, seed: u64) -> Report {
    let started = Instant::now();
    let c = NetCluster::start_with_env(kind, 3, &|i| {
        if kind == Kind::Kvstore {
            vec![(
                "FAILPOINTS_HTTP".into(),
                format!("{}:{CONTROL_PORT}", member_ip(i)),
            )]
        } else {
            Vec::new()
        }
    });
    eprintln!("{kind:?}: seed {seed}, {plan:?}");
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
    let (faults, unsettled, windows, until, compactions, epochs) = c.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let streams: Vec<Channel> = (0..3)
            .map(|i| c.channel(i, Duration::from_secs(24 * 3600)))
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
        let traffic_started = Instant::now();
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
                plan,
                traffic_started,
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
        let (faults, unsettled, windows) = match plan.faults {
            FaultPlan::Scripted => (
                scripted_nemesis(&c, &watchers, &mut rng).await,
                Vec::new(),
                Vec::new(),
            ),
            FaultPlan::Random => {
                random_nemesis(
                    &c,
                    &watchers,
                    &mut rng,
                    traffic_started + plan.workload,
                    plan.shared_faults_only,
                )
                .await
            }
        };
        tokio::time::sleep(plan.workload.saturating_sub(traffic_started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        let epochs = plan.epoch_at(traffic_started.elapsed()) + 1;
        for t in tasks {
            t.await.expect("client task");
        }
        let compactions = compactions.await.expect("compactor task");

        // Recovery: every member back and healthy, then a linearizable read of every key of
        // the last epoch at every member, recorded like any other read: it pins down the
        // unknown writes.
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
                while client.get(&key(epochs - 1, k)).await {
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while watchers.iter().any(|w| w.log().last_rev() < until) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_watch.store(true, Ordering::Relaxed);
        for t in watch_tasks {
            t.await.expect("watch task");
        }
        (faults, unsettled, windows, until, compactions, epochs)
    });
    drop(c);

    let counts = rec.counts();
    eprintln!(
        "{kind:?}: faults {faults:?}; operations {counts:?}; {compactions} compactions; last \
         revision {until}; {epochs} key epoch(s)"
    );
    let errors = rec.errors();
    for (e, n) in &errors {
        eprintln!("{kind:?}: {n:>5} x {e}");
    }
    let (longest_gap, gaps_over_1s) = rec.gaps(Duration::from_secs(1));
    let reports = rec.check(Duration::from_secs(20));
    let (mut not_linearizable, mut inconclusive) = (Vec::new(), Vec::new());
    for r in &reports {
        if plan.epoch.is_none() {
            eprintln!(
                "{kind:?}: {} {:?} ({} pruned): {:?} in {:?}",
                r.key, r.counts, r.pruned, r.verdict, r.elapsed
            );
        }
        match r.verdict {
            Verdict::Linearizable => {}
            Verdict::Violation => {
                not_linearizable.push(format!("{} {:?}:\n{}", r.key, r.verdict, r.history))
            }
            Verdict::Inconclusive => inconclusive.push(format!(
                "{} {:?} after {:?} ({:?})",
                r.key, r.verdict, r.elapsed, r.counts
            )),
        }
    }

    let logs: Vec<WatchLog> = watchers.iter().map(|w| w.log().clone()).collect();
    let acked = rec.acked_writes();
    for l in &logs {
        eprintln!(
            "{kind:?}: {}: {} events and {} progress notifications over {} streams",
            l.name,
            l.events(),
            l.streams.iter().map(|s| s.progress.len()).sum::<usize>(),
            l.streams.len(),
        );
    }
    let (untruthful_progress, watch_violations): (Vec<String>, Vec<String>) =
        watch_check::check(&logs, &acked, &rec.written(), until)
            .into_iter()
            .partition(|v| v.contains("progress notification"));
    let writes_lost = watch_violations
        .iter()
        .filter(|v| v.contains("never arrived"))
        .count();
    let pairs = acked
        .windows(2)
        .filter(|w| w[0].rev == w[1].rev && w[0].key != w[1].key)
        .count();
    Report {
        kind,
        seed,
        took: started.elapsed(),
        faults,
        counts,
        pairs,
        compactions,
        last_revision: until,
        errors,
        longest_gap,
        gaps_over_1s,
        gap_notes: explain_gaps(&rec.spans(), &windows, started, 3),
        keys_checked: reports.len(),
        not_linearizable,
        inconclusive,
        watch_violations,
        writes_lost,
        untruthful_progress,
        events_watched: logs.iter().map(WatchLog::events).sum(),
        streams_resumed: logs.iter().map(|l| l.streams.len().saturating_sub(1)).sum(),
        unsettled,
        during: during_faults(&windows, &rec.returns()),
    }
}

/// The CI-sized run (module doc): fails on any violation, and when too little happened for
/// the check to mean anything.
#[cfg_attr(not(test), allow(dead_code))]
fn robustness(kind: Kind) {
    // A failure names its seed; ROBUSTNESS_SEED runs that seed again (the same operations and
    // choices of members and failpoint; the timing is the machine's).
    let seed: u64 = std::env::var("ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let r = run(kind, Plan::ci(kind), seed);
    eprintln!("{}", r.summary());
    assert!(
        r.not_linearizable.is_empty() && r.inconclusive.is_empty(),
        "{kind:?}: {} key(s) not shown linearizable (seed {seed}):\n{}",
        r.not_linearizable.len() + r.inconclusive.len(),
        r.not_linearizable
            .iter()
            .chain(&r.inconclusive)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // etcd 3.4.23 (Debian's) answers a progress request from a watcher still catching up
    // with the store's current revision, ahead of the events it has yet to send: etcd's own
    // robustness suite found it (etcd-io/etcd#15220, fixed in 3.4.24). Reported, not failed,
    // on etcd; kvstore must not.
    for l in &r.untruthful_progress {
        eprintln!("{kind:?}: {l}");
    }
    if kind == Kind::Etcd && !r.untruthful_progress.is_empty() {
        eprintln!(
            "{kind:?}: {} untruthful progress notification(s): etcd-io/etcd#15220, fixed in \
             etcd 3.4.24",
            r.untruthful_progress.len()
        );
    } else {
        assert!(
            r.untruthful_progress.is_empty(),
            "{kind:?}: {} untruthful progress notification(s) (seed {seed}):\n{}",
            r.untruthful_progress.len(),
            r.untruthful_progress.join("\n")
        );
    }
    assert!(
        r.watch_violations.is_empty(),
        "{kind:?}: {} watch guarantee violation(s) (seed {seed}):\n{}",
        r.watch_violations.len(),
        r.watch_violations.join("\n")
    );

    // The run must be worth checking: each kind of operation and fault happened, and a
    // watch stream was resumed.
    let counts = r.counts;
    assert!(
        counts.ok >= 300
            && counts.cas_ok >= 10
            && counts.cas_failed >= 10
            && counts.deleted >= 10
            && counts.revoked >= 10
            && r.pairs >= 10,
        "{kind:?}: too little happened to check: {counts:?}, {} two-key transactions",
        r.pairs
    );
    assert!(
        r.streams_resumed > 0,
        "{kind:?}: no watch stream was broken and resumed"
    );
    assert!(
        r.compactions >= 3,
        "{kind:?}: only {} compactions acknowledged",
        r.compactions
    );
    let on_kvstore = usize::from(kind == Kind::Kvstore);
    assert_eq!(
        r.faults,
        Faults {
            leader_kills: 1,
            follower_kills: 1,
            blackholes: 1,
            leader_partitions: 1,
            failpoint_crashes: on_kvstore,
            peer_delays: on_kvstore,
            peer_drops: on_kvstore,
        }
    );
}

#[cfg(test)]
mod on_etcd {
    #[test]
    fn robustness() {
        super::robustness(super::Kind::Etcd);
    }
}

#[cfg(test)]
mod on_kvstore {
    #[test]
    fn robustness() {
        super::robustness(super::Kind::Kvstore);
    }
}
