//! netd performance benchmark (issue 4). Not a test: it prints figures.
//!
//! It builds its own world of network namespaces (an underlay namespace with a bridge and a real
//! etcd, host namespaces `h1..hN` on 192.0.2.0/24, named and swept by `testbed::lab`),
//! runs the release `netd` binary found next to this program's directory (`../netd`) on the
//! hosts, and watches every host's kernel through an rtnetlink route monitor (multicast group
//! `RTNLGRP_IPV4_ROUTE`, one socket inside each host namespace). It measures:
//!
//! 1. **Convergence** for 3, 10 and 20 hosts: a new fake peer's subnet record is written to the
//!    KV and the time until the route for that subnet appears on *every* host is taken; p50/p99
//!    over the samples.
//! 2. **Scale**: one netd, 100 / 500 / 1,000 peer records written directly to the KV (transactions
//!    of 100 puts); time from the first write until all routes are in the kernel, netd's resident
//!    memory afterwards (VmRSS, and VmHWM as the peak), and the cost per peer.
//!
//! With `NETD_BENCH_DUAL=1` the network is dual-stack (`EnableIPv6`): every record, real or
//! fake, carries an IPv6 subnet too, the monitors also watch `RTNLGRP_IPV6_ROUTE`, and a peer
//! counts as programmed when both its IPv4 and its IPv6 route are in the kernel.
//!
//! Everything is removed at the end, on error and on Ctrl-C / SIGTERM: processes killed,
//! namespaces deleted. Nothing is added to the machine's root namespace. Needs root, `ip` and
//! `/usr/bin/etcd`. Run with
//! `cargo build --release -p netd --bins --examples && target/release/examples/netd_bench`;
//! `NETD_BENCH_SAMPLES` sets the convergence samples per host count (default 50, at most 50).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use kvstore::client::req;
use kvstore::proto::etcdserverpb::compare::CompareResult;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use testbed::cmd::run;
use testbed::etcd;
use testbed::lab::{Lab, UNDERLAY_GW};
use testbed::netns;

const SUBNETS: &str = "/coreos.com/network/subnets/";
const CONFIG_KEY: &str = "/coreos.com/network/config";
const CONVERGENCE_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// 1,000 /24 subnets do not fit a /16.
const SCALE_CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
const CONVERGENCE_CONFIG_DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
const SCALE_CONFIG_DUAL: &str = r#"{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fd00:1::/48","Backend":{"Type":"vxlan"}}"#;
const HOST_COUNTS: [usize; 3] = [3, 10, 20];
const PEER_COUNTS: [usize; 3] = [100, 500, 1000];
const HEALTHZ_PORT: u16 = 9102;
const RT_TABLE_MAIN: u8 = 254;

