//! Shared end-to-end helpers: a test world of network namespaces built with `testbed` (its
//! underlay bridge, hosts h1..hN, optional container namespaces, its naming scheme and sweep), a
//! real etcd inside the underlay namespace, and the real `netd` binary per host. Everything is
//! removed on drop — processes killed, namespaces deleted — also when the test fails.
//!
//! Nothing is ever added to the machine's root namespace.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testbed::etcd;
pub use testbed::lab::UNDERLAY_GW;
use testbed::lab::{self, Lab};

pub const NETD: &str = env!("CARGO_BIN_EXE_netd");
pub const DEFAULT_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Fails (never skips) when something the end-to-end tests need is missing.
pub fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests need root (network namespaces, netlink); run them as root"
    );
    if let Err(e) = etcd::require() {
        panic!("{e}");
    }
    for tool in ["ip", "ping", "nft", "bridge"] {
        assert!(
            testbed::cmd::on_path(tool),
            "`{tool}` is missing: run scripts/install-deps.sh test (iproute2, iputils-ping, nftables)"
        );
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(args: &[&str]) -> String {
    let out = try_run(args);
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output, whatever the exit status.
pub fn try_run(args: &[&str]) -> Output {
    testbed::cmd::output(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `f` on a thread that has joined namespace `ns` (the calling thread never changes
/// namespace); `f` may build its own runtime.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    testbed::netns::within(ns, f).unwrap_or_else(|e| panic!("netns {ns}: {e:#}"))
}

/// Runs the netd binary in the current namespace with `args`, for invocations that must exit on
/// their own; killed (and the test failed) if still running after 10 s.
pub fn netd_cli(args: &[&str]) -> Output {
    let mut child = Command::new(NETD)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netd");
    let start = Instant::now();
    while matches!(child.try_wait(), Ok(None)) {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netd {args:?} did not exit within 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("netd output")
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    if let Err(e) = testbed::cmd::wait_until(what, timeout, cond) {
        panic!("{e}");
    }
}

pub type Routes = BTreeMap<String, (String, String)>;
pub type Neighs = BTreeMap<String, String>;
pub type Fdb = BTreeMap<String, String>;

/// A netd process on one host.
pub struct NetdProc {
    pub child: Child,
    pub log: PathBuf,
}

/// The whole test world.
pub struct World {
    pub dir: tempfile::TempDir,
    /// Dropped after `World::drop` has stopped netd and etcd: deletes the namespaces.
    lab: Lab,
    etcd: Vec<Child>,
    /// Members of the etcd store (1, or 3 for a real etcd cluster), kept for restarts.
    etcd_members: usize,
    /// KV endpoints handed to every netd (`--etcd-endpoints`); a parameter so the same tests can
    /// run against the embedded kvstore.
    pub endpoints: String,
    pub prefix_key: String,
    netd: BTreeMap<usize, NetdProc>,
    pub healthz_port: u16,
    /// When set, a directory written by `netd certs` (CA, member `etcd`, client `netd`): etcd
    /// serves https with client-cert-auth, and etcdctl presents the `netd` client certificate.
    pub tls_dir: Option<PathBuf>,
}

impl World {
    /// Underlay namespace with bridge `br0` (192.0.2.254/24) and hosts h1..h`hosts`.
    pub fn new(hosts: usize) -> World {
        require_prerequisites();
        let mut w = World {
            dir: tempfile::tempdir().expect("tempdir"),
            lab: Lab::new(),
            etcd: Vec::new(),
            etcd_members: 1,
            endpoints: String::new(),
            prefix_key: "/coreos.com/network".into(),
            netd: BTreeMap::new(),
            healthz_port: 20000 + (rand::random::<u16>() % 30000),
            tls_dir: None,
        };
        w.lab.add_underlay().expect("underlay");
        for i in 1..=hosts {
            w.add_host(i);
        }
        w
    }

    /// A new namespace of this world (removed with it), e.g. a container's.
    pub fn add_ns(&mut self, tag: &str) -> String {
        self.lab.add_ns(tag).expect("add netns")
    }

    /// Namespace name of host `i`.
    pub fn host(&self, i: usize) -> String {
        self.lab.host(i)
    }

    /// Namespace name of the underlay.
    pub fn underlay(&self) -> String {
        self.lab.underlay()
    }

    /// Underlay address of host `i`.
    pub fn host_ip(i: usize) -> Ipv4Addr {
        lab::host_ip(i)
    }

    /// Adds host namespace `h<i>` with `eth0` = 192.0.2.i/24 on the underlay bridge.
    pub fn add_host(&mut self, i: usize) {
        self.lab.add_host(i).expect("add host");
    }

    /// Starts etcd inside the underlay namespace and stores `config` at `<prefix>/config`.
    pub fn start_etcd(&mut self, config: &str) {
        self.start_etcd_members(config, 1);
    }

    /// Starts a real `members`-member etcd cluster inside the underlay namespace (clients on
    /// the gateway address, ports 2379, 12379, 22379…; peers on loopback) and stores `config`.
    /// Every netd is given all members' client URLs.
    pub fn start_etcd_members(&mut self, config: &str, members: usize) {
        let ul = self.underlay();
        self.etcd_members = members;
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        let client = |m: usize| format!("{scheme}://{UNDERLAY_GW}:{}", 10000 * m + 2379);
        let peer = |m: usize| format!("http://127.0.0.1:{}", 10000 * m + 2380);
        let initial = (0..members)
            .map(|m| format!("e{}={}", m + 1, peer(m)))
            .collect::<Vec<_>>()
            .join(",");
        let tls: Vec<PathBuf> = match &self.tls_dir {
            Some(d) => vec![
                "--cert-file".into(),
                d.join("etcd.pem"),
                "--key-file".into(),
                d.join("etcd-key.pem"),
                "--trusted-ca-file".into(),
                d.join("ca.pem"),
                "--client-cert-auth".into(),
            ],
            None => Vec::new(),
        };
        for m in 0..members {
            let name = format!("e{}", m + 1);
            // The first member keeps the historical paths (logs are read by name in tests).
            let (data, log) = if m == 0 {
                ("etcd".to_string(), "etcd.log".to_string())
            } else {
                (format!("etcd-{name}"), format!("etcd-{name}.log"))
            };
            let log = std::fs::File::create(self.dir.path().join(log)).expect("etcd log");
            let mut member =
                etcd::Member::new(&name, &self.dir.path().join(data), &client(m), &peer(m));
            member.initial_cluster = Some(initial.clone());
            member.extra = tls.iter().map(Into::into).collect();
            let child = member
                .command(Path::new(etcd::ETCD), Some(&ul))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            self.etcd.push(child);
        }
        self.endpoints = (0..members).map(client).collect::<Vec<_>>().join(",");
        wait_until("etcd to answer", Duration::from_secs(20), || {
            self.etcdctl_try(&["endpoint", "health"]).status.success()
        });
        if !config.is_empty() {
            self.etcdctl(&["put", &format!("{}/config", self.prefix_key), config]);
        }
    }

    /// Kills etcd (SIGKILL) — the data dir stays, so [`World::restart_etcd`] brings it back.
    pub fn stop_etcd(&mut self) {
        for mut c in self.etcd.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart_etcd(&mut self) {
        self.start_etcd_members("", self.etcd_members);
    }

    /// etcdctl's TLS flags for the world's store (the `netd` client certificate).
    pub fn etcdctl_tls(&self) -> Vec<String> {
        match &self.tls_dir {
            Some(d) => vec![
                format!("--cacert={}", d.join("ca.pem").display()),
                format!("--cert={}", d.join("netd.pem").display()),
                format!("--key={}", d.join("netd-key.pem").display()),
            ],
            None => Vec::new(),
        }
    }

    pub fn etcdctl_try(&self, args: &[&str]) -> Output {
        etcd::etcdctl(Some(&self.underlay()), &self.endpoints)
            .args(self.etcdctl_tls())
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Runs etcdctl against the world's store; panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_try(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// All subnet records: key suffix → JSON value.
    pub fn records(&self) -> BTreeMap<String, serde_json::Value> {
        let prefix = format!("{}/subnets/", self.prefix_key);
        let out = self.etcdctl(&["get", "--prefix", &prefix]);
        let lines: Vec<&str> = out.lines().collect();
        let mut m = BTreeMap::new();
        for pair in lines.chunks(2) {
            if let [k, v] = pair {
                let key = k.strip_prefix(&prefix).unwrap_or(k).to_string();
                let value =
                    serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.to_string()));
                m.insert(key, value);
            }
        }
        m
    }

    /// Starts netd on host `i` with the world's endpoints plus `extra` flags.
    pub fn start_netd(&mut self, i: usize, extra: &[&str]) {
        // No endpoints: netd runs its embedded KV member (flags for it come in `extra`).
        let mut args: Vec<String> = if self.endpoints.is_empty() {
            Vec::new()
        } else {
            vec!["--etcd-endpoints".into(), self.endpoints.clone()]
        };
        args.extend(extra.iter().map(|a| a.to_string()));
        self.spawn_netd(i, &args);
    }

    /// Client URL of the embedded member on host `i` (its underlay address, port 2379).
    pub fn member_client_url(i: usize) -> String {
        format!("http://{}:2379", Self::host_ip(i))
    }

    /// Client URLs of the embedded members on `members`, comma-separated (an
    /// `--etcd-endpoints` / etcdctl `--endpoints` value).
    pub fn member_client_urls(members: &[usize]) -> String {
        members
            .iter()
            .map(|&m| Self::member_client_url(m))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `--kv-*` flags of host `i` as one member of the embedded cluster formed by netd on
    /// `members`: peers and clients on the host's underlay address, data under the world's dir.
    pub fn kv_member_flags(&self, i: usize, members: &[usize], state: &str) -> Vec<String> {
        let ip = Self::host_ip(i);
        let cluster = members
            .iter()
            .map(|&m| format!("h{m}=http://{}:2380", Self::host_ip(m)))
            .collect::<Vec<_>>()
            .join(",");
        let data = self.dir.path().join(format!("kv-h{i}"));
        vec![
            "--kv-name".into(),
            format!("h{i}"),
            "--kv-initial-cluster".into(),
            cluster,
            "--kv-initial-cluster-state".into(),
            state.into(),
            "--kv-initial-cluster-token".into(),
            format!("netd-{}", self.lab.prefix()),
            "--kv-listen-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--kv-listen-client-urls".into(),
            Self::member_client_url(i),
            "--kv-data-dir".into(),
            data.to_string_lossy().into_owned(),
        ]
    }

    /// Starts netd on host `i` running one member of the embedded cluster formed by netd on
    /// `members` (no `--etcd-endpoints`), plus `extra` flags.
    pub fn start_netd_member(&mut self, i: usize, members: &[usize], extra: &[&str]) {
        let mut args = self.kv_member_flags(i, members, "new");
        args.extend(extra.iter().map(|a| a.to_string()));
        self.spawn_netd(i, &args);
    }

    /// `etcdctl endpoint status --cluster` through the world's endpoints: (client URL, member
    /// id, leader id) of every member that answers.
    pub fn endpoint_status(&self) -> Vec<(String, u64, u64)> {
        let out = self.etcdctl_try(&["endpoint", "status", "--cluster", "-w", "json"]);
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        all.iter()
            .map(|e| {
                (
                    e["Endpoint"].as_str().unwrap_or("").to_string(),
                    e["Status"]["header"]["member_id"].as_u64().unwrap_or(0),
                    e["Status"]["leader"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Spawns netd in host `i`'s namespace with the world's common flags plus `args`.
    fn spawn_netd(&mut self, i: usize, args: &[String]) {
        let ns = self.host(i);
        let log = self.dir.path().join(format!("netd-h{i}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("netd log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, NETD])
            .args(["--iface", "eth0"])
            .arg("--subnet-file")
            .arg(self.subnet_file(i))
            .args([
                "--healthz-port",
                &self.healthz_port.to_string(),
                "--healthz-ip",
                "127.0.0.1",
            ])
            .args(["--reconcile-interval", "2"])
            .args(args)
            .env("RUST_LOG", "info,netd=debug")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn netd");
        self.netd.insert(i, NetdProc { child, log });
    }

    /// Sends SIGTERM to netd on host `i` and waits for it to exit; returns its exit status.
    pub fn stop_netd(&mut self, i: usize) -> std::process::ExitStatus {
        let mut p = self.netd.remove(&i).expect("netd running");
        let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = p.child.kill();
                panic!("netd on h{i} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills netd on host `i` (SIGKILL), as a crash or power loss would.
    pub fn kill_netd(&mut self, i: usize) {
        let mut p = self.netd.remove(&i).expect("netd running");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// True while netd on host `i` is still running.
    pub fn netd_running(&mut self, i: usize) -> bool {
        self.netd
            .get_mut(&i)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    pub fn netd_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("netd-h{i}.log"))).unwrap_or_default()
    }

    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}/subnet.env"))
    }

    /// The subnet (e.g. `10.244.3.0/24`'s network address and prefix) from host `i`'s subnet file.
    pub fn subnet_of(&self, i: usize) -> Option<(Ipv4Addr, u8)> {
        let text = std::fs::read_to_string(self.subnet_file(i)).ok()?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
        let (ip, len) = v.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let net = u32::from(ip) & (u32::MAX << (32 - u32::from(len)));
        Some((Ipv4Addr::from(net), len))
    }

    /// Waits for netd on host `i` to be ready (subnet file written, /readyz 200); returns the
    /// subnet.
    pub fn wait_ready(&mut self, i: usize) -> (Ipv4Addr, u8) {
        let start = Instant::now();
        loop {
            // A subnet file may be left from an earlier run: /readyz is this process's answer.
            if let Some(s) = self.subnet_of(i)
                && self
                    .http_get(i, "/readyz")
                    .is_some_and(|(code, _)| code == 200)
            {
                return s;
            }
            assert!(
                self.netd_running(i),
                "netd on h{i} exited:\n{}",
                self.netd_log(i)
            );
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "netd on h{i} not ready after 30s:\n{}",
                self.netd_log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Adds a container namespace behind host `i`: bridge `cni0` with the gateway address, a
    /// veth into the container with address `.2`, default route via the gateway — what a CNI
    /// bridge plugin does. Returns the container's namespace and address.
    pub fn add_container(&mut self, i: usize) -> (String, Ipv4Addr) {
        let (net, len) = self.subnet_of(i).expect("host has a subnet");
        let gw = Ipv4Addr::from(u32::from(net) + 1);
        let addr = Ipv4Addr::from(u32::from(net) + 2);
        let host = self.host(i);
        let c = self.add_ns(&format!("c{i}"));
        if !try_run(&["ip", "-n", &host, "link", "show", "cni0"])
            .status
            .success()
        {
            run(&["ip", "-n", &host, "link", "add", "cni0", "type", "bridge"]);
            run(&[
                "ip",
                "-n",
                &host,
                "addr",
                "add",
                &format!("{gw}/{len}"),
                "dev",
                "cni0",
            ]);
            run(&["ip", "-n", &host, "link", "set", "cni0", "up"]);
        }
        run(&[
            "ip", "-n", &host, "link", "add", "vc0", "type", "veth", "peer", "name", "eth0",
            "netns", &c,
        ]);
        run(&[
            "ip", "-n", &host, "link", "set", "vc0", "master", "cni0", "up",
        ]);
        run(&[
            "ip",
            "-n",
            &c,
            "addr",
            "add",
            &format!("{addr}/{len}"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &c, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ]);
        (c, addr)
    }

    /// One ping from namespace `ns` to `to`; true when answered.
    pub fn ping(ns: &str, to: Ipv4Addr) -> bool {
        try_run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            &to.to_string(),
        ])
        .status
        .success()
    }

    /// `ip -j` / `bridge -j` output of a host, parsed.
    pub fn json(ns: &str, tool: &str, args: &[&str]) -> Vec<serde_json::Value> {
        let mut full = vec!["ip", "netns", "exec", ns, tool, "-j"];
        full.extend_from_slice(args);
        let out = try_run(&full);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Routes of host `i` inside 10.244.0.0/16: destination → (gateway, device).
    pub fn cluster_routes(&self, i: usize) -> BTreeMap<String, (String, String)> {
        let mut m = BTreeMap::new();
        for r in Self::json(&self.host(i), "ip", &["-4", "route", "show"]) {
            let dst = r["dst"].as_str().unwrap_or("").to_string();
            if dst.starts_with("10.244.") && r["gateway"].is_string() {
                m.insert(
                    dst,
                    (
                        r["gateway"].as_str().unwrap_or("").to_string(),
                        r["dev"].as_str().unwrap_or("").to_string(),
                    ),
                );
            }
        }
        m
    }

    /// Permanent neighbours on flannel.1 of host `i`: IP → MAC.
    pub fn vxlan_neighbours(&self, i: usize) -> BTreeMap<String, String> {
        Self::json(
            &self.host(i),
            "ip",
            &["-4", "neigh", "show", "dev", "flannel.1"],
        )
        .into_iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap_or("").to_string(),
                n["lladdr"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
    }

    /// FDB entries with a destination on flannel.1 of host `i`: MAC → dst.
    pub fn vxlan_fdb(&self, i: usize) -> BTreeMap<String, String> {
        Self::json(
            &self.host(i),
            "bridge",
            &["fdb", "show", "dev", "flannel.1"],
        )
        .into_iter()
        .filter(|f| f["dst"].is_string())
        .map(|f| {
            (
                f["mac"].as_str().unwrap_or("").to_string(),
                f["dst"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
    }

    /// What host `host`'s kernel must hold for the VXLAN backend, derived from the valid KV
    /// records (inside 10.244.0.0/16, well-formed), excluding the host's own record:
    /// (routes, neighbours, fdb).
    pub fn expected_vxlan(&self, host: usize) -> (Routes, Neighs, Fdb) {
        let own_ip = Self::host_ip(host).to_string();
        let mut routes = BTreeMap::new();
        let mut neighs = BTreeMap::new();
        let mut fdb = BTreeMap::new();
        for (key, v) in self.records() {
            let Some((net, len)) = key.split_once('-') else {
                continue;
            };
            let (Some(ip), Some(mac)) =
                (v["PublicIP"].as_str(), v["BackendData"]["VtepMAC"].as_str())
            else {
                continue;
            };
            if ip == own_ip || ip.starts_with("10.244.") || !net.starts_with("10.244.") {
                continue;
            }
            routes.insert(
                format!("{net}/{len}"),
                (net.to_string(), "flannel.1".to_string()),
            );
            neighs.insert(net.to_string(), mac.to_string());
            fdb.insert(mac.to_string(), ip.to_string());
        }
        (routes, neighs, fdb)
    }

    /// True when host `host`'s kernel holds exactly what the records say.
    pub fn kernel_matches_records(&self, host: usize) -> bool {
        let (routes, neighs, fdb) = self.expected_vxlan(host);
        self.cluster_routes(host) == routes
            && self.vxlan_neighbours(host) == neighs
            && self.vxlan_fdb(host) == fdb
    }

    /// Waits until every listed host's kernel matches the records.
    pub fn wait_converged(&self, hosts: &[usize]) {
        for &h in hosts {
            let start = Instant::now();
            while !self.kernel_matches_records(h) {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "h{h} kernel state does not match the records after 20s\nwant: {:?}\nhave: {:?}",
                    self.expected_vxlan(h),
                    (
                        self.cluster_routes(h),
                        self.vxlan_neighbours(h),
                        self.vxlan_fdb(h)
                    )
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// HTTP GET of netd's health server inside host `i`'s namespace: (status, body).
    pub fn http_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        testbed::netns::http_get(&self.host(i), self.healthz_port, path)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, mut p) in std::mem::take(&mut self.netd) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.stop_etcd();
        // The namespaces go when `lab` is dropped, after this.
        if std::thread::panicking() || std::env::var_os("NETD_TEST_SHOW_LOGS").is_some() {
            // Keep the logs of a failed test readable.
            for i in 1..=8 {
                let log = self.netd_log(i);
                if !log.is_empty() {
                    eprintln!("----- netd h{i} log (tail) -----");
                    let lines: Vec<&str> = log.lines().collect();
                    for l in &lines[lines.len().saturating_sub(40)..] {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}
