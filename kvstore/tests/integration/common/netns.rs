//! A multi-member cluster (kvstore or etcd 3.4) with each member in its own network
//! namespace, for fault tests. The namespaces are testbed's standard underlay: member `i` is
//! host `i + 1` on the underlay bridge; clients run in the underlay namespace
//! (`NetCluster::block_on`); a member can be SIGKILLed and restarted, or cut off from its peers
//! by nftables drop rules inside its own namespace (its clients still reach it) and healed.
//!
//! Names follow testbed's scheme (leftovers of crashed runs are swept), so tests run in
//! parallel. Drop kills every member and deletes every namespace (veths go with them), also
//! when the test panics. Nothing is ever added to the machine's root namespace.
//!
//! For a failure hunt: `NETNS_MEMBER_LOG` is the members' `RUST_LOG` (default `warn`), and
//! with `NETNS_KEEP_DIR=DIR` a failed test leaves a copy of its members' data directories and
//! logs in `DIR/<pid>`.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvstore::proto::etcdserverpb::{
    StatusRequest, StatusResponse, maintenance_client::MaintenanceClient,
};
use tonic::transport::{Channel, Endpoint};

use testbed::etcd;
use testbed::lab::{self, Lab, UNDERLAY_GW};

use super::{ETCD, ETCDCTL, Kind};

/// The underlay bridge's own address: where clients come from.
pub const CLIENT_IP: std::net::Ipv4Addr = UNDERLAY_GW;
/// The nftables table holding a member's partition rules.
const PARTITION_TABLE: &str = "kvpartition";

/// Address of member `i` (0-based): host `i + 1` of the underlay.
pub fn member_ip(i: usize) -> String {
    lab::host_ip(i + 1).to_string()
}

/// The members' `RUST_LOG`: `NETNS_MEMBER_LOG`, or `warn`.
fn member_log_level() -> String {
    std::env::var("NETNS_MEMBER_LOG").unwrap_or_else(|_| "warn".into())
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
    testbed::cmd::run(args).unwrap_or_else(|e| panic!("{e:#}"))
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

/// Moves the calling thread into namespace `ns`.
fn enter_netns(ns: &str) {
    hostnet::netns::Netns::named(ns)
        .and_then(|n| n.enter_this_thread())
        .unwrap_or_else(|e| panic!("{e}"));
}

/// One member: its namespace, data, environment and (while running) process.
struct Member {
    ns: String,
    /// Environment variables the process gets on every start (e.g. `FAILPOINTS_HTTP`).
    base_env: Vec<(String, String)>,
    /// And those it gets from its next start on (e.g. `FAILPOINTS`).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A running cluster in namespaces; see the module doc.
pub struct NetCluster {
    pub kind: Kind,
    dir: tempfile::TempDir,
    switch_ns: String,
    members: Vec<Mutex<Member>>,
    isolated: Mutex<BTreeSet<usize>>,
    /// Every namespace created, deleted when dropped (after the members are killed).
    lab: Lab,
}

impl NetCluster {
    /// Creates the namespaces and starts an `n`-member cluster, waiting until every member
    /// answers a health check.
    pub fn start(kind: Kind, n: usize) -> NetCluster {
        Self::start_with_env(kind, n, &|_| Vec::new())
    }

    /// As [`NetCluster::start`], member `i` getting the environment `env(i)` on every start.
    pub fn start_with_env(
        kind: Kind,
        n: usize,
        env: &dyn Fn(usize) -> Vec<(String, String)>,
    ) -> NetCluster {
        require_prerequisites(kind);
        let mut lab = Lab::new();
        let switch_ns = lab.add_underlay().expect("underlay");
        let mut members = Vec::new();
        for i in 0..n {
            let ns = lab.add_host(i + 1).expect("member namespace");
            members.push(Mutex::new(Member {
                ns,
                base_env: env(i),
                env: Vec::new(),
                child: None,
            }));
        }
        let c = NetCluster {
            kind,
            dir: tempfile::tempdir().expect("tempdir"),
            switch_ns,
            members,
            isolated: Mutex::new(BTreeSet::new()),
            lab,
        };
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
        let mut member = etcd::Member::new(&Self::name(i), &data, &self.url(i), &self.peer_url(i));
        member.initial_cluster = Some(initial.join(","));
        member.token = Some(self.lab.prefix().to_string());
        member.extra = ["--heartbeat-interval", "100", "--election-timeout", "1000"]
            .map(Into::into)
            .to_vec();
        let child = member
            .command(Path::new(bin), Some(&m.ns))
            .env("RUST_LOG", member_log_level())
            .envs(m.base_env.iter().chain(&m.env).map(|(k, v)| (k, v)))
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

    /// Sets the environment member `i` gets from its next start on.
    pub fn set_env(&self, i: usize, env: &[(&str, &str)]) {
        self.member(i).env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts member `i` again on its data after a kill; does not wait for it.
    pub fn restart(&self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Runs etcdctl from the client namespace against member `i`.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        etcd::etcdctl(Some(&self.switch_ns), &self.url(i))
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
        if let Some(keep) = std::env::var_os("NETNS_KEEP_DIR").filter(|_| std::thread::panicking())
        {
            let keep = PathBuf::from(keep).join(std::process::id().to_string());
            let copied = std::fs::create_dir_all(&keep).and_then(|()| {
                Command::new("cp")
                    .arg("-a")
                    .arg(self.dir.path())
                    .arg(&keep)
                    .status()
            });
            match copied {
                Ok(s) if s.success() => {
                    eprintln!("the members' data and logs are kept in {}", keep.display())
                }
                other => eprintln!(
                    "could not keep the members' data in {}: {other:?}",
                    keep.display()
                ),
            }
        }
        // The namespaces go when `lab` is dropped, after this.
    }
}
