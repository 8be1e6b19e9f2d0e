//! Authentication and access control, the same test code against kvstore and etcd 3.4:
//! etcdctl's user, role and auth commands and what they print; what a user limited to a prefix,
//! a read-only user, root and a client without credentials may do once auth is on; a revoked
//! permission refusing the very next request; the checks on every branch of a txn, on watch
//! creation, on revoking a lease with another's keys and on membership changes; a login on one
//! member used on another; auth state kept across a restart; tokens of a deleted user or a
//! changed password refused.

use crate::common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{Kind, Proc};
use kvstore::client::{Client, ConnectOptions, req};
use kvstore::proto::etcdserverpb::{
    AuthenticateRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RequestOp, TxnRequest,
    WatchRequest, auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient,
    request_op, watch_client::WatchClient, watch_request,
};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;

pub(crate) const DENIED: &str = "Error: etcdserver: permission denied";
const NO_USER: &str = "Error: etcdserver: user name is empty";

/// Root, a role `app` with readwrite on the prefix `app/`, a role `reader` with read on the
/// prefix `cfg/`, alice (app) and bob (reader); auth enabled. Asserts etcdctl's words.
pub(crate) fn set_up(p: &Proc) {
    assert_eq!(
        p.ok(&["user", "add", "root:rootpw"]).trim(),
        "User root created"
    );
    // Without the root role on root, etcdctl's `auth enable` adds it (root role) and grants it.
    assert_eq!(p.ok(&["role", "add", "app"]).trim(), "Role app created");
    assert_eq!(
        p.ok(&[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix"
        ])
        .trim(),
        "Role app updated"
    );
    p.ok(&["role", "add", "reader"]);
    p.ok(&[
        "role",
        "grant-permission",
        "reader",
        "read",
        "cfg/",
        "--prefix",
    ]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["user", "add", "bob:bobpw"]);
    assert_eq!(
        p.ok(&["user", "grant-role", "alice", "app"]).trim(),
        "Role app is granted to user alice"
    );
    p.ok(&["user", "grant-role", "bob", "reader"]);
    p.ok(&["put", "cfg/a", "1"]);
    assert_eq!(p.ok(&["auth", "enable"]).trim(), "Authentication Enabled");
}

