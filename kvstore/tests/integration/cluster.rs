//! Multi-member clusters on loopback, each scenario run against kvstore and, where it
//! applies, against a real etcd 3.4 cluster (whose behaviour is the expectation):
//! membership views, one leader, health, reads through every member, failover under
//! load, catch-up by snapshot, member add/remove with etcdctl, full restarts, leases
//! across an election, the versions reported (`endpoint status`, `/version`).

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Kind;
use common::cluster::Cluster;
use kvstore::client::{Client, req};

async fn client(endpoints: &str) -> Client {
    let eps: Vec<&str> = endpoints.split(',').collect();
    Client::connect(eps, None).await.expect("connect")
}

/// The `member list` table as (name, started, client URL present) rows.
fn member_rows(c: &mut Cluster) -> Vec<(String, String, bool)> {
    let out = c.ok(&["member", "list"]);
    let mut rows: Vec<(String, String, bool)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (
                f[2].to_string(),
                f[1].to_string(),
                f[4].starts_with("http://"),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn views_and_reads(kind: Kind, n: usize) {
    let mut c = Cluster::start(kind, n, &[]);
    let rows = member_rows(&mut c);
    let want: Vec<(String, String, bool)> = (1..=n)
        .map(|i| (format!("m{i}"), "started".to_string(), true))
        .collect();
    assert_eq!(rows, want, "{kind:?}");

    // `endpoint status --cluster`: every member, exactly one of them the leader.
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["endpoint", "status", "--cluster", "-w", "json"]))
            .expect("status json");
    let all = status.as_array().expect("array");
    assert_eq!(all.len(), n, "{kind:?}: {status}");
    let leaders = all
        .iter()
        .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .count();
    assert_eq!(leaders, 1, "{kind:?}: {status}");
    let health = c.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(health.status.success(), "{kind:?}: {health:?}");
    let text = String::from_utf8_lossy(&health.stderr).into_owned()
        + &String::from_utf8_lossy(&health.stdout);
    assert_eq!(text.matches("is healthy").count(), n, "{kind:?}: {text}");

    // A write through any member is read (linearizably) through every other.
    for w in 0..n {
        let key = format!("k{w}");
        c.members[w].ok(&["put", &key, &format!("from m{}", w + 1)]);
        for r in 0..n {
            let got = c.members[r].ok(&["get", &key, "--print-value-only"]);
            assert_eq!(
                got.trim(),
                format!("from m{}", w + 1),
                "{kind:?} read via m{}",
                r + 1
            );
        }
    }
}

#[test]
fn three_members_kvstore() {
    views_and_reads(Kind::Kvstore, 3);
}

#[test]
fn three_members_etcd() {
    views_and_reads(Kind::Etcd, 3);
}

#[test]
fn five_members_kvstore() {
    views_and_reads(Kind::Kvstore, 5);
}

#[test]
fn five_members_etcd() {
    views_and_reads(Kind::Etcd, 5);
}

/// Stops the writers and gathers every write they had acknowledged.
async fn stop_writers(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Vec<(String, String)>>>,
) -> Vec<(String, String)> {
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    acked
}

