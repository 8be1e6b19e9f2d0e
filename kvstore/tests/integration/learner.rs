//! Learners as etcd 3.4 has them, through the stock etcdctl, against kvstore and etcd 3.4:
//! `member add --learner`, `member list` showing IS LEARNER, `member promote` refused while
//! the learner is not in sync and for a voter, one learner at most, a learner serving only
//! serializable reads and Status and never taking leadership, and a promoted learner
//! serving everything.

use std::time::{Duration, Instant};

use crate::common::Kind;
use crate::common::cluster::Cluster;

/// `etcdctl ARGS` through member `i` until it fails with something other than "unhealthy
/// cluster" (etcd refuses changes for a while after members connect); its stderr.
fn refused(c: &mut Cluster, i: usize, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.members[i].etcdctl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{:?}: etcdctl {args:?} succeeded",
            c.kind
        );
        if !err.contains("unhealthy cluster") || Instant::now() > deadline {
            return err;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `member list` rows (id, status, name, is learner) as member `i` answers.
fn rows(c: &Cluster, i: usize) -> Vec<(String, String, String, String)> {
    c.members[i]
        .ok(&["member", "list"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            assert_eq!(f.len(), 6, "{:?}: {l}", c.kind);
            (f[0].into(), f[1].into(), f[2].into(), f[5].into())
        })
        .collect()
}

/// Waits until member `i` answers a serializable read (a learner serves those once it runs).
fn wait_serving(c: &Cluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.members[i].etcdctl(&["get", "x", "--consistency=s"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: member {i} never served: {} {}",
            c.kind,
            String::from_utf8_lossy(&out.stderr),
            c.members[i].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn learners(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    c.ok(&["put", "before", "learner"]);
    let l = c.add_member_as(&|_, _| {}, &["--learner"]);
    let list = rows(&c, 0);
    let learner_row = list
        .iter()
        .find(|r| r.3 == "true")
        .unwrap_or_else(|| panic!("{kind:?}: no learner in {list:?}"));
    assert_eq!(learner_row.1, "unstarted", "{kind:?}: {list:?}");
    assert_eq!(list.iter().filter(|r| r.3 == "false").count(), 3);
    let learner_id = learner_row.0.clone();
    let table = c.members[0].ok(&["member", "list", "-w", "table"]);
    assert!(table.contains("IS LEARNER"), "{kind:?}: {table}");

    // Not started: far behind the leader.
    let err = refused(&mut c, 0, &["member", "promote", &learner_id]);
    assert!(
        err.contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{kind:?}: {err}"
    );
    // A voter is no learner.
    let voter = format!("{:x}", c.id(1));
    let err = refused(&mut c, 0, &["member", "promote", &voter]);
    assert!(
        err.contains("etcdserver: can only promote a learner member") && !err.contains("in sync"),
        "{kind:?}: {err}"
    );
    // One learner at a time.
    let spare = format!("http://127.0.0.1:{}", crate::common::free_port());
    let err = refused(
        &mut c,
        0,
        &["member", "add", "m9", "--learner", "--peer-urls", &spare],
    );
    assert!(
        err.contains("etcdserver: too many learner members in cluster"),
        "{kind:?}: {err}"
    );

    // Started, the learner catches up and serves serializable reads and Status only.
    c.members[l].launch();
    wait_serving(&c, l);
    assert_eq!(
        c.members[l]
            .ok(&["get", "before", "--consistency=s", "--print-value-only"])
            .trim(),
        "learner"
    );
    // Never a leader transferee.
    let leader = c.wait_leader(Duration::from_secs(10));
    let out = c.members[leader].etcdctl(&["move-leader", &learner_id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("etcdserver: bad leader transferee"),
        "{kind:?}: move-leader to a learner: {err}"
    );
    let status = c.members[l].ok(&["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"isLearner\":true"), "{kind:?}: {status}");
    let not_for_learner = "etcdserver: rpc not supported for learner";
    for args in [
        &["put", "k", "v"][..],
        &["get", "before", "--command-timeout=2s"][..],
        &["member", "list"][..],
    ] {
        let out = c.members[l].etcdctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind:?}: {args:?} on a learner");
        assert!(err.contains(not_for_learner), "{kind:?}: {args:?}: {err}");
    }

    // In sync: promoted, it votes and serves everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.members[0].etcdctl(&["member", "promote", &learner_id]);
        if out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("promoted"), "{kind:?}: {said}");
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            (err.contains("in sync") || err.contains("unhealthy cluster"))
                && Instant::now() < deadline,
            "{kind:?}: promote: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(rows(&c, 0).iter().all(|r| r.3 == "false"), "{kind:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.members[l].etcdctl(&["put", "after", "promote"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?}: promoted member refuses puts: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.members[l]
            .ok(&["get", "after", "--print-value-only"])
            .trim(),
        "promote"
    );
}

/// Removing a learner needs no quorum check: with one voter of three down, a running
/// learner the leader hears from goes.
fn learner_removed_with_a_voter_down(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let l = c.add_member_as(&|_, _| {}, &["--learner"]);
    c.members[l].launch();
    wait_serving(&c, l);
    let learner_id = rows(&c, 0)
        .into_iter()
        .find(|r| r.3 == "true")
        .map(|r| r.0)
        .unwrap_or_else(|| panic!("{kind:?}: no learner"));
    let leader = c.wait_leader(Duration::from_secs(10));
    let down = (0..3).find(|&i| i != leader).expect("a follower");
    c.members[down].kill();
    // Long enough for the leader to count the killed voter gone.
    std::thread::sleep(Duration::from_secs(3));
    let out = c.members[leader].etcdctl(&["member", "remove", &learner_id]);
    assert!(
        out.status.success(),
        "{kind:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rows(&c, leader).len(), 3, "{kind:?}");
}

#[test]
fn learner_removed_with_a_voter_down_kvstore() {
    learner_removed_with_a_voter_down(Kind::Kvstore);
}

#[test]
fn learner_removed_with_a_voter_down_etcd() {
    learner_removed_with_a_voter_down(Kind::Etcd);
}

#[test]
fn learners_kvstore() {
    learners(Kind::Kvstore);
}

#[test]
fn learners_etcd() {
    learners(Kind::Etcd);
}
