//! A multi-member cluster (kvstore or etcd 3.4) with each member in its own network
//! namespace, for fault tests: members hang off a bridge in a "switch" namespace by veth
//! pairs; clients run in the switch namespace (`NetCluster::block_on`); a member can be
//! SIGKILLed and restarted, or cut off from its peers by nftables drop rules inside its own
//! namespace (its clients still reach it) and healed.
//!
//! Every name carries the test process id and a counter, so tests run in parallel. Drop
//! kills every member and deletes every namespace (veths go with them), also when the test
//! panics. Nothing is ever added to the machine's root namespace.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvstore::proto::etcdserverpb::{
    StatusRequest, StatusResponse, maintenance_client::MaintenanceClient,
};
use tonic::transport::{Channel, Endpoint};

use super::{ETCD, ETCDCTL, Kind};

/// The switch namespace's own address: where clients come from.
pub const CLIENT_IP: &str = "192.0.2.254";
/// The nftables table holding a member's partition rules.
const PARTITION_TABLE: &str = "kvpartition";

/// Address of member `i` (0-based) on the test's private subnet.
pub fn member_ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

/// Fails (never skips) when a prerequisite of the namespace tests is missing.
pub fn require_prerequisites(kind: Kind) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "network-namespace tests need root; run them as root"
    );
    let mut tools = vec![ETCDCTL];
    if kind == Kind::Etcd {
        tools.push(ETCD);
    }
    for t in tools {
        assert!(
            Path::new(t).exists(),
            "{t} is missing: run scripts/install-deps.sh test (etcd-server, etcd-client)"
        );
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is missing: run scripts/install-deps.sh test (iproute2, nftables)"
        );
    }
}