/// Writers that put `w<n>/<seq>` keys through every member until stopped; each returns
/// the writes that were acknowledged.
fn spawn_writers(
    endpoints: &str,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, String)>>> {
    (0..n)
        .map(|w| {
            let endpoints = endpoints.to_string();
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = client(&endpoints).await;
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}/{i:08}");
                    let put = c.put_kv(&key, i.to_string());
                    match tokio::time::timeout(Duration::from_secs(5), put).await {
                        Ok(Ok(_)) => acked.push((key, i.to_string())),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect()
}

/// Every acknowledged write is in `range` with its value.
fn assert_all_present(kind: Kind, acked: &[(String, String)], range: &[(String, String)]) {
    let map: std::collections::HashMap<&str, &str> = range
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    common::assert_none_lost(&format!("{kind:?}: "), acked, |(k, v)| {
        map.get(k.as_str()) == Some(&v.as_str())
    });
}

async fn failover(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let old = c.wait_leader(Duration::from_secs(10));
    let old_id = c.id(old);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&c.endpoints(), 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    c.members[old].kill();
    let killed = Instant::now();
    let new = tokio::task::block_in_place(|| c.wait_leader(Duration::from_secs(10)));
    let elected = killed.elapsed();
    println!(
        "{kind:?}: new leader m{} elected {elected:?} after SIGKILL of the leader",
        new + 1
    );
    assert_ne!(c.id(new), old_id);
    // The 3 s bound is kvstore's target (the issue's); etcd, the reference for the
    // semantics, is only reported (on a loaded 2-core machine it has taken over 5 s).
    if kind == Kind::Kvstore {
        assert!(
            elected < Duration::from_secs(3),
            "{kind:?}: election took {elected:?}"
        );
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| {
        c.members[old].launch();
        c.members[old].wait_ready();
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 100,
        "{kind:?}: only {} writes acknowledged",
        acked.len()
    );
    tokio::task::block_in_place(|| {
        c.wait_converged(Duration::from_secs(20));
        let reference = c.full_range(new);
        assert_all_present(kind, &acked, &reference);
        for i in 0..3 {
            assert_eq!(c.full_range(i), reference, "{kind:?}: m{} differs", i + 1);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_kvstore() {
    failover(Kind::Kvstore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_etcd() {
    failover(Kind::Etcd).await;
}

/// A member down while the log is truncated many times over comes back through a
/// snapshot and serves the same data (kvstore only: etcd keeps 5,000 entries for slow
/// followers whatever `--snapshot-count` says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_catch_up() {
    let mut c = Cluster::start(Kind::Kvstore, 3, &["--snapshot-count", "100"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let lagging = (leader + 1) % 3;
    c.members[lagging].kill();
    let eps = c.endpoints();
    let cl = client(&eps).await;
    for i in 0..3000u32 {
        cl.put_kv(format!("snap/{i:05}"), format!("v{i}"))
            .await
            .expect("put");
    }
    // Deletes and a compaction are part of the history too.
    cl.delete_range(req::delete_prefix("snap/00"))
        .await
        .expect("delete");
    let rev = cl
        .get("snap/")
        .await
        .expect("get")
        .header
        .map(|h| h.revision);
    cl.compact(rev.unwrap_or(0), false).await.expect("compact");
    tokio::task::block_in_place(|| {
        c.members[lagging].launch();
        c.members[lagging].wait_ready();
        c.wait_converged(Duration::from_secs(30));
        let got = c.full_range(lagging);
        // 3,000 keys, less the 1,000 under snap/00.
        assert_eq!(got.len(), 2000);
        assert_eq!(got, c.full_range(leader));
        let log = c.members[lagging].log();
        assert!(log.contains("snapshot installed"), "no snapshot in: {log}");
    });
}

fn membership(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    c.ok(&["put", "before", "add"]);
    let added = c.add_member();
    assert_eq!(
        c.members[added]
            .ok(&["get", "before", "--print-value-only"])
            .trim(),
        "add"
    );
    let rows = member_rows(&mut c);
    assert_eq!(rows.len(), 4, "{kind:?}: {rows:?}");
    assert!(
        rows.iter().all(|r| r.1 == "started" && r.2),
        "{kind:?}: {rows:?}"
    );
    assert!(
        c.full_range(added)
            .contains(&("before".into(), "add".into()))
    );

    // Remove a member that is not the leader, through the leader (etcd answers "server
    // stopped" when the member being removed serves the request itself and stops first);
    // the removed member stops serving.
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = (0..3).find(|&i| i != leader).expect("a follower");
    let id = format!("{:x}", c.id(victim));
    c.reconfigure_through(leader, &["member", "remove", &id]);
    let exit = c.members[victim].wait_exit(Duration::from_secs(15));
    assert!(exit.is_some(), "{kind:?}: removed member still runs");
    assert_eq!(member_rows(&mut c).len(), 3);
    c.ok(&["put", "after", "remove"]);
    for i in 0..c.members.len() {
        if i != victim {
            assert_eq!(
                c.members[i]
                    .ok(&["get", "after", "--print-value-only"])
                    .trim(),
                "remove"
            );
        }
    }
    let err = String::from_utf8_lossy(&c.etcdctl(&["member", "remove", &id]).stderr).into_owned();
    assert!(err.contains("member not found"), "{kind:?}: {err}");
}

#[test]
fn member_add_remove_kvstore() {
    membership(Kind::Kvstore);
}

#[test]
fn member_add_remove_etcd() {
    membership(Kind::Etcd);
}

async fn full_restart(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &["--snapshot-count", "300"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&c.endpoints(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for m in &mut c.members {
        m.kill();
    }
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 100,
        "{kind:?}: only {} acknowledged",
        acked.len()
    );
    tokio::task::block_in_place(|| {
        for m in &mut c.members {
            m.launch();
        }
        for m in &mut c.members {
            m.wait_ready();
        }
        c.wait_converged(Duration::from_secs(20));
        let reference = c.full_range(0);
        assert_all_present(kind, &acked, &reference);
        for i in 1..3 {
            assert_eq!(c.full_range(i), reference);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_kvstore() {
    full_restart(Kind::Kvstore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_etcd() {
    full_restart(Kind::Etcd).await;
}

/// A lease kept alive through a follower outlives the leader's death: the new leader
/// restarts its countdown, and keep-alives reach it.
async fn lease_across_election(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    let cl = client(&c.members[follower].endpoint()).await;
    let lease = cl.lease_grant(10).await.expect("grant").id;
    let mut put = req::put("leased", "v");
    put.lease = lease;
    cl.put(put).await.expect("put");
    let mut keeper = cl.lease_keep_alive(lease);
    let keep = tokio::spawn(async move {
        let mut ttls = Vec::new();
        for _ in 0..10 {
            if let Ok(Ok(ttl)) =
                tokio::time::timeout(Duration::from_secs(3), keeper.keep_alive()).await
            {
                ttls.push(ttl);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        ttls
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.members[leader].kill();
    let ttls = keep.await.expect("keeper");
    // 20 s after the grant: the lease would be long gone without the keep-alives.
    let ttl = cl.lease_time_to_live(lease, false).await.expect("ttl");
    assert!(ttl.ttl > 0, "{kind:?}: lease expired (ttls seen {ttls:?})");
    let got = cl.get("leased").await.expect("get");
    assert_eq!(got.kvs.len(), 1, "{kind:?}: leased key gone");
    assert!(
        ttls.iter().filter(|t| **t == 10).count() >= 5,
        "{kind:?}: keep-alives answered {ttls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_survives_election_kvstore() {
    lease_across_election(Kind::Kvstore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_survives_election_etcd() {
    lease_across_election(Kind::Etcd).await;
}

/// `etcdctl move-leader` (Maintenance.MoveLeader), the same test code on both servers:
/// leadership moves to the named member at once (no election timeout), every member agrees;
/// a member that is not the leader answers "not leader", an unknown target is "bad leader
/// transferee"; writes go on under the new leader.
fn move_leader(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let old = c.wait_leader(Duration::from_secs(10));
    let target = (old + 1) % 3;
    let target_id = c.id(target);
    let started = Instant::now();
    let out = c.ok(&["move-leader", &format!("{target_id:x}")]);
    let took = started.elapsed();
    assert!(
        out.contains("Leadership transferred from") && out.contains(&format!("{target_id:x}")),
        "{kind:?}: {out}"
    );
    assert_eq!(c.wait_leader(Duration::from_secs(5)), target, "{kind:?}");
    // A transfer is a round trip or two, far below the 1 s election timeout.
    assert!(took < Duration::from_millis(900), "{kind:?}: took {took:?}");
    c.ok(&["put", "after-move", "v"]);
    assert!(c.ok(&["get", "after-move"]).contains('v'));

    // Asked of a follower only: etcdctl finds no leader among the endpoints it was given.
    let follower = (target + 1) % 3;
    let out = c.members[follower].etcdctl(&["move-leader", &format!("{:x}", c.id(old))]);
    assert!(!out.status.success(), "{kind:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no leader endpoint given"), "{kind:?}: {err}");

    // The server side of the same refusals, through the gRPC API.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let follower_ep = c.members[follower].endpoint();
    let leader_ep = c.members[target].endpoint();
    let old_id = c.id(old);
    rt.block_on(async {
        let e = maintenance(&follower_ep)
            .await
            .move_leader(kvstore::proto::etcdserverpb::MoveLeaderRequest { target_id: old_id })
            .await
            .expect_err("a follower refuses");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{kind:?}: {e}");
        assert_eq!(e.message(), "etcdserver: not leader", "{kind:?}");
        let bad = maintenance(&leader_ep)
            .await
            .move_leader(kvstore::proto::etcdserverpb::MoveLeaderRequest { target_id: 0x1234 })
            .await
            .expect_err("an unknown member is refused");
        assert_eq!(
            bad.code(),
            tonic::Code::FailedPrecondition,
            "{kind:?}: {bad}"
        );
        assert_eq!(
            bad.message(),
            "etcdserver: bad leader transferee",
            "{kind:?}"
        );
    });
}

async fn maintenance(
    endpoint: &str,
) -> kvstore::proto::etcdserverpb::maintenance_client::MaintenanceClient<tonic::transport::Channel>
{
    let url = if endpoint.starts_with("http") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    kvstore::proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel)
}

/// A one-member cluster's leader is its only voter, and kvstore then answers linearizable
/// reads from its own commit index with no hand-off to the raft thread. Once a second member
/// joins and takes the lead, reads through the first must still see every write made through
/// the second, each read sent the moment its write is acknowledged (the first member may not
/// have applied the write yet; it must find that out from the new leader): the shortcut must
/// end with the configuration that made it safe. The same test code on both servers.
async fn reads_after_a_solo_leader_hands_over(kind: Kind) {
    let mut c = Cluster::start(kind, 1, &[]);
    let first = client(&c.members[0].endpoint()).await;
    first.put(req::put("k", "solo")).await.expect("put");
    let got = first.get("k").await.expect("get");
    assert_eq!(got.kvs[0].value.as_ref(), b"solo");
    let (added, to) = tokio::task::block_in_place(|| {
        let added = c.add_member();
        let to = c.id(added);
        c.ok(&["move-leader", &format!("{to:x}")]);
        (added, to)
    });
    assert_eq!(
        tokio::task::block_in_place(|| c.wait_leader(Duration::from_secs(5))),
        added,
        "{kind:?}: leader is not {to:x}"
    );
    let second = client(&c.members[added].endpoint()).await;
    for i in 0..500 {
        let v = format!("v{i}");
        second.put(req::put("k", &v)).await.expect("put");
        let got = first.get("k").await.expect("get");
        assert_eq!(
            got.kvs[0].value.as_ref(),
            v.as_bytes(),
            "{kind:?}: read {i} through the former solo leader"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_solo_leader_hands_over_kvstore() {
    reads_after_a_solo_leader_hands_over(Kind::Kvstore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_solo_leader_hands_over_etcd() {
    reads_after_a_solo_leader_hands_over(Kind::Etcd).await;
}

#[test]
fn move_leader_kvstore() {
    move_leader(Kind::Kvstore);
}

#[test]
fn move_leader_etcd() {
    move_leader(Kind::Etcd);
}

/// A planned stop of the leader (SIGTERM), the same test code on both servers: the leader
/// hands leadership over before it stops (etcd's graceful stop), so a writer talking to the
/// other two members sees no failed request and no stall near an election timeout (1 s) on
/// kvstore; etcd's figures are printed beside them.
async fn planned_leader_stop(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let others: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| c.members[i].endpoint())
        .collect();
    let writer = client(&others.join(",")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut worst, mut failed, mut n) = (Duration::ZERO, Vec::new(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let put = writer.put_kv(format!("planned/{n:06}"), "v");
                match tokio::time::timeout(Duration::from_secs(5), put).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => failed.push("no answer in 5 s".to_string()),
                }
                worst = worst.max(started.elapsed());
                n += 1;
            }
            (worst, failed, n)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = tokio::task::block_in_place(|| c.members[leader].terminate());
    // etcd re-raises SIGTERM after its graceful stop, so it ends by the signal (no code).
    let clean = if kind == Kind::Etcd { None } else { Some(0) };
    assert_eq!(code, clean, "{kind:?}: the leader exits cleanly");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (worst, failed, n) = task.await.expect("writer");
    assert!(n > 50, "{kind:?}: the writer kept writing ({n} puts)");
    eprintln!(
        "{kind:?}: {n} puts across the leader's planned stop, slowest {worst:?}, failed {failed:?}"
    );
    // etcd 3.4 is measured, not held to this: a proposal its leader drops while handing over
    // is never answered, so now and then one put waits out the client's 5 s and fails.
    if kind == Kind::Kvstore {
        assert!(failed.is_empty(), "{kind:?}: requests failed: {failed:?}");
        assert!(
            worst < Duration::from_millis(500),
            "{kind:?}: the slowest put took {worst:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_leader_stop_kvstore() {
    planned_leader_stop(Kind::Kvstore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_leader_stop_etcd() {
    planned_leader_stop(Kind::Etcd).await;
}

/// `etcdctl endpoint hashkv --cluster` (Maintenance.HashKV), the same test code on both
/// servers: after the same writes and a compaction every member reports one hash, at the
/// latest revision and at a past one; a revision below the compaction point is refused as
/// etcd refuses it; a later write changes the hash.
fn hash_kv(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    for i in 0..100 {
        c.ok(&["put", &format!("k{}", i % 10), &format!("v{i}")]);
    }
    let json = |c: &mut Cluster, args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["endpoint", "hashkv", "--cluster", "-w", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&c.ok(&all)).expect("hashkv json")
    };
    let hashes = |rows: &[serde_json::Value]| -> Vec<u64> {
        rows.iter()
            .map(|r| r["HashKV"]["hash"].as_u64().expect("hash"))
            .collect()
    };
    c.ok(&["compact", "50"]);
    c.wait_converged(Duration::from_secs(10));
    let now = json(&mut c, &[]);
    let h = hashes(&now);
    assert_eq!(h.len(), 3, "{kind:?}: {now:?}");
    assert!(h.iter().all(|x| *x == h[0]), "{kind:?}: {h:?}");
    assert_eq!(
        now[0]["HashKV"]["compact_revision"].as_i64(),
        Some(50),
        "{kind:?}"
    );
    let past = hashes(&json(&mut c, &["--rev", "80"]));
    assert!(past.iter().all(|x| *x == past[0]), "{kind:?}: {past:?}");
    assert_ne!(past[0], h[0], "{kind:?}: revision 80 is not revision 101");
    let out = c.etcdctl(&["endpoint", "hashkv", "--rev", "20"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("required revision has been compacted"),
        "{kind:?}: {err}"
    );
    c.ok(&["put", "one-more", "v"]);
    c.wait_converged(Duration::from_secs(10));
    let after = hashes(&json(&mut c, &[]));
    assert!(after.iter().all(|x| *x == after[0]), "{kind:?}: {after:?}");
    assert_ne!(after[0], h[0], "{kind:?}: a write changes the hash");
}

#[test]
fn hash_kv_kvstore() {
    hash_kv(Kind::Kvstore);
}

#[test]
fn hash_kv_etcd() {
    hash_kv(Kind::Etcd);
}

/// The versions a member reports, the same test code on both servers: `endpoint status
/// --cluster` shows one etcd server version on every member, the one `/version` names as
/// `etcdserver` beside the cluster version `3.4.0`. etcd serves `/version` on its client
/// URL; kvstore, whose client port speaks only gRPC, on `--listen-metrics-urls`, where it
/// adds its own version. kvstore answers as the etcd 3.4 release it is tested against,
/// so both report the same etcd version.
fn versions(kind: Kind) -> String {
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let setup: common::cluster::Setup = {
        let ports = ports.clone();
        Arc::new(move |i, p| {
            p.extra.extend([
                "--listen-metrics-urls".to_string(),
                format!("http://127.0.0.1:{}", ports[i]),
            ])
        })
    };
    let mut c = Cluster::start_with(kind, 3, &[], setup);
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["endpoint", "status", "--cluster", "-w", "json"]))
            .expect("status json");
    let reported: Vec<&str> = status
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["Status"]["version"].as_str().expect("version"))
        .collect();
    assert_eq!(reported.len(), 3, "{kind:?}: {status}");
    assert!(
        reported.iter().all(|v| *v == reported[0]),
        "{kind:?}: {reported:?}"
    );
    let server = reported[0].to_string();
    let parts: Vec<u64> = server
        .split('.')
        .map(|p| p.parse().expect("number"))
        .collect();
    assert_eq!(
        (parts.len(), parts[0], parts[1]),
        (3, 3, 4),
        "{kind:?}: {server}"
    );
    for (m, metrics_port) in c.members.iter().zip(&ports) {
        let port = match kind {
            Kind::Etcd => m.client_port,
            Kind::Kvstore => *metrics_port,
        };
        let (code, body) = common::http_get(port, "/version");
        assert_eq!(code, 200, "{kind:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("version json");
        assert_eq!(v["etcdserver"], server.as_str(), "{kind:?}: {body}");
        assert_eq!(v["etcdcluster"], "3.4.0", "{kind:?}: {body}");
        if kind == Kind::Kvstore {
            assert_eq!(v["kvstore"], env!("CARGO_PKG_VERSION"), "{body}");
        }
    }
    server
}

#[test]
fn versions_kvstore_and_etcd() {
    let etcd = versions(Kind::Etcd);
    let kvstore = versions(Kind::Kvstore);
    assert_eq!(
        kvstore, etcd,
        "kvstore answers as the reference etcd's release (kvstore/src/version.rs)"
    );
}
