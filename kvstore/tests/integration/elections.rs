//! Requests across elections, the same test code against kvstore and etcd 3.4 (3-member
//! clusters on loopback, members SIGKILLed and started again):
//! - a put and a linearizable read sent to a member that knows no leader (quorum lost) wait
//!   for one instead of failing, and are served once a killed member is back and a leader is
//!   elected;
//! - with no leader for the whole request timeout, both fail with etcd's errors for that case
//!   ("context deadline exceeded" for the put, "request timed out" for the read);
//! - puts sent through a follower just after the leader was SIGKILLed (forwarded to a leader
//!   that is gone): kvstore proposes them again once the new leader is elected and answers
//!   every one; etcd answers a lost one, after its request timeout, with its error for that
//!   case ("request timed out, possibly due to previous leader failure", or "request timed
//!   out" when the new leader came later than two election timeouts after the request).
//! - kvstore only (etcd waits out the lease): when the leader's process dies, its port
//!   refuses the followers' connections, and they stop waiting out its lease.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Kind;
use common::cluster::Cluster;
use kvstore::proto::etcdserverpb::{PutRequest, RangeRequest, kv_client::KvClient};
use tonic::Code;
use tonic::transport::Channel;

/// A client of member `i` only, with no deadline of its own: the server's answer is what
/// the test sees.
async fn kv(c: &Cluster, i: usize) -> KvClient<Channel> {
    let ch = Channel::from_shared(c.members[i].url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    KvClient::new(ch)
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        ..Default::default()
    }
}

fn range_req(key: &str) -> RangeRequest {
    RangeRequest {
        key: Bytes::from(key.to_string()),
        ..Default::default()
    }
}

/// Whether member `i` answers `endpoint status` with no leader (etcd's JSON leaves the zero
/// leader field out).
fn knows_no_leader(c: &Cluster, i: usize) -> bool {
    let out = c.members[i].etcdctl(&[
        "--command-timeout=1s",
        "--dial-timeout=1s",
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    out.status.success() && v[0]["Status"]["leader"].as_u64().unwrap_or(0) == 0
}

/// Kills every member but `survivor` and waits until it reports no leader.
fn leave_alone(c: &mut Cluster, survivor: usize) {
    for i in 0..c.members.len() {
        if i != survivor {
            c.members[i].kill();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !knows_no_leader(c, survivor) {
        assert!(
            Instant::now() < deadline,
            "{:?}: the survivor still reports a leader",
            c.kind
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A put and a linearizable read reach a member that knows no leader; a killed member is
/// started again half a second later. The put waits and succeeds once a leader is elected.
/// The read waits too on kvstore; etcd 3.4 answers it "leader changed" when the leader is
/// elected (its clients retry that), or serves it.
async fn requests_wait_for_a_leader(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let survivor = (leader + 1) % 3;
    let back = (leader + 2) % 3;
    let mut client = kv(&c, survivor).await;
    client.put(put_req("held", "v0")).await.expect("first put");
    tokio::task::block_in_place(|| leave_alone(&mut c, survivor));

    let started = Instant::now();
    let put = {
        let mut client = client.clone();
        tokio::spawn(async move { client.put(put_req("held", "v1")).await })
    };
    let read = tokio::spawn(async move { client.range(range_req("held")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !put.is_finished() && !read.is_finished(),
        "{kind:?}: a request with no leader was answered at once"
    );
    tokio::task::block_in_place(|| c.members[back].launch());

    let put = put.await.expect("put task");
    let put_took = started.elapsed();
    let read = read.await.expect("read task");
    eprintln!("{kind:?}: put with no leader answered after {put_took:?}: {put:?}");
    eprintln!("{kind:?}: read with no leader: {read:?}");
    put.unwrap_or_else(|e| panic!("{kind:?}: the held put failed: {e:?}"));
    match (kind, read) {
        (_, Ok(r)) => {
            let v = r.get_ref().kvs.first().map(|kv| kv.value.clone());
            assert!(
                v == Some(Bytes::from("v0")) || v == Some(Bytes::from("v1")),
                "{kind:?}: the read saw {v:?}"
            );
        }
        (Kind::Etcd, Err(e)) => {
            assert_eq!(
                (e.code(), e.message()),
                (Code::Unavailable, "etcdserver: leader changed")
            )
        }
        (Kind::Kvstore, Err(e)) => panic!("{kind:?}: the held read failed: {e:?}"),
    }
    let mut client = kv(&c, back).await;
    let got = client.range(range_req("held")).await.expect("read back");
    assert_eq!(
        got.into_inner().kvs.first().map(|kv| kv.value.clone()),
        Some(Bytes::from("v1")),
        "{kind:?}: the held put is in the store"
    );
}

/// No leader for longer than the request timeout: once the member's request timeout has
/// passed (etcd: 5 s plus two election timeouts; kvstore: 2 s plus two) the put fails with
/// etcd's Unknown "context deadline exceeded" (it never reached raft) and the linearizable
/// read with Unavailable "etcdserver: request timed out".
async fn no_leader_times_out(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let survivor = (leader + 1) % 3;
    let client = kv(&c, survivor).await;
    tokio::task::block_in_place(|| leave_alone(&mut c, survivor));

    let started = Instant::now();
    let put = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let r = client.put(put_req("never", "v")).await;
            (r.map(|_| ()), started.elapsed())
        })
    };
    let read = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let r = client.range(range_req("never")).await;
            (r.map(|_| ()), started.elapsed())
        })
    };
    let put = put.await.expect("put task");
    let read = read.await.expect("read task");
    let results = [("put", put), ("read", read)];
    // The put never reached raft (etcd's waits to be taken until its context ends, and
    // answers with the context's error); the read's ReadIndex went unanswered.
    let expected = [
        (Code::Unknown, "context deadline exceeded"),
        (Code::Unavailable, "etcdserver: request timed out"),
    ];
    for (what, (r, took)) in &results {
        eprintln!("{kind:?}: {what} with no leader answered after {took:?}: {r:?}");
    }
    for ((what, (r, took)), want) in results.into_iter().zip(expected) {
        let e = r.expect_err("no leader, no answer");
        assert_eq!((e.code(), e.message()), want, "{kind:?}: {what}");
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(12),
            "{kind:?}: {what} answered after {took:?}"
        );
    }
}

/// Puts through a follower right after the leader is SIGKILLed: the follower still forwards
/// them to the dead leader until it notices. kvstore answers every one (a proposal lost with
/// the old leader is proposed again once an entry of the new term is applied: it was
/// certainly never applied); etcd either answers it or, after its request timeout, fails it
/// with "request timed out, possibly due to previous leader failure" (or "request timed out").
async fn puts_forwarded_to_a_killed_leader(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    let client = kv(&c, follower).await;
    tokio::task::block_in_place(|| c.members[leader].kill());
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let mut client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(25 * n)).await;
                let key = format!("forwarded/{n}");
                (key.clone(), client.put(put_req(&key, "v")).await)
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        let (key, r) = t.await.expect("task");
        match r {
            Ok(_) => acked.push(key),
            Err(e) => {
                eprintln!("{kind:?}: {key}: {:?} {:?}", e.code(), e.message());
                assert_eq!(
                    kind,
                    Kind::Etcd,
                    "{kind:?}: {key} failed across the election: {e:?}"
                );
                // Which of the two depends on whether the new leader was elected within two
                // election timeouts of the request's start (etcd's parseProposeCtxErr).
                assert_eq!(e.code(), Code::Unavailable, "{kind:?}: {key}");
                assert!(
                    [
                        "etcdserver: request timed out, possibly due to previous leader failure",
                        "etcdserver: request timed out",
                    ]
                    .contains(&e.message()),
                    "{kind:?}: {key}: {e:?}"
                );
            }
        }
    }
    eprintln!("{kind:?}: {} of 8 puts acknowledged", acked.len());
    let mut client = kv(&c, follower).await;
    for key in &acked {
        let got = client.range(range_req(key)).await.expect("read back");
        assert_eq!(got.into_inner().kvs.len(), 1, "{kind:?}: {key} lost");
    }
    // Each acknowledged put was applied once: one revision each, after the first.
    let all = client
        .range(RangeRequest {
            key: Bytes::from("forwarded/"),
            range_end: Bytes::from("forwarded0"),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    let mut revs: Vec<i64> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), all.kvs.len(), "{kind:?}: revisions {revs:?}");
    assert!(
        all.kvs.iter().all(|kv| kv.version == 1),
        "{kind:?}: a put applied twice"
    );
}

