//! The same operations through the `etcd-client` crate, the Rust ecosystem's etcd client.

mod common;

use common::{Kind, Proc};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

async fn client(p: &Proc) -> Client {
    Client::connect([p.endpoint()], None)
        .await
        .expect("connect")
}

#[tokio::test]
async fn kv_txn_watch_lease_cluster() {
    let p = Proc::start(Kind::Kvstore);
    let mut c = client(&p).await;

    let r = c.put("a/1", "x", None).await.expect("put");
    assert_eq!(r.header().map(|h| h.revision()), Some(2));
    c.put("a/2", "y", None).await.expect("put");
    c.put("b/1", "z", None).await.expect("put");
    let r = c
        .get("a/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let keys: Vec<&str> = r
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or("?"))
        .collect();
    assert_eq!(keys, ["a/1", "a/2"]);
    let r = c
        .get("a/1", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("get at rev");
    assert_eq!(r.kvs()[0].value(), b"x");
    let r = c
        .get("a/", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await
        .expect("limited");
    assert!(r.more());
    assert_eq!(r.count(), 2);

    // Compare-and-swap as flannel does it: create only if absent.
    let create = |v: &'static str| {
        Txn::new()
            .when([Compare::version("lease/k", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("lease/k", v, None)])
    };
    assert!(c.txn(create("first")).await.expect("txn").succeeded());
    assert!(!c.txn(create("second")).await.expect("txn").succeeded());
    let r = c.get("lease/k", None).await.expect("get");
    assert_eq!(r.kvs()[0].value(), b"first");

    let mut stream = c
        .watch(
            "a/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    c.put("a/3", "w", None).await.expect("put");
    c.delete("a/1", None).await.expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let resp = stream
            .message()
            .await
            .expect("watch stream")
            .expect("response");
        for e in resp.events() {
            let kv = e.kv().expect("kv");
            seen.push((e.event_type(), kv.key_str().unwrap_or("?").to_string()));
            if e.event_type() == EventType::Delete {
                assert_eq!(e.prev_kv().map(|p| p.value().to_vec()), Some(b"x".to_vec()));
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

    let lease = c.lease_grant(30, None).await.expect("grant");
    c.put(
        "leased",
        "v",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .expect("put with lease");
    let ttl = c
        .lease_time_to_live(
            lease.id(),
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("ttl");
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    let (mut keeper, mut answers) = c.lease_keep_alive(lease.id()).await.expect("keepalive");
    keeper.keep_alive().await.expect("send");
    let a = answers.message().await.expect("answer").expect("one");
    assert_eq!(a.ttl(), 30);
    c.lease_revoke(lease.id()).await.expect("revoke");
    assert!(c.get("leased", None).await.expect("get").kvs().is_empty());

    let members = c.member_list().await.expect("members");
    assert_eq!(members.members().len(), 1);
    let status = c.status().await.expect("status");
    assert_eq!(
        status.leader(),
        status.header().map(|h| h.member_id()).unwrap_or(0)
    );
    let cur = status.header().map(|h| h.revision()).unwrap_or(0);
    c.compact(cur, None).await.expect("compact");
    let err = c
        .get("a/", Some(GetOptions::new().with_revision(2)))
        .await
        .expect_err("compacted");
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{err}"
    );
}
