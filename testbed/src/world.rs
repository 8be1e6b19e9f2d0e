//! A multi-host world in network namespaces, for end-to-end tests and benchmarks: an underlay
//! namespace holding bridge `br0` (192.0.2.254/24 and 2001:db8::fe/64), hosts `h1..hN` on it
//! (192.0.2.i/24 and 2001:db8::i/64) each
//! running the real `netd` binary — the netd of hosts 1..=M runs an embedded KV member on
//! `http://192.0.2.i:2379` (M = 1 by default; M = 3 forms a replicated store), the others are
//! clients of all members — and containers attached by running `netd-cni` inside their host's
//! namespace the way a runtime does.
//!
//! Names follow [`crate::lab`]'s scheme. Dropping the world removes everything it
//! made, also when a test fails: CNI DEL for each container, netd stopped, namespaces deleted, the
//! temp dir removed. Nothing is ever added to the machine's root namespace.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::binaries::{self, Binaries};
use crate::cmd::{on_path, run, stop};
use crate::cni::{self, Attachment};
use crate::etcd;
use crate::lab::{self, Lab};
use crate::netns;

/// The client URL of host 1's embedded KV member.
pub const KV_URL: &str = "http://192.0.2.1:2379";
/// The KV key prefix (flannel's default).
pub const KV_PREFIX: &str = "/coreos.com/network";
/// netd's health port inside each host namespace (private namespaces: cannot collide).
pub const HEALTHZ_PORT: u16 = 8081;
/// A VXLAN network config.
pub const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// A host-gw network config.
pub const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// A dual-stack VXLAN network config (IPv6 subnets of `fd00:10:244::/56`).
pub const VXLAN_DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
/// A dual-stack host-gw network config.
pub const HOST_GW_DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;
/// An IPv6-only network (flannel's `"EnableIPv4": false`) over VXLAN.
pub const VXLAN_V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
/// The same with host-gw.
pub const HOST_GW_V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;

/// Fails (never skips) when something a world needs is missing.
pub fn require_prerequisites() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "end-to-end worlds need root (network namespaces, netlink); run as root"
    );
    for tool in ["ip", "nft", "etcdctl"] {
        ensure!(
            on_path(tool),
            "`{tool}` is missing: run scripts/install-deps.sh test \
             (iproute2, nftables, etcd-client)"
        );
    }
    Ok(())
}

/// A container attached by netd-cni.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its network namespace (also its container id).
    pub ns: String,
    pub host: usize,
    /// Its IPv4 address; `0.0.0.0` in an IPv6-only network.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack or IPv6-only network.
    pub ip6: Option<Ipv6Addr>,
    pub attachment: Attachment,
}

/// The world; see the module docs.
pub struct World {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub bins: Binaries,
    netd: BTreeMap<usize, Child>,
    containers: Vec<Container>,
    counter: u32,
    /// Hosts 1..=kv_members run an embedded KV member.
    kv_members: usize,
    /// The stored network config has IPv4 (false: IPv6-only, `"EnableIPv4": false`); hosts
    /// are then ready and routed by their IPv6 subnets.
    ipv4: bool,
}

impl World {
    /// Builds the underlay and `hosts` hosts, starts netd everywhere (host 1 first, with the
    /// embedded KV member), stores `net_config`, and waits until every host has its subnet and
    /// a route to every other host's subnet.
    pub fn new(hosts: usize, net_config: &str) -> Result<World> {
        World::with_kv_members(hosts, net_config, 1)
    }

    /// Like [`World::new`], with an embedded KV member in the netd of each of hosts
    /// 1..=`members`, forming one replicated store (`--kv-initial-cluster`).
    pub fn with_kv_members(hosts: usize, net_config: &str, members: usize) -> Result<World> {
        require_prerequisites()?;
        ensure!((1..=50).contains(&hosts), "1 to 50 hosts");
        ensure!((1..=hosts).contains(&members), "1 to {hosts} KV members");
        let bins = binaries::build(true)?;
        let mut w = World {
            lab: Lab::new(),
            dir: tempfile::Builder::new()
                .prefix("netd-e2e-")
                .tempdir()
                .context("temp dir")?,
            bins,
            netd: BTreeMap::new(),
            containers: Vec::new(),
            counter: 0,
            kv_members: members,
            ipv4: true,
        };
        w.lab.add_underlay()?;
        for i in 1..=hosts {
            w.add_host(i)?;
        }
        // The members first: the store answers once a quorum of them runs.
        for i in 1..=members {
            w.start_netd(i)?;
        }
        w.set_config(net_config)?;
        for i in members + 1..=hosts {
            w.start_netd(i)?;
        }
        for i in 1..=hosts {
            w.wait_ready(i)?;
        }
        let all: Vec<usize> = (1..=hosts).collect();
        for i in 1..=hosts {
            if w.ipv4 {
                w.wait_routes(i, &all)?;
            } else {
                w.wait_routes6(i, &all)?;
            }
        }
        Ok(w)
    }

