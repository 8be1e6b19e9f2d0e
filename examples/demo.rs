//! The one-command demo: `cargo run --release --example demo` (as root).
//!
//! It builds the release `netd` and `netd-cni` binaries, then a small world of network
//! namespaces whose names all start with a prefix unique to this run: an underlay namespace
//! with a bridge, `--hosts` host namespaces on 192.0.2.0/24 (the netd of hosts 1–3 run the
//! embedded KV store as a 3-member Raft cluster on `http://192.0.2.{1,2,3}:2379`; further hosts
//! are its clients; with fewer hosts, every host is a member), and `--containers-per-host`
//! container namespaces per host, attached by running `netd-cni` ADD inside the host namespace
//! the way a container runtime does. It prints the hosts and their subnets as read through the
//! KV API (`netd leases`), the containers and their addresses, and a connectivity matrix (ICMP echo
//! sent from Rust, no `ping` needed) between all
//! containers. Exit code 0 only if every pair connected.
//!
//! Without `--keep` everything is removed at the end, on failure and on Ctrl-C / SIGTERM (CNI
//! DEL per container, netd killed, namespaces deleted, temp dir removed). With `--keep` it stays
//! up and the demo prints how to explore it and how to remove it (`--cleanup PREFIX`). Nothing
//! is ever added to the machine's root namespace.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;

use testbed::binaries;
use testbed::cmd::run;
use testbed::cni::{self, Attachment};
use testbed::lab::{self, Lab};
use testbed::netns;
use testbed::world;

/// Hosts 1..=KV_MEMBERS (at most) run an embedded KV member; together they form the store.
const KV_MEMBERS: usize = 3;
const NET_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const SUBNET_PREFIX: &str = "/coreos.com/network/subnets";

/// netd's one-command demo: hosts, containers and a connectivity matrix in network namespaces.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Args {
    /// Number of host namespaces (1-50).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    hosts: u8,
    /// Container namespaces per host (1-50).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
    containers_per_host: u8,
    /// Leave the world running and print how to explore and remove it.
    #[arg(long)]
    keep: bool,
    /// Remove a world left by `--keep`: its namespaces, processes and temp dir, then exit.
    #[arg(long, value_name = "PREFIX")]
    cleanup: Option<String>,
}

fn main() {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("demo: must run as root (it creates network namespaces); try sudo");
        std::process::exit(2);
    }
    let code = match run_demo(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            1
        }
    };
    if !args.keep || code != 0 {
        tear_down();
    }
    std::process::exit(code);
}

/// Runs the demo; `Ok(true)` when every pair of containers connected.
fn run_demo(args: &Args) -> Result<bool> {
    if let Some(prefix) = &args.cleanup {
        cleanup(prefix)?;
        return Ok(true);
    }
    install_tools()?;
    let (netd, cni) = build_binaries()?;
    testbed::cmd::on_interrupt(tear_down);
    live().cni = Some(cni.clone());

    // A kept world outlives this process: its prefix is one the leftover sweep never takes.
    let lab = if args.keep {
        Lab::new_kept()
    } else {
        Lab::new()
    };
    let prefix = lab.prefix().to_string();
    register(|l| {
        l.lab = Some(lab);
        Ok(())
    })?;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    live().dir = Some(dir.clone());
    println!("demo prefix: {prefix} (temp dir {})", dir.display());
    let started = Instant::now();

    let hosts = usize::from(args.hosts);
    let w = World {
        prefix: prefix.clone(),
        dir,
        netd,
        cni,
        hosts,
    };
    w.build_network(hosts)?;
    let members = w.kv_members();
    for i in 1..=members {
        w.start_netd(i)?;
    }
    step(&format!(
        "waiting for the embedded KV store ({members} members) to elect a leader; writing the network config"
    ));
    w.set_config()?;
    for i in members + 1..=hosts {
        w.start_netd(i)?;
    }
    let mut subnets = Vec::new();
    for i in 1..=hosts {
        let s = w.wait_subnet(i)?;
        step(&format!("{}: subnet {s}/24", w.host(i)));
        subnets.push(s);
    }
    for i in 1..=hosts {
        w.wait_routes(i, &subnets)?;
    }
    step("every host routes to every other host's subnet");

    let mut containers = Vec::new();
    for i in 1..=hosts {
        for j in 1..=usize::from(args.containers_per_host) {
            let c = w.add_container(i, j)?;
            step(&format!("{}: {} on {}", c.name, c.ip, w.host(i)));
            containers.push(c);
        }
    }

    println!("\nHosts and subnets, read through the KV API (netd leases):");
    let leases = w.netd_cmd(&w.underlay(), &["leases"])?;
    print!("{leases}");

    println!("\nContainers:");
    for c in &containers {
        println!("  {:<16} {:<12} {}", c.name, c.host, c.ip);
    }

    let failures = matrix(&containers);
    let pairs = containers.len() * containers.len().saturating_sub(1);
    println!(
        "\n{} of {pairs} pairs connected, {failures} failed; world built and checked in {:.1} s",
        pairs - failures,
        started.elapsed().as_secs_f64()
    );
    if args.keep {
        print_explore(&w, &containers);
        // The world stays: forget it, so nothing is torn down.
        *live() = Live::default();
    }
    Ok(failures == 0)
}

