//! Test harness: a private "host" network namespace per test, container namespaces, and the
//! real plugin binary run the way a runtime runs it (environment + stdin, inside the host
//! netns). Namespaces follow testbed's naming scheme (crashed runs' leftovers are swept);
//! everything is removed on drop, also when the test fails.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_netd-cni");
pub const REF_PLUGINS: &str = "/usr/lib/cni";

/// Fail (never skip) when the machine cannot run these tests.
pub fn require_prereqs(extra: &[&str]) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "netd-cni namespace tests must run as root (euid is {euid})"
    );
    for tool in [
        "/usr/sbin/ip",
        "/usr/bin/ping",
        "/usr/sbin/nft",
        "/usr/bin/unshare",
    ]
    .iter()
    .chain(extra)
    {
        assert!(
            Path::new(tool).exists(),
            "prerequisite {tool} is missing (install iproute2, iputils-ping, nftables, util-linux, \
             containernetworking-plugins, busybox-static)"
        );
    }
}

/// Outcome of one plugin invocation.
#[derive(Debug)]
pub struct Reply {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

impl Reply {
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.status, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        &self.json
    }

    /// Assert a CNI error with `code` on stdout and a non-zero exit.
    pub fn err(&self, code: u64) -> &Value {
        assert_ne!(
            self.status, 0,
            "expected failure, got success: {}",
            self.stdout
        );
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "wrong error code: stdout={} stderr={}",
            self.stdout,
            self.stderr
        );
        assert!(self.json["msg"].as_str().is_some_and(|m| !m.is_empty()));
        &self.json
    }
}

/// The environment of one invocation; `None` leaves a variable unset.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    pub fn new(command: &str, cid: &str, netns: &str, ifname: &str) -> CniEnv {
        CniEnv {
            command: Some(command.into()),
            container_id: Some(cid.into()),
            netns: Some(netns.into()),
            ifname: Some(ifname.into()),
            args: None,
            path: Some(REF_PLUGINS.into()),
        }
    }
}

/// Run `bin` in netns `ns` (by name) with `env` and `stdin`.
pub fn exec_plugin(ns: &str, bin: &str, env: &CniEnv, stdin: &[u8]) -> Reply {
    let out = spawn_plugin(ns, bin, env, stdin)
        .wait_with_output()
        .expect("wait for plugin");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Reply {
        status: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Start `bin` in netns `ns` as [`exec_plugin`] does, without waiting (`ip netns exec` execs
/// the plugin, so the child is the plugin itself).
pub fn spawn_plugin(ns: &str, bin: &str, env: &CniEnv, stdin: &[u8]) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, bin]);
    for var in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ] {
        cmd.env_remove(var);
    }
    let pairs = [
        ("CNI_COMMAND", &env.command),
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec");
    child
        .stdin
        .take()
        .expect("stdin pipe")
        .write_all(stdin)
        .expect("write stdin");
    child
}

/// Run a command and return its output (panics if it cannot be started).
pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Run a command and require success.
pub fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A test's private world: a host netns with a subnet file and data dir in a temp dir, and
/// container netns created on demand.
pub struct World {
    pub prefix: String,
    pub host: String,
    pub tmp: tempfile::TempDir,
    /// The test's short name, in every namespace name.
    tag: String,
    children: Vec<Child>,
    /// The host and container namespaces, deleted when dropped (after `children` are killed).
    lab: testbed::lab::Lab,
}

impl World {
    /// A fresh world; `tag` names the test (kept short: it appears in netns names).
    pub fn new(tag: &str) -> World {
        require_prereqs(&[]);
        let mut lab = testbed::lab::Lab::new();
        let prefix = lab.name(tag);
        let host = lab.add_ns(&format!("{tag}-h")).expect("host netns");
        let world = World {
            prefix,
            host,
            tmp: tempfile::tempdir().expect("tempdir"),
            tag: tag.into(),
            children: Vec::new(),
            lab,
        };
        world.write_subnet("10.244.0.0/16", "10.244.3.1/24", 1450, true);
        world
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.tmp.path().join("subnet.env")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn write_subnet(&self, network: &str, subnet: &str, mtu: u32, ipmasq: bool) {
        let text = format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n"
        );
        std::fs::write(self.subnet_file(), text).expect("write subnet file");
    }