fn as_user(user: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![format!("--user={user}")];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn ok_as(p: &Proc, user: &str, args: &[&str]) -> String {
    let v = as_user(user, args);
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    p.ok(&v)
}

fn fails_as(p: &Proc, user: &str, args: &[&str]) -> String {
    let v = as_user(user, args);
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    last_line(&p.fails(&v))
}

/// etcdctl's error line: the last line of stderr (etcd's client logs its retries above it).
pub(crate) fn last_line(stderr: &str) -> String {
    stderr.trim().lines().last().unwrap_or_default().to_string()
}

fn etcdctl_auth_commands_and_access(p: &Proc) {
    // Enabling needs a root user.
    assert_eq!(
        last_line(&p.fails(&["auth", "enable"])),
        "Error: etcdserver: root user does not exist"
    );
    set_up(p);
    const ROOT: &str = "root:rootpw";
    const ALICE: &str = "alice:alicepw";
    const BOB: &str = "bob:bobpw";

    // No credentials: every KV request is refused.
    assert_eq!(last_line(&p.fails(&["put", "x", "1"])), NO_USER);
    assert_eq!(last_line(&p.fails(&["get", "cfg/a"])), NO_USER);
    // Wrong password.
    assert_eq!(
        fails_as(p, "alice:nope", &["get", "app/k"]),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    // Root may do anything.
    assert_eq!(ok_as(p, ROOT, &["put", "x", "1"]).trim(), "OK");
    // Alice: read-write on app/ only.
    assert_eq!(ok_as(p, ALICE, &["put", "app/k", "v"]).trim(), "OK");
    assert_eq!(ok_as(p, ALICE, &["get", "app/k"]), "app/k\nv\n");
    assert_eq!(
        ok_as(p, ALICE, &["get", "app/", "--prefix", "--keys-only"]),
        "app/k\n\n"
    );
    assert_eq!(fails_as(p, ALICE, &["put", "cfg/a", "2"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["get", "x"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["get", "a", "--prefix"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["del", "app/", "--from-key"]), DENIED);
    assert_eq!(ok_as(p, ALICE, &["del", "app/", "--prefix"]).trim(), "1");
    // Bob: read-only on cfg/.
    assert_eq!(ok_as(p, BOB, &["get", "cfg/a"]), "cfg/a\n1\n");
    assert_eq!(
        ok_as(p, BOB, &["get", "cfg/", "--prefix", "--print-value-only"]),
        "1\n"
    );
    assert_eq!(fails_as(p, BOB, &["put", "cfg/a", "3"]), DENIED);
    assert_eq!(fails_as(p, BOB, &["del", "cfg/a"]), DENIED);
    assert_eq!(fails_as(p, BOB, &["get", "cfg", "--prefix"]), DENIED);
    // Auth management is root's; a user may read its own record and its roles.
    assert_eq!(fails_as(p, ALICE, &["role", "list"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["user", "list"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["user", "add", "eve:evepw"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["user", "get", "bob"]), DENIED);
    assert_eq!(
        ok_as(p, ALICE, &["user", "get", "alice"]),
        "User: alice\nRoles: app\n"
    );
    assert_eq!(
        ok_as(p, ALICE, &["role", "get", "app"]),
        "Role app\nKV Read:\n\t[app/, app0) (prefix app/)\nKV Write:\n\t[app/, app0) (prefix app/)\n"
    );
    assert_eq!(fails_as(p, ALICE, &["role", "get", "reader"]), DENIED);
    assert_eq!(ok_as(p, ROOT, &["user", "list"]), "alice\nbob\nroot\n");
    assert_eq!(ok_as(p, ROOT, &["role", "list"]), "app\nreader\nroot\n");
    assert_eq!(
        ok_as(p, ROOT, &["role", "get", "reader"]),
        "Role reader\nKV Read:\n\t[cfg/, cfg0) (prefix cfg/)\nKV Write:\n"
    );
    // Refusals in etcd's words.
    assert_eq!(
        fails_as(p, ROOT, &["user", "delete", "root"]),
        "Error: etcdserver: invalid auth management"
    );
    assert_eq!(
        fails_as(p, ROOT, &["role", "delete", "root"]),
        "Error: etcdserver: invalid auth management"
    );
    assert_eq!(
        fails_as(p, ROOT, &["user", "add", "alice:x"]),
        "Error: etcdserver: user name already exists"
    );
    assert_eq!(
        fails_as(p, ROOT, &["user", "grant-role", "alice", "nope"]),
        "Error: etcdserver: role name not found"
    );
    assert_eq!(
        fails_as(p, ROOT, &["user", "revoke-role", "alice", "reader"]),
        "Error: etcdserver: role is not granted to the user"
    );
    assert_eq!(
        fails_as(p, ROOT, &["role", "revoke-permission", "app", "zzz"]),
        "Error: etcdserver: permission is not granted to the role"
    );
    assert_eq!(
        fails_as(p, ROOT, &["user", "get", "nobody"]),
        "Error: etcdserver: user name not found"
    );

    // A revoked permission refuses the very next request.
    assert_eq!(
        ok_as(
            p,
            ROOT,
            &["role", "revoke-permission", "app", "app/", "--prefix"]
        )
        .trim(),
        "Permission of range [app/, app0) is revoked from role app"
    );
    assert_eq!(fails_as(p, ALICE, &["put", "app/k", "v"]), DENIED);
    assert_eq!(fails_as(p, ALICE, &["get", "app/k"]), DENIED);
    // And a granted one allows it at once; a revoked role likewise.
    ok_as(
        p,
        ROOT,
        &["role", "grant-permission", "app", "write", "app/k"],
    );
    assert_eq!(ok_as(p, ALICE, &["put", "app/k", "v2"]).trim(), "OK");
    assert_eq!(fails_as(p, ALICE, &["get", "app/k"]), DENIED);
    ok_as(p, ROOT, &["user", "revoke-role", "alice", "app"]);
    assert_eq!(fails_as(p, ALICE, &["put", "app/k", "v3"]), DENIED);
    // A new password: the old one no longer logs in.
    ok_as(p, ROOT, &["user", "passwd", "bob", "--interactive=false"]);
    // (--interactive=false reads the new password from stdin: empty here.)
    assert_eq!(
        fails_as(p, BOB, &["get", "cfg/a"]),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );

    // Disabled again: anyone may do anything.
    assert_eq!(
        ok_as(p, ROOT, &["auth", "disable"]).trim(),
        "Authentication Disabled"
    );
    assert_eq!(p.ok(&["put", "x", "2"]).trim(), "OK");
    assert_eq!(p.ok(&["user", "list"]), "alice\nbob\nroot\n");
}

pub(crate) fn err_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Err(s) => (s.code(), s.message().to_string()),
        Ok(v) => panic!("unexpectedly succeeded: {v:?}"),
    }
}

/// A request carrying `token`.
pub(crate) fn with_token<T>(msg: T, token: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("token", token.clone());
    r
}

async fn login(
    endpoint: &str,
    name: &str,
    password: &str,
) -> Result<AsciiMetadataValue, tonic::Status> {
    let mut auth = AuthClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connect");
    let resp = auth
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await?;
    Ok(resp.into_inner().token.parse().expect("ascii token"))
}

async fn txn_watch_lease_and_tokens(p: &Proc) {
    set_up(p);
    let ep = p.endpoint();
    let alice = login(&ep, "alice", "alicepw").await.expect("login");
    let root = login(&ep, "root", "rootpw").await.expect("login");
    let mut kv = KvClient::connect(format!("http://{ep}"))
        .await
        .expect("connect");

    // Every branch of a txn is checked, the one not taken too.
    let op = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(req::put(key, "v"))),
    };
    let txn = |success: &str, failure: &str| TxnRequest {
        compare: vec![],
        success: vec![op(success)],
        failure: vec![op(failure)],
    };
    kv.txn(with_token(txn("app/1", "app/2"), &alice))
        .await
        .expect("txn in app/");
    assert_eq!(
        err_of(kv.txn(with_token(txn("app/1", "other"), &alice)).await),
        (
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        ),
    );
    // A compare on a key the user may not read.
    let mut cmp_txn = txn("app/1", "app/2");
    cmp_txn.compare = vec![req::version_is(
        "cfg/a",
        kvstore::proto::etcdserverpb::compare::CompareResult::Greater,
        0,
    )];
    assert_eq!(
        err_of(kv.txn(with_token(cmp_txn, &alice)).await).0,
        Code::PermissionDenied
    );

    // A watch the user may not make is created and cancelled at once, with etcd's reason.
    let mut watch = WatchClient::connect(format!("http://{ep}"))
        .await
        .expect("connect");
    for (key, ok) in [("app/", true), ("cfg/", false)] {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                req::watch_prefix(key, 0),
            )),
        })
        .await
        .expect("send");
        let mut stream = watch
            .watch(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &alice,
            ))
            .await
            .expect("watch")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
            .expect("message")
            .expect("a response");
        assert!(first.created, "{key}: {first:?}");
        if ok {
            assert!(!first.canceled, "{key}: {first:?}");
        } else {
            assert!(first.canceled, "{key}: {first:?}");
            assert_eq!(first.watch_id, -1);
            assert_eq!(
                first.cancel_reason,
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            );
        }
        drop(tx);
    }

    // A lease with a key alice may not write: she may neither revoke it nor attach it.
    let mut lease = LeaseClient::connect(format!("http://{ep}"))
        .await
        .expect("connect");
    let id = lease
        .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0 }, &alice))
        .await
        .expect("grant")
        .into_inner()
        .id;
    kv.put(with_token(
        PutRequest {
            lease: id,
            ..req::put("cfg/leased", "v")
        },
        &root,
    ))
    .await
    .expect("root attaches");
    assert_eq!(
        err_of(
            lease
                .lease_revoke(with_token(LeaseRevokeRequest { id }, &alice))
                .await
        )
        .0,
        Code::PermissionDenied
    );
    assert_eq!(
        err_of(
            kv.put(with_token(
                PutRequest {
                    lease: id,
                    ..req::put("app/leased", "v")
                },
                &alice
            ))
            .await
        )
        .0,
        Code::PermissionDenied
    );
    lease
        .lease_revoke(with_token(LeaseRevokeRequest { id }, &root))
        .await
        .expect("root revokes");

    // A token that is not one, and the token of a deleted user.
    // (etcd waits for the raft index a simple token names before it judges it: index 1 has
    // long been applied.)
    let bogus: AsciiMetadataValue = "nonsense.1".parse().expect("ascii");
    assert_eq!(
        err_of(kv.put(with_token(req::put("app/x", "v"), &bogus)).await),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
    let bob = login(&ep, "bob", "bobpw").await.expect("login");
    kv.range(with_token(req::get("cfg/a"), &bob))
        .await
        .expect("bob reads");
    p.ok(&["--user=root:rootpw", "user", "delete", "bob"]);
    let (code, _) = err_of(kv.range(with_token(req::get("cfg/a"), &bob)).await);
    assert!(
        matches!(code, Code::Unauthenticated | Code::PermissionDenied),
        "{code:?}"
    );
    // Membership changes need root.
    let c = Client::connect(
        vec![ep.as_str()],
        Some(ConnectOptions::new().with_user("alice", "alicepw")),
    )
    .await
    .expect("connect as alice");
    let e = c
        .member_update(0, vec!["http://127.0.0.1:1".into()])
        .await
        .expect_err("alice may not update members");
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e:?}");
    // Logins with etcd's errors.
    assert_eq!(
        err_of(login(&ep, "alice", "wrong").await),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );
    assert_eq!(
        err_of(login(&ep, "nobody", "x").await).0,
        Code::InvalidArgument
    );
}

