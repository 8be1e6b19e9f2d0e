//! Test harness shared by the kvstore integration tests: starts a real server process
//! (kvstore, or etcd 3.4 as the reference) on free loopback ports in a temporary data
//! dir, runs the stock `etcdctl` against it, and kills everything on drop. `cluster`
//! builds multi-member clusters out of the same processes.
#![allow(dead_code)]

pub mod cluster;
pub mod history;
pub mod netns;
pub mod traffic;
pub mod watch_check;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kvstore,
    Etcd,
}

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's etcd-server and etcd-client (scripts/install-deps.sh test)"
    );
}

/// Fails when any acknowledged write is not `kept` (read back intact), naming a few;
/// `label` (e.g. the server kind) starts the message.
pub fn assert_none_lost<T: std::fmt::Debug>(label: &str, acked: &[T], kept: impl Fn(&T) -> bool) {
    let lost: Vec<&T> = acked.iter().filter(|w| !kept(w)).collect();
    assert!(
        lost.is_empty(),
        "{label}{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// An HTTP/1.1 GET of `path` on loopback `port` (a metrics URL): the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, "")
}

/// An HTTP/1.1 request `method path` with `body` on loopback `port`: the status code and
/// the body of the answer.
pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
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
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// A free TCP port on loopback, below the kernel's ephemeral range (32768 and up), so
/// that no outgoing connection (members dial each other) can take it before the server
/// binds it.
///
/// The port is also reserved for the rest of this process: a lock on a file named for it
/// in the temporary directory, held until the process exits. Tests run as parallel
/// processes, and a test that kills a member and starts it again leaves its ports unbound
/// in between; without the reservation another test could take them (it happened: a
/// restarted member found another test's cluster on its peers' ports).
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("kvstore-test-ports");
    std::fs::create_dir_all(&dir).expect("port reservation dir");
    // Spread processes (tests run in parallel) over the range by pid.
    let base = 12_000 + (std::process::id() % 1000) as u16 * 20;
    for _ in 0..20_000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 12_000 + (base - 12_000 + step) % 20_000;
        let Ok(file) = std::fs::File::create(dir.join(port.to_string())) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free port on loopback");
}

