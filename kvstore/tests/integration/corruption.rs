//! Corruption checks (etcd 3.4's `--experimental-initial-corrupt-check` and
//! `--experimental-corrupt-check-time`) on real member processes.
//!
//! - The flags and their environment variables are etcd's: a bad check period stops the
//!   server before it serves, with Go's words on both servers.
//! - HashKV at a past revision and at the latest is the same after a restart (and a write
//!   after it), on both servers.
//! - A healthy 3-member cluster with both checks on, the same test code against kvstore and
//!   etcd 3.4: after writes, a compaction and a restart of one member through the initial
//!   check, `etcdctl endpoint hashkv --cluster` shows one hash, no alarm is ever raised and
//!   writes go on.
//! - kvstore only (etcd's bbolt file is not something a test rewrites): one member's data is
//!   changed while it is down (one record's value bytes flipped in its sled file, which
//!   sled's own checksums cannot notice: the record is rewritten whole). With the initial
//!   check it refuses to start, with one error line and a non-zero exit; without it, the
//!   leader's periodic check raises CORRUPT for that member, which every member lists and
//!   which fails every write with `etcdserver: corrupt cluster`. Then the runbook of
//!   docs/kvstore.md: `endpoint hashkv --cluster` shows the odd member out, it is removed and
//!   replaced by a new member (which receives the keyspace as a raft snapshot) whose hash is
//!   the others', the alarm is disarmed and writes succeed again.

use crate::common;

use std::time::{Duration, Instant};

use common::Kind;
use common::cluster::Cluster;
use kvstore::backend::{Backend, SledBackend, keys};
use kvstore::mvcc::Rev;

const CHECK_EVERY: &str = "500ms";

fn a_bad_check_period_is_refused(kind: Kind) {
    let bin = match kind {
        Kind::Kvstore => env!("CARGO_BIN_EXE_kvstore"),
        Kind::Etcd => common::ETCD,
    };
    let cases: [(&[&str], Option<&str>); 2] = [
        (&["--experimental-corrupt-check-time", "x"], None),
        (&[], Some("x")),
    ];
    for (flags, env) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let member = common::lone_member(dir.path());
        let mut cmd = member.command(std::path::Path::new(bin), None);
        cmd.args(flags)
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(v) = env {
            cmd.env("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", v);
        }
        let child = cmd.spawn().expect("start server");
        let out = common::wait_output(child, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind:?} {flags:?} {env:?}: {err}");
        // etcd names the flag or the variable, kvstore the flag.
        assert!(
            err.contains("invalid value \"x\" for") && err.contains("parse error"),
            "{kind:?} {flags:?} {env:?}: {err}"
        );
        if kind == Kind::Kvstore {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
}

#[test]
fn a_bad_check_period_is_refused_kvstore() {
    a_bad_check_period_is_refused(Kind::Kvstore);
}

#[test]
fn a_bad_check_period_is_refused_etcd() {
    a_bad_check_period_is_refused(Kind::Etcd);
}

/// `etcdctl endpoint hashkv --rev REV` of `p`'s member.
fn hash_at(p: &common::Proc, rev: i64) -> u64 {
    let v = p.json(&["endpoint", "hashkv", "--rev", &rev.to_string()]);
    v[0]["HashKV"]["hash"].as_u64().expect("hash")
}

fn hash_survives_a_restart(kind: Kind) {
    let mut p = common::Proc::start(kind);
    for i in 0..10 {
        p.ok(&["put", &format!("k{}", i % 4), &format!("v{i}")]);
    }
    let (past, latest) = (hash_at(&p, 6), hash_at(&p, 11));
    assert_ne!(past, latest, "{kind:?}");
    p.restart();
    // A write after the restart: the hashes of earlier revisions read what the restart
    // reloaded, beside what is newer.
    p.ok(&["put", "after", "v"]);
    assert_eq!(hash_at(&p, 6), past, "{kind:?}");
    assert_eq!(hash_at(&p, 11), latest, "{kind:?}");
}

#[test]
fn hash_survives_a_restart_kvstore() {
    hash_survives_a_restart(Kind::Kvstore);
}

#[test]
fn hash_survives_a_restart_etcd() {
    hash_survives_a_restart(Kind::Etcd);
}

/// Each running member's `endpoint hashkv` hash, by member index.
fn hashes(c: &mut Cluster) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for i in 0..c.members.len() {
        if !c.members[i].is_running() {
            continue;
        }
        let v = c.members[i].json(&["endpoint", "hashkv"]);
        let h = v[0]["HashKV"]["hash"].as_u64().expect("hash");
        out.push((i, h));
    }
    out
}