    /// A dual-stack subnet file as netd (and flanneld) write it: `10.244.0.0/16` with the node
    /// subnet `10.244.3.0/24`, `fd00:10:244::/56` with `fd00:10:244:3::/64`.
    pub fn write_dual_stack_subnet(&self, ipmasq: bool) {
        let text = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ={ipmasq}\n"
        );
        std::fs::write(self.subnet_file(), text).expect("write subnet file");
    }

    /// A network config for `version` with this world's paths; `extra` keys are merged in.
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": "testnet",
            "type": "netd-cni",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
        });
        if let (Some(base), Value::Object(more)) = (conf.as_object_mut(), extra) {
            base.extend(more);
        }
        conf
    }

    /// Create a named container netns (`/run/netns/<prefix>-<tag>`), like podman does.
    pub fn container(&mut self, tag: &str) -> String {
        let name = self
            .lab
            .add_ns(&format!("{}-{tag}", self.tag))
            .expect("container netns");
        format!("/run/netns/{name}")
    }

    /// A container netns held only by a process (`/proc/<pid>/ns/net`), like containerd.
    pub fn pid_container(&mut self) -> (u32, String) {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let pid = child.id();
        self.children.push(child);
        // Wait until unshare has exec'd into sleep inside its new netns.
        let path = format!("/proc/{pid}/ns/net");
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        for _ in 0..200 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" && std::fs::read_link(&path).ok() != own {
                return (pid, path);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("unshare --net did not start");
    }

    /// Kill the process holding a `/proc/<pid>` netns, so that netns disappears.
    pub fn kill_pid_container(&mut self, pid: u32) {
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Delete a named container netns now.
    pub fn remove_container(&mut self, netns_path: &str) {
        let name = netns_path.trim_start_matches("/run/netns/");
        assert!(self.lab.del_ns(name), "could not delete netns {name}");
    }

    pub fn plugin(&self, env: &CniEnv, conf: &Value) -> Reply {
        exec_plugin(&self.host, PLUGIN, env, conf.to_string().as_bytes())
    }

    pub fn run(&self, command: &str, cid: &str, netns: &str, conf: &Value) -> Reply {
        self.plugin(&CniEnv::new(command, cid, netns, "eth0"), conf)
    }

    /// Run a command inside the host netns.
    pub fn in_host(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.host];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ping -c1` from netns `path` (a /run/netns path or the host when `None`).
    pub fn ping(&self, from: Option<&str>, ip: &str) -> bool {
        let ns = from.map_or(self.host.clone(), |p| {
            p.trim_start_matches("/run/netns/").to_string()
        });
        if let Some(pid) = ns.strip_prefix("/proc/").and_then(|r| r.split('/').next()) {
            return sh(&["nsenter", "-t", pid, "-n", "ping", "-c1", "-W2", ip])
                .status
                .success();
        }
        sh(&["ip", "netns", "exec", &ns, "ping", "-c1", "-W2", ip])
            .status
            .success()
    }

    /// Names of links in the host netns.
    pub fn host_links(&self) -> Vec<String> {
        let out = String::from_utf8_lossy(&self.in_host(&["ip", "-o", "link", "show"]).stdout)
            .to_string();
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Host links once every retired veth (`ncd-*`) has been reaped by DEL's reaper process
    /// (waits up to 5 s; the reaper normally needs ~20 ms).
    pub fn settled_host_links(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let links = self.host_links();
            if !links.iter().any(|l| l.starts_with("ncd-")) || std::time::Instant::now() > deadline
            {
                return links;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Assert that the attachment's kernel state is gone: no veth on the host (once reaped)
    /// and no `ifname` in the container netns at `netns_path`.
    pub fn assert_detached(&self, netns_path: &str, ifname: &str) {
        let links = self.settled_host_links();
        assert!(
            links
                .iter()
                .all(|l| !l.starts_with("veth") && !l.starts_with("ncd-")),
            "host links left: {links:?}"
        );
        let ns = netns_path.trim_start_matches("/run/netns/");
        let out = sh(&["ip", "netns", "exec", ns, "ip", "-o", "link"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            !text.contains(&format!(": {ifname}@")) && !text.contains(&format!(": {ifname}:")),
            "{ifname} still in the container: {text}"
        );
    }

    /// Files in the network's IPAM directory that are allocations (named like addresses of
    /// either family).
    pub fn allocations(&self) -> Vec<String> {
        let dir = self.data_dir().join("testnet");
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The host netns' nftables ruleset as text.
    pub fn nft_ruleset(&self) -> String {
        String::from_utf8_lossy(&self.in_host(&["nft", "list", "ruleset"]).stdout).to_string()
    }

    /// The plugin's masquerade rules in its table of nft family `family` (`ip` or `ip6`), as
    /// `nft` prints them back from the kernel, without counters and comments.
    pub fn masq_rules(&self, family: &str) -> Vec<String> {
        let out = self.in_host(&["nft", "list", "table", family, "netd_cni"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .map(str::trim)
            .filter(|l| l.contains(" masquerade"))
            .map(|l| {
                let l = l.split(" comment ").next().unwrap_or(l);
                let words: Vec<&str> = l.split_whitespace().collect();
                let mut kept = Vec::new();
                let mut i = 0;
                while i < words.len() {
                    if words[i] == "counter" {
                        i += 5; // counter packets N bytes M
                        continue;
                    }
                    kept.push(words[i]);
                    i += 1;
                }
                kept.join(" ")
            })
            .collect()
    }

    /// The one IPv4 masquerade rule of a network whose node subnet is `subnet` in 10.244.0.0/16.
    pub fn masq_rule_v4(subnet: &str) -> String {
        format!("ip saddr {subnet} ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade")
    }

    /// An "outside" namespace beside the host: a veth with 198.51.100.1/24 on the host and
    /// 198.51.100.2/24 outside, which routes nothing back to the cluster network except
    /// `10.244.9.0/24`, a stand-in for another host's pod subnet: 10.244.9.2 answers there and
    /// the host routes 10.244.9.0/24 to it. Returns its name.
    pub fn outside(&mut self) -> String {
        let ns = self
            .lab
            .add_ns(&format!("{}-out", self.tag))
            .expect("outside netns");
        let (a, b) = (format!("{}o0", self.tag), format!("{}o1", self.tag));
        let h = self.host.clone();
        for args in [
            vec![
                "ip", "-n", &h, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &ns,
            ],
            vec!["ip", "-n", &h, "addr", "add", "198.51.100.1/24", "dev", &a],
            vec!["ip", "-n", &h, "link", "set", &a, "up"],
            vec!["ip", "-n", &ns, "addr", "add", "198.51.100.2/24", "dev", &b],
            vec!["ip", "-n", &ns, "addr", "add", "10.244.9.2/24", "dev", "lo"],
            vec!["ip", "-n", &ns, "link", "set", &b, "up"],
            vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
            vec![
                "ip",
                "-n",
                &h,
                "route",
                "add",
                "10.244.9.0/24",
                "via",
                "198.51.100.2",
            ],
        ] {
            must(&args);
        }
        ns
    }
}

/// Sends one UDP datagram from namespace `from` (a netns path or name) to `to`:`port` while
/// namespace `at` listens there; the source address it arrived with, or `None` when nothing
/// arrived within 3 s (a retry per second covers neighbour resolution).
pub fn udp_source(
    from: &str,
    at: &str,
    to: std::net::IpAddr,
    port: u16,
) -> Option<std::net::IpAddr> {
    use std::net::UdpSocket;
    use std::time::Duration;
    let at = at.trim_start_matches("/run/netns/").to_string();
    let from = from.trim_start_matches("/run/netns/").to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heard = done.clone();
    let listener = testbed::netns::spawn_in(&at, move || {
        let sock = UdpSocket::bind((to, port)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let _ = ready_tx.send(());
        let mut buf = [0u8; 64];
        let got = sock.recv_from(&mut buf).ok().map(|(_, peer)| peer.ip());
        heard.store(true, std::sync::atomic::Ordering::SeqCst);
        got
    })
    .expect("listener thread");
    ready_rx.recv().expect("listener ready");
    let sender = testbed::netns::spawn_in(&from, move || {
        let any: std::net::IpAddr = match to {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let sock = UdpSocket::bind((any, 0)).expect("bind sender");
        for _ in 0..10 {
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let _ = sock.send_to(b"who am i", (to, port));
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .expect("sender thread");
    let got = listener.join().expect("listener").expect("in netns");
    let _ = sender.join();
    got
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The namespaces go when `lab` is dropped, after this.
    }
}

/// The container address (`a.b.c.d`) from an ADD result.
pub fn result_ip(result: &Value) -> String {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

/// The container's IPv6 address from an ADD result (panics if it has none).
pub fn result_ip6(result: &Value) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next())
        .find(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("no IPv6 address in {result}"))
        .to_string()
}
