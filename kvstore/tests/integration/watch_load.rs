//! Watchers under load. Those that start far back walk the history in bounded steps, one
//! catch-up step at a time, releasing the keyspace between them: 50 watchers replaying 200,000
//! revisions on an idle key leave the latency of puts where it was (p99 within 2x of the figure
//! with no watchers). Watch streams whose client stopped reading cost a small bounded queue
//! each: thousands of them leave another client's puts and watches working and the member's
//! memory nearly where it was.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Kind, Proc};
use kvstore::client::{Client, req};
use kvstore::proto::etcdserverpb::watch_client::WatchClient;
use kvstore::proto::etcdserverpb::{WatchRequest, watch_request::RequestUnion};
use tokio::sync::mpsc;

const HISTORY: usize = 200_000;
const WATCHERS: usize = 50;

/// Latencies of sequential puts, until `n` are taken or `stop` is set (and at least `min`).
async fn put_latencies(client: &Client, n: usize, min: usize, stop: &AtomicBool) -> Vec<Duration> {
    let mut out = Vec::new();
    while out.len() < n && (out.len() < min || !stop.load(Ordering::Acquire)) {
        let t = Instant::now();
        client
            .put(req::put("/probe", "x"))
            .await
            .expect("probe put");
        out.push(t.elapsed());
    }
    out
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    eprintln!(
        "  {} puts: p50 {:?} p90 {:?} p99 {:?} max {:?}",
        v.len(),
        v[v.len() / 2],
        v[v.len() * 9 / 10],
        v[(v.len() * 99 / 100).min(v.len() - 1)],
        v[v.len() - 1]
    );
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_back_watchers_leave_put_latency_alone() {
    let p = Proc::start(Kind::Kvstore);
    let client = Client::connect([p.endpoint()], None).await.expect("client");

    // The history: 200,000 revisions on busy keys, from 64 writers at once.
    let started = Instant::now();
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let c = client.clone();
            tokio::spawn(async move {
                for i in (w..HISTORY).step_by(64) {
                    c.put(req::put(format!("/busy/{}", i % 1000), "v"))
                        .await
                        .expect("history put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    eprintln!(
        "{HISTORY} revisions written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let never = AtomicBool::new(false);
    let no_watchers = p99(put_latencies(&client, 1000, 1000, &never).await);
    // The idle figure: the same 50 watchers made the same way, watching from now (nothing to
    // replay). Then the watchers that replay the whole history.
    let (idle, _) = watched_puts(&p, &client, "/idle-now", 0).await;
    let (busy, replay) = watched_puts(&p, &client, "/idle", 1).await;
    let (idle, during, busy) = (p99(idle), busy.len(), p99(busy));
    eprintln!(
        "put p99: {no_watchers:?} without watchers, {idle:?} with {WATCHERS} watchers from now, \
         {busy:?} while {WATCHERS} watchers replayed {HISTORY} revisions ({during} puts in {:.2} s)",
        replay.as_secs_f64()
    );
    assert!(
        busy <= idle * 2,
        "put p99 {busy:?} while watchers replay, {idle:?} idle"
    );
}

/// Times puts from before 50 watchers of `key` (from `start_revision`; 0: from now) are
/// created, on a connection of their own, until each has seen the one event written on `key`
/// once they all exist; at least 1,000 puts. The latencies and how long the watchers took.
async fn watched_puts(
    p: &Proc,
    client: &Client,
    key: &'static str,
    start_revision: i64,
) -> (Vec<Duration>, Duration) {
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let prober = {
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move { put_latencies(&client, 1_000_000, 1000, &done).await })
    };
    let watching = Client::connect([p.endpoint()], None).await.expect("client");
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        streams.push(
            watching
                .watch(req::watch(key, start_revision))
                .await
                .expect("watch"),
        );
    }
    client.put(req::put(key, "at last")).await.expect("key put");
    let replays: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                loop {
                    let resp = s.message().await.expect("watch").expect("stream open");
                    if !resp.events.is_empty() {
                        return;
                    }
                }
            })
        })
        .collect();
    for r in replays {
        tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("the watchers caught up")
            .expect("replay task");
    }
    let took = started.elapsed();
    done.store(true, Ordering::Release);
    (prober.await.expect("prober"), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_stalled_watch_streams_cost_little() {
    const STALLED: usize = 2000;
    const PUTS: usize = 1000;
    let mut p = Proc::start(Kind::Kvstore);
    let before = p.rss_kib();

    // One client opens 2,000 watch streams on one connection, each watching the prefix the
    // other client writes, and never reads a response.
    let stalled_conn = tonic::transport::Channel::from_shared(p.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut held = Vec::new();
    for _ in 0..STALLED {
        let (tx, rx) = mpsc::channel::<WatchRequest>(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(req::watch_prefix("/load/", 0))),
        };
        tx.send(create).await.expect("queue create");
        let resp = WatchClient::new(stalled_conn.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open a watch stream");
        held.push((tx, resp.into_inner()));
    }

    // The other client: a watch that reads, and 1,000 puts of 1 KiB.
    let client = Client::connect([p.endpoint()], None).await.expect("client");
    let mut live = client
        .watch(req::watch_prefix("/load/", 0))
        .await
        .expect("live watch");
    let started = Instant::now();
    let value = vec![b'v'; 1024];
    for i in 0..PUTS {
        client
            .put(req::put(format!("/load/{i:05}"), &value))
            .await
            .expect("put while streams stall");
    }
    let puts_took = started.elapsed();
    let mut seen = 0;
    while seen < PUTS {
        let resp = tokio::time::timeout(Duration::from_secs(30), live.message())
            .await
            .expect("the live watcher is served")
            .expect("watch")
            .expect("stream open");
        seen += resp.events.len();
    }
    assert_eq!(seen, PUTS);
    let after = p.rss_kib();
    eprintln!(
        "{STALLED} stalled streams: {PUTS} puts in {:.2} s; resident {before} KiB before, {after} KiB after",
        puts_took.as_secs_f64()
    );
    // Unbounded queues would hold every event for every stream: 2 GB here.
    assert!(
        after < before + 128 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    assert!(p.is_running(), "the member exited");
    drop(held);
}