    /// The client URLs of every KV member, comma-separated.
    pub fn kv_endpoints(&self) -> String {
        kv_endpoints(self.kv_members)
    }

    /// The prefix every namespace name of this world starts with.
    pub fn prefix(&self) -> &str {
        self.lab.prefix()
    }

    /// Namespace of the underlay.
    pub fn underlay(&self) -> String {
        self.lab.underlay()
    }

    /// Namespace of host `i`.
    pub fn host(&self, i: usize) -> String {
        self.lab.host(i)
    }

    /// Underlay address of host `i`.
    pub fn host_ip(i: usize) -> Ipv4Addr {
        lab::host_ip(i)
    }

    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}/subnet.env"))
    }

    pub fn cni_data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}/cni"))
    }

    pub fn netd_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("netd-h{i}.log"))).unwrap_or_default()
    }

    /// Adds host namespace `h<i>` with `eth0` = 192.0.2.i/24 on the underlay bridge.
    pub fn add_host(&mut self, i: usize) -> Result<()> {
        self.lab.add_host(i)?;
        Ok(())
    }

    /// Starts netd on host `i` (host 1 with the embedded KV member, data kept across restarts).
    pub fn start_netd(&mut self, i: usize) -> Result<()> {
        ensure!(!self.netd.contains_key(&i), "netd already runs on h{i}");
        let ns = self.host(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("netd-h{i}.log")))
            .context("netd log")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&self.bins.netd)
            .args(["--iface", "eth0", "--reconcile-interval", "2"])
            .arg("--subnet-file")
            .arg(self.subnet_file(i))
            .args(["--healthz-ip", "127.0.0.1"])
            .args(["--healthz-port", &HEALTHZ_PORT.to_string()]);
        if i <= self.kv_members {
            cmd.args(kv_member_args(
                i,
                self.kv_members,
                &self.dir.path().join(format!("kv-h{i}")),
            ));
        } else {
            cmd.args(["--etcd-endpoints", &self.kv_endpoints()]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bins.netd.display()))?;
        self.netd.insert(i, child);
        Ok(())
    }

    /// SIGTERM to netd on host `i`, then waits (10 s) for it to exit.
    pub fn stop_netd(&mut self, i: usize) -> Result<()> {
        let mut c = self.netd.remove(&i).context("netd is not running")?;
        ensure!(
            stop(&mut c, Duration::from_secs(10)),
            "netd on h{i} ignored SIGTERM for 10 s"
        );
        Ok(())
    }

    /// SIGKILL to netd on host `i`, as a crash or a power loss would stop it.
    pub fn kill_netd(&mut self, i: usize) -> Result<()> {
        let mut c = self.netd.remove(&i).context("netd is not running")?;
        c.kill().context("kill netd")?;
        c.wait().context("wait for netd")?;
        Ok(())
    }

    /// True while netd on host `i` runs.
    pub fn netd_running(&mut self, i: usize) -> bool {
        self.netd
            .get_mut(&i)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `netd ARGS --etcd-endpoints <members>` in the underlay namespace; returns stdout.
    pub fn netd_cmd(&self, args: &[&str]) -> Result<String> {
        let netd = self.bins.netd.to_string_lossy();
        let ul = self.underlay();
        let endpoints = self.kv_endpoints();
        let mut full = vec!["ip", "netns", "exec", &ul, &netd];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--etcd-endpoints", &endpoints]);
        run(&full)
    }

    /// Runs the stock `etcdctl ARGS` against the world's KV (from the underlay namespace).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = etcd::etcdctl(Some(&self.underlay()), &self.kv_endpoints())
            .args(args)
            .output()
            .context("run etcdctl")?;
        ensure!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stores the network config once the embedded KV store answers (within 30 s).
    fn set_config(&mut self, json: &str) -> Result<()> {
        self.ipv4 = serde_json::from_str::<serde_json::Value>(json)
            .map_or(true, |v| v["EnableIPv4"] != serde_json::Value::Bool(false));
        let t0 = Instant::now();
        loop {
            match self.netd_cmd(&["config", "set", json]) {
                Ok(_) => return Ok(()),
                Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                    return Err(e.context(format!(
                        "the embedded KV member did not answer within 30 s; log:\n{}",
                        self.netd_log(1)
                    )));
                }
                Err(_) => {
                    for m in 1..=self.kv_members {
                        ensure!(
                            self.netd_running(m),
                            "netd on h{m} exited:\n{}",
                            self.netd_log(m)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// HTTP GET of netd's health server on host `i`: (status, body).
    pub fn healthz(&self, i: usize, path: &str) -> Option<(u16, String)> {
        netns::http_get(&self.host(i), HEALTHZ_PORT, path)
    }

    /// Host `i`'s subnet, from its subnet file.
    pub fn subnet(&self, i: usize) -> Option<(Ipv4Addr, u8)> {
        let text = std::fs::read_to_string(self.subnet_file(i)).ok()?;
        cni::parse_subnet(&text)
    }

    /// Waits (30 s) until netd on host `i` answers /readyz 200 and its subnet file names its
    /// subnet (the IPv6 one in an IPv6-only network).
    pub fn wait_ready(&mut self, i: usize) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let has_subnet = if self.ipv4 {
                self.subnet(i).is_some()
            } else {
                self.subnet6(i).is_some()
            };
            if has_subnet && self.healthz(i, "/readyz").is_some_and(|(c, _)| c == 200) {
                return Ok(());
            }
            ensure!(
                self.netd_running(i),
                "netd on h{i} exited:\n{}",
                self.netd_log(i)
            );
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "netd on h{i} not ready after 30 s:\n{}",
                self.netd_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Host `i`'s routes into 10.244.0.0/16 through a gateway: destination → device.
    pub fn cluster_routes(&self, i: usize) -> Result<BTreeMap<String, String>> {
        let out = run(&["ip", "-n", &self.host(i), "-j", "-4", "route", "show"])?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).context("ip -j route")?;
        Ok(v.iter()
            .filter(|r| r["gateway"].is_string())
            .filter_map(|r| {
                let dst = r["dst"].as_str()?;
                dst.starts_with("10.244.")
                    .then(|| (dst.to_string(), r["dev"].as_str().unwrap_or("").to_string()))
            })
            .collect())
    }

    /// Waits (30 s) until host `i` routes to the subnet of every other host in `hosts`.
    pub fn wait_routes(&self, i: usize, hosts: &[usize]) -> Result<()> {
        let want: Vec<String> = hosts
            .iter()
            .filter(|&&h| h != i)
            .map(|&h| {
                self.subnet(h)
                    .map(|(n, l)| format!("{n}/{l}"))
                    .with_context(|| format!("h{h} has no subnet"))
            })
            .collect::<Result<_>>()?;
        let t0 = Instant::now();
        loop {
            let have = self.cluster_routes(i)?;
            let missing: Vec<&String> = want.iter().filter(|d| !have.contains_key(*d)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "h{i} has no route to {missing:?} after 30 s (routes {have:?}); log:\n{}",
                self.netd_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Attaches a new container namespace to host `i` through netd-cni ADD; `cni_args` is
    /// `CNI_ARGS` (e.g. `IP=10.244.3.7`, or empty).
    pub fn add_container(&mut self, i: usize, cni_args: &str) -> Result<Container> {
        self.counter += 1;
        let ns = self.lab.add_ns(&format!("h{i}c{}", self.counter))?;
        let attachment = Attachment {
            host_ns: self.host(i),
            container_id: ns.clone(),
            netns: format!("/run/netns/{ns}"),
            ifname: "eth0".into(),
            config: cni::netd_config(&self.subnet_file(i), &self.cni_data_dir(i)),
            args: cni_args.to_string(),
        };
        let added = cni::exec(&self.bins.cni, "ADD", &attachment);
        let c = Container {
            ns,
            host: i,
            ip: Ipv4Addr::UNSPECIFIED,
            ip6: None,
            attachment,
        };
        // Recorded even when ADD failed: DEL is idempotent and undoes a half-done ADD.
        self.containers.push(c.clone());
        let added = added?;
        let ip = match cni::result_ip(&added) {
            Ok(ip) => ip,
            Err(_) if !self.ipv4 => Ipv4Addr::UNSPECIFIED,
            Err(e) => return Err(e),
        };
        let ip6 = global_ipv6(&c.ns, "eth0")?;
        let last = self.containers.len() - 1;
        self.containers[last].ip = ip;
        self.containers[last].ip6 = ip6;
        Ok(Container { ip, ip6, ..c })
    }

    /// Host `i`'s IPv6 subnet, from its subnet file (`FLANNEL_IPV6_SUBNET`, network form).
    pub fn subnet6(&self, i: usize) -> Option<(Ipv6Addr, u8)> {
        let text = std::fs::read_to_string(self.subnet_file(i)).ok()?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))?;
        let (gw, len) = value.trim().split_once('/')?;
        let gw: Ipv6Addr = gw.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        Some((Ipv6Addr::from(u128::from(gw) & mask), len))
    }

    /// Host `i`'s IPv6 routes into fd00:10:244::/56 through a gateway: destination → device.
    pub fn cluster_routes6(&self, i: usize) -> Result<BTreeMap<String, String>> {
        let out = run(&["ip", "-n", &self.host(i), "-j", "-6", "route", "show"])?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).context("ip -j -6 route")?;
        Ok(v.iter()
            .filter(|r| r["gateway"].is_string())
            .filter_map(|r| {
                let dst = r["dst"].as_str()?;
                dst.starts_with("fd00:10:244:")
                    .then(|| (dst.to_string(), r["dev"].as_str().unwrap_or("").to_string()))
            })
            .collect())
    }

    /// Waits (30 s) until host `i` routes to the IPv6 subnet of every other host in `hosts`.
    pub fn wait_routes6(&self, i: usize, hosts: &[usize]) -> Result<()> {
        let want: Vec<String> = hosts
            .iter()
            .filter(|&&h| h != i)
            .map(|&h| {
                self.subnet6(h)
                    .map(|(n, l)| format!("{n}/{l}"))
                    .with_context(|| format!("h{h} has no IPv6 subnet"))
            })
            .collect::<Result<_>>()?;
        let t0 = Instant::now();
        loop {
            let have = self.cluster_routes6(i)?;
            let missing: Vec<&String> = want.iter().filter(|d| !have.contains_key(*d)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "h{i} has no IPv6 route to {missing:?} after 30 s (routes {have:?}); log:\n{}",
                self.netd_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CNI DEL of `c`, then its namespace is deleted, as a runtime removes a container.
    pub fn del_container(&mut self, c: &Container) -> Result<()> {
        cni::exec(&self.bins.cni, "DEL", &c.attachment)?;
        self.containers.retain(|x| x.ns != c.ns);
        ensure!(self.lab.del_ns(&c.ns), "could not delete {}", c.ns);
        Ok(())
    }

    /// The world's KV subnet records: key (`10.244.3.0-24`) → JSON value.
    pub fn records(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        let prefix = format!("{KV_PREFIX}/subnets/");
        let out = self.etcdctl(&["get", "--prefix", &prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        let mut m = BTreeMap::new();
        for pair in lines.chunks(2) {
            if let [k, v] = pair {
                let key = k.strip_prefix(&prefix).unwrap_or(k).to_string();
                m.insert(key, serde_json::from_str(v).context("record is not JSON")?);
            }
        }
        Ok(m)
    }

    /// Deletes host `i`'s subnet record from the KV, as an operator removes a host for good.
    pub fn delete_record(&self, i: usize) -> Result<()> {
        // A dual-stack record's key goes on with `&<v6>-<len>`; an IPv6-only one is
        // `0.0.0.0-0&<v6>-<len>`.
        let (v4, v6) = match self.subnet(i) {
            Some((net, len)) => (format!("{net}-{len}"), None),
            None => {
                let (net6, len6) = self.subnet6(i).context("host has no subnet")?;
                ("0.0.0.0-0".to_string(), Some(format!("&{net6}-{len6}")))
            }
        };
        let suffix = self
            .records()?
            .into_keys()
            .find(|k| match &v6 {
                None => *k == v4 || k.starts_with(&format!("{v4}&")),
                Some(v6) => *k == format!("{v4}{v6}"),
            })
            .with_context(|| format!("no record for {v4}{}", v6.as_deref().unwrap_or("")))?;
        let key = format!("{KV_PREFIX}/subnets/{suffix}");
        let out = self.etcdctl(&["del", &key])?;
        ensure!(
            out.trim() == "1",
            "deleting {key} removed {:?} keys",
            out.trim()
        );
        Ok(())
    }

    /// The IP-layer counters of namespace `ns` from `/proc/net/snmp` (`Ip:` rows).
    pub fn ip_counters(ns: &str) -> Result<BTreeMap<String, u64>> {
        let text = run(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"])?;
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("Ip:")).collect();
        let [names, values] = rows.as_slice() else {
            bail!("no Ip: rows in /proc/net/snmp of {ns}");
        };
        Ok(names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
            .collect())
    }

    /// MTU of `dev` in namespace `ns`.
    pub fn mtu(ns: &str, dev: &str) -> Result<u32> {
        let out = run(&["ip", "-n", ns, "-j", "link", "show", dev])?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).context("ip -j link")?;
        v.first()
            .and_then(|l| l["mtu"].as_u64())
            .and_then(|m| u32::try_from(m).ok())
            .with_context(|| format!("no MTU for {dev} in {ns}"))
    }
}

/// The first global IPv6 address of `dev` in namespace `ns`, if it has one.
pub fn global_ipv6(ns: &str, dev: &str) -> Result<Option<Ipv6Addr>> {
    let out = run(&[
        "ip", "-n", ns, "-j", "-6", "addr", "show", "dev", dev, "scope", "global",
    ])?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).context("ip -j -6 addr")?;
    Ok(v.iter()
        .filter_map(|l| l["addr_info"].as_array())
        .flatten()
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .next())
}

/// The client URLs of the embedded KV members on hosts 1..=`members`, comma-separated (an
/// etcd endpoint list).
pub fn kv_endpoints(members: usize) -> String {
    (1..=members)
        .map(|i| format!("http://{}:2379", World::host_ip(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// netd's `--kv-*` flags for the embedded member of host `i`, one of `members` on hosts
/// 1..=`members` (clients on the host's underlay address, port 2379; peers on 2380).
pub fn kv_member_args(i: usize, members: usize, data_dir: &Path) -> Vec<String> {
    let ip = World::host_ip(i);
    // One member alone keeps its peer port private; members of a cluster reach each other
    // on their underlay addresses.
    let peer = if members == 1 {
        "http://127.0.0.1:2380".to_string()
    } else {
        format!("http://{ip}:2380")
    };
    let mut args = vec![
        "--kv-name".to_string(),
        format!("h{i}"),
        "--kv-listen-client-urls".to_string(),
        format!("http://{ip}:2379"),
        "--kv-listen-peer-urls".to_string(),
        peer,
        "--kv-data-dir".to_string(),
        data_dir.to_string_lossy().into_owned(),
    ];
    if members > 1 {
        let cluster: Vec<String> = (1..=members)
            .map(|m| format!("h{m}=http://{}:2380", World::host_ip(m)))
            .collect();
        args.extend(["--kv-initial-cluster".to_string(), cluster.join(",")]);
    }
    args
}

impl Drop for World {
    fn drop(&mut self) {
        for c in std::mem::take(&mut self.containers).iter().rev() {
            if let Err(e) = cni::exec(&self.bins.cni, "DEL", &c.attachment) {
                eprintln!("teardown: {e:#}");
            }
        }
        let failed = std::thread::panicking();
        // Clients first, the KV member (h1) last.
        for (i, mut c) in std::mem::take(&mut self.netd).into_iter().rev() {
            if !stop(&mut c, Duration::from_secs(10)) {
                eprintln!("teardown: netd on h{i} needed SIGKILL");
            }
        }
        // The namespaces go when `lab` is dropped, after this.
        if failed {
            for i in 1..=50 {
                let log = self.netd_log(i);
                if log.is_empty() {
                    continue;
                }
                eprintln!("----- netd h{i} log (tail) -----");
                let lines: Vec<&str> = log.lines().collect();
                for l in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}
