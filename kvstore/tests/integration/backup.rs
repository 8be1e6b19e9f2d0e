//! Backup and disaster recovery as an etcd operator runs them, through the same test code
//! against kvstore and etcd 3.4: `etcdctl snapshot save` from one member of a 3-member
//! cluster under a write load; then two members' data destroyed and the third forced into
//! a one-member cluster (`--force-new-cluster`) and grown again with `member add`; and the
//! backup restored into a new 3-member cluster (`kvstore snapshot restore` with etcdutl's
//! flags; `etcdctl snapshot restore` for etcd). Every acknowledged write is in the forced
//! cluster; every one up to the backup's revision is in the restored cluster, with its
//! revision, and none after it. Then the file checks (status, a damaged file, a data dir
//! already there), and the import of an etcd 3.4 keyspace through `etcdctl make-mirror`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::cluster::Cluster;
use crate::common::{ETCDCTL, Kind, Proc};

/// The tool that reads backup files: `kvstore snapshot` or `etcdctl snapshot`.
fn snapshot_tool(kind: Kind) -> Command {
    match kind {
        Kind::Kvstore => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_kvstore"));
            c.arg("snapshot");
            c
        }
        Kind::Etcd => {
            let mut c = Command::new(ETCDCTL);
            c.env("ETCDCTL_API", "3").arg("snapshot");
            c
        }
    }
}

fn run(mut c: Command) -> Output {
    c.output().expect("run the snapshot tool")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `snapshot status FILE -w json`.
fn status(kind: Kind, file: &Path) -> serde_json::Value {
    let mut c = snapshot_tool(kind);
    c.arg("status").arg(file).args(["-w", "json"]);
    let out = run(c);
    assert!(out.status.success(), "{kind:?}: status: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{kind:?}: {stdout}: {e}"))
}

/// `snapshot restore FILE` into `m`'s data dir, as member `m` of a cluster.
fn restore_into(kind: Kind, file: &Path, m: &Proc, token: &str) -> Output {
    let mut c = snapshot_tool(kind);
    c.arg("restore")
        .arg(file)
        .args(["--name", &m.name])
        .arg("--data-dir")
        .arg(m.data_dir())
        .args([
            "--initial-cluster",
            m.initial_cluster.as_deref().unwrap_or_default(),
        ])
        .args(["--initial-cluster-token", token])
        .args(["--initial-advertise-peer-urls", &m.peer_url()]);
    run(c)
}

/// Puts unique keys through every member until stopped; the acknowledged keys with the
/// revision each was written at.
fn writer(endpoints: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(String, i64)>> {
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("w{i:05}");
            i += 1;
            let out = testbed::etcd::etcdctl(None, &endpoints)
                .args(["put", &key, &format!("v-{key}"), "-w", "json"])
                .output()
                .expect("etcdctl put");
            if !out.status.success() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("put -w json");
            let rev = v["header"]["revision"].as_i64().expect("revision");
            acked.push((key, rev));
        }
        acked
    })
}

fn as_map(kvs: Vec<(String, String)>) -> BTreeMap<String, String> {
    kvs.into_iter().collect()
}

/// Waits until member `i` serves a serializable read holding every key of `want`.
fn wait_holds(c: &Cluster, i: usize, want: &[(String, i64)]) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = as_map(c.full_range(i));
        if want.iter().all(|(k, _)| got.contains_key(k)) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every acknowledged write is in `got` (kvstore); for etcd, every one up to the backup's
/// `revision`. etcd drops the WAL's tail past the commit index its member knew (logging
/// "discarding"), though it may have applied some of it: acknowledged writes there are
/// lost, or served by the forced member and never sent to members added later. kvstore
/// keeps and commits that tail (see `force_new_cluster` in bootstrap.rs).
fn forced_holds(
    kind: Kind,
    label: &str,
    got: &BTreeMap<String, String>,
    acked: &[(String, i64)],
    revision: i64,
    log: &str,
) {
    let missing: Vec<&(String, i64)> = acked
        .iter()
        .filter(|(k, _)| got.get(k) != Some(&format!("v-{k}")))
        .collect();
    match kind {
        Kind::Kvstore => assert!(missing.is_empty(), "{kind:?} {label}: lost {missing:?}"),
        Kind::Etcd => assert!(
            missing.iter().all(|(_, r)| *r > revision)
                && (missing.is_empty() || log.contains("discarding")),
            "{kind:?} {label}: lost {missing:?}"
        ),
    }
}