fn step(msg: &str) {
    println!("==> {msg}");
}

/// What the demo runs besides its own binaries: `ip` builds the namespaces (netd and netd-cni
/// program their masquerade rules over netlink, with no tool). When it is missing, the
/// project's install script installs it (Debian 12, apt); it says what it installs, and fails
/// with one line where it cannot.
fn install_tools() -> Result<()> {
    let missing: Vec<&str> = ["ip"]
        .into_iter()
        .filter(|t| !testbed::cmd::on_path(t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
    step(&format!(
        "{} not installed: installing iproute2 (the demo builds namespaces with ip) through {} demo",
        missing.join(" and "),
        script.display()
    ));
    let status = Command::new(&script)
        .arg("demo")
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(
        status.success(),
        "{} demo did not install what the demo needs ({status})",
        script.display()
    );
    Ok(())
}

/// Builds `netd` and `netd-cni` in this program's profile and returns their paths.
fn build_binaries() -> Result<(PathBuf, PathBuf)> {
    step("building netd and netd-cni (the crates they share with the demo are built already)");
    let b = binaries::build(false)?;
    Ok((b.netd, b.cni))
}

// ---------------------------------------------------------------------------------------------
// What must be removed, also from the signal handler.

#[derive(Default)]
struct Live {
    /// netd processes, in start order (the KV members first).
    netd: Vec<Child>,
    attachments: Vec<Attachment>,
    /// The world's namespaces (deleted when dropped, unless kept).
    lab: Option<Lab>,
    dir: Option<PathBuf>,
    cni: Option<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    netd: Vec::new(),
    attachments: Vec::new(),
    lab: None,
    dir: None,
    cni: None,
});

/// Set once teardown has begun: nothing new may be created after that.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates something and records it for teardown in one step, under the lock, so a signal
/// arriving in between cannot leave it behind; refused once teardown has begun.
fn register<T>(create: impl FnOnce(&mut Live) -> Result<T>) -> Result<T> {
    let mut l = live();
    ensure!(!STOPPING.load(Ordering::SeqCst), "tearing down");
    create(&mut l)
}

/// CNI DEL for every container, netd stopped (clients first), namespaces and temp dir removed.
fn tear_down() {
    // The lock is held to the end: nothing can be created meanwhile.
    let mut guard = live();
    STOPPING.store(true, Ordering::SeqCst);
    let l = std::mem::take(&mut *guard);
    if l.netd.is_empty() && l.lab.is_none() && l.dir.is_none() {
        return;
    }
    println!("==> tearing down");
    if let Some(cni) = &l.cni {
        for a in &l.attachments {
            if let Err(e) = cni::exec(cni, "DEL", a) {
                eprintln!("CNI DEL {}: {e:#}", a.container_id);
            }
        }
    }
    for mut c in l.netd.into_iter().rev() {
        testbed::cmd::stop(&mut c, Duration::from_secs(5));
    }
    drop(l.lab);
    if let Some(d) = l.dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--cleanup PREFIX`: kill what runs in the world's namespaces, delete them and the temp dir.
fn cleanup(prefix: &str) -> Result<()> {
    let names = lab::remove(prefix)?;
    let dir = std::env::temp_dir().join(prefix);
    let _ = std::fs::remove_dir_all(&dir);
    println!("removed {} namespaces and {}", names.len(), dir.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The world.

struct World {
    prefix: String,
    dir: PathBuf,
    netd: PathBuf,
    cni: PathBuf,
    hosts: usize,
}

struct Container {
    name: String,
    host: String,
    ip: Ipv4Addr,
}

impl World {
    fn underlay(&self) -> String {
        format!("{}-ul", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}/subnet.env"))
    }

    /// Runs `f` on the world's namespaces ([`Lab`]), recorded for teardown under the lock.
    fn lab<T>(&self, f: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        register(|l| f(l.lab.as_mut().context("the world is gone")?))
    }

    /// Underlay namespace with bridge br0 (192.0.2.254/24); hosts on it through veth pairs.
    fn build_network(&self, hosts: usize) -> Result<()> {
        let ul = self.lab(Lab::add_underlay)?;
        step(&format!("underlay {ul}: bridge br0 192.0.2.254/24"));
        for i in 1..=hosts {
            let ns = self.lab(|lab| lab.add_host(i))?;
            step(&format!("host {ns}: eth0 192.0.2.{i}/24"));
        }
        Ok(())
    }

    /// How many hosts run an embedded KV member.
    fn kv_members(&self) -> usize {
        self.hosts.min(KV_MEMBERS)
    }

    /// The client URLs of the embedded KV members, comma-separated (an etcd endpoint list).
    fn kv_endpoints(&self) -> String {
        world::kv_endpoints(self.kv_members())
    }

    /// netd on host `i`: hosts 1..=kv_members run an embedded KV member (together one Raft
    /// cluster), the others are clients of those members.
    fn start_netd(&self, i: usize) -> Result<()> {
        let ns = self.host(i);
        let subnet_file = self.subnet_file(i);
        let mut args: Vec<String> = vec!["--iface".into(), "eth0".into()];
        if i <= self.kv_members() {
            let kv_dir = self.dir.join(format!("kv-h{i}"));
            let member = world::kv_member_args(i, self.kv_members(), &kv_dir);
            step(&format!(
                "{ns}: netd with embedded KV member h{i} ({})",
                member[..6].join(" ")
            ));
            args.extend(member);
            args.extend(["--kv-initial-cluster-token".into(), self.prefix.clone()]);
        } else {
            let eps = self.kv_endpoints();
            step(&format!("{ns}: netd, KV client of {eps}"));
            args.extend(["--etcd-endpoints".into(), eps]);
        }
        args.push("--subnet-file".into());
        args.push(subnet_file.to_string_lossy().into_owned());
        let log = std::fs::File::create(self.dir.join(format!("netd-h{i}.log")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&self.netd)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches the demo only, which
            // tears down in order (and `--keep` leaves netd running after the demo exits).
            .process_group(0);
        register(|l| {
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", self.netd.display()))?;
            l.netd.push(child);
            Ok(())
        })
    }

    /// Runs `netd ARGS --etcd-endpoints <members>` in namespace `ns`.
    fn netd_cmd(&self, ns: &str, args: &[&str]) -> Result<String> {
        let netd = self.netd.to_string_lossy();
        let eps = self.kv_endpoints();
        let mut full = vec!["ip", "netns", "exec", ns, &netd];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--etcd-endpoints", &eps]);
        run(&full)
    }

    /// Writes the network config once h1's member answers (within 30 s).
    fn set_config(&self) -> Result<()> {
        let t0 = Instant::now();
        loop {
            match self.netd_cmd(&self.host(1), &["config", "set", NET_CONFIG]) {
                Ok(_) => return Ok(()),
                Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                    return Err(e.context(format!(
                        "the embedded KV store did not answer within 30 s (log: {})",
                        self.dir.join("netd-h1.log").display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Waits (30 s) for host `i`'s subnet file; returns its subnet's network address.
    fn wait_subnet(&self, i: usize) -> Result<Ipv4Addr> {
        let path = self.subnet_file(i);
        let t0 = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Some((s, _)) = cni::parse_subnet(&text)
            {
                return Ok(s);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{}: no subnet file after 30 s (log: {})",
                    self.host(i),
                    self.dir.join(format!("netd-h{i}.log")).display()
                );
            }
            self.check_netd_alive()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_netd_alive(&self) -> Result<()> {
        for c in live().netd.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("a netd exited ({st}); logs in {}", self.dir.display());
            }
        }
        Ok(())
    }

    /// Waits (30 s) until host `i` has a route to every other host's subnet.
    fn wait_routes(&self, i: usize, subnets: &[Ipv4Addr]) -> Result<()> {
        let ns = self.host(i);
        let t0 = Instant::now();
        loop {
            let routes = run(&["ip", "-n", &ns, "-4", "route", "show"])?;
            let missing: Vec<String> = subnets
                .iter()
                .enumerate()
                .filter(|(j, _)| j + 1 != i)
                .map(|(_, s)| format!("{s}/24"))
                .filter(|s| !routes.lines().any(|l| l.starts_with(&format!("{s} "))))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{ns}: no route to {} after 30 s", missing.join(", "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A container namespace on host `i`, attached by `netd-cni` ADD run inside the host.
    fn add_container(&self, i: usize, j: usize) -> Result<Container> {
        let host = self.host(i);
        let name = self.lab(|lab| lab.add_ns(&format!("h{i}c{j}")))?;
        let a = Attachment {
            host_ns: host.clone(),
            container_id: name.clone(),
            netns: format!("/run/netns/{name}"),
            ifname: "eth0".into(),
            config: cni::netd_config(&self.subnet_file(i), &self.dir.join(format!("h{i}/cni"))),
            args: String::new(),
        };
        // Recorded even when ADD fails: DEL is idempotent and undoes a half-done ADD.
        let out = register(|l| {
            let out = cni::exec(&self.cni, "ADD", &a);
            l.attachments.push(a);
            out
        })?;
        let ip = cni::result_ip(&out)?;
        Ok(Container { name, host, ip })
    }
}

/// Every container pings every other one; prints the matrix, returns the number of failures.
fn matrix(cs: &[Container]) -> usize {
    println!("\nConnectivity matrix (ICMP echo RTT in ms, row = from, column = to):");
    let short = |c: &Container| c.name.rsplit('-').next().unwrap_or(&c.name).to_string();
    print!("{:>8}", "");
    for c in cs {
        print!("{:>9}", short(c));
    }
    println!();
    let mut failures = 0;
    for from in cs {
        print!("{:>8}", short(from));
        for to in cs {
            if from.name == to.name {
                print!("{:>9}", "-");
                continue;
            }
            match netns::ping(&from.name, to.ip, 2) {
                Some(ms) => print!("{ms:>9.3}"),
                None => {
                    failures += 1;
                    print!("{:>9}", "FAIL");
                }
            }
            let _ = std::io::stdout().flush();
        }
        println!();
    }
    failures
}

fn print_explore(w: &World, cs: &[Container]) {
    let netd = w.netd.display();
    let ul = w.underlay();
    println!("\nThe world is still running (--keep). Explore it:");
    if let (Some(a), Some(b)) = (cs.first(), cs.last()) {
        println!("  ip netns exec {} ping {}", a.name, b.ip);
        println!("  ip netns exec {} ip route", a.host);
    }
    let eps = w.kv_endpoints();
    println!("  ip netns exec {ul} etcdctl --endpoints {eps} get --prefix {SUBNET_PREFIX}");
    println!("  ip netns exec {ul} etcdctl --endpoints {eps} endpoint status -w table");
    println!("  ip netns exec {ul} {netd} leases --etcd-endpoints {eps}");
    println!("  ip netns list | grep {}", w.prefix);
    println!("  logs: {}", w.dir.display());
    println!("Tear it down:");
    println!(
        "  cargo run --release --example demo -- --cleanup {}",
        w.prefix
    );
}
