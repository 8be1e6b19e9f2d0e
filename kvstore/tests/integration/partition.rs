//! Network partition of a 3-member cluster, each member in its own namespace: the leader
//! is cut off from its peers; the majority elects a new leader and keeps taking writes
//! (through its leader and through a follower); the isolated member refuses linearizable
//! reads with an Unavailable-class error instead of answering stale data, while a
//! serializable read there does return the stale value; after healing every member holds
//! the same keyspace. A compaction sent to a member cut off while the others wrote, at a
//! revision it has not seen but a client has, is served once the member is back (found by
//! the robustness run: kvstore refused it as a future revision). Run against etcd 3.4 and
//! kvstore through the same code.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Kind;
use common::netns::NetCluster;
use kvstore::proto::etcdserverpb::{
    CompactionRequest, PutRequest, RangeRequest, RangeResponse, kv_client::KvClient,
};
use tonic::Code;

const KEY: &str = "partition/key";

async fn put(c: &NetCluster, member: usize, key: &str, value: &str) -> Result<(), tonic::Status> {
    KvClient::new(c.channel(member, Duration::from_secs(5)))
        .put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// A range of `key` (or, with `all`, of the whole keyspace) at `member`.
async fn range(
    c: &NetCluster,
    member: usize,
    key: &str,
    all: bool,
    serializable: bool,
    require_leader: bool,
) -> Result<RangeResponse, tonic::Status> {
    let mut req = tonic::Request::new(RangeRequest {
        key: Bytes::from(if all {
            "\0".to_string()
        } else {
            key.to_string()
        }),
        range_end: if all {
            Bytes::from_static(b"\0")
        } else {
            Bytes::new()
        },
        serializable,
        ..Default::default()
    });
    if require_leader {
        // What etcd's Go client sends for `WithRequireLeader`: fail at once without a leader.
        req.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    KvClient::new(c.channel(member, Duration::from_secs(10)))
        .range(req)
        .await
        .map(|r| r.into_inner())
}

fn value_of(r: &RangeResponse) -> Option<String> {
    r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Every key of member `i`'s keyspace with value and revisions, read serializably.
async fn snapshot(c: &NetCluster, i: usize) -> Option<(i64, Vec<(Bytes, Bytes, i64, i64, i64)>)> {
    let r = range(c, i, "", true, true, false).await.ok()?;
    let rev = r.header.as_ref().map_or(0, |h| h.revision);
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    Some((rev, kvs))
}

fn assert_unavailable(kind: Kind, what: &str, r: Result<RangeResponse, tonic::Status>) {
    match r {
        Ok(resp) => panic!(
            "{kind:?}: {what} on the isolated member answered {:?} instead of an error",
            value_of(&resp)
        ),
        Err(e) => {
            eprintln!(
                "{kind:?}: {what} on the isolated member: {:?} {:?}",
                e.code(),
                e.message()
            );
            assert!(
                matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{kind:?}: {what} failed with {:?} {:?}, not an Unavailable-class error",
                e.code(),
                e.message()
            );
        }
    }
}

fn isolated_leader(kind: Kind) {
    let c = NetCluster::start(kind, 3);
    c.block_on(async {
        let old = c.wait_leader(&[], Duration::from_secs(15)).await;
        put(&c, old, KEY, "before")
            .await
            .expect("put before the partition");
        // Every member has applied it before the cut.
        for i in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = range(&c, i, KEY, false, true, false).await;
                if r.as_ref().ok().and_then(value_of).as_deref() == Some("before") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind:?}: member {i} never saw the put"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        c.isolate(old);
        let new = c.wait_leader(&[old], Duration::from_secs(20)).await;
        let follower = (0..3)
            .find(|&i| i != old && i != new)
            .expect("third member");
        eprintln!("{kind:?}: leader {old} isolated, {new} elected, {follower} follows");

        // The majority serves writes, through its leader and through a follower.
        put(&c, new, KEY, "after")
            .await
            .expect("write at the new leader");
        for n in 0..10 {
            let at = if n % 2 == 0 { new } else { follower };
            put(&c, at, &format!("partition/majority/{n}"), "x")
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: write {n} at member {at}: {e:?}"));
        }
        let r = range(&c, follower, KEY, false, false, false)
            .await
            .expect("linearizable read in the majority");
        assert_eq!(value_of(&r).as_deref(), Some("after"));

        // The minority: linearizable reads fail, serializable reads show stale data.
        let started = Instant::now();
        assert_unavailable(
            kind,
            "linearizable read",
            range(&c, old, KEY, false, false, false).await,
        );
        eprintln!("{kind:?}: refused after {:?}", started.elapsed());
        assert_unavailable(
            kind,
            "linearizable read requiring a leader",
            range(&c, old, KEY, false, false, true).await,
        );
        let stale = range(&c, old, KEY, false, true, false)
            .await
            .expect("serializable read on the isolated member");
        assert_eq!(
            value_of(&stale).as_deref(),
            Some("before"),
            "{kind:?}: a serializable read on the isolated member serves its own (stale) copy"
        );

        // Heal: every member converges on one keyspace.
        c.heal();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut snaps = Vec::new();
            for i in 0..3 {
                snaps.push(snapshot(&c, i).await);
            }
            let converged = snaps[0].is_some() && snaps.iter().all(|s| s == &snaps[0]);
            if converged {
                let (_, kvs) = snaps[0].as_ref().expect("checked above");
                assert_eq!(kvs.len(), 11, "{kind:?}: the converged keyspace");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?}: members did not converge after healing: {snaps:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match range(&c, old, KEY, false, false, false).await {
                Ok(r) => {
                    assert_eq!(value_of(&r).as_deref(), Some("after"));
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{kind:?}: the healed member never served a linearizable read: {e:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// A follower is cut off while the leader takes writes; a compaction at the revision a
/// client just saw, sent to that follower, is answered once it is back: by then the
/// revision exists everywhere (the compaction applies in log order after it). It must not be
/// refused as a future revision because the follower had not seen it yet.
fn compaction_through_a_lagging_member(kind: Kind) {
    let c = NetCluster::start(kind, 3);
    c.block_on(async {
        let leader = c.wait_leader(&[], Duration::from_secs(15)).await;
        let lagging = (leader + 1) % 3;
        put(&c, leader, KEY, "before").await.expect("first put");
        c.isolate(lagging);
        let mut rev = 0;
        for n in 0..5 {
            let r = KvClient::new(c.channel(leader, Duration::from_secs(5)))
                .put(PutRequest {
                    key: Bytes::from(KEY),
                    value: Bytes::from(format!("v{n}")),
                    ..Default::default()
                })
                .await
                .expect("put while a follower is cut off");
            rev = r.into_inner().header.map_or(0, |h| h.revision);
        }
        let mut kv = KvClient::new(c.channel(lagging, Duration::from_secs(15)));
        let compact = tokio::spawn(async move {
            kv.compact(CompactionRequest {
                revision: rev,
                physical: false,
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.heal();
        let answer = compact.await.expect("compact task");
        eprintln!("{kind:?}: compaction at {rev} through the lagging member: {answer:?}");
        answer.unwrap_or_else(|e| {
            panic!(
                "{kind:?}: compaction at revision {rev} (seen by a client) through a lagging \
                 member failed: {:?} {}",
                e.code(),
                e.message()
            )
        });
        // It took effect: the revision before it is gone.
        let old = KvClient::new(c.channel(leader, Duration::from_secs(5)))
            .range(RangeRequest {
                key: Bytes::from(KEY),
                revision: rev - 1,
                ..Default::default()
            })
            .await;
        let e = old.expect_err("a read below the compaction");
        assert_eq!(e.code(), Code::OutOfRange, "{kind:?}: {e:?}");
    });
}

mod on_etcd {
    #[test]
    fn isolated_leader() {
        super::isolated_leader(super::Kind::Etcd);
    }

    #[test]
    fn compaction_through_a_lagging_member() {
        super::compaction_through_a_lagging_member(super::Kind::Etcd);
    }
}

mod on_kvstore {
    #[test]
    fn isolated_leader() {
        super::isolated_leader(super::Kind::Kvstore);
    }

    #[test]
    fn compaction_through_a_lagging_member() {
        super::compaction_through_a_lagging_member(super::Kind::Kvstore);
    }
}
