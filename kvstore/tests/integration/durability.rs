//! Durability: a member killed with SIGKILL in the middle of a stream of acknowledged
//! writes loses none of them; leases still expire after a restart; SIGTERM exits cleanly.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Kind, Proc};
use kvstore::client::{Client, req};

async fn client(p: &Proc) -> Client {
    Client::connect([p.endpoint()], None)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    // A short log: truncations (and their background deletes) happen during the stream.
    let mut p = Proc::start_with(Kind::Kvstore, &["--snapshot-count", "200"]);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let c = client(&p).await;
        let (stop, count) = (stop.clone(), count.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}/{i:08}");
                match tokio::time::timeout(Duration::from_secs(2), c.put_kv(&key, i.to_string()))
                    .await
                {
                    Ok(Ok(_)) => {
                        acked.push((key, i.to_string()));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
                i += 1;
            }
            acked
        }));
    }
    // Killed mid-stream once enough writes are acknowledged that the log was truncated
    // (200 applied + 200 kept) several times, however fast this machine is today.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) < 1200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.kill();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(
        acked.len() > 1000,
        "only {} writes acknowledged before the kill",
        acked.len()
    );

    p.restart();
    let c = client(&p).await;
    let got = c.get_prefix("w").await.expect("get");
    let stored: std::collections::HashMap<String, String> = got
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    common::assert_none_lost("", &acked, |(k, v)| stored.get(k) == Some(v));
    // The revision continues from where it was: no write re-applied twice.
    let r = c.get("w0/00000000").await.expect("get");
    assert_eq!(r.kvs[0].version, 1);
    assert!(r.header.map(|h| h.revision).unwrap_or(0) > acked.len() as i64);
}

#[tokio::test]
async fn lease_expiry_after_restart_and_clean_sigterm() {
    let mut p = Proc::start(Kind::Kvstore);
    let c = client(&p).await;
    let short = c.lease_grant(3).await.expect("grant").id;
    let long = c.lease_grant(3600).await.expect("grant").id;
    for (key, lease) in [("short", short), ("long", long)] {
        let mut put = req::put(key, "v");
        put.lease = lease;
        c.put(put).await.expect("put");
    }
    p.kill();
    p.restart();
    let c = client(&p).await;
    let start = Instant::now();
    loop {
        let r = c.get("short").await.expect("get");
        if r.kvs.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lease never expired after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get("long").await.expect("get").kvs.len(), 1);
    let ttl = c.lease_time_to_live(long, false).await.expect("ttl");
    assert_eq!(ttl.granted_ttl, 3600);

    assert_eq!(p.terminate(), Some(0), "SIGTERM exits 0: {}", p.log());
    p.restart();
    let c = client(&p).await;
    assert_eq!(c.get("long").await.expect("get").kvs.len(), 1);
}

/// A member whose data dir disappears under it stops on the storage error, and the process
/// exits non-zero instead of waiting forever on its final flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_data_dir_stops_the_member_and_exits() {
    let mut p = Proc::start(Kind::Kvstore);
    let c = client(&p).await;
    std::fs::remove_dir_all(p.data_dir()).expect("delete the data dir");
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if c.put_kv(format!("k{w}-{i}"), [b'v'; 256]).await.is_err() {
                    break;
                }
                i += 1;
            }
        }));
    }
    // The backend refuses to write once its file is gone (and the journal fails once it needs
    // a new segment); the writes make it write.
    let deadline = Instant::now() + Duration::from_secs(90);
    while p.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let code = p.wait_exit(Duration::from_secs(20));
    assert!(
        code.is_some_and(|c| c != 0),
        "the member should have exited non-zero on its own, got {code:?}"
    );
}