fn disaster_recovery(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &[]);
    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("backup.db");
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(c.endpoints(), stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let saved = c.members[0].ok(&["snapshot", "save", file.to_str().expect("utf-8 path")]);
    assert!(saved.contains("Snapshot saved at"), "{kind:?}: {saved}");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let acked = load.join().expect("writer");
    let revision = status(kind, &file)["revision"]
        .as_i64()
        .expect("status revision");
    let (before, after): (Vec<_>, Vec<_>) =
        acked.iter().cloned().partition(|(_, r)| *r <= revision);
    assert!(
        before.len() >= 5 && !after.is_empty(),
        "{kind:?}: the backup at revision {revision} was not taken under the load: {} writes before, {} after",
        before.len(),
        after.len()
    );

    // Quorum lost for good: two members' data is gone; the third becomes a cluster of one.
    for i in [1, 2] {
        c.members[i].kill();
        std::fs::remove_dir_all(c.members[i].data_dir()).expect("remove data dir");
    }
    c.members[0].kill();
    c.members[0].extra.push("--force-new-cluster".into());
    c.members[0].launch();
    c.members[0].wait_ready();
    let list = c.members[0].ok(&["member", "list"]);
    assert_eq!(list.lines().count(), 1, "{kind:?}: {list}");
    let wait_for = if kind == Kind::Kvstore {
        &acked
    } else {
        &before
    };
    let got = wait_holds(&c, 0, wait_for);
    forced_holds(kind, "forced", &got, &acked, revision, &c.members[0].log());
    c.members[0].ok(&["put", "after-force", "1"]);
    // Grown again: a new member catches up with everything.
    let n = c.add_member();
    let got = wait_holds(&c, n, wait_for);
    forced_holds(kind, "grown", &got, &acked, revision, &c.members[0].log());
    assert_eq!(got.get("after-force").map(String::as_str), Some("1"));

    // The backup, restored into a new 3-member cluster.
    let mut r = Cluster::prepare(kind, 3, &[], Arc::new(|_, _| {}));
    for m in &r.members {
        let out = restore_into(kind, &file, m, &r.token);
        assert!(out.status.success(), "{kind:?}: restore: {}", text(&out));
    }
    for m in &mut r.members {
        m.launch();
    }
    let r = r.ready_all();
    let got = wait_holds(&r, 2, &before);
    crate::common::assert_none_lost(&format!("{kind:?} restored"), &before, |(k, _)| {
        got.get(k) == Some(&format!("v-{k}"))
    });
    let later: Vec<&String> = after
        .iter()
        .map(|(k, _)| k)
        .filter(|k| got.contains_key(*k))
        .collect();
    assert!(
        later.is_empty(),
        "{kind:?}: written after the backup, yet restored: {later:?}"
    );
    // Revisions are kept.
    let (key, rev) = before.last().expect("a write before the backup");
    let v = r.members[0].json(&["get", key]);
    assert_eq!(
        v["kvs"][0]["mod_revision"].as_i64(),
        Some(*rev),
        "{kind:?}: {v}"
    );
    assert!(
        v["header"]["revision"].as_i64() >= Some(revision),
        "{kind:?}: {v} after a backup at {revision}"
    );
    // A new cluster, not the old one.
    let old = c.members[0].json(&["endpoint", "status"]);
    let new = r.members[0].json(&["endpoint", "status"]);
    assert_ne!(
        old[0]["Status"]["header"]["cluster_id"], new[0]["Status"]["header"]["cluster_id"],
        "{kind:?}"
    );
}

#[test]
fn disaster_recovery_kvstore() {
    disaster_recovery(Kind::Kvstore);
}

#[test]
fn disaster_recovery_etcd() {
    disaster_recovery(Kind::Etcd);
}