/// The output of a server expected to exit by itself; killed (failing the test) past `within`.
pub fn wait_output(mut child: std::process::Child, within: Duration) -> std::process::Output {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "server still running after {within:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A member named "default" in `dir`/data on free loopback ports, for tests that run the
/// server binary themselves (e.g. to see how it refuses a flag).
pub fn lone_member(dir: &Path) -> testbed::etcd::Member {
    testbed::etcd::Member::new(
        "default",
        &dir.join("data"),
        &format!("http://127.0.0.1:{}", free_port()),
        &format!("http://127.0.0.1:{}", free_port()),
    )
}

/// A server process and its data.
pub struct Proc {
    pub kind: Kind,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: tempfile::TempDir,
    /// Extra server flags, kept across restarts.
    pub extra: Vec<String>,
    /// "http", or "https" for a TLS client URL.
    pub scheme: &'static str,
    /// "http", or "https" for a TLS peer URL.
    pub peer_scheme: &'static str,
    /// Flags every etcdctl run gets (e.g. `--cacert --cert --key` for a TLS server).
    pub ctl_args: Vec<String>,
    /// Member name, `--initial-cluster` (None: just this member) and its state.
    pub name: String,
    pub initial_cluster: Option<String>,
    pub initial_state: String,
    /// `RUST_LOG` of a kvstore server.
    pub log_level: String,
    /// Environment variables the server gets (e.g. `FAILPOINTS`), kept across restarts.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    /// Starts a fresh single-member server and waits until it answers.
    pub fn start(kind: Kind) -> Proc {
        Proc::start_with(kind, &[])
    }

    /// Like `start`, with extra server flags.
    pub fn start_with(kind: Kind, extra: &[&str]) -> Proc {
        Proc::start_with_scheme(kind, "http", extra, &[])
    }

    /// Like `start_with`, serving clients on `scheme` (http or https), with `ctl_args` given
    /// to every etcdctl run (readiness check included).
    pub fn start_with_scheme(
        kind: Kind,
        scheme: &'static str,
        extra: &[&str],
        ctl_args: &[&str],
    ) -> Proc {
        let mut p = Proc::unstarted(kind);
        p.extra = extra.iter().map(|s| s.to_string()).collect();
        p.scheme = scheme;
        p.ctl_args = ctl_args.iter().map(|s| s.to_string()).collect();
        p.spawn();
        p
    }

    /// A single-member server on free ports and a fresh dir, not started.
    pub fn unstarted(kind: Kind) -> Proc {
        Proc {
            kind,
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: Vec::new(),
            scheme: "http",
            peer_scheme: "http",
            ctl_args: Vec::new(),
            name: "default".into(),
            initial_cluster: None,
            initial_state: "new".into(),
            log_level: "warn".into(),
            env: Vec::new(),
            child: None,
        }
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    /// Whether the process runs (it may have exited by itself).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn endpoint(&self) -> String {
        match self.scheme {
            "http" => format!("127.0.0.1:{}", self.client_port),
            _ => self.url(),
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// Starts the process without waiting for it to answer (a cluster member answers only
    /// once a quorum runs).
    pub fn launch(&mut self) {
        let bin = match self.kind {
            Kind::Kvstore => env!("CARGO_BIN_EXE_kvstore").to_string(),
            Kind::Etcd => {
                require(ETCD);
                ETCD.to_string()
            }
        };
        let client = self.url();
        let peer = self.peer_url();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let mut member = testbed::etcd::Member::new(&self.name, &self.data_dir(), &client, &peer);
        member.initial_cluster = self.initial_cluster.clone();
        member.state = self.initial_state.clone();
        member.extra = self.extra.iter().map(Into::into).collect();
        let child = member
            .command(Path::new(&bin), None)
            .env("RUST_LOG", &self.log_level)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start server");
        self.child = Some(child);
    }

    /// Waits until the server answers a linearizable read.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&["--command-timeout=1s", "endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("{:?} exited early ({st}): {}", self.kind, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not ready: {}",
                self.kind,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's resident memory in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("the server runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs etcdctl (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        require(ETCDCTL);
        testbed::etcd::etcdctl(None, &self.endpoint())
            .args(&self.ctl_args)
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Runs etcdctl feeding `stdin`.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        require(ETCDCTL);
        let mut c = testbed::etcd::etcdctl(None, &self.endpoint())
            .args(&self.ctl_args)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        c.wait_with_output().expect("etcdctl output")
    }

    /// Runs etcdctl and returns stdout, failing the test on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "{:?}: etcdctl {args:?} failed: {}",
            self.kind,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs etcdctl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            !out.status.success(),
            "{:?}: etcdctl {args:?} unexpectedly succeeded",
            self.kind
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts a long-running etcdctl (e.g. watch) whose stdout lines arrive on a channel.
    pub fn etcdctl_stream(&self, args: &[&str]) -> Streamer {
        require(ETCDCTL);
        let mut child = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(&self.ctl_args)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streamer { child, lines: rx }
    }

    /// The JSON output of `etcdctl -w json ARGS`.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-w", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {out:?}: {e}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running etcdctl whose output is read line by line.
pub struct Streamer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streamer {
    /// The next `n` lines, failing the test if they do not come within 10 s.
    pub fn take(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.lines
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("only {i} of {n} lines arrived"))
            })
            .collect()
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Declares one `#[test]` per server kind for each suite function `fn(&Proc)`.
#[macro_export]
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod on_kvstore {
            $(#[test] fn $name() { super::$name(&$crate::common::Proc::start($crate::common::Kind::Kvstore)); })*
        }
        mod on_etcd {
            $(#[test] fn $name() { super::$name(&$crate::common::Proc::start($crate::common::Kind::Etcd)); })*
        }
    };
}

/// Like `against_both!` for `async fn(&Proc)` suites.
#[macro_export]
macro_rules! against_both_async {
    ($($name:ident),* $(,)?) => {
        mod on_kvstore {
            $(#[tokio::test] async fn $name() {
                let p = $crate::common::Proc::start($crate::common::Kind::Kvstore);
                super::$name(&p).await;
            })*
        }
        mod on_etcd {
            $(#[tokio::test] async fn $name() {
                let p = $crate::common::Proc::start($crate::common::Kind::Etcd);
                super::$name(&p).await;
            })*
        }
    };
}