/// `etcdctl alarm list` through member `i`.
fn alarms(c: &Cluster, i: usize) -> String {
    c.members[i].ok(&["alarm", "list"])
}

fn healthy_cluster_with_checks_on(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &["--experimental-corrupt-check-time", CHECK_EVERY]);
    for i in 0..60 {
        c.ok(&["put", &format!("k{}", i % 7), &format!("v{i}")]);
    }
    c.ok(&["compact", "30"]);
    c.ok(&["put", "after-compaction", "v"]);
    // A member restarted through the initial check finds its peers agree and serves.
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = (leader + 1) % 3;
    c.members[f]
        .extra
        .push("--experimental-initial-corrupt-check".into());
    // SIGTERM (etcd then ends by the signal: no exit code to check).
    c.members[f].terminate();
    c.members[f].launch();
    c.members[f].wait_ready();
    c.ok(&["put", "after-restart", "v"]);
    c.wait_converged(Duration::from_secs(10));
    // Several periodic checks pass.
    std::thread::sleep(Duration::from_secs(3));
    let h = hashes(&mut c);
    assert_eq!(h.len(), 3, "{kind:?}: {h:?}");
    assert!(h.iter().all(|(_, x)| *x == h[0].1), "{kind:?}: {h:?}");
    for i in 0..3 {
        assert_eq!(alarms(&c, i).trim(), "", "{kind:?}: member {i}");
    }
    c.ok(&["put", "still-writable", "v"]);
    // Both checks ran (etcd and kvstore log these words), and found nothing.
    let log = c.members[f].log();
    assert!(log.contains("no corruption"), "{kind:?}: {log}");
    assert!(!log.contains("data inconsistency"), "{kind:?}: {log}");
    let log = c.members[leader].log();
    assert!(
        log.contains("enabled corruption checking"),
        "{kind:?}: {log}"
    );
    assert!(!log.contains("failed to check hash KV"), "{kind:?}: {log}");
}

#[test]
fn healthy_cluster_with_checks_on_kvstore() {
    healthy_cluster_with_checks_on(Kind::Kvstore);
}

#[test]
fn healthy_cluster_with_checks_on_etcd() {
    healthy_cluster_with_checks_on(Kind::Etcd);
}

/// Rewrites the first record of `key` in the stopped member's sled file with every value
/// byte flipped (same length); returns where it sits.
fn flip_value(data_dir: &std::path::Path, key: &[u8]) -> Rev {
    let db = SledBackend::open(&data_dir.join("db")).expect("open the member's sled db");
    let mut found = None;
    db.scan(keys::REV_PREFIX, keys::REV_END, &mut |k, v| {
        let (main, sub) = keys::parse_rev(k).expect("record key");
        let rev = Rev { main, sub };
        let rec = kvstore::history::decode(v, rev)?;
        if rec.kv.key.as_ref() == key && !rec.tombstone {
            found = Some((rev, rec));
            return Ok(false);
        }
        Ok(true)
    })
    .expect("scan records");
    let (rev, mut rec) = found.expect("a record of the key");
    let flipped: Vec<u8> = rec.kv.value.iter().map(|b| b ^ 0x01).collect();
    assert_ne!(flipped, rec.kv.value.to_vec());
    rec.kv.value = flipped.into();
    let mut batch = kvstore::backend::WriteBatch::default();
    batch.put(keys::rev(rev.main, rev.sub), kvstore::history::encode(&rec));
    db.write(batch).expect("write");
    db.sync().expect("sync");
    rev
}

