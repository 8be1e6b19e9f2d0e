//! Crashes at kvstore's failpoints (`kvstore::failpoints`; the test build of the server has
//! the `failpoints` feature): one test per point. A 3-member loopback cluster runs with the
//! point armed, through `FAILPOINTS`, on one member (for the leader's snapshot point, on
//! the two that can lead); a writer puts unique keys through the others while the test does
//! what reaches the point (writes; compactions; a member brought back after the log was
//! truncated, so it needs a snapshot). The armed member must die at the point (its log
//! shows the failpoint's panic); it is started again unarmed, and then every member must
//! hold every acknowledged write, and the cluster must take writes again. kvstore only:
//! etcd 3.4's release binary has no failpoints.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Kind;
use common::cluster::Cluster;
use kvstore::proto::etcdserverpb::{CompactionRequest, PutRequest, kv_client::KvClient};
use tonic::transport::Channel;

/// What makes the cluster reach the point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Plain writes: every member journals, syncs, applies and writes them.
    Writes,
    /// Writes and a compaction every 20 of them.
    Compactions,
    /// Member 0 is stopped while the others write past the log they keep, then started:
    /// it must be sent a snapshot.
    Snapshot,
}

/// Entries a member keeps beyond its last snapshot (`--snapshot-count`), small so that a
/// member stopped for 300 writes needs a snapshot.
const SNAPSHOT_COUNT: &str = "20";