fn main() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "netd_bench needs root (network namespaces, netlink)"
    );
    ensure!(
        Path::new("/usr/bin/etcd").exists(),
        "/usr/bin/etcd is missing (Debian: etcd-server)"
    );
    let netd = netd_binary()?;
    let samples: usize = match std::env::var("NETD_BENCH_SAMPLES") {
        Ok(s) => s.parse().context("NETD_BENCH_SAMPLES must be a number")?,
        Err(_) => 50,
    };
    // Each sample is a new fake peer with its own address in 192.0.2.100..=249.
    ensure!(
        (1..=50).contains(&samples),
        "NETD_BENCH_SAMPLES must be 1..=50"
    );
    let dual = std::env::var("NETD_BENCH_DUAL").is_ok_and(|v| v == "1");
    testbed::cmd::on_interrupt(tear_down);
    println!("netd: {}", netd.display());
    let family = if dual {
        "dual-stack (a peer is done when its IPv4 and IPv6 routes are in)"
    } else {
        "IPv4"
    };
    println!("network: {family}");

    let convergence = convergence(&netd, samples, dual)?;
    let scale = scale(&netd, dual)?;

    println!(
        "\nConvergence ({family}): record written → route on every host ({samples} samples each)"
    );
    println!("| hosts | p50 | p99 | max | etcd put p50 |");
    println!("|---:|---:|---:|---:|---:|");
    for c in &convergence {
        println!(
            "| {} | {} | {} | {} | {} |",
            c.hosts,
            ms(c.p50),
            ms(c.p99),
            ms(c.max),
            ms(c.put_p50)
        );
    }
    println!("\nScale ({family}): one netd, peers written directly to the KV");
    println!(
        "| peers | writes done | all routes | per peer | VmRSS idle (MiB) | VmRSS after (MiB) | VmHWM (MiB) | \
         mean program time |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &scale {
        println!(
            "| {} | {} | {} | {:.3} ms | {:.1} | {:.1} | {:.1} | {:.3} ms |",
            s.peers,
            ms(s.written),
            ms(s.programmed),
            s.programmed.as_secs_f64() * 1000.0 / s.peers as f64,
            s.rss_idle_kb as f64 / 1024.0,
            s.rss_kb as f64 / 1024.0,
            s.hwm_kb as f64 / 1024.0,
            s.mean_program_ms
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The release `netd` next to this program's directory (`target/release/examples/..`).
fn netd_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("netd"))
        .context("cannot derive the netd path from this program's path")?;
    ensure!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --release -p netd --bins --examples`",
        path.display()
    );
    Ok(path)
}

struct ConvergenceRow {
    hosts: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    put_p50: Duration,
}

/// One world of 20 hosts; netd is started on 3, then 10, then 20 of them.
fn convergence(netd: &Path, samples: usize, dual: bool) -> Result<Vec<ConvergenceRow>> {
    let max_hosts = HOST_COUNTS[HOST_COUNTS.len() - 1];
    let config = if dual {
        CONVERGENCE_CONFIG_DUAL
    } else {
        CONVERGENCE_CONFIG
    };
    let mut w = World::new(netd, max_hosts, config)?;
    let mut rows = Vec::new();
    let mut started = 0;
    let mut peer = 0usize;
    let mut next_subnet = 1u8;
    for hosts in HOST_COUNTS {
        for i in started + 1..=hosts {
            w.start_netd(i)?;
        }
        started = hosts;
        let all: Vec<usize> = (1..=hosts).collect();
        // The third octet of every real host's IPv4 subnet, and the fourth group of its IPv6
        // one: the fake peers' subnets avoid both.
        let mut own = BTreeSet::new();
        for &i in &all {
            own.insert(w.wait_ready(i)?.octets()[2]);
            if let Some(v6) = w.subnet6(i)? {
                own.insert((v6.segments()[3] & 0xff) as u8);
            }
        }
        // The mesh first: every host routes to every other host.
        for &i in &all {
            let mut others: Vec<IpAddr> = Vec::new();
            for &j in all.iter().filter(|&&j| j != i) {
                others.push(w.subnet(j)?.into());
                if let Some(v6) = w.subnet6(j)? {
                    others.push(v6.into());
                }
            }
            w.wait_routes(&[i], &others, Duration::from_secs(30))?;
        }
        let (mut lat, mut puts) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            let n = loop {
                let n = next_subnet;
                next_subnet = next_subnet.checked_add(1).context("out of fake subnets")?;
                if !own.contains(&n) {
                    break n;
                }
            };
            let subnet = Ipv4Addr::new(10, 244, n, 0);
            let subnet6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, 0);
            let (key, value) = fake_record(
                subnet,
                dual.then_some(subnet6),
                &format!("192.0.2.{}", 100 + peer),
                &format!("2001:db8::{}", 100 + peer),
                [0xbb, 0, peer as u8],
            );
            peer += 1;
            let (t0, put) = w.kv(move |c| async move {
                let t0 = Instant::now();
                let txn = req::txn(
                    [req::version_is(&key, CompareResult::Equal, 0)],
                    [req::op_put(req::put(&key, value))],
                    [],
                );
                let r = c.txn(txn).await?;
                ensure!(r.succeeded, "{key} already exists");
                Ok((t0, t0.elapsed()))
            })?;
            let mut want = vec![IpAddr::V4(subnet)];
            if dual {
                want.push(subnet6.into());
            }
            let done = w.wait_routes(&all, &want, Duration::from_secs(10))?;
            lat.push(done - t0);
            puts.push(put);
            std::thread::sleep(Duration::from_millis(30));
        }
        lat.sort();
        puts.sort();
        let row = ConvergenceRow {
            hosts,
            p50: percentile(&lat, 0.50),
            p99: percentile(&lat, 0.99),
            max: lat[lat.len() - 1],
            put_p50: percentile(&puts, 0.50),
        };
        println!(
            "convergence, {hosts} hosts: p50 {} p99 {} max {}",
            ms(row.p50),
            ms(row.p99),
            ms(row.max)
        );
        rows.push(row);
    }
    Ok(rows)
}

/// A fake peer's key (under [`SUBNETS`]) and value, as flannel writes them: dual-stack when
/// `subnet6` is given. `mac` gives the VtepMACs' last three bytes (the IPv6 device's differ).
fn fake_record(
    subnet: Ipv4Addr,
    subnet6: Option<Ipv6Addr>,
    public: &str,
    public6: &str,
    mac: [u8; 3],
) -> (String, String) {
    let [a, b, c] = mac;
    let data = format!(r#"{{"VNI":1,"VtepMAC":"02:{a:02x}:00:{b:02x}:00:{c:02x}"}}"#);
    match subnet6 {
        None => (
            format!("{SUBNETS}{subnet}-24"),
            format!(r#"{{"PublicIP":"{public}","BackendType":"vxlan","BackendData":{data}}}"#),
        ),
        Some(v6) => (
            format!("{SUBNETS}{subnet}-24&{v6}-64"),
            format!(
                r#"{{"PublicIP":"{public}","PublicIPv6":"{public6}","BackendType":"vxlan","BackendData":{data},"BackendV6Data":{{"VNI":1,"VtepMAC":"02:{a:02x}:06:{b:02x}:00:{c:02x}"}}}}"#
            ),
        ),
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct ScaleRow {
    peers: usize,
    written: Duration,
    programmed: Duration,
    rss_idle_kb: u64,
    rss_kb: u64,
    hwm_kb: u64,
    mean_program_ms: f64,
}

/// One world; a fresh host (fresh kernel state, fresh netd) for each peer count.
fn scale(netd: &Path, dual: bool) -> Result<Vec<ScaleRow>> {
    let config = if dual {
        SCALE_CONFIG_DUAL
    } else {
        SCALE_CONFIG
    };
    let mut w = World::new(netd, PEER_COUNTS.len(), config)?;
    let mut rows = Vec::new();
    for (round, peers) in PEER_COUNTS.into_iter().enumerate() {
        let h = round + 1;
        w.kv(|c| async move {
            c.delete_range(req::delete_prefix(SUBNETS)).await?;
            Ok(())
        })?;
        w.start_netd(h)?;
        let own = w.wait_ready(h)?;
        let own6 = w.subnet6(h)?;
        std::thread::sleep(Duration::from_millis(500));
        let (rss_idle_kb, _) = w.memory(h)?;
        let mut subnets: Vec<IpAddr> = Vec::new();
        let records: Vec<(String, String)> = (0..peers + 1)
            .map(|i| {
                let subnet = Ipv4Addr::new(10, 100 + (i / 256) as u8, (i % 256) as u8, 0);
                let subnet6 = Ipv6Addr::new(0xfd00, 1, 0, 0x100 + i as u16, 0, 0, 0, 0);
                (subnet, subnet6, i)
            })
            .filter(|(s, s6, _)| *s != own && Some(*s6) != own6)
            .take(peers)
            .map(|(subnet, subnet6, i)| {
                subnets.push(subnet.into());
                if dual {
                    subnets.push(subnet6.into());
                }
                fake_record(
                    subnet,
                    dual.then_some(subnet6),
                    &format!("198.18.{}.{}", i / 250, i % 250 + 1),
                    &format!("2001:db8:18::{:x}", i + 1),
                    [0x5c, (i >> 8) as u8, (i & 0xff) as u8],
                )
            })
            .collect();
        let (t0, written) = w.kv(move |c| async move {
            let t0 = Instant::now();
            for chunk in records.chunks(100) {
                let ops = chunk.iter().map(|(k, v)| req::op_put(req::put(k, v)));
                c.txn(req::txn([], ops, [])).await?;
            }
            Ok((t0, t0.elapsed()))
        })?;
        let done = w.wait_routes(&[h], &subnets, Duration::from_secs(60))?;
        let programmed = done - t0;
        std::thread::sleep(Duration::from_millis(200));
        let (rss_kb, hwm_kb) = w.memory(h)?;
        let metrics = w.metrics(h).unwrap_or_default();
        let sum = metric(&metrics, "netd_peer_program_seconds_sum");
        let count = metric(&metrics, "netd_peer_program_seconds_count");
        let row = ScaleRow {
            peers,
            written,
            programmed,
            rss_idle_kb,
            rss_kb,
            hwm_kb,
            mean_program_ms: if count > 0.0 {
                1000.0 * sum / count
            } else {
                f64::NAN
            },
        };
        println!(
            "scale, {peers} peers: writes {} all programmed {} VmRSS {} kB",
            ms(written),
            ms(programmed),
            rss_kb
        );
        rows.push(row);
        w.kill_netd(h);
    }
    Ok(rows)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// The world: namespaces, etcd, netd processes, route monitors, and their teardown.

/// Everything that must be removed, also from the signal handler.
struct Live {
    children: Vec<Child>,
    /// The world's namespaces (testbed's naming scheme), deleted when dropped.
    lab: Option<Lab>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    children: Vec::new(),
    lab: None,
    dirs: Vec::new(),
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every started process, deletes every namespace and directory created so far.
fn tear_down() {
    let Live {
        children,
        lab,
        dirs,
    } = std::mem::replace(
        &mut *live(),
        Live {
            children: Vec::new(),
            lab: None,
            dirs: Vec::new(),
        },
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(lab);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Runs `f` on a thread that has joined namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    netns::within(ns, f)?
}

/// Moves the calling thread into the namespace at `path`, for good.
fn enter_netns(path: &str) -> Result<()> {
    hostnet::netns::Netns::open(path)?
        .with_context(|| format!("no namespace at {path}"))?
        .enter_this_thread()?;
    Ok(())
}

/// A route appearing in (or leaving) a host's main table.
struct RouteEvent {
    host: usize,
    dst: IpAddr,
    added: bool,
    at: Instant,
}

struct World {
    prefix: String,
    dir: tempfile::TempDir,
    netd: PathBuf,
    endpoint: String,
    pids: HashMap<usize, u32>,
    events: Receiver<RouteEvent>,
    /// (host, /24 or /64 destination) → when its route appeared.
    present: HashMap<(usize, IpAddr), Instant>,
    stop: Arc<AtomicBool>,
    monitors: Vec<JoinHandle<()>>,
}

impl World {
    /// Underlay namespace (bridge 192.0.2.254/24, etcd) and `hosts` host namespaces, each with a
    /// route monitor; `config` stored at the network config key.
    fn new(netd: &Path, hosts: usize, config: &str) -> Result<World> {
        let (tx, events) = std::sync::mpsc::channel();
        // etcd's data on tmpfs where available: the figures are netd's, not the disk's.
        let dir = match tempfile::Builder::new()
            .prefix("netd-bench")
            .tempdir_in("/dev/shm")
        {
            Ok(d) => d,
            Err(_) => tempfile::tempdir()?,
        };
        live().dirs.push(dir.path().to_path_buf());
        let lab = Lab::new();
        let prefix = lab.prefix().to_string();
        live().lab = Some(lab);
        let mut w = World {
            prefix,
            dir,
            netd: netd.to_path_buf(),
            endpoint: format!("http://{UNDERLAY_GW}:2379"),
            pids: HashMap::new(),
            events,
            present: HashMap::new(),
            stop: Arc::new(AtomicBool::new(false)),
            monitors: Vec::new(),
        };
        w.with_lab(Lab::add_underlay)?;
        for i in 1..=hosts {
            let ns = w.with_lab(|lab| lab.add_host(i))?;
            w.monitors
                .push(spawn_monitor(&ns, i, tx.clone(), w.stop.clone())?);
        }
        w.start_etcd(config)?;
        Ok(w)
    }

    /// Runs `f` on the world's namespaces, kept in [`Live`] for the signal handler.
    fn with_lab<T>(&self, f: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        f(live().lab.as_mut().context("the world is gone")?)
    }

    fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn spawn(&self, ns: &str, program: &Path, args: &[&str], log: &str) -> Result<u32> {
        let log = std::fs::File::create(self.dir.path().join(log))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        live().children.push(child);
        Ok(pid)
    }

    fn start_etcd(&mut self, config: &str) -> Result<()> {
        let ul = format!("{}-ul", self.prefix);
        let data = self.dir.path().join("etcd");
        let url = self.endpoint.clone();
        let member = etcd::Member::new("e1", &data, &url, "http://127.0.0.1:2380");
        let args: Vec<String> = member
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(&ul, Path::new(etcd::ETCD), &args, "etcd.log")?;
        let config = config.to_string();
        let start = Instant::now();
        loop {
            let config = config.clone();
            let r = self.kv(|c| async move {
                c.put_kv(CONFIG_KEY, config).await?;
                Ok(())
            });
            match r {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > Duration::from_secs(20) => {
                    return Err(e.context("etcd did not answer within 20 s"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn start_netd(&mut self, i: usize) -> Result<()> {
        let subnet_file = self.dir.path().join(format!("h{i}/subnet.env"));
        let subnet_file = subnet_file.to_string_lossy();
        let port = HEALTHZ_PORT.to_string();
        let args = [
            "--etcd-endpoints",
            &self.endpoint,
            "--iface",
            "eth0",
            "--subnet-file",
            &subnet_file,
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            &port,
        ];
        let pid = self.spawn(
            &self.host(i),
            &self.netd.clone(),
            &args,
            &format!("netd-h{i}.log"),
        )?;
        self.pids.insert(i, pid);
        Ok(())
    }

    fn kill_netd(&mut self, i: usize) {
        if let Some(pid) = self.pids.remove(&i) {
            let mut live = live();
            if let Some(pos) = live.children.iter().position(|c| c.id() == pid) {
                let mut c = live.children.remove(pos);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn netd_running(&self, i: usize) -> bool {
        let Some(&pid) = self.pids.get(&i) else {
            return false;
        };
        live()
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn netd_log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("netd-h{i}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The subnet host `i` leased, from its subnet file.
    fn subnet(&self, i: usize) -> Result<Ipv4Addr> {
        let path = self.dir.path().join(format!("h{i}/subnet.env"));
        let text = std::fs::read_to_string(&path)?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .with_context(|| format!("no FLANNEL_SUBNET in {}", path.display()))?;
        let (ip, _) = v
            .split_once('/')
            .context("FLANNEL_SUBNET without a length")?;
        let ip: Ipv4Addr = ip.parse().context("FLANNEL_SUBNET address")?;
        Ok(Ipv4Addr::from(u32::from(ip) & !0xff))
    }

    /// The IPv6 subnet host `i` leased, from its subnet file (dual-stack only).
    fn subnet6(&self, i: usize) -> Result<Option<Ipv6Addr>> {
        let path = self.dir.path().join(format!("h{i}/subnet.env"));
        let text = std::fs::read_to_string(&path)?;
        let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        else {
            return Ok(None);
        };
        let (ip, _) = v
            .split_once('/')
            .context("FLANNEL_IPV6_SUBNET without a length")?;
        let ip: Ipv6Addr = ip.parse().context("FLANNEL_IPV6_SUBNET address")?;
        Ok(Some(Ipv6Addr::from(
            u128::from(ip) & !0xffff_ffff_ffff_ffff,
        )))
    }

    /// Waits until netd on host `i` has written its subnet file; returns the subnet.
    fn wait_ready(&self, i: usize) -> Result<Ipv4Addr> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.subnet(i) {
                return Ok(s);
            }
            if !self.netd_running(i) {
                bail!("netd on h{i} exited:\n{}", self.netd_log_tail(i));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "netd on h{i} not ready after 30 s:\n{}",
                    self.netd_log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `f` with an etcd client from inside the underlay namespace.
    fn kv<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(kvstore::client::Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        let endpoint = self.endpoint.clone();
        in_netns(&format!("{}-ul", self.prefix), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let opts = kvstore::client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(10));
                let c = kvstore::client::Client::connect([endpoint], Some(opts)).await?;
                f(c).await
            })
        })
    }

    fn apply(&mut self, e: RouteEvent) {
        if e.added {
            self.present.entry((e.host, e.dst)).or_insert(e.at);
        } else {
            self.present.remove(&(e.host, e.dst));
        }
    }

    /// Waits until every host in `hosts` has a route for every subnet in `subnets`; returns when
    /// the last one appeared. Driven by the route monitors; if they fall silent without
    /// completing (a monitor can lose messages when its socket buffer overflows), the kernel
    /// tables are checked with `ip route`, and completion found that way is stamped "now".
    fn wait_routes(
        &mut self,
        hosts: &[usize],
        subnets: &[IpAddr],
        timeout: Duration,
    ) -> Result<Instant> {
        let start = Instant::now();
        let mut last_progress = Instant::now();
        loop {
            let mut missing = 0;
            let mut last = start;
            for &h in hosts {
                for &s in subnets {
                    match self.present.get(&(h, s)) {
                        Some(&t) => last = last.max(t),
                        None => missing += 1,
                    }
                }
            }
            if missing == 0 {
                return Ok(last);
            }
            if start.elapsed() > timeout {
                bail!("{missing} routes still missing after {timeout:?}");
            }
            if last_progress.elapsed() > Duration::from_secs(1) {
                if self.routes_present_by_dump(hosts, subnets)? {
                    eprintln!("note: route monitor lost events; completion found by `ip route`");
                    return Ok(Instant::now());
                }
                last_progress = Instant::now();
            }
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(e) => {
                    self.apply(e);
                    while let Ok(e) = self.events.try_recv() {
                        self.apply(e);
                    }
                    last_progress = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("route monitors stopped"),
            }
        }
    }

    fn routes_present_by_dump(&self, hosts: &[usize], subnets: &[IpAddr]) -> Result<bool> {
        for &h in hosts {
            let mut out = run(&["ip", "-n", &self.host(h), "-4", "route", "show"])?;
            out.push_str(&run(&["ip", "-n", &self.host(h), "-6", "route", "show"])?);
            let have: BTreeSet<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            let shown = |s: &IpAddr| match s {
                IpAddr::V4(a) => format!("{a}/24"),
                IpAddr::V6(a) => format!("{a}/64"),
            };
            if !subnets.iter().all(|s| have.contains(&*shown(s))) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// netd's (VmRSS, VmHWM) in kB.
    fn memory(&self, i: usize) -> Result<(u64, u64)> {
        let pid = self.pids.get(&i).context("netd not running")?;
        // `ip netns exec` execs the program: the child's pid is netd's own.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        ensure!(comm.trim() == "netd", "pid {pid} is {comm:?}, not netd");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// netd's /metrics on host `i`.
    fn metrics(&self, i: usize) -> Result<String> {
        in_netns(&self.host(i), || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", HEALTHZ_PORT))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for m in self.monitors.drain(..) {
            let _ = m.join();
        }
        tear_down();
    }
}

/// A thread inside namespace `ns` that reports main-table routes of 10.0.0.0/8 /24s and
/// fd00::/8 /64s appearing and leaving, stamped when read; returns once subscribed.
fn spawn_monitor(
    ns: &str,
    host: usize,
    tx: Sender<RouteEvent>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let path = format!("/run/netns/{ns}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let handle = std::thread::spawn(move || {
        let subscribe = || -> Result<_> {
            enter_netns(&path)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (conn, _handle, messages) = rt.block_on(async {
                rtnetlink::new_multicast_connection(&[
                    MulticastGroup::Ipv4Route,
                    MulticastGroup::Ipv6Route,
                ])
            })?;
            Ok((rt, conn, messages))
        };
        let (rt, conn, mut messages) = match subscribe() {
            Ok(v) => v,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        rt.block_on(async move {
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(100), messages.next()).await {
                    Err(_) => {}
                    Ok(None) => break,
                    Ok(Some((msg, _))) => {
                        if let Some(e) = route_event(host, msg) {
                            let _ = tx.send(e);
                        }
                    }
                }
            }
        });
    });
    ready_rx
        .recv()
        .context("route monitor thread died")?
        .with_context(|| format!("route monitor in {ns}"))?;
    Ok(handle)
}

fn route_event(host: usize, msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<RouteEvent> {
    let at = Instant::now();
    let (added, m) = match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => (true, m),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)) => (false, m),
        _ => return None,
    };
    if m.header.table != RT_TABLE_MAIN {
        return None;
    }
    let len = m.header.destination_prefix_length;
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip))
            if len == 24 && ip.octets()[0] == 10 =>
        {
            Some(IpAddr::V4(*ip))
        }
        RouteAttribute::Destination(RouteAddress::Inet6(ip))
            if len == 64 && ip.segments()[0] == 0xfd00 =>
        {
            Some(IpAddr::V6(*ip))
        }
        _ => None,
    })?;
    Some(RouteEvent {
        host,
        dst,
        added,
        at,
    })
}