#[test]
fn a_member_with_changed_data_is_caught() {
    let mut c = Cluster::start(
        Kind::Kvstore,
        3,
        &[
            "--experimental-corrupt-check-time",
            CHECK_EVERY,
            // The replacement member gets the keyspace as a raft snapshot.
            "--snapshot-count",
            "10",
        ],
    );
    for i in 0..40 {
        c.ok(&["put", &format!("k{}", i % 7), &format!("value-{i}")]);
    }
    c.wait_converged(Duration::from_secs(10));
    let leader = c.wait_leader(Duration::from_secs(10));
    let bad = (leader + 1) % 3;
    let bad_id = c.id(bad);
    // Healthy so far: checks have passed and raised nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(alarms(&c, leader).trim(), "");

    assert_eq!(c.members[bad].terminate(), Some(0), "clean stop");
    let rev = flip_value(&c.members[bad].data_dir(), b"k3");
    eprintln!("flipped the value bytes of k3 at {rev:?} in member {bad_id:x}");

    // The initial check refuses the start: one line, non-zero exit.
    let log_before = c.members[bad].log().len();
    c.members[bad]
        .extra
        .push("--experimental-initial-corrupt-check".into());
    c.members[bad].launch();
    let code = c.members[bad].wait_exit(Duration::from_secs(30));
    let log = c.members[bad].log()[log_before..].to_string();
    assert!(matches!(code, Some(n) if n != 0), "exit {code:?}: {log}");
    let expected = format!("kvstore: {bad_id:x} found data inconsistency with peers");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("data inconsistency"))
        .collect();
    assert_eq!(lines, vec![expected.as_str()], "{log}");
    assert_eq!(log.lines().last(), Some(expected.as_str()), "{log}");
    // Nothing was served and the others went on.
    c.ok(&["put", "while-refused", "v"]);

    // Started without it, the member serves, and the leader's periodic check catches it.
    c.members[bad].extra.pop();
    c.members[bad].launch();
    c.members[bad].wait_ready();
    let wanted = format!("memberID:{bad_id} alarm:CORRUPT");
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..3 {
        loop {
            let listed = alarms(&c, i);
            if listed.lines().any(|l| l.trim() == wanted) {
                assert_eq!(listed.lines().count(), 1, "member {i}: {listed}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} lists no CORRUPT alarm for {bad_id:x}: {listed:?}\n{}",
                c.members[leader].log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for i in 0..3 {
        let err = c.members[i].fails(&["put", "refused", "v"]);
        assert!(
            err.contains("etcdserver: corrupt cluster"),
            "member {i}: {err}"
        );
    }
    // Reads go on.
    assert_eq!(
        c.members[leader]
            .ok(&["get", "k0", "--print-value-only"])
            .trim(),
        "value-35"
    );

    // The runbook: the odd hash out names the member too...
    let h = hashes(&mut c);
    let odd: Vec<usize> = h
        .iter()
        .filter(|(_, x)| h.iter().filter(|(_, y)| y == x).count() == 1)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(odd, vec![bad], "{h:?}");
    // ...it is removed and replaced by a new member, the alarm disarmed.
    c.reconfigure(&["member", "remove", &format!("{bad_id:x}")]);
    c.members[bad].kill();
    let new = c.add_member();
    c.wait_converged(Duration::from_secs(20));
    let h = hashes(&mut c);
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(h.iter().all(|(_, x)| *x == h[0].1), "{h:?}");
    assert!(
        c.members[new].log().contains("snapshot"),
        "the new member was sent a snapshot: {}",
        c.members[new].log()
    );
    c.ok(&["alarm", "disarm"]);
    c.ok(&["put", "after-disarm", "v"]);
    // The new member's data agrees: later checks raise nothing.
    std::thread::sleep(Duration::from_secs(2));
    for i in (0..c.members.len()).filter(|&i| i != bad) {
        assert_eq!(alarms(&c, i).trim(), "", "member {i}");
    }
    assert_eq!(
        c.members[new]
            .ok(&["get", "k3", "--print-value-only"])
            .trim(),
        "value-38"
    );
}