/// Runs a command, failing the test with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command feeding `input` on stdin, failing the test when it fails.
fn run_stdin(args: &[&str], input: &str) {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "kvt{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes the namespaces (and kills the processes in them) left by earlier test processes
/// that were killed before their drop guards ran; their names carry the dead process id.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = ns
            .strip_prefix("kvt")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter_netns(ns: &str) {
    hostnet::netns::Netns::named(ns)
        .and_then(|n| n.enter_this_thread())
        .unwrap_or_else(|e| panic!("{e}"));
}

/// One member: its namespace, data and (while running) process.
struct Member {
    ns: String,
    child: Option<Child>,
}

/// A running cluster in namespaces; see the module doc.
pub struct NetCluster {
    pub kind: Kind,
    pub prefix: String,
    dir: tempfile::TempDir,
    switch_ns: String,
    members: Vec<Mutex<Member>>,
    isolated: Mutex<BTreeSet<usize>>,
    /// Every namespace created, deleted on drop.
    namespaces: Vec<String>,
}

impl NetCluster {
    /// Creates the namespaces and starts an `n`-member cluster, waiting until every member
    /// answers a health check.
    pub fn start(kind: Kind, n: usize) -> NetCluster {
        require_prerequisites(kind);
        remove_orphans();
        let prefix = unique_prefix();
        let switch_ns = format!("{prefix}-sw");
        let mut c = NetCluster {
            kind,
            dir: tempfile::tempdir().expect("tempdir"),
            switch_ns: switch_ns.clone(),
            members: Vec::new(),
            isolated: Mutex::new(BTreeSet::new()),
            namespaces: Vec::new(),
            prefix: prefix.clone(),
        };
        c.add_ns(&switch_ns);
        run(&[
            "ip", "-n", &switch_ns, "link", "add", "br0", "type", "bridge",
        ]);
        run(&[
            "ip",
            "-n",
            &switch_ns,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "br0",
        ]);
        run(&["ip", "-n", &switch_ns, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{prefix}-m{i}");
            c.add_ns(&ns);
            let port = format!("m{i}");
            run(&[
                "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                "netns", &switch_ns,
            ]);
            run(&[
                "ip", "-n", &switch_ns, "link", "set", &port, "master", "br0", "up",
            ]);
            let addr = format!("{}/24", member_ip(i));
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            c.members.push(Mutex::new(Member { ns, child: None }));
        }
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i, Duration::from_secs(30));
        }
        c
    }

    /// Member `i`, also after a panic poisoned its lock (teardown must still run).
    fn member(&self, i: usize) -> std::sync::MutexGuard<'_, Member> {
        self.members[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_ns(&mut self, ns: &str) {
        run(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The client URL of member `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}:2379", member_ip(i))
    }

    fn peer_url(&self, i: usize) -> String {
        format!("http://{}:2380", member_ip(i))
    }

    fn name(i: usize) -> String {
        format!("m{i}")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    /// Member `i`'s log so far (all its runs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Starts member `i`'s process (same flags and data on every start).
    fn spawn(&self, i: usize) {
        let bin = match self.kind {
            Kind::Kvstore => env!("CARGO_BIN_EXE_kvstore"),
            Kind::Etcd => ETCD,
        };
        let initial: Vec<String> = (0..self.len())
            .map(|j| format!("{}={}", Self::name(j), self.peer_url(j)))
            .collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("member log");
        let mut m = self.member(i);
        assert!(m.child.is_none(), "member {i} is already running");
        let data = self.dir.path().join(format!("m{i}.data"));
        let child = Command::new("ip")
            .args(["netns", "exec", &m.ns, bin])
            .args(["--name", &Self::name(i)])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &self.url(i)])
            .args(["--advertise-client-urls", &self.url(i)])
            .args(["--listen-peer-urls", &self.peer_url(i)])
            .args(["--initial-advertise-peer-urls", &self.peer_url(i)])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.prefix])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start member");
        m.child = Some(child);
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&self, i: usize) -> bool {
        let mut m = self.member(i);
        match m.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs member `i` (no chance to flush anything).
    pub fn kill(&self, i: usize) {
        let mut m = self.member(i);
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data after a kill; does not wait for it.
    pub fn restart(&self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Runs etcdctl from the client namespace against member `i`.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.switch_ns, ETCDCTL])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url(i)))
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Waits until member `i` passes `etcdctl endpoint health` (a quorum read).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.etcdctl(i, &["--command-timeout=1s", "endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                self.is_running(i),
                "{:?} member {i} exited: {}",
                self.kind,
                self.log(i)
            );
            assert!(
                Instant::now() < deadline,
                "{:?} member {i} not healthy after {timeout:?}: {}\n{}",
                self.kind,
                String::from_utf8_lossy(&out.stderr),
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Cuts member `i` off from every other member, both ways, with nftables rules inside
    /// its own namespace. Clients (from the switch namespace) still reach it.
    pub fn isolate(&self, i: usize) {
        let peers: Vec<String> = (0..self.len()).filter(|&j| j != i).map(member_ip).collect();
        let set = peers.join(", ");
        let rules = format!(
            "table inet {PARTITION_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        let ns = self.member(i).ns.clone();
        let mut isolated = self.isolated.lock().unwrap_or_else(|e| e.into_inner());
        if isolated.insert(i) {
            run_stdin(&["ip", "netns", "exec", &ns, "nft", "-f", "-"], &rules);
        }
    }

    /// Removes every partition.
    pub fn heal(&self) {
        let mut isolated = self.isolated.lock().unwrap_or_else(|e| e.into_inner());
        for i in std::mem::take(&mut *isolated) {
            let ns = self.member(i).ns.clone();
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "nft",
                "delete",
                "table",
                "inet",
                PARTITION_TABLE,
            ]);
        }
    }

    /// Members currently isolated.
    pub fn isolated(&self) -> BTreeSet<usize> {
        self.isolated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `f` on a thread inside the switch namespace with a tokio runtime whose threads
    /// are all in that namespace, so every socket the clients open reaches the members.
    pub fn block_on<F: std::future::Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        let ns = self.switch_ns.clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                enter_netns(&ns);
                let worker_ns = ns.clone();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(move || enter_netns(&worker_ns))
                    .build()
                    .expect("tokio runtime");
                rt.block_on(f)
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// A lazily connecting gRPC channel to member `i` with a per-request deadline; only
    /// usable inside `block_on`.
    pub fn channel(&self, i: usize, timeout: Duration) -> Channel {
        Endpoint::from_shared(self.url(i))
            .expect("member URL")
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout)
            .connect_lazy()
    }

    /// Member `i`'s Status (inside `block_on`).
    pub async fn status(&self, i: usize) -> Result<StatusResponse, tonic::Status> {
        let mut c = MaintenanceClient::new(self.channel(i, Duration::from_secs(1)));
        Ok(c.status(StatusRequest {}).await?.into_inner())
    }

    /// The member a majority of members reports as leader, if any (inside `block_on`).
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for i in 0..self.len() {
            match self.status(i).await {
                Ok(s) => {
                    ids.push(s.header.map(|h| h.member_id));
                    leaders.push(Some(s.leader).filter(|&l| l != 0));
                }
                Err(_) => {
                    ids.push(None);
                    leaders.push(None);
                }
            }
        }
        (0..self.len()).find(|&i| {
            let Some(id) = ids[i] else { return false };
            leaders.iter().filter(|l| **l == Some(id)).count() > self.len() / 2
        })
    }

    /// Waits for a leader agreed by a majority that is not in `not` (inside `block_on`).
    pub async fn wait_leader(&self, not: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await
                && !not.contains(&l)
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: no leader outside {not:?} after {timeout:?}",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn tail_logs(&self) {
        for i in 0..self.len() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(25);
            eprintln!("--- {:?} member {i} log (last lines) ---", self.kind);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.tail_logs();
        }
        for i in 0..self.len() {
            self.kill(i);
        }
        for ns in self.namespaces.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !out.is_ok_and(|o| o.status.success()) {
                eprintln!("warning: could not delete namespace {ns}");
            }
        }
    }
}
