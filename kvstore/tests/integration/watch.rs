//! Watch semantics over one gRPC stream, against kvstore and etcd 3.4: several watchers on
//! one stream, filters, prev_kv, a transaction's revision delivered whole, progress
//! requests, cancel; and (kvstore) a watcher that never reads does not hold back writers or
//! other watchers.

use crate::against_both_async;
use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::Proc;
use kvstore::proto::etcdserverpb::{
    PutRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, kv_client::KvClient, request_op,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
};
use kvstore::proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tonic::transport::Channel;

async fn channel(p: &Proc) -> Channel {
    Channel::from_shared(p.url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn create(key: &str, end: &str, f: impl FnOnce(&mut WatchCreateRequest)) -> WatchRequest {
    let mut c = WatchCreateRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    };
    f(&mut c);
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(c)),
    }
}

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl Stream {
    /// Opens a stream whose first request is `first` (etcd sends the response headers only
    /// with the first response, so the first request must go out before waiting on them).
    async fn open(p: &Proc, first: WatchRequest) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("send");
        let resp = WatchClient::new(channel(p).await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch");
        Stream {
            tx,
            rx: resp.into_inner(),
        }
    }

    async fn send(&self, r: WatchRequest) {
        self.tx.send(r).await.expect("send");
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a watch response within 10s")
            .expect("stream ok")
            .expect("stream open")
    }
}

async fn many_watchers_one_stream(p: &Proc) {
    let mut kv = KvClient::new(channel(p).await);
    let put = |k: &str, v: &str| PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    };
    let mut s = Stream::open(p, create("a", "b", |_| {})).await;
    let c0 = s.next().await;
    assert!(c0.created && c0.watch_id == 0, "{c0:?}");
    s.send(create("a", "b", |c| {
        c.filters = vec![FilterType::Noput as i32];
        c.prev_kv = true;
    }))
    .await;
    let c1 = s.next().await;
    assert!(c1.created && c1.watch_id == 1, "{c1:?}");

    kv.put(put("a1", "x")).await.expect("put");
    let txn = TxnRequest {
        success: ["a2", "a3", "zz"]
            .iter()
            .map(|k| RequestOp {
                request: Some(request_op::Request::RequestPut(put(k, "t"))),
            })
            .collect(),
        ..Default::default()
    };
    kv.txn(txn).await.expect("txn");
    kv.delete_range(kvstore::proto::etcdserverpb::DeleteRangeRequest {
        key: b("a1"),
        ..Default::default()
    })
    .await
    .expect("delete");

    // Watcher 0: three revisions; the txn's two matching puts arrive in one response.
    let mut w0 = Vec::new();
    while w0.len() < 4 {
        let r = s.next().await;
        if r.watch_id == 1 {
            // Watcher 1 only sees the delete, with its previous value.
            assert_eq!(r.events.len(), 1, "{r:?}");
            assert_eq!(r.events[0].r#type, EventType::Delete as i32);
            assert_eq!(
                r.events[0].prev_kv.as_ref().map(|kv| kv.value.clone()),
                Some(b("x"))
            );
            continue;
        }
        assert_eq!(r.watch_id, 0);
        let revs: Vec<i64> = r
            .events
            .iter()
            .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
            .collect();
        if revs.contains(&3) {
            assert_eq!(
                revs.iter().filter(|r| **r == 3).count(),
                2,
                "a revision is never split: {r:?}"
            );
        }
        w0.extend(r.events);
    }
    let keys: Vec<Bytes> = w0
        .iter()
        .filter_map(|e| e.kv.as_ref().map(|kv| kv.key.clone()))
        .collect();
    assert_eq!(keys, [b("a1"), b("a2"), b("a3"), b("a1")]);

    s.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await;
    let mut progress = s.next().await;
    while progress.watch_id == 1 {
        progress = s.next().await;
    }
    assert_eq!(progress.watch_id, -1, "{progress:?}");
    assert_eq!(progress.header.map(|h| h.revision), Some(4));

    s.send(WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 0,
        })),
    })
    .await;
    let cancel = s.next().await;
    assert!(cancel.canceled && cancel.watch_id == 0, "{cancel:?}");
    kv.put(put("a9", "after")).await.expect("put");
    // Only watcher 1 remains, and it filters puts: a future start revision still works.
    s.send(create("a9", "", |c| c.start_revision = 6)).await;
    let c2 = s.next().await;
    assert!(c2.created, "{c2:?}");
    kv.put(put("a9", "later")).await.expect("put");
    let r = s.next().await;
    assert_eq!(r.watch_id, c2.watch_id);
    assert_eq!(
        r.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(b("later"))
    );
}

against_both_async!(many_watchers_one_stream);

/// A watcher whose client never reads must not slow writers or other watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_blocks_nobody() {
    let p = Proc::start(common::Kind::Kvstore);
    let mut stalled = Stream::open(&p, create("s/", "s0", |_| {})).await;
    assert!(stalled.next().await.created);
    let mut live = Stream::open(&p, create("s/", "s0", |_| {})).await;
    assert!(live.next().await.created);

    let mut kv = KvClient::new(channel(&p).await);
    let value = Bytes::from(vec![b'v'; 16 * 1024]);
    let n = 2000;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            kv.put(PutRequest {
                key: Bytes::from(format!("s/{i:05}")),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .expect("put");
        }
    });
    let mut seen = 0;
    while seen < n {
        seen += live.next().await.events.len();
    }
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer finished while a watcher stalled")
        .expect("writer");
    // The stalled watcher still gets everything, in order, once it reads.
    let mut next_rev = 2;
    while next_rev < 2 + n as i64 {
        for e in stalled.next().await.events {
            let rev = e.kv.map(|kv| kv.mod_revision).unwrap_or_default();
            assert_eq!(rev, next_rev, "events in revision order");
            next_rev += 1;
        }
    }
}

/// `--max-concurrent-streams 2`: a connection's third watch stream waits until one of the two
/// open ones ends. The same on etcd and on kvstore.
async fn stream_limit_per_connection(kind: common::Kind) {
    let p = Proc::start_with(kind, &["--max-concurrent-streams", "2"]);
    let ch = channel(&p).await;
    let open = |ch: Channel| async move {
        let (tx, rx) = mpsc::channel(4);
        tx.send(create("m/", "", |_| {}))
            .await
            .expect("queue create");
        let mut rx = WatchClient::new(ch)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let first = rx.message().await.expect("created").expect("a response");
        assert!(first.created);
        (tx, rx)
    };
    let a = open(ch.clone()).await;
    let _b = open(ch.clone()).await;
    let third = tokio::spawn(open(ch.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!third.is_finished(), "a third stream opened past the limit");
    drop(a);
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third stream opens once one ends")
        .expect("task");
}

#[tokio::test]
async fn stream_limit_per_connection_kvstore() {
    stream_limit_per_connection(common::Kind::Kvstore).await;
}

#[tokio::test]
async fn stream_limit_per_connection_etcd() {
    stream_limit_per_connection(common::Kind::Etcd).await;
}