mod on_kvstore {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_wait_for_a_leader() {
        super::requests_wait_for_a_leader(Kind::Kvstore).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_leader_times_out() {
        super::no_leader_times_out(Kind::Kvstore).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puts_forwarded_to_a_killed_leader() {
        super::puts_forwarded_to_a_killed_leader(Kind::Kvstore).await;
    }

    #[test]
    fn followers_see_a_dead_leader_at_once() {
        super::followers_see_a_dead_leader_at_once();
    }
}

/// Kills the leader three times (restarting it after each new election): each time, a
/// follower logs that the leader's port refuses connections and that it no longer waits out
/// the leader's lease, and a new leader is elected. The time each election took is printed;
/// how much sooner service comes back is measured by `leaderkill` and the soak, not here.
fn followers_see_a_dead_leader_at_once() {
    let mut c = Cluster::start(Kind::Kvstore, 3, &[]);
    const SAID: &str = "the leader's peer port refuses connections; not waiting out its lease";
    for round in 0..3 {
        let leader = c.wait_leader(Duration::from_secs(10));
        let before: Vec<usize> = (0..3)
            .map(|i| c.members[i].log().matches(SAID).count())
            .collect();
        let killed = Instant::now();
        c.members[leader].kill();
        let new = c.wait_leader(Duration::from_secs(10));
        eprintln!(
            "round {round}: a new leader {:?} after the kill",
            killed.elapsed()
        );
        assert_ne!(new, leader);
        let said = (0..3)
            .filter(|&i| i != leader)
            .filter(|&i| c.members[i].log().matches(SAID).count() > before[i])
            .count();
        assert!(
            said >= 1,
            "round {round}: no follower noticed the dead leader"
        );
        c.members[leader].launch();
        c.members[leader].wait_ready();
    }
}

mod on_etcd {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_wait_for_a_leader() {
        super::requests_wait_for_a_leader(Kind::Etcd).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_leader_times_out() {
        super::no_leader_times_out(Kind::Etcd).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puts_forwarded_to_a_killed_leader() {
        super::puts_forwarded_to_a_killed_leader(Kind::Etcd).await;
    }
}