fn channel(c: &Cluster, i: usize) -> Channel {
    Channel::from_shared(c.members[i].url())
        .expect("url")
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

/// Puts up to `count` unique keys through `through` (in turn, moving on after an error),
/// for at most 15 s; the acknowledged ones with their values. With `compact`, compacts
/// every 20 acknowledged puts at the revision of the last.
async fn write(
    c: &Cluster,
    through: &[usize],
    count: usize,
    tag: &str,
    compact: bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut acked = Vec::new();
    let mut at = 0;
    for n in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let (k, v) = (format!("fp/{tag}/{n:04}"), format!("v{n}"));
        let mut kv = KvClient::new(channel(c, through[at % through.len()]));
        let r = kv
            .put(PutRequest {
                key: Bytes::from(k.clone()),
                value: Bytes::from(v.clone()),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                acked.push((k, v));
                let rev = r.into_inner().header.map_or(0, |h| h.revision);
                if compact && acked.len() % 20 == 0 {
                    let _ = kv
                        .compact(CompactionRequest {
                            revision: rev,
                            physical: false,
                        })
                        .await;
                }
            }
            Err(_) => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    acked
}

fn crash_at(point: &str, trigger: Trigger) {
    // The members armed: the leader's snapshot point on the two that can lead while
    // member 0 lags; every other point on member 0.
    let armed: Vec<usize> = if point == "raftBeforeSaveSnap" {
        vec![1, 2]
    } else {
        vec![0]
    };
    // Writes reach a point on every hit; let a few pass so the cluster starts first.
    let actions = if trigger == Trigger::Writes {
        "20*off->panic"
    } else {
        "panic"
    };
    let spec = format!("{point}={actions}");
    let setup_armed = armed.clone();
    let mut c = Cluster::launch(
        Kind::Kvstore,
        3,
        &["--snapshot-count", SNAPSHOT_COUNT],
        std::sync::Arc::new(move |i, p: &mut common::Proc| {
            if setup_armed.contains(&i) {
                p.env.push(("FAILPOINTS".into(), spec.clone()));
            }
        }),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut acked = Vec::new();
    match trigger {
        Trigger::Writes | Trigger::Compactions => {
            // Member 0 may die while the cluster still starts: the others must serve.
            for &i in &[1, 2] {
                c.members[i].wait_ready();
            }
            let compact = trigger == Trigger::Compactions;
            acked.extend(rt.block_on(write(&c, &[1, 2], 200, "a", compact)));
        }
        Trigger::Snapshot => {
            c = c.ready_all();
            c.members[0].kill();
            acked.extend(rt.block_on(write(&c, &[1, 2], 300, "a", false)));
            c.members[0].launch();
            // Writes while it catches up (and after, if a leader died sending it).
            acked.extend(rt.block_on(write(&c, &[1, 2, 0], 40, "b", false)));
        }
    }

    for &i in &armed {
        let exited = c.members[i].wait_exit(Duration::from_secs(20));
        let log = c.members[i].log();
        assert!(
            exited.is_some(),
            "member {i} did not die at {point}; its log:\n{log}"
        );
        assert!(
            log.contains(&format!("failpoint {point} panic")),
            "member {i} died, but not at {point} ({exited:?}); its log:\n{log}"
        );
        eprintln!("member {i} died at {point}: exit {exited:?}");
    }
    eprintln!("{point}: {} writes acknowledged", acked.len());
    assert!(!acked.is_empty(), "{point}: no write was acknowledged");

    // Started again unarmed (a member that died without being armed, e.g. none, stays as
    // it is): the cluster recovers with everything acknowledged.
    for i in 0..3 {
        c.members[i].env.clear();
        if !c.members[i].is_running() {
            c.members[i].launch();
        }
    }
    c = c.ready_all();
    acked.extend(rt.block_on(write(&c, &[0, 1, 2], 5, "after", false)));
    c.wait_converged(Duration::from_secs(30));
    for i in 0..3 {
        let held: std::collections::HashMap<String, String> = c.full_range(i).into_iter().collect();
        common::assert_none_lost(&format!("{point}: member {i}: "), &acked, |(k, v)| {
            held.get(k) == Some(v)
        });
    }
}

/// A point the build does not have, or an action the `fail` crate cannot parse, stops the
/// member at once with an error naming it (no panic, nothing started).
#[test]
fn a_bad_failpoints_spec_is_refused() {
    for (spec, says) in [
        ("noSuchPoint=panic", "no failpoint \"noSuchPoint\""),
        ("walAfterFsync=explode", "FAILPOINTS: walAfterFsync:"),
        ("walAfterFsync", "is not name=actions"),
    ] {
        let mut p = common::Proc::unstarted(Kind::Kvstore);
        p.env.push(("FAILPOINTS".into(), spec.into()));
        p.launch();
        let code = p.wait_exit(Duration::from_secs(20));
        let log = p.log();
        assert_eq!(code, Some(1), "{spec}: {log}");
        assert!(log.contains(says), "{spec}: {log}");
        assert!(!log.contains("panicked"), "{spec}: {log}");
    }
}

macro_rules! points {
    ($($name:ident: $point:literal, $trigger:ident;)*) => {
        $(#[test]
        fn $name() {
            crash_at($point, Trigger::$trigger);
        })*

        /// Every point of the server's list has its test here.
        #[test]
        fn every_point_is_tested() {
            let tested = [$($point),*];
            for p in kvstore::failpoints::POINTS {
                assert!(tested.contains(p), "failpoint {p} has no test");
            }
        }
    };
}

points! {
    wal_before_append: "walBeforeAppend", Writes;
    wal_after_append: "walAfterAppend", Writes;
    wal_before_fsync: "walBeforeFsync", Writes;
    wal_after_fsync: "walAfterFsync", Writes;
    apply_before_entry: "applyBeforeEntry", Writes;
    apply_after_entry: "applyAfterEntry", Writes;
    backend_before_write: "backendBeforeWrite", Writes;
    backend_after_write: "backendAfterWrite", Writes;
    compact_before_apply: "compactBeforeApply", Compactions;
    compact_after_apply: "compactAfterApply", Compactions;
    raft_before_apply_snap: "raftBeforeApplySnap", Snapshot;
    raft_after_apply_snap: "raftAfterApplySnap", Snapshot;
    raft_before_save_snap: "raftBeforeSaveSnap", Snapshot;
}

/// The network points, armed and disarmed over `FAILPOINTS_HTTP` while the cluster runs:
/// the leader's raft messages delayed (its writes take at least the delay, as each needs a
/// follower's answer), partly lost (writes still succeed: raft sends again), then all lost
/// (the followers stop hearing it and elect another leader); disarmed, the old leader
/// rejoins and every member holds every acknowledged write.
#[test]
fn network_points_delay_and_drop_the_leaders_messages() {
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let control = ports.clone();
    let mut c = Cluster::start_with(
        Kind::Kvstore,
        3,
        &[],
        std::sync::Arc::new(move |i, p: &mut common::Proc| {
            p.env.push((
                "FAILPOINTS_HTTP".into(),
                format!("127.0.0.1:{}", control[i]),
            ));
        }),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let leader = c.wait_leader(Duration::from_secs(20));
    let port = ports[leader];
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // The control answers as gofail's does; an unknown point is refused, naming it.
    assert_eq!(common::http_get(port, "/"), (200, String::new()));
    let (code, body) = common::http_request(port, "PUT", "/noSuchPoint", "return");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no failpoint \"noSuchPoint\""), "{body}");
    assert_eq!(common::http_get(port, "/raftDelaySend").0, 404);

    let mut acked = Vec::new();
    let timed_puts = |c: &Cluster, tag: &str, n: usize| -> (Vec<Duration>, Vec<(String, String)>) {
        rt.block_on(async {
            let mut kv = KvClient::new(channel(c, leader));
            let (mut took, mut acked) = (Vec::new(), Vec::new());
            for i in 0..n {
                let (k, v) = (format!("net/{tag}/{i}"), format!("v{i}"));
                let t = Instant::now();
                let r = kv
                    .put(PutRequest {
                        key: Bytes::from(k.clone()),
                        value: Bytes::from(v.clone()),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => {
                        took.push(t.elapsed());
                        acked.push((k, v));
                    }
                    Err(e) => panic!("{tag}: put {i} through the leader failed: {e}"),
                }
            }
            (took, acked)
        })
    };

    // Delayed by 300 ms: every write waits for a follower, so for at least that.
    assert_eq!(
        common::http_request(port, "PUT", "/raftDelaySend", "return(300)").0,
        204
    );
    assert_eq!(
        common::http_get(port, "/"),
        (200, "raftDelaySend=return(300)\n".into())
    );
    let (took, a) = timed_puts(&c, "delayed", 10);
    acked.extend(a);
    let fastest = took.iter().min().copied().unwrap_or_default();
    eprintln!("puts with the leader's messages delayed 300 ms: fastest {fastest:?}");
    assert!(
        fastest >= Duration::from_millis(300),
        "a put took {fastest:?} with every message delayed 300 ms"
    );
    assert_eq!(
        common::http_request(port, "DELETE", "/raftDelaySend", "").0,
        204
    );

    // A third lost: raft sends again, every write still succeeds.
    assert_eq!(
        common::http_request(port, "PUT", "/raftDropSend", "33%return").0,
        204
    );
    let (_, a) = timed_puts(&c, "lossy", 30);
    acked.extend(a);

    // All lost: the followers hear nothing and elect one of themselves.
    assert_eq!(
        common::http_request(port, "PUT", "/raftDropSend", "return").0,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_leader = loop {
        let led = others
            .iter()
            .copied()
            .find(|&i| c.status(i).is_some_and(|s| s.leader == s.id));
        if let Some(i) = led {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no follower took over while the leader's messages were all lost"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("member {new_leader} leads while member {leader}'s messages are lost");
    acked.extend(rt.block_on(write(&c, &[new_leader], 20, "cut-off", false)));

    // Disarmed: the old leader hears the new term and follows; nothing was lost.
    assert_eq!(
        common::http_request(port, "DELETE", "/raftDropSend", "").0,
        204
    );
    assert_eq!(common::http_get(port, "/"), (200, String::new()));
    acked.extend(rt.block_on(write(&c, &[0, 1, 2], 10, "healed", false)));
    c.wait_converged(Duration::from_secs(30));
    for i in 0..3 {
        let held: std::collections::HashMap<String, String> = c.full_range(i).into_iter().collect();
        common::assert_none_lost(&format!("member {i}: "), &acked, |(k, v)| {
            held.get(k) == Some(v)
        });
    }
}
