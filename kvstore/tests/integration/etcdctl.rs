//! Interoperability: the stock etcdctl 3.4 driving the server. Every check runs against
//! kvstore and against a real etcd 3.4, so each expectation is etcd's own behaviour.

use crate::against_both;
use crate::common;

use common::Proc;
use serde_json::Value;

fn b64(s: &str) -> Value {
    use std::fmt::Write;
    // etcdctl's JSON carries keys and values in standard base64.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    Value::String(out)
}

fn put_get_json_headers(p: &Proc) {
    assert_eq!(p.ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(p.ok(&["get", "foo"]), "foo\nbar\n");
    let j = p.json(&["get", "foo"]);
    let h = &j["header"];
    assert_eq!(h["revision"], 2, "first write is revision 2");
    for f in ["cluster_id", "member_id", "raft_term"] {
        assert!(h[f].as_u64().is_some_and(|v| v > 0), "header.{f} set: {j}");
    }
    let kv = &j["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["value"], b64("bar"));
    assert_eq!(
        (
            kv["create_revision"].clone(),
            kv["mod_revision"].clone(),
            kv["version"].clone()
        ),
        (2.into(), 2.into(), 1.into())
    );
    p.ok(&["put", "foo", "baz"]);
    let j = p.json(&["get", "foo"]);
    assert_eq!(j["header"]["revision"], 3);
    assert_eq!(j["kvs"][0]["version"], 2);
    assert_eq!(j["kvs"][0]["create_revision"], 2);
    assert_eq!(p.ok(&["get", "missing"]), "");
}

fn get_ranges(p: &Proc) {
    for k in ["a1", "a2", "a3", "b1"] {
        p.ok(&["put", k, &format!("v{k}")]);
    }
    assert_eq!(
        p.ok(&["get", "--prefix", "a", "--keys-only"]),
        "a1\n\na2\n\na3\n\n"
    );
    assert_eq!(
        p.ok(&["get", "--from-key", "a2", "--keys-only"]),
        "a2\n\na3\n\nb1\n\n"
    );
    let j = p.json(&["get", "--prefix", "a", "--limit", "2"]);
    assert_eq!(j["count"], 3);
    assert_eq!(j["more"], true);
    assert_eq!(j["kvs"].as_array().map(Vec::len), Some(2));
    let j = p.json(&["get", "--prefix", "a", "--keys-only"]);
    assert!(
        j["kvs"][0].get("value").is_none(),
        "keys-only drops values: {j}"
    );
    assert_eq!(
        p.ok(&["get", "a", "b", "--keys-only"]),
        "a1\n\na2\n\na3\n\n"
    );
    assert_eq!(
        p.ok(&[
            "get",
            "--prefix",
            "a",
            "--sort-by=KEY",
            "--order=DESCEND",
            "--limit",
            "1"
        ]),
        "a3\nva3\n"
    );
    assert!(
        p.ok(&["get", "--prefix", "", "-w", "fields"])
            .contains("\"Count\" : 4")
    );
}

fn historical_reads(p: &Proc) {
    p.ok(&["put", "k", "v1"]);
    p.ok(&["put", "k", "v2"]);
    p.ok(&["del", "k"]);
    assert_eq!(p.ok(&["get", "k", "--rev", "2"]), "k\nv1\n");
    assert_eq!(p.ok(&["get", "k", "--rev", "3"]), "k\nv2\n");
    assert_eq!(p.ok(&["get", "k", "--rev", "4"]), "");
    let err = p.fails(&["get", "k", "--rev", "99"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
}

fn deletes(p: &Proc) {
    for k in ["d1", "d2", "d3", "e1"] {
        p.ok(&["put", k, "x"]);
    }
    assert_eq!(p.ok(&["del", "--prefix", "d"]), "3\n");
    assert_eq!(p.ok(&["del", "e1", "--prev-kv"]), "1\ne1\nx\n");
    assert_eq!(p.ok(&["del", "e1"]), "0\n");
    // A delete of nothing does not bump the revision.
    assert_eq!(p.json(&["get", "e1"])["header"]["revision"], 7);
}

fn txn_both_branches(p: &Proc) {
    p.ok(&["put", "cas", "one"]);
    let out = p.etcdctl_stdin(
        &["txn"],
        "value(\"cas\") = \"one\"\n\nput cas two\n\nput other x\n\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    let out = p.etcdctl_stdin(
        &["txn"],
        "value(\"cas\") = \"one\"\n\nput cas three\n\nget cas\n\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FAILURE\n\ncas\ntwo\n"
    );
    let out = p.etcdctl_stdin(
        &["txn"],
        "mod(\"nokey\") = \"0\"\nver(\"cas\") > \"1\"\n\nput both yes\n\n\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    let out = p.etcdctl_stdin(&["txn"], "value(\"nokey\") = \"\"\n\n\nput fail yes\n\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FAILURE\n\nOK\n",
        "a value compare on a missing key fails"
    );
    assert_eq!(p.ok(&["get", "other"]), "");
    assert_eq!(p.ok(&["get", "both"]), "both\nyes\n");
}

fn watches(p: &Proc) {
    p.ok(&["put", "w/a", "1"]);
    p.ok(&["put", "w/a", "2"]);
    let replay = p.etcdctl_stream(&["watch", "--prefix", "w/", "--rev", "2"]);
    assert_eq!(replay.take(6), ["PUT", "w/a", "1", "PUT", "w/a", "2"]);
    let live = p.etcdctl_stream(&["watch", "--prefix", "w/", "--prev-kv"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    p.ok(&["put", "w/b", "3"]);
    p.ok(&["del", "w/a"]);
    p.ok(&["put", "x/outside", "4"]);
    p.ok(&["put", "w/b", "5"]);
    assert_eq!(
        live.take(12),
        [
            "PUT", "w/b", "3", "DELETE", "w/a", "2", "w/a", "", "PUT", "w/b", "3", "w/b"
        ][..]
    );
    assert_eq!(live.take(1), ["5"]);
    assert_eq!(replay.take(6), ["PUT", "w/b", "3", "DELETE", "w/a", ""]);
}

fn leases(p: &Proc) {
    let out = p.ok(&["lease", "grant", "100"]);
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert_eq!(out, format!("lease {id} granted with TTL(100s)\n"));
    p.ok(&["put", "lk", "v", "--lease", &id]);
    let ttl = p.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(100s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([lk])\n"), "{ttl}");
    assert_eq!(
        p.ok(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(100)\n")
    );
    assert_eq!(p.ok(&["lease", "list"]), format!("found 1 leases\n{id}\n"));
    assert_eq!(
        p.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(p.ok(&["get", "lk"]), "", "revoke deletes attached keys");
    assert_eq!(
        p.ok(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    let err = p.fails(&["lease", "keep-alive", "--once", &id]);
    assert!(err.contains("requested lease not found"), "{err}");
    let err = p.fails(&["lease", "revoke", &id]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
    let err = p.fails(&["put", "x", "y", "--lease", "1234"]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
}

fn lease_expiry(p: &Proc) {
    let out = p.ok(&["lease", "grant", "1"]);
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(out.contains("TTL(2s)"), "TTL raised to the minimum: {out}");
    p.ok(&["put", "short", "v", "--lease", &id]);
    let w = p.etcdctl_stream(&["watch", "short"]);
    assert_eq!(
        w.take(2),
        ["DELETE", "short"],
        "expiry deletes the key with an event"
    );
    assert_eq!(p.ok(&["get", "short"]), "");
}

fn compaction(p: &Proc) {
    for v in ["1", "2", "3", "4"] {
        p.ok(&["put", "c", v]);
    }
    assert_eq!(p.ok(&["compaction", "4"]), "compacted revision 4\n");
    let err = p.fails(&["get", "c", "--rev", "3"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    assert_eq!(p.ok(&["get", "c", "--rev", "4"]), "c\n3\n");
    let err = p.fails(&["compaction", "4"]);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    let w = p.etcdctl_stream(&["watch", "c", "--rev", "2"]);
    drop(w);
    let out = p.etcdctl(&["watch", "c", "--rev", "2"]);
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
}

fn cluster_views(p: &Proc) {
    let members = p.ok(&["member", "list"]);
    let fields: Vec<&str> = members.trim().split(", ").collect();
    assert_eq!(fields.len(), 6, "{members}");
    assert_eq!(
        &fields[1..],
        [
            "started",
            "default",
            &format!("http://127.0.0.1:{}", p.peer_port),
            &p.url(),
            "false"
        ]
    );
    let j = p.json(&["endpoint", "status"]);
    let st = &j[0]["Status"];
    assert_eq!(
        st["leader"], st["header"]["member_id"],
        "the only member leads: {j}"
    );
    assert!(st["raftIndex"].as_u64().is_some_and(|i| i > 0), "{j}");
    // etcdctl 3.4 prints health on stderr.
    let out = p.etcdctl(&["endpoint", "health"]);
    assert!(out.status.success());
    let health = String::from_utf8_lossy(&out.stderr);
    assert!(
        health.contains("is healthy: successfully committed proposal"),
        "{health}"
    );
    let j = p.json(&["member", "list"]);
    assert_eq!(j["members"][0]["ID"], st["header"]["member_id"]);
    assert_eq!(p.ok(&["alarm", "list"]), "");
}

against_both!(
    put_get_json_headers,
    get_ranges,
    historical_reads,
    deletes,
    txn_both_branches,
    watches,
    leases,
    lease_expiry,
    compaction,
    cluster_views,
);
