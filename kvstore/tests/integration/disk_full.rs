//! A full disk: a kvstore member whose data dir is a 48 MiB tmpfs (mounted in a private
//! mount namespace the test creates with `unshare -m`, so the machine's mounts are never
//! touched and the mount goes away with the process; 32 MiB of it is the journal's
//! preallocated segment) takes puts until the disk is full. It stops by itself with a
//! non-zero exit and one `kvstore:` line naming the error; its data dir, copied to the real
//! disk before the namespace goes, starts a member that holds every acknowledged write.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvstore::client::{Client, req};

const TMPFS: &str = "size=48m";
const VALUE_LEN: usize = 6 * 1024;
const KEYS: u64 = 100;

/// A process (the namespace's shell, or a member) killed on drop, with the member the shell
/// started (its pid in `pidfile`).
struct Guard {
    child: Child,
    pidfile: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = self
            .pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kvstore_args(data: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data.display().to_string(),
        "--listen-client-urls".into(),
        format!("http://127.0.0.1:{client_port}"),
        "--listen-peer-urls".into(),
        format!("http://127.0.0.1:{peer_port}"),
    ]
}

async fn connect(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect(vec![endpoint], None).await
            && c.get("ready").await.is_ok()
        {
            return c;
        }
        assert!(Instant::now() < deadline, "{endpoint} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value(seq: u64) -> String {
    format!("{seq:010}-{}", "x".repeat(VALUE_LEN - 11))
}

#[test]
fn a_full_disk_stops_the_member_and_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&mnt).expect("mount point");
    std::fs::create_dir_all(&copy).expect("copy dir");
    let log = tmp.path().join("server.log");
    let pidfile = tmp.path().join("pid");
    let (client_port, peer_port) = (common::free_port(), common::free_port());
    let args = kvstore_args(&mnt.join("data"), client_port, peer_port).join(" ");
    // The shell runs in the new mount namespace: it mounts the tmpfs, runs the member, and
    // once the member has stopped copies its data dir out to the real disk.
    let script = format!(
        "mount -t tmpfs -o {TMPFS} tmpfs {mnt} || exit 97\n\
         {bin} {args} 2>>{log} & echo $! > {pidfile}\n\
         wait $!; rc=$?\n\
         cp -a {mnt}/data {copy}/ || exit 98\n\
         exit $rc\n",
        mnt = mnt.display(),
        bin = env!("CARGO_BIN_EXE_kvstore"),
        log = log.display(),
        pidfile = pidfile.display(),
        copy = copy.display(),
    );
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    let mut ns = Guard {
        child,
        pidfile: Some(pidfile.clone()),
    };

    let endpoint = format!("127.0.0.1:{client_port}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let acked: BTreeMap<String, u64> = rt.block_on(async {
        let cl = connect(&endpoint).await;
        let mut acked = BTreeMap::new();
        for seq in 1..=100_000u64 {
            let key = format!("k{:03}", seq % KEYS);
            let put =
                tokio::time::timeout(Duration::from_secs(10), cl.put(req::put(&key, value(seq))));
            match put.await {
                Ok(Ok(_)) => {
                    acked.insert(key, seq);
                }
                // The member stopped: the put was refused or never answered.
                Ok(Err(e)) => {
                    eprintln!("put {seq} failed: {e}");
                    return acked;
                }
                Err(_) => {
                    eprintln!("put {seq} not answered in 10 s");
                    return acked;
                }
            }
        }
        panic!("the tmpfs never filled");
    });
    assert!(
        acked.len() as u64 == KEYS,
        "only {} keys written",
        acked.len()
    );

    // The member stops by itself, with one line naming the error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = ns.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the member did not stop: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(status.code(), Some(1), "exit status; log:\n{text}");
    let last: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kvstore: "))
        .collect();
    assert_eq!(last.len(), 1, "one error line for the operator:\n{text}");
    assert!(
        last[0].contains("No space left on device"),
        "the line names the error: {}",
        last[0]
    );
    assert!(!text.contains("panicked"), "no panic:\n{text}");

    // On the real disk, from the copy: every acknowledged write is there.
    let (client_port, peer_port) = (common::free_port(), common::free_port());
    let member = Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(kvstore_args(&copy.join("data"), client_port, peer_port))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("restart");
    let _member = Guard {
        child: member,
        pidfile: None,
    };
    rt.block_on(async {
        let cl = connect(&format!("127.0.0.1:{client_port}")).await;
        for (key, seq) in &acked {
            let got = cl.get(key).await.expect("get");
            let v = got
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_default();
            let held: u64 = v.get(..10).and_then(|s| s.parse().ok()).unwrap_or(0);
            assert!(held >= *seq, "{key}: acknowledged {seq}, holds {held}");
        }
        // And it takes writes again.
        cl.put_kv("after", "v").await.expect("put after restart");
    });
}
