//! Alarms (Maintenance.Alarm) as etcd 3.4 has them, the same test code against kvstore and
//! etcd 3.4: an alarm raised through one member (over gRPC, as python-etcd3's alarm tests
//! raise one) is listed by every member, by `etcdctl alarm list`, in `endpoint status` and
//! by `/health`; an active NOSPACE refuses puts, txns with a put and lease grants with etcd's
//! code and message through every member while reads, deletes and lease revokes and
//! keep-alives go on; a restarted member still has it; `etcdctl alarm disarm` lifts it at
//! once. An active CORRUPT refuses every write and no read.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::Kind;
use common::cluster::Cluster;
use kvstore::client::{Client, req};
use kvstore::proto::etcdserverpb::{
    AlarmMember, AlarmType, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    alarm_request::AlarmAction, request_op,
};
use tonic::Code;

async fn client(endpoint: &str) -> Client {
    Client::connect(vec![endpoint], None)
        .await
        .expect("connect")
}

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
const CORRUPT: &str = "etcdserver: corrupt cluster";

/// Asserts `res` failed with gRPC `code` and `message`.
fn assert_refused<T: std::fmt::Debug>(
    kind: Kind,
    what: &str,
    res: kvstore::client::Result<T>,
    code: Code,
    message: &str,
) {
    match res {
        Err(kvstore::client::Error::Status(s)) => {
            assert_eq!((s.code(), s.message()), (code, message), "{kind:?}: {what}");
        }
        other => panic!("{kind:?}: {what}: expected {code:?} {message:?}, got {other:?}"),
    }
}

fn txn(success: Vec<request_op::Request>) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: success
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        failure: Vec::new(),
    }
}

fn put_op(key: &str) -> request_op::Request {
    request_op::Request::RequestPut(req::put(key, "v"))
}

fn delete_op(key: &str) -> request_op::Request {
    request_op::Request::RequestDeleteRange(DeleteRangeRequest {
        key: key.to_string().into(),
        ..Default::default()
    })
}

fn range_op(key: &str) -> request_op::Request {
    request_op::Request::RequestRange(RangeRequest {
        key: key.to_string().into(),
        ..Default::default()
    })
}

/// `/health` on loopback `port`: the status code and the body.
fn health(port: u16) -> (u16, String) {
    let (code, body) = common::http_get(port, "/health");
    (code, body.trim().to_string())
}

