//! Bad input: each error is asserted with its gRPC code and exact message, against
//! kvstore and against etcd 3.4, so the strings clients match on are etcd's.

use crate::against_both_async;
use crate::common;

use bytes::Bytes;
use common::Proc;
use kvstore::proto::etcdserverpb::{
    CompactionRequest, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    kv_client::KvClient, lease_client::LeaseClient, request_op,
};
use tonic::Code;
use tonic::transport::Channel;

async fn channel(p: &Proc) -> Channel {
    Channel::from_shared(p.url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} {msg:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "code for {msg:?} (got message {:?})",
                s.message()
            );
            assert_eq!(s.message(), msg);
        }
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, "v"))),
    }
}

async fn kv_errors(p: &Proc) {
    let mut kv = KvClient::new(channel(p).await).max_decoding_message_size(64 << 20);
    const EMPTY: &str = "etcdserver: key is not provided";
    expect_err(
        kv.range(RangeRequest::default()).await,
        Code::InvalidArgument,
        EMPTY,
    );
    expect_err(kv.put(put("", "v")).await, Code::InvalidArgument, EMPTY);
    expect_err(
        kv.range(RangeRequest {
            key: Bytes::from("k"),
            revision: 1000,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    expect_err(
        kv.put(PutRequest {
            ignore_value: true,
            ..put("absent", "")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    expect_err(
        kv.put(PutRequest {
            ignore_value: true,
            ..put("absent", "v")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    expect_err(
        kv.put(PutRequest {
            lease: 77,
            ..put("k", "v")
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let too_many = TxnRequest {
        success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
        ..Default::default()
    };
    expect_err(
        kv.txn(too_many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let dup = TxnRequest {
        success: vec![put_op("d"), put_op("d")],
        ..Default::default()
    };
    expect_err(
        kv.txn(dup).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            success,
            failure,
            ..Default::default()
        })),
    };
    let outer_and_nested = TxnRequest {
        success: vec![put_op("n"), nested(vec![put_op("n")], vec![])],
        ..Default::default()
    };
    expect_err(
        kv.txn(outer_and_nested).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let put_in_deleted = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    kvstore::proto::etcdserverpb::DeleteRangeRequest {
                        key: Bytes::from("p"),
                        range_end: Bytes::from("q"),
                        ..Default::default()
                    },
                )),
            },
            nested(vec![put_op("p1")], vec![]),
        ],
        ..Default::default()
    };
    expect_err(
        kv.txn(put_in_deleted).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // The two branches of one nested txn never both run: the same key in each is fine.
    let both_branches = TxnRequest {
        success: vec![nested(vec![put_op("m")], vec![put_op("m")])],
        ..Default::default()
    };
    kv.txn(both_branches)
        .await
        .expect("same key in then and else");
    let big = "x".repeat(1_600_000);
    expect_err(
        kv.put(put("big", &big)).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let huge = "x".repeat(3 << 20);
    let r = kv.put(put("huge", &huge)).await;
    let s = r.expect_err("over the gRPC limit");
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    assert!(
        s.message()
            .starts_with("grpc: received message larger than max ("),
        "{}",
        s.message()
    );

    // The store is untouched by all of the above; a good write still works.
    kv.put(put("k", "v")).await.expect("put");
    kv.put(put("k", "v2")).await.expect("put");
    kv.compact(CompactionRequest {
        revision: 3,
        physical: false,
    })
    .await
    .expect("compact");
    expect_err(
        kv.compact(CompactionRequest {
            revision: 3,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    expect_err(
        kv.compact(CompactionRequest {
            revision: 99,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    expect_err(
        kv.range(RangeRequest {
            key: Bytes::from("k"),
            revision: 2,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let got = kv
        .range(RangeRequest {
            key: Bytes::from("k"),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs[0].value.as_ref(), b"v2");
    // A value compare on a missing key fails; a version compare treats it as 0.
    let cmp = |target: compare::CompareTarget, u: compare::TargetUnion| Compare {
        key: Bytes::from("nokey"),
        target: target as i32,
        target_union: Some(u),
        ..Default::default()
    };
    let t = kv
        .txn(TxnRequest {
            compare: vec![cmp(
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(0),
            )],
            ..Default::default()
        })
        .await
        .expect("txn");
    assert!(t.into_inner().succeeded);
    let t = kv
        .txn(TxnRequest {
            compare: vec![cmp(
                compare::CompareTarget::Value,
                compare::TargetUnion::Value(Bytes::new()),
            )],
            ..Default::default()
        })
        .await
        .expect("txn");
    assert!(!t.into_inner().succeeded);
}

async fn lease_errors(p: &Proc) {
    let mut lease = LeaseClient::new(channel(p).await);
    expect_err(
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 5 })
        .await
        .expect("grant");
    expect_err(
        lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 5 })
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    expect_err(
        lease.lease_revoke(LeaseRevokeRequest { id: 6 }).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 6, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(
        (ttl.ttl, ttl.granted_ttl),
        (-1, 0),
        "unknown lease: TTL -1, no error"
    );
    let reqs = tokio_stream::iter(vec![
        LeaseKeepAliveRequest { id: 6 },
        LeaseKeepAliveRequest { id: 5 },
    ]);
    let mut answers = lease
        .lease_keep_alive(reqs)
        .await
        .expect("keepalive")
        .into_inner();
    let first = answers.message().await.expect("answer").expect("one");
    assert_eq!(
        (first.id, first.ttl),
        (6, 0),
        "unknown lease: TTL 0, no error"
    );
    let second = answers.message().await.expect("answer").expect("two");
    assert_eq!((second.id, second.ttl), (5, 60));
    assert!(
        second
            .header
            .is_some_and(|h| h.member_id != 0 && h.cluster_id != 0)
    );
}

against_both_async!(kv_errors, lease_errors);

/// RPCs kvstore does not serve answer Unimplemented rather than a wrong answer.
#[tokio::test]
async fn unserved_rpcs_are_unimplemented() {
    let p = Proc::start(common::Kind::Kvstore);
    let mut grpc = tonic::client::Grpc::new(channel(&p).await);
    let codec = tonic_prost::ProstCodec::<
        kvstore::proto::etcdserverpb::StatusRequest,
        kvstore::proto::etcdserverpb::StatusResponse,
    >::default();
    for path in ["/etcdserverpb.KV/NoSuchMethod"] {
        grpc.ready().await.expect("ready");
        let r = grpc
            .unary(
                tonic::Request::new(kvstore::proto::etcdserverpb::StatusRequest {}),
                http::uri::PathAndQuery::from_static(path),
                codec.clone(),
            )
            .await;
        assert_eq!(
            r.err().map(|s| s.code()),
            Some(Code::Unimplemented),
            "{path}"
        );
    }
}
