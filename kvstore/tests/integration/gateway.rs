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
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
