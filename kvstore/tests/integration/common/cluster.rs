//! A loopback cluster of real server processes (kvstore members, or etcd 3.4 members as
//! the reference) built from [`Proc`]: free ports, one temp dir per member, a token
//! unique to the cluster; etcdctl against one member or all; leader lookup through
//! `endpoint status`; member add/remove through etcdctl. Dropping it kills every member.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Kind, Proc, free_port};

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// One member's view from `endpoint status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub revision: i64,
    pub applied: u64,
}

pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Proc>,
    pub token: String,
    /// Server flags every member gets.
    pub extra: Vec<String>,
    /// Flags every cluster-wide etcdctl run gets (TLS: `--cacert --cert --key`).
    pub ctl_args: Vec<String>,
    /// Adjusts each member (by index) before it first starts: schemes, TLS flags.
    setup: Setup,
}

/// How member `i` differs from the plain default (schemes, per-member flags).
pub type Setup = Arc<dyn Fn(usize, &mut Proc) + Send + Sync>;

impl Cluster {
    /// Starts `n` members and waits until each answers a linearizable read.
    pub fn start(kind: Kind, n: usize, extra: &[&str]) -> Cluster {
        let c = Cluster::launch(kind, n, extra, Arc::new(|_, _| {}));
        c.ready_all()
    }

    /// Starts `n` members, each adjusted by `setup` first (e.g. https URLs and TLS flags),
    /// and waits until each answers a linearizable read.
    pub fn start_with(kind: Kind, n: usize, extra: &[&str], setup: Setup) -> Cluster {
        Cluster::launch(kind, n, extra, setup).ready_all()
    }

    /// Waits until every member answers.
    pub fn ready_all(mut self) -> Cluster {
        for m in &mut self.members {
            m.wait_ready();
        }
        self
    }

    /// Starts `n` members adjusted by `setup` without waiting for any of them.
    pub fn launch(kind: Kind, n: usize, extra: &[&str], setup: Setup) -> Cluster {
        let mut c = Cluster::prepare(kind, n, extra, setup);
        for m in &mut c.members {
            m.launch();
        }
        c
    }

