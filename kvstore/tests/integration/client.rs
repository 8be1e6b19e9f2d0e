//! kvstore's own client (`kvstore::client`, what netd uses) through the same operations against
//! kvstore and against etcd 3.4: the client speaks the etcd v3 API and nothing else.

use crate::common;

use common::{Kind, Proc};
use kvstore::client::{Client, req};
use kvstore::proto::etcdserverpb::compare::CompareResult;
use kvstore::proto::mvccpb::event::EventType;

async fn client(p: &Proc) -> Client {
    Client::connect([p.endpoint()], None)
        .await
        .expect("connect")
}

fn key_str(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

async fn kv_txn_watch_lease_cluster(kind: Kind) {
    let p = Proc::start(kind);
    let c = client(&p).await;

    let r = c.put_kv("a/1", "x").await.expect("put");
    assert_eq!(r.header.map(|h| h.revision), Some(2));
    c.put_kv("a/2", "y").await.expect("put");
    c.put_kv("b/1", "z").await.expect("put");
    let r = c.get_prefix("a/").await.expect("get");
    let keys: Vec<String> = r.kvs.iter().map(|kv| key_str(&kv.key)).collect();
    assert_eq!(keys, ["a/1", "a/2"]);
    let mut at = req::get("a/1");
    at.revision = 2;
    let r = c.range(at).await.expect("get at rev");
    assert_eq!(&r.kvs[0].value[..], b"x");
    let mut limited = req::prefix("a/");
    limited.limit = 1;
    let r = c.range(limited).await.expect("limited");
    assert!(r.more);
    assert_eq!(r.count, 2);

    // Compare-and-swap as flannel does it: create only if absent.
    let create = |v: &'static str| {
        req::txn(
            [req::version_is("lease/k", CompareResult::Equal, 0)],
            [req::op_put(req::put("lease/k", v))],
            [],
        )
    };
    assert!(c.txn(create("first")).await.expect("txn").succeeded);
    assert!(!c.txn(create("second")).await.expect("txn").succeeded);
    let r = c.get("lease/k").await.expect("get");
    assert_eq!(&r.kvs[0].value[..], b"first");

    let mut w = req::watch_prefix("a/", 0);
    w.prev_kv = true;
    let mut stream = c.watch(w).await.expect("watch");
    c.put_kv("a/3", "w").await.expect("put");
    c.delete_range(req::delete("a/1")).await.expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let resp = stream
            .message()
            .await
            .expect("watch stream")
            .expect("response");
        for e in &resp.events {
            let kv = e.kv.as_ref().expect("kv");
            seen.push((e.r#type(), key_str(&kv.key)));
            if e.r#type() == EventType::Delete {
                assert_eq!(
                    e.prev_kv.as_ref().map(|p| p.value.to_vec()),
                    Some(b"x".to_vec())
                );
            }
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, "a/3".into()),
            (EventType::Delete, "a/1".into())
        ]
    );
    stream.cancel().await.expect("cancel");
    let canceled = stream.message().await.expect("answer").expect("one");
    assert!(canceled.canceled);

    let lease = c.lease_grant(30).await.expect("grant");
    let mut leased = req::put("leased", "v");
    leased.lease = lease.id;
    c.put(leased).await.expect("put with lease");
    let ttl = c.lease_time_to_live(lease.id, true).await.expect("ttl");
    assert_eq!(ttl.keys, [&b"leased"[..]]);
    assert_eq!(
        c.lease_keep_alive_once(lease.id).await.expect("keepalive"),
        30
    );
    c.lease_revoke(lease.id).await.expect("revoke");
    assert!(c.get("leased").await.expect("get").kvs.is_empty());
    assert!(c.lease_keep_alive_once(lease.id).await.expect("keepalive") <= 0);

    let members = c.member_list().await.expect("members");
    assert_eq!(members.members.len(), 1);
    let status = c.status().await.expect("status");
    assert_eq!(
        status.leader,
        status.header.as_ref().map(|h| h.member_id).unwrap_or(0)
    );
    let cur = status.header.map(|h| h.revision).unwrap_or(0);
    c.compact(cur, true).await.expect("compact");
    let mut old = req::prefix("a/");
    old.revision = 2;
    let err = c.range(old).await.expect_err("compacted");
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{err}"
    );
    assert_eq!(err.code(), Some(tonic::Code::OutOfRange));
}

#[tokio::test]
async fn against_kvstore() {
    kv_txn_watch_lease_cluster(Kind::Kvstore).await;
}

#[tokio::test]
async fn against_etcd() {
    kv_txn_watch_lease_cluster(Kind::Etcd).await;
}

/// A store that is down is an error on the first request, with a line that says so.
#[tokio::test]
async fn unreachable_store_is_a_one_line_error() {
    let port = common::free_port();
    let c = Client::connect(
        [format!("127.0.0.1:{port}")],
        Some(
            kvstore::client::ConnectOptions::new()
                .with_connect_timeout(std::time::Duration::from_secs(1))
                .with_timeout(std::time::Duration::from_secs(2)),
        ),
    )
    .await
    .expect("connect is lazy");
    let err = c.get("k").await.expect_err("nobody listens");
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
}
