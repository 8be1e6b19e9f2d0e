//! etcd 3.4's HTTP/JSON gateway on the client port: the same requests against kvstore and
//! etcd 3.4, compared status by status and body by body (values that differ between any two
//! servers — ids, revisions, terms, sizes — normalized), streaming watch and lease keep-alive
//! included, and gRPC still served on the same port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Kind, Proc};

/// A POST of `body` to `path` over HTTP/1.0 (so no answer is chunked): status and body.
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    post_as(port, None, path, body)
}

/// `post` with `token` in the Authorization header, as etcd's gateway clients send it.
fn post_as(port: u16, token: Option<&str>, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// Values that differ between servers, replaced by their kind.
fn normalize(v: &mut Value) {
    const VARYING: &[&str] = &[
        "cluster_id",
        "member_id",
        "revision",
        "raft_term",
        "ID",
        "TTL",
        "grantedTTL",
        "create_revision",
        "mod_revision",
        "dbSize",
        "dbSizeInUse",
        "leader",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "hash",
        "peerURLs",
        "clientURLs",
        "version",
        "compact_revision",
        "name",
        "token",
    ];
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                // etcd leaves the revision out of some headers (member list) that kvstore fills.
                if VARYING.contains(&k.as_str()) || k == "header" {
                    *x = Value::String("*".into());
                } else {
                    normalize(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn json(body: &str) -> Value {
    let mut v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    normalize(&mut v);
    v
}

/// The answers to a fixed sequence of requests, normalized.
fn unary_answers(p: &Proc) -> Vec<(u16, Value)> {
    let port = p.client_port;
    let mut out = Vec::new();
    let mut call = |path: &str, body: &str| {
        let (code, b) = post(port, path, body);
        out.push((code, json(&b)));
        b
    };
    call("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    call(
        "/v3beta/kv/put",
        r#"{"key":"Zm9vMg==","value":"eA==","prev_kv":true}"#,
    );
    call(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","limit":"5"}"#,
    );
    call("/v3/kv/range", r#"{"key":"Zm9v","count_only":true}"#);
    call(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"Yg=="}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    );
    call("/v3/kv/deleterange", r#"{"key":"Zm9vMg==","prev_kv":true}"#);
    // Errors: a key not given, JSON that does not parse, a compacted revision.
    call("/v3/kv/put", "{}");
    call("/v3/kv/compaction", r#"{"revision":"3"}"#);
    call("/v3/kv/range", r#"{"key":"Zm9v","revision":2}"#);
    let lease = call("/v3/lease/grant", r#"{"TTL":60}"#);
    let id = serde_json::from_str::<Value>(&lease).expect("lease")["ID"].clone();
    call(
        "/v3/lease/timetolive",
        &format!(r#"{{"ID":{id},"keys":true}}"#),
    );
    call("/v3/kv/lease/timetolive", &format!(r#"{{"ID":{id}}}"#));
    call("/v3/lease/leases", "{}");
    call("/v3/lease/revoke", &format!(r#"{{"ID":{id}}}"#));
    call("/v3/kv/lease/revoke", &format!(r#"{{"ID":{id}}}"#));
    call("/v3/cluster/member/list", "{}");
    call("/v3/maintenance/status", "{}");
    call("/v3/maintenance/hash", "{}");
    call("/v3/auth/user/list", "{}");
    call("/v3/auth/authenticate", r#"{"name":"x","password":"y"}"#);
    out
}

#[test]
fn unary_paths_answer_as_etcd_s() {
    let kv = Proc::start(Kind::Kvstore);
    let etcd = Proc::start(Kind::Etcd);
    let (a, b) = (unary_answers(&kv), unary_answers(&etcd));
    for (i, (k, e)) in a.iter().zip(&b).enumerate() {
        assert_eq!(k, e, "request {i}: kvstore vs etcd");
    }
    // Invalid JSON: the same status and body shape (the parser's words differ).
    for p in [&kv, &etcd] {
        let (code, body) = post(p.client_port, "/v3/kv/range", "{bad");
        assert_eq!(code, 400, "{:?}: {body}", p.kind);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["code"], 3, "{body}");
        assert_eq!(v["error"], v["message"], "{body}");
        assert_eq!(post(p.client_port, "/v3/nope", "{}").0, 404);
    }
}

/// Auth over JSON: users and roles made, auth enabled, a login, and what a prefix user, a
/// bogus token and no token get; the answers, normalized (the token itself varies).
fn auth_answers(p: &Proc) -> Vec<(u16, Value)> {
    let port = p.client_port;
    let mut out = Vec::new();
    let mut call = |token: Option<&str>, path: &str, body: &str| {
        let (code, b) = post_as(port, token, path, body);
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{b:?}: {e}"));
        out.push((code, json(&b)));
        v
    };
    call(
        None,
        "/v3/auth/user/add",
        r#"{"name":"root","password":"rootpw"}"#,
    );
    call(None, "/v3/auth/role/add", r#"{"name":"root"}"#);
    call(
        None,
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
    );
    call(None, "/v3/auth/role/add", r#"{"name":"app"}"#);
    // readwrite on the prefix app/ (range end app0).
    call(
        None,
        "/v3/auth/role/grant",
        r#"{"name":"app","perm":{"permType":"READWRITE","key":"YXBwLw==","range_end":"YXBwMA=="}}"#,
    );
    call(
        None,
        "/v3/auth/user/add",
        r#"{"name":"alice","password":"alicepw"}"#,
    );
    call(
        None,
        "/v3/auth/user/grant",
        r#"{"user":"alice","role":"app"}"#,
    );
    call(None, "/v3/auth/enable", "{}");
    call(None, "/v3/kv/range", r#"{"key":"YXBwL2s="}"#);
    call(
        None,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"nope"}"#,
    );
    let login = call(
        None,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"alicepw"}"#,
    );
    let token = login["token"].as_str().expect("a token").to_string();
    let alice = Some(token.as_str());
    call(alice, "/v3/kv/put", r#"{"key":"YXBwL2s=","value":"dg=="}"#);
    call(alice, "/v3/kv/range", r#"{"key":"YXBwL2s="}"#);
    call(alice, "/v3/kv/put", r#"{"key":"eno=","value":"dg=="}"#);
    call(alice, "/v3/auth/user/list", "{}");
    // (etcd waits for the raft index a simple token names: index 1 has long been applied.)
    call(Some("nonsense.1"), "/v3/kv/range", r#"{"key":"YXBwL2s="}"#);
    let root = call(
        None,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
    );
    let root = root["token"].as_str().expect("a token").to_string();
    call(Some(&root), "/v3/auth/user/list", "{}");
    call(Some(&root), "/v3/auth/disable", "{}");
    call(None, "/v3/kv/range", r#"{"key":"YXBwL2s="}"#);
    out
}

#[test]
fn auth_over_json_as_etcd_s() {
    let kv = Proc::start(Kind::Kvstore);
    let etcd = Proc::start(Kind::Etcd);
    let (a, b) = (auth_answers(&kv), auth_answers(&etcd));
    assert_eq!(a.len(), b.len());
    for (i, (k, e)) in a.iter().zip(&b).enumerate() {
        assert_eq!(k, e, "request {i}: kvstore vs etcd");
    }
    // And the answers are the refusals and grants meant: no token, a wrong password, alice
    // inside and outside her prefix and on the user list, a bogus token, root, auth off.
    let codes: Vec<u16> = a.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        [
            200, 200, 200, 200, 200, 200, 200, 200, 400, 400, 200, 200, 200, 403, 403, 401, 200,
            200, 200, 200
        ],
        "{a:?}"
    );
    assert_eq!(a[8].1["message"], "etcdserver: user name is empty");
    assert_eq!(a[13].1["message"], "etcdserver: permission denied");
    assert_eq!(a[15].1["message"], "etcdserver: invalid auth token");
}

/// A streaming call: the status line and the first `n` result lines.
fn stream(port: u16, path: &str, body: &str, n: usize, between: impl FnOnce()) -> Vec<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status");
    assert!(line.contains(" 200 "), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
    }
    let mut between = Some(between);
    let mut out = Vec::new();
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).expect("result line");
        out.push(json(line.trim()));
        if let Some(f) = between.take() {
            f();
        }
    }
    out
}

fn streams(p: &Proc) -> (Vec<Value>, Vec<Value>) {
    let port = p.client_port;
    let watch = stream(
        port,
        "/v3/watch",
        r#"{"create_request":{"key":"dw==","prev_kv":true}}"#,
        3,
        || {
            post(port, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#);
            post(port, "/v3/kv/deleterange", r#"{"key":"dw=="}"#);
        },
    );
    let (_, lease) = post(port, "/v3/lease/grant", r#"{"TTL":60}"#);
    let id = serde_json::from_str::<Value>(&lease).expect("lease")["ID"].clone();
    let keep = stream(
        port,
        "/v3/lease/keepalive",
        &format!(r#"{{"ID":{id}}}{{"ID":{id}}}"#),
        2,
        || {},
    );
    (watch, keep)
}

#[test]
fn watch_and_keepalive_stream_as_etcd_s() {
    let kv = Proc::start(Kind::Kvstore);
    let etcd = Proc::start(Kind::Etcd);
    assert_eq!(streams(&kv), streams(&etcd));
}

#[test]
fn grpc_and_json_share_the_port() {
    let kv = Proc::start(Kind::Kvstore);
    kv.ok(&["put", "g", "1"]);
    let (code, body) = post(kv.client_port, "/v3/kv/range", r#"{"key":"Zw=="}"#);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""value":"MQ==""#), "{body}");
    assert_eq!(kv.ok(&["get", "g", "--print-value-only"]), "1\n");
    for path in ["/health", "/readyz", "/livez", "/version", "/metrics"] {
        assert_eq!(
            crate::common::http_get(kv.client_port, path).0,
            200,
            "{path}"
        );
    }
}

/// etcd3gw (OpenStack's client of the JSON gateway, Debian's python3-etcd3gw): its basic
/// operations against kvstore and etcd 3.4.
#[test]
fn etcd3gw_works_on_both() {
    let script = r#"
import sys, etcd3gw
c = etcd3gw.Etcd3Client(host="127.0.0.1", port=int(sys.argv[1]), api_path="/v3/")
assert c.put("k", "v")
assert [v for v in c.get("k")] == [b"v"], c.get("k")
l = c.lease(ttl=30)
assert c.put("kl", "x", lease=l)
assert l.refresh() > 0
assert b"kl" in l.keys()
events, cancel = c.watch("w")
c.put("w", "1")
e = next(events)
assert e["kv"]["value"] == b"1", e
cancel()
assert c.delete("k")
assert c.get("k") == []
assert l.revoke()
assert len(c.members()) == 1
assert c.status()["version"]
print("ok")
"#;
    for kind in [Kind::Kvstore, Kind::Etcd] {
        let p = Proc::start(kind);
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, &p.client_port.to_string()])
            .output()
            .expect("python3 (scripts/install-deps.sh test installs python3-etcd3gw)");
        assert!(
            out.status.success(),
            "{kind:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