/// The etcdctl suite in its own module: both macros name their modules `on_kvstore`/`on_etcd`.
mod cli {
    use super::etcdctl_auth_commands_and_access;
    crate::against_both!(etcdctl_auth_commands_and_access);
}
crate::against_both_async!(txn_watch_lease_and_tokens);

/// Three members: users and roles made through one member apply on all, a login on one member
/// works on another, and all of it survives a restart of the whole cluster.
fn replicated_and_durable(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let eps = c.endpoints();
    let first = eps.split(',').next().expect("endpoint").to_string();
    let ctl = |c: &mut Cluster, args: &[&str]| c.ok(args);
    ctl(&mut c, &["user", "add", "root:rootpw"]);
    ctl(&mut c, &["role", "add", "app"]);
    ctl(
        &mut c,
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
    );
    ctl(&mut c, &["user", "add", "alice:alicepw"]);
    ctl(&mut c, &["user", "grant-role", "alice", "app"]);
    ctl(&mut c, &["auth", "enable"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let others: Vec<String> = eps.split(',').skip(1).map(str::to_string).collect();
    rt.block_on(async {
        let token = login(strip(&first), "alice", "alicepw")
            .await
            .expect("login");
        // The same token on the other members (once they applied the login).
        for ep in &others {
            let mut kv = KvClient::connect(format!("http://{}", strip(ep)))
                .await
                .expect("connect");
            let mut tries = 0;
            loop {
                match kv.put(with_token(req::put("app/k", "v"), &token)).await {
                    Ok(_) => break,
                    Err(s) if s.code() == Code::Unauthenticated && tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(s) => panic!("{kind:?}: {ep}: {s:?}"),
                }
            }
            assert_eq!(
                err_of(kv.put(with_token(req::put("zz", "v"), &token)).await).0,
                Code::PermissionDenied
            );
        }
    });
    // The whole cluster down and up again; readiness is asked as root (etcdctl's health check
    // counts "user name is empty" as unhealthy).
    for m in &mut c.members {
        m.kill();
    }
    for m in &mut c.members {
        m.ctl_args.push("--user=root:rootpw".into());
        m.launch();
    }
    for m in &mut c.members {
        m.wait_ready();
    }
    rt.block_on(async {
        for ep in eps.split(',') {
            let token = login(strip(ep), "alice", "alicepw")
                .await
                .expect("login after restart");
            let mut kv = KvClient::connect(format!("http://{}", strip(ep)))
                .await
                .expect("connect");
            kv.range(with_token(req::get("app/k"), &token))
                .await
                .expect("alice reads after restart");
            assert_eq!(
                err_of(kv.range(tonic::Request::new(req::get("app/k"))).await),
                (
                    Code::InvalidArgument,
                    "etcdserver: user name is empty".into()
                )
            );
        }
    });
}

fn strip(ep: &str) -> &str {
    ep.trim_start_matches("http://")
}

#[test]
fn replicated_and_durable_on_kvstore() {
    replicated_and_durable(Kind::Kvstore);
}

#[test]
fn replicated_and_durable_on_etcd() {
    replicated_and_durable(Kind::Etcd);
}