/// What both tools refuse: a restore into a data dir that exists, and a damaged file.
fn refusals(kind: Kind) {
    let p = Proc::start(kind);
    p.ok(&["put", "k", "v"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    p.ok(&["snapshot", "save", file.to_str().expect("utf-8 path")]);
    let mut target = Proc::unstarted(kind);
    target.name = "m".into();
    target.initial_cluster = Some(format!("m={}", target.peer_url()));
    std::fs::create_dir_all(target.data_dir()).expect("mkdir");
    let out = restore_into(kind, &file, &target, "t");
    assert!(
        !out.status.success(),
        "{kind:?}: restored into an existing data dir"
    );
    let want = format!(
        "data-dir {:?} exists",
        target.data_dir().display().to_string()
    );
    assert!(text(&out).contains(&want), "{kind:?}: {}", text(&out));

    // One byte changed in the middle of the file: refused, and no data dir left behind.
    let mut bytes = std::fs::read(&file).expect("read backup");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, bytes).expect("write");
    std::fs::remove_dir_all(target.data_dir()).expect("rmdir");
    let out = restore_into(kind, &damaged, &target, "t");
    assert!(!out.status.success(), "{kind:?}: restored a damaged file");
    assert!(
        text(&out).contains("sha256") || text(&out).contains("SHA-256"),
        "{kind:?}: {}",
        text(&out)
    );
    // etcd 3.4 checks the hash after creating the data dir, and leaves it.
    if kind == Kind::Kvstore {
        assert!(!target.data_dir().exists(), "{kind:?}: a data dir was left");
    }
}

#[test]
fn refusals_kvstore() {
    refusals(Kind::Kvstore);
}

#[test]
fn refusals_etcd() {
    refusals(Kind::Etcd);
}

/// kvstore's own file checks: the status hash is the member's HashKV at the backup's
/// revision, etcdctl's output formats, an etcd snapshot named as such.
#[test]
fn status_matches_the_member() {
    let p = Proc::start(Kind::Kvstore);
    for i in 0..30 {
        p.ok(&["put", &format!("k{}", i % 7), &format!("v{i}")]);
    }
    p.ok(&["del", "k3"]);
    p.ok(&["compact", "10"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    p.ok(&["snapshot", "save", file.to_str().expect("utf-8 path")]);
    let size = std::fs::metadata(&file).expect("stat").len();
    assert_eq!(
        size % 512,
        32,
        "the SHA-256 sits where etcdctl looks for it"
    );
    let s = status(Kind::Kvstore, &file);
    let rev = s["revision"].as_i64().expect("revision");
    assert_eq!(rev, 32);
    let hashkv = p.json(&["endpoint", "hashkv", "--rev", &rev.to_string()]);
    assert_eq!(s["hash"], hashkv[0]["HashKV"]["hash"], "{s} {hashkv}");
    assert_eq!(s["totalSize"].as_u64(), Some(size));
    let mut c = snapshot_tool(Kind::Kvstore);
    c.arg("status").arg(&file);
    let simple = String::from_utf8_lossy(&run(c).stdout).trim().to_string();
    let fields: Vec<&str> = simple.split(", ").collect();
    assert_eq!(fields.len(), 4, "{simple}");
    assert_eq!(
        u32::from_str_radix(fields[0], 16).ok(),
        s["hash"].as_u64().map(|h| h as u32)
    );
    assert_eq!(fields[1], "32");

    // etcd's file, given to kvstore: named, with the way in.
    let e = Proc::start(Kind::Etcd);
    e.ok(&["put", "k", "v"]);
    let etcd_file = dir.path().join("etcd.db");
    e.ok(&["snapshot", "save", etcd_file.to_str().expect("utf-8 path")]);
    let mut c = snapshot_tool(Kind::Kvstore);
    c.arg("status").arg(&etcd_file);
    let out = run(c);
    assert!(!out.status.success());
    assert!(text(&out).contains("make-mirror"), "{}", text(&out));
}

/// An etcd 3.4 keyspace moved into kvstore the documented way: `etcdctl make-mirror`.
#[test]
fn etcd_keyspace_imported_with_make_mirror() {
    let e = Proc::start(Kind::Etcd);
    let k = Proc::start(Kind::Kvstore);
    let mut want = BTreeMap::new();
    for i in 0..40 {
        let (key, val) = (
            format!("/coreos.com/network/subnets/10.5.{i}.0-24"),
            format!("{{\"PublicIP\":\"192.0.2.{i}\"}}"),
        );
        e.ok(&["put", &key, &val]);
        want.insert(key, val);
    }
    e.ok(&[
        "put",
        "/coreos.com/network/config",
        "{\"Network\":\"10.5.0.0/16\"}",
    ]);
    want.insert(
        "/coreos.com/network/config".into(),
        "{\"Network\":\"10.5.0.0/16\"}".into(),
    );
    let mut mirror = testbed::etcd::etcdctl(None, &e.endpoint())
        .args(["make-mirror", &k.endpoint()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("make-mirror");
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let out = k.ok(&["get", "", "--prefix", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let got: BTreeMap<String, String> = v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (b64(&kv["key"]), b64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default();
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = mirror.kill();
    let _ = mirror.wait();
    assert_eq!(got, want);
}

fn b64(v: &serde_json::Value) -> String {
    crate::common::cluster::decode_b64(v.as_str().unwrap_or(""))
}
