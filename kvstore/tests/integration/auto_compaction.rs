//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): history
//! older than the retention goes by itself, recent history stays, and bad flag values stop the
//! server at start with one clear error, each against kvstore and etcd 3.4 alike. The revision
//! compactor looks only every 5 minutes in etcd 3.4, so its test runs on kvstore alone, with a
//! hidden test-only interval.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{self, Kind, Proc};

const COMPACTED: &str = "required revision has been compacted";

/// The revision `etcdctl put` wrote (from the header of its JSON answer).
fn put(p: &Proc, key: &str, value: &str) -> i64 {
    p.json(&["put", key, value])["header"]["revision"]
        .as_i64()
        .expect("revision")
}

/// Whether a read of `key` at `rev` is refused as compacted (any other failure fails the test).
fn compacted_at(p: &Proc, key: &str, rev: i64) -> bool {
    let out = p.etcdctl(&["get", key, &format!("--rev={rev}")]);
    if out.status.success() {
        return false;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(COMPACTED),
        "{:?}: get --rev={rev}: {err}",
        p.kind
    );
    true
}

/// Periodic mode with a 2 s retention: nothing is compacted before the first retention has
/// passed, then old revisions go on their own while a revision written just now still reads.
fn periodic_retention_compacts_old_history(kind: Kind) {
    let p = Proc::start_with(
        kind,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    );
    let started = Instant::now();
    let first = put(&p, "k", "v0");
    let mut last = first;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while !compacted_at(&p, "k", first) {
        assert!(
            Instant::now() < deadline,
            "{kind:?}: revision {first} never compacted: {}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
        n += 1;
        last = put(&p, "k", &format!("v{n}"));
    }
    // Compacting `first` away needs a revision noted after it was written, a retention ago.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{kind:?}: compacted {:?} after the write, before the retention passed",
        started.elapsed()
    );
    // What was written a moment ago is well inside the retention.
    let recent = p.json(&["get", "k", &format!("--rev={last}")]);
    assert_eq!(
        recent["kvs"][0]["mod_revision"].as_i64(),
        Some(last),
        "{kind:?}"
    );
    let out = p.ok(&["get", "k", "--print-value-only"]);
    assert_eq!(out.trim(), format!("v{n}"), "{kind:?}");
}

/// Bad values stop the server before it serves, with etcd's message; kvstore's is one line.
fn bad_flag_values_are_one_clear_error(kind: Kind) {
    let bin = match kind {
        Kind::Kvstore => env!("CARGO_BIN_EXE_kvstore"),
        Kind::Etcd => common::ETCD,
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["--auto-compaction-mode", "hourly"],
            "unknown auto-compaction-mode \"hourly\"",
        ),
        (
            &["--auto-compaction-retention", "abc"],
            "error parsing CompactionRetention: time: invalid duration \"abc\"",
        ),
        (
            &["--auto-compaction-retention", "-1"],
            "error parsing CompactionRetention: time: missing unit in duration \"-1\"",
        ),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1.5",
            ],
            "error parsing CompactionRetention: time: missing unit in duration \"1.5\"",
        ),
    ];
    for (flags, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let member = common::lone_member(dir.path());
        let mut cmd = member.command(Path::new(bin), None);
        let child = cmd
            .args(flags)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let out = common::wait_output(child, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{kind:?} started with {flags:?}: {err}"
        );
        assert!(err.contains(want), "{kind:?} {flags:?}: {err}");
        if kind == Kind::Kvstore {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
}

/// Each suite on both servers (they start their own, with the flags under test).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_kvstore {
            $(#[test] fn $name() { super::$name(crate::common::Kind::Kvstore); })*
        }
        mod on_etcd {
            $(#[test] fn $name() { super::$name(crate::common::Kind::Etcd); })*
        }
    };
}

on_both!(
    periodic_retention_compacts_old_history,
    bad_flag_values_are_one_clear_error
);

/// Revision mode keeps the last `retention` revisions: with 5, the 20 puts' history ends at
/// the current revision minus 5, which still reads, and the one before it is compacted.
#[test]
fn revision_retention_keeps_the_last_revisions_on_kvstore() {
    let p = Proc::start_with(
        Kind::Kvstore,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5",
            "--auto-compaction-revision-interval-ms",
            "200",
        ],
    );
    let mut last = 0;
    for i in 0..20 {
        last = put(&p, "k", &format!("v{i}"));
    }
    let keep_from = last - 5;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !compacted_at(&p, "k", keep_from - 1) {
        assert!(Instant::now() < deadline, "never compacted: {}", p.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settled: nothing more is written, so the compactor goes no further.
    std::thread::sleep(Duration::from_millis(600));
    for rev in keep_from..=last {
        assert!(
            !compacted_at(&p, "k", rev),
            "revision {rev} is within the retention"
        );
    }
}

/// In a 3-member cluster only the leader compacts (a follower's compactor proposes
/// nothing), and the compaction, an ordinary raft entry, reaches every member. kvstore only:
/// the check reads the members' logs.
#[test]
fn only_the_leader_compacts_and_every_member_applies_it() {
    let mut c = crate::common::cluster::Cluster::start(
        Kind::Kvstore,
        3,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ],
    );
    let first = put(&c.members[0], "k", "v0");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    for i in 0..3 {
        // A serializable read: each member's own state.
        let rev = format!("--rev={first}");
        while !String::from_utf8_lossy(
            &c.members[i]
                .etcdctl(&["get", "k", &rev, "--consistency=s"])
                .stderr,
        )
        .contains(COMPACTED)
        {
            assert!(Instant::now() < deadline, "member {i} never compacted");
            std::thread::sleep(Duration::from_millis(200));
            n += 1;
            put(&c.members[0], "k", &format!("v{n}"));
        }
    }
    let leader = c.wait_leader(Duration::from_secs(5));
    let compacting: Vec<usize> = (0..3)
        .filter(|&i| {
            c.members[i]
                .log()
                .contains("starting auto periodic compaction")
        })
        .collect();
    assert_eq!(
        compacting,
        vec![leader],
        "only the leader compacts: {}",
        c.members[leader].log()
    );
}