/// `Status.errors` of every member, from `etcdctl endpoint status --cluster -w json`.
fn status_errors(c: &mut Cluster) -> Vec<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(&c.ok(&["endpoint", "status", "--cluster", "-w", "json"]))
            .expect("status json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| {
            s["Status"]["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .map(|x| x.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Starts 3 members with `/health` on a metrics URL each; the cluster and those ports.
fn start(kind: Kind) -> (Cluster, Vec<u16>) {
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
    c.wait_leader(Duration::from_secs(10));
    (c, ports)
}

fn nospace(kind: Kind) {
    let (mut c, health_ports) = start(kind);
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    // Raised for member 1 (as its quota check would), through member 0.
    let raised_for = c.id(1);
    let alarm = AlarmMember {
        member_id: raised_for,
        alarm: AlarmType::Nospace as i32,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lease = rt.block_on(async {
        let first = client(&eps[0]).await;
        first.put_kv("before", "v").await.expect("put before");
        let lease = first.lease_grant(60).await.expect("grant before").id;
        let raised = first
            .alarm(AlarmAction::Activate, raised_for, AlarmType::Nospace)
            .await
            .expect("activate");
        assert_eq!(raised.alarms, vec![alarm], "{kind:?}");
        // etcd 3.4 answers Alarm without a header; kvstore sets one in every answer.
        if kind == Kind::Kvstore {
            let h = raised.header.expect("header");
            assert!(
                h.cluster_id != 0 && h.member_id != 0 && h.raft_term != 0,
                "{h:?}"
            );
        }
        // Raising it again answers it again; the list holds it once.
        let again = first
            .alarm(AlarmAction::Activate, raised_for, AlarmType::Nospace)
            .await
            .expect("activate again");
        assert_eq!(again.alarms, vec![alarm], "{kind:?}");

        for (i, ep) in eps.iter().enumerate() {
            let cl = client(ep).await;
            let all = cl.alarm(AlarmAction::Get, 0, AlarmType::None).await;
            assert_eq!(all.expect("get").alarms, vec![alarm], "{kind:?}: via {i}");
            let of_type = cl.alarm(AlarmAction::Get, 0, AlarmType::Nospace).await;
            assert_eq!(of_type.expect("get").alarms, vec![alarm], "{kind:?}");
            let none = cl.alarm(AlarmAction::Get, 0, AlarmType::Corrupt).await;
            assert_eq!(none.expect("get").alarms, vec![], "{kind:?}");

            // What would grow the store is refused through every member, alike.
            let put = cl.put(req::put(format!("k{i}"), "v")).await;
            assert_refused(kind, "put", put, Code::ResourceExhausted, NO_SPACE);
            let t = cl.txn(txn(vec![range_op("before"), put_op("t")])).await;
            assert_refused(kind, "txn put", t, Code::ResourceExhausted, NO_SPACE);
            let g = cl.lease_grant(60).await;
            assert_refused(kind, "grant", g, Code::ResourceExhausted, NO_SPACE);
            // A put in the branch that does not run counts too (etcd's `costTxn`).
            let mut failure_put = txn(vec![range_op("before")]);
            failure_put.failure = txn(vec![put_op("t")]).success;
            let t = cl.txn(failure_put).await;
            assert_refused(kind, "txn put", t, Code::ResourceExhausted, NO_SPACE);
            // Reads, deletes and txns without a put go on.
            let got = cl.get("before").await.expect("range");
            assert_eq!(got.kvs.len(), 1, "{kind:?}");
            let d = cl.delete_range(req::delete("missing")).await.expect("del");
            assert_eq!(d.deleted, 0, "{kind:?}");
            let t = cl
                .txn(txn(vec![range_op("before"), delete_op("missing")]))
                .await
                .expect("txn without a put");
            assert!(t.succeeded, "{kind:?}");
            let ttl = cl.lease_keep_alive_once(lease).await.expect("keep-alive");
            assert!(ttl > 0, "{kind:?}: {ttl}");
        }
        let d = first.delete_range(req::delete("before")).await;
        assert_eq!(d.expect("delete").deleted, 1, "{kind:?}");
        // etcd 3.4's `costTxn` does not look into nested txns: a put there goes through.
        let nested = request_op::Request::RequestTxn(txn(vec![put_op("nested")]));
        let t = first.txn(txn(vec![nested])).await.expect("nested put");
        assert!(t.succeeded, "{kind:?}");
        assert_eq!(first.get("nested").await.expect("get").kvs.len(), 1);
        lease
    });

    // etcdctl and endpoint status show it as etcd prints it; /health turns false.
    let line = format!("memberID:{raised_for} alarm:NOSPACE ");
    assert_eq!(c.ok(&["alarm", "list"]), format!("{line}\n"), "{kind:?}");
    let errors = status_errors(&mut c);
    assert_eq!(errors, vec![vec![line.clone()]; 3], "{kind:?}");
    for &p in &health_ports {
        assert_eq!(
            health(p),
            (503, "{\"health\":\"false\"}".to_string()),
            "{kind:?}"
        );
    }
    let err = c.members[2].fails(&["put", "k", "v"]);
    assert!(err.contains(NO_SPACE), "{kind:?}: {err}");

    // A restarted member still has it, and still refuses puts.
    c.members[2].terminate();
    c.members[2].launch();
    c.members[2].wait_ready();
    rt.block_on(async {
        let cl = client(&eps[2]).await;
        let all = cl.alarm(AlarmAction::Get, 0, AlarmType::None).await;
        assert_eq!(all.expect("get").alarms, vec![alarm], "{kind:?}");
        let put = cl.put(req::put("after-restart", "v")).await;
        assert_refused(kind, "put", put, Code::ResourceExhausted, NO_SPACE);
        // A lease revoke goes on.
        cl.lease_revoke(lease).await.expect("revoke");
    });

    // Disarmed: etcdctl prints what it lifted, and puts work at once through every member.
    assert_eq!(c.ok(&["alarm", "disarm"]), format!("{line}\n"), "{kind:?}");
    assert_eq!(c.ok(&["alarm", "list"]), "", "{kind:?}");
    assert_eq!(status_errors(&mut c), vec![Vec::<String>::new(); 3]);
    rt.block_on(async {
        for (i, ep) in eps.iter().enumerate() {
            let cl = client(ep).await;
            cl.put_kv(format!("k{i}"), "v").await.expect("put");
            cl.lease_grant(60).await.expect("grant");
            let all = cl.alarm(AlarmAction::Get, 0, AlarmType::None).await;
            assert_eq!(all.expect("get").alarms, vec![], "{kind:?}");
        }
        // Disarming what is not raised answers nothing.
        let cl = client(&eps[1]).await;
        let none = cl
            .alarm(AlarmAction::Deactivate, raised_for, AlarmType::Nospace)
            .await
            .expect("deactivate");
        assert_eq!(none.alarms, vec![], "{kind:?}");
    });
    for &p in &health_ports {
        assert_eq!(
            health(p),
            (200, "{\"health\":\"true\"}".to_string()),
            "{kind:?}"
        );
    }
}

#[test]
fn nospace_kvstore() {
    nospace(Kind::Kvstore);
}

#[test]
fn nospace_etcd() {
    nospace(Kind::Etcd);
}

fn corrupt(kind: Kind) {
    let p = common::Proc::start(kind);
    let ep = p.endpoint();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cl = client(&ep).await;
        cl.put_kv("k", "v").await.expect("put");
        let lease = cl.lease_grant(60).await.expect("grant").id;
        let id = cl
            .status()
            .await
            .expect("status")
            .header
            .expect("h")
            .member_id;
        let raised = cl
            .alarm(AlarmAction::Activate, id, AlarmType::Corrupt)
            .await
            .expect("activate");
        assert_eq!(raised.alarms.len(), 1, "{kind:?}");

        let put = cl.put(PutRequest {
            key: "k2".into(),
            ..Default::default()
        });
        assert_refused(kind, "put", put.await, Code::DataLoss, CORRUPT);
        let del = cl.delete_range(req::delete("k")).await;
        assert_refused(kind, "delete", del, Code::DataLoss, CORRUPT);
        let t = cl.txn(txn(vec![delete_op("k")])).await;
        assert_refused(kind, "txn delete", t, Code::DataLoss, CORRUPT);
        let g = cl.lease_grant(60).await;
        assert_refused(kind, "grant", g, Code::DataLoss, CORRUPT);
        let r = cl.lease_revoke(lease).await;
        assert_refused(kind, "revoke", r, Code::DataLoss, CORRUPT);
        let cp = cl.compact(2, false).await;
        assert_refused(kind, "compact", cp, Code::DataLoss, CORRUPT);
        // Reads go on: ranges and read-only txns.
        assert_eq!(cl.get("k").await.expect("range").kvs.len(), 1, "{kind:?}");
        let t = cl.txn(txn(vec![range_op("k")])).await.expect("read txn");
        assert!(t.succeeded, "{kind:?}");

        let lifted = cl
            .alarm(AlarmAction::Deactivate, id, AlarmType::Corrupt)
            .await
            .expect("deactivate");
        assert_eq!(lifted.alarms, raised.alarms, "{kind:?}");
        cl.put_kv("k2", "v").await.expect("put after");
        cl.lease_revoke(lease).await.expect("revoke after");
    });
}

#[test]
fn corrupt_kvstore() {
    corrupt(Kind::Kvstore);
}

#[test]
fn corrupt_etcd() {
    corrupt(Kind::Etcd);
}