    /// `n` members adjusted by `setup`, with their ports, dirs, names and initial cluster
    /// decided, none started (e.g. to restore a backup into their data dirs first).
    pub fn prepare(kind: Kind, n: usize, extra: &[&str], setup: Setup) -> Cluster {
        let token = format!(
            "t{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut members: Vec<Proc> = (1..=n)
            .map(|i| Proc {
                kind,
                client_port: free_port(),
                peer_port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                extra: Vec::new(),
                name: format!("m{i}"),
                initial_cluster: None,
                initial_state: "new".into(),
                log_level: "info".into(),
                scheme: "http",
                peer_scheme: "http",
                ctl_args: Vec::new(),
                env: Vec::new(),
                child: None,
            })
            .collect();
        for (i, m) in members.iter_mut().enumerate() {
            setup(i, m);
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let initial = initial.join(",");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--initial-cluster-token".to_string(), token.clone()]);
        for m in &mut members {
            m.initial_cluster = Some(initial.clone());
            let own = std::mem::take(&mut m.extra);
            m.extra = extra.clone();
            m.extra.extend(own);
        }
        let ctl_args = members
            .first()
            .map(|m| m.ctl_args.clone())
            .unwrap_or_default();
        Cluster {
            kind,
            members,
            token,
            extra,
            ctl_args,
            setup,
        }
    }

    /// Client endpoints of the members still running, comma-separated.
    pub fn endpoints(&mut self) -> String {
        let mut eps = Vec::new();
        for m in &mut self.members {
            if m.is_running() {
                eps.push(m.endpoint());
            }
        }
        eps.join(",")
    }

    /// etcdctl against every running member.
    pub fn etcdctl(&mut self, args: &[&str]) -> std::process::Output {
        let eps = self.endpoints();
        std::process::Command::new(super::ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={eps}"))
            .args(&self.ctl_args)
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// etcdctl against every running member; stdout, failing the test on error.
    pub fn ok(&mut self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "{:?}: etcdctl {args:?} failed: {}",
            self.kind,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Member `i`'s status, if it answers within a second.
    pub fn status(&self, i: usize) -> Option<MemberStatus> {
        let out = self.members[i].etcdctl(&[
            "--command-timeout=1s",
            "--dial-timeout=1s",
            "endpoint",
            "status",
            "-w",
            "json",
        ]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = &v[0]["Status"];
        Some(MemberStatus {
            id: s["header"]["member_id"].as_u64()?,
            leader: s["leader"].as_u64()?,
            term: s["raftTerm"].as_u64()?,
            revision: s["header"]["revision"].as_i64()?,
            applied: s["raftAppliedIndex"].as_u64().unwrap_or(0),
        })
    }

    /// The index of the member every running member agrees leads (same leader id and
    /// term on all of them), waiting up to `timeout`.
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.agreed_leader() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: no leader agreed on within {timeout:?}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agreed_leader(&mut self) -> Option<usize> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect();
        let mut seen = Vec::new();
        for &i in &running {
            seen.push((i, self.status(i)?));
        }
        let (_, first) = seen.first()?;
        if first.leader == 0
            || seen
                .iter()
                .any(|(_, s)| s.leader != first.leader || s.term != first.term)
        {
            return None;
        }
        seen.iter()
            .find(|(_, s)| s.id == first.leader)
            .map(|(i, _)| *i)
    }

    /// Waits until every running member has applied the same revision.
    pub fn wait_converged(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].is_running())
                .collect();
            let revs: Vec<Option<i64>> = running
                .iter()
                .map(|&i| self.status(i).map(|s| s.revision))
                .collect();
            if revs.iter().all(|r| r.is_some() && *r == revs[0]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: members did not converge: {revs:?}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every key and value member `i` holds, read locally (serializable).
    pub fn full_range(&self, i: usize) -> Vec<(String, String)> {
        let out = self.members[i].ok(&["get", "", "--prefix", "--consistency=s", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("get json");
        let b64 = |s: &serde_json::Value| decode_b64(s.as_str().unwrap_or(""));
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (b64(&kv["key"]), b64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `etcdctl member add` for a new member on fresh ports, then starts it with
    /// `--initial-cluster-state existing` and the initial cluster etcdctl printed.
    pub fn add_member(&mut self) -> usize {
        let setup = self.setup.clone();
        let i = self.add_member_launched(&*setup);
        self.members[i].wait_ready();
        i
    }

    /// Like `add_member`, with the new member adjusted by `setup` (not the cluster's),
    /// and without waiting for it to answer.
    pub fn add_member_launched(&mut self, setup: &dyn Fn(usize, &mut Proc)) -> usize {
        let i = self.add_member_as(setup, &[]);
        self.members[i].launch();
        i
    }

    /// `etcdctl member add` with `add_args` (e.g. `--learner`) for a new member on fresh
    /// ports, set up to start with the initial cluster etcdctl printed, but not started.
    pub fn add_member_as(&mut self, setup: &dyn Fn(usize, &mut Proc), add_args: &[&str]) -> usize {
        let n = self.members.len() + 1;
        let mut p = Proc {
            kind: self.kind,
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: self.extra.clone(),
            name: format!("m{n}"),
            initial_cluster: None,
            initial_state: "existing".into(),
            log_level: "info".into(),
            scheme: "http",
            peer_scheme: "http",
            ctl_args: Vec::new(),
            env: Vec::new(),
            child: None,
        };
        setup(n - 1, &mut p);
        let peer_url = p.peer_url();
        let mut args = vec!["member", "add", &p.name, "--peer-urls", &peer_url];
        args.extend_from_slice(add_args);
        let out = self.reconfigure(&args);
        let initial = out
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out:?}"))
            .to_string();
        assert!(
            out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
            "{out}"
        );
        p.initial_cluster = Some(initial);
        self.members.push(p);
        self.members.len() - 1
    }

    /// A membership change through etcdctl; stdout. etcd refuses changes ("unhealthy
    /// cluster") until every member has been connected for a while: retried then.
    pub fn reconfigure(&mut self, args: &[&str]) -> String {
        self.reconfigure_with(args, |c, args| c.etcdctl(args))
    }

    /// Like [`Cluster::reconfigure`], sent to member `i` only (e.g. removing another member
    /// through it: a member serving its own removal may stop before it answers, and etcd
    /// then says "server stopped").
    pub fn reconfigure_through(&mut self, i: usize, args: &[&str]) -> String {
        self.reconfigure_with(args, |c, args| c.members[i].etcdctl(args))
    }

    fn reconfigure_with(
        &mut self,
        args: &[&str],
        run: impl Fn(&mut Cluster, &[&str]) -> std::process::Output,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run(self, args);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                stderr.contains("unhealthy cluster") && Instant::now() < deadline,
                "{:?}: etcdctl {args:?} failed: {stderr}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The member id of member `i`, from its status.
    pub fn id(&self, i: usize) -> u64 {
        self.status(i)
            .unwrap_or_else(|| panic!("member {i} does not answer"))
            .id
    }
}

pub fn decode_b64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            panic!("bad base64 {s:?}");
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
