//! A request a follower forwards to its leader and loses on the way is sent again, and a
//! copy that reaches the leader after the original is not applied twice
//! (`kvstore::node::resend`). A 3-member loopback cluster whose members take their network
//! failpoints over HTTP (`FAILPOINTS_HTTP`; the test build has the `failpoints` feature):
//! the follower's raft messages are dropped for a while, then delayed, while a put goes
//! through it. kvstore only: etcd has neither the failpoints nor the resending (its client
//! waits out the request timeout).

use crate::common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Kind;
use common::cluster::Cluster;
use kvstore::proto::etcdserverpb::{PutRequest, RangeRequest, kv_client::KvClient};
use tonic::transport::Channel;

/// Arms (`PUT`, with `actions`) or disarms (`DELETE`) failpoint `name` on the control
/// address `addr`.
fn control(addr: &str, method: &str, name: &str, actions: &str) {
    let mut s = std::net::TcpStream::connect(addr).expect("failpoint control");
    let req = format!(
        "{method} /{name} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: \
         {}\r\n\r\n{actions}",
        actions.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    assert!(out.starts_with("HTTP/1.1 204"), "{method} /{name}: {out}");
}

fn channel(c: &Cluster, i: usize) -> Channel {
    Channel::from_shared(c.members[i].url())
        .expect("url")
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

/// Puts `key` through member `via` while its raft messages suffer `fault` (a failpoint
/// action on `raftDropSend` or `raftDelaySend`) for `lasting`; the put must succeed, and the
/// key must have been written once (version 1).
fn put_through_fault(c: &Cluster, control_addr: &str, via: usize, point: &str, fault: &str) {
    let key = format!("resend/{point}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        control(control_addr, "PUT", point, fault);
        let mut kv = KvClient::new(channel(c, via));
        let k = key.clone();
        let put = tokio::spawn(async move {
            kv.put(PutRequest {
                key: Bytes::from(k),
                value: Bytes::from_static(b"once"),
                ..Default::default()
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        control(control_addr, "DELETE", point, "");
        let r = put.await.expect("put task");
        assert!(
            r.is_ok(),
            "{point}={fault}: the put through the follower failed: {r:?}"
        );
        // Settled: every copy that could arrive has arrived.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for i in 0..3 {
            let got = KvClient::new(channel(c, i))
                .range(RangeRequest {
                    key: Bytes::from(key.clone()),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner();
            let kv = got.kvs.first().expect("the key");
            assert_eq!(
                kv.version, 1,
                "{point}={fault}: member {i}: the put was applied {} times",
                kv.version
            );
        }
    });
}

#[test]
fn a_forwarded_request_lost_or_late_is_applied_once() {
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let setup_addrs = addrs.clone();
    let mut c = Cluster::launch(
        Kind::Kvstore,
        3,
        &[],
        Arc::new(move |i, p: &mut common::Proc| {
            p.env
                .push(("FAILPOINTS_HTTP".into(), setup_addrs[i].clone()));
        }),
    );
    c = c.ready_all();
    let leader = c.wait_leader(Duration::from_secs(20));
    let f = (leader + 1) % 3;
    // Lost: every message the follower sends is dropped for 700 ms, its forwarded put and
    // the first copy sent again with them. Without sending again, the put waits until the
    // request timeout and fails.
    put_through_fault(&c, &addrs[f], f, "raftDropSend", "return");
    // Late: the follower's messages arrive 1.5 s late, the copy sent again after the
    // original. Without the leader's memory of what it appended, both would be applied.
    let leader = c.wait_leader(Duration::from_secs(20));
    let f = (leader + 1) % 3;
    put_through_fault(&c, &addrs[f], f, "raftDelaySend", "return(1500)");
}
