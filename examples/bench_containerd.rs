//! What CNI adds to a container's life under containerd: `ctr run --rm IMAGE ID true` timed with
//! and without `--cni`, for netd-cni and for Debian's reference `bridge` + `host-local`, each with
//! masquerade on and off, in one run.
//!
//! `cargo run --release --example bench_containerd -- [--rounds 20] [--warmup 2]` (as root, with
//! containerd, runc, busybox-static and containernetworking-plugins installed).
//!
//! It builds a one-host world (the host's netd writes `subnet.env` as on a node, with its
//! default `FLANNEL_IPMASQ=false`, so netd-cni masquerades itself), starts containerd in it
//! ([`testbed::containerd`]), imports a busybox image built locally, and then runs the five
//! setups round-robin, `--rounds` times, rotating which goes first, so all see the same machine
//! load. Each setup's conflist is written into the directory `ctr run --cni` reads before its
//! run. The per-container CNI cost is a setup's median minus the no-CNI median; the ratio of
//! netd-cni's cost to the reference's is printed for masquerade on and off.
//!
//! The reference: `bridge` (its own bridge `cni1`, `isGateway`, hairpin mode, the same MTU) with
//! `host-local` on a /24 of its own, `ipMasq` as the row says (the bridge plugin then adds an
//! iptables chain per container). netd-cni: the shipped `10-netd.conflist` pointed at the host's
//! subnet file, with `"ipMasq"` set explicitly.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;

use testbed::containerd::{Containerd, Setup};
use testbed::oci;
use testbed::world::{VXLAN, World};

const IMAGE: &str = "localhost/netd-bench-busybox:1";
const PAUSE: &str = "localhost/netd-bench-pause:1";
/// Debian's reference plugins.
const REFERENCE_DIR: &str = "/usr/lib/cni";

#[derive(Debug, Parser)]
#[command(name = "bench_containerd")]
struct Args {
    /// Containers per setup (the median is reported).
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Untimed containers per setup first (page cache, first-ADD work such as the bridge and
    /// the masquerade rule).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
}

/// One setup: its name and its conflist (none: `ctr run` without `--cni`).
struct Bench {
    name: &'static str,
    conflist: Option<serde_json::Value>,
    times: Vec<Duration>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("bench_containerd failed: {e:#}");
        std::process::exit(1);
    }
}

fn netd_conflist(subnet_file: &Path, data_dir: &Path, masq: bool) -> Result<serde_json::Value> {
    let shipped = include_str!("cni/10-netd.conflist");
    let mut c: serde_json::Value = serde_json::from_str(shipped).context("shipped conflist")?;
    c["plugins"][0]["subnetFile"] = subnet_file.to_string_lossy().into();
    c["plugins"][0]["dataDir"] = data_dir.to_string_lossy().into();
    c["plugins"][0]["ipMasq"] = masq.into();
    Ok(c)
}

fn reference_conflist(data_dir: &Path, mtu: u32, masq: bool) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni1",
            "isGateway": true,
            "ipMasq": masq,
            "hairpinMode": true,
            "mtu": mtu,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.250.0.0/24"}]],
                "dataDir": data_dir.to_string_lossy(),
            },
        }],
    })
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One `ctr run --rm` of `true`, with `--cni` when the setup has a conflist (written first).
fn run_one(c: &Containerd, conf_dir: &Path, bench: &Bench, id: &str) -> Result<Duration> {
    let mut args = vec!["run", "--rm"];
    if let Some(conflist) = &bench.conflist {
        std::fs::write(conf_dir.join("10-bench.conflist"), conflist.to_string())
            .context("writing the conflist")?;
        args.push("--cni");
    }
    args.extend([IMAGE, id, "true"]);
    let t0 = Instant::now();
    c.ctr_ok(&args)
        .with_context(|| format!("{}: ctr run {id}", bench.name))?;
    Ok(t0.elapsed())
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    testbed::containerd::require()?;
    for plugin in ["bridge", "host-local"] {
        ensure!(
            Path::new(REFERENCE_DIR).join(plugin).exists(),
            "{REFERENCE_DIR}/{plugin} is missing: apt-get install containernetworking-plugins"
        );
    }
    println!("building netd and netd-cni, then a one-host world and its containerd");
    let w = World::new(1, VXLAN)?;
    let tmp = tempfile::Builder::new()
        .prefix("netd-bench-ctr-")
        .tempdir()
        .context("temp dir")?;
    let dir = tmp.path();
    let bin = dir.join("cni-bin");
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&bin).context("cni bin dir")?;
    std::fs::create_dir_all(&conf).context("net.d")?;
    std::fs::copy(&w.bins.cni, bin.join("netd-cni")).context("installing netd-cni")?;
    for plugin in ["bridge", "host-local", "loopback"] {
        std::fs::copy(Path::new(REFERENCE_DIR).join(plugin), bin.join(plugin))
            .with_context(|| format!("installing {plugin}"))?;
    }
    let pause = oci::busybox_image(dir, "pause.tar", PAUSE, &["/bin/sleep", "2147483647"])?;
    let image = oci::busybox_image(dir, "busybox.tar", IMAGE, &["/bin/sh"])?;
    let c = Containerd::start(Setup {
        host_ns: w.host(1),
        dir: dir.join("containerd"),
        cni_bin: bin,
        cni_conf: conf.clone(),
        sandbox_image: PAUSE.to_string(),
    })?;
    c.import(&pause)?;
    c.import(&image)?;
    let mtu = World::mtu(&w.host(1), "eth0")?.saturating_sub(50);
    let subnet_file = w.subnet_file(1);
    let mut benches = vec![
        Bench {
            name: "no CNI",
            conflist: None,
            times: Vec::new(),
        },
        Bench {
            name: "netd-cni, masquerade on",
            conflist: Some(netd_conflist(&subnet_file, &dir.join("ipam"), true)?),
            times: Vec::new(),
        },
        Bench {
            name: "netd-cni, masquerade off",
            conflist: Some(netd_conflist(&subnet_file, &dir.join("ipam"), false)?),
            times: Vec::new(),
        },
        Bench {
            name: "bridge + host-local, ipMasq on",
            conflist: Some(reference_conflist(&dir.join("ref-ipam"), mtu, true)),
            times: Vec::new(),
        },
        Bench {
            name: "bridge + host-local, ipMasq off",
            conflist: Some(reference_conflist(&dir.join("ref-ipam"), mtu, false)),
            times: Vec::new(),
        },
    ];
    println!(
        "containerd ready; {} warm-up and {} timed `ctr run --rm {IMAGE} ID true` per setup, round-robin",
        args.warmup, args.rounds
    );
    let n = benches.len();
    for round in 0..args.warmup + args.rounds {
        for k in 0..n {
            // Rotate who goes first, so no setup always follows the same one.
            let i = (k + round as usize) % n;
            // Ids name cgroups (`/k8s.io/<id>`), which are the machine's: unique per process.
            let id = format!("b{round}-{i}-{}", std::process::id());
            let t = run_one(&c, &conf, &benches[i], &id)?;
            if round >= args.warmup {
                benches[i].times.push(t);
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
    let base = median(&benches[0].times);
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>22}",
        "setup", "p50", "min", "max", "CNI cost (p50 - no CNI)"
    );
    for b in &benches {
        let min = b.times.iter().min().copied().unwrap_or_default();
        let max = b.times.iter().max().copied().unwrap_or_default();
        let p50 = median(&b.times);
        let cost = if b.conflist.is_some() {
            format!("{:.1} ms", ms(p50) - ms(base))
        } else {
            "-".to_string()
        };
        println!(
            "{:<34} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>22}",
            b.name,
            ms(p50),
            ms(min),
            ms(max),
            cost
        );
    }
    let cost = |i: usize| ms(median(&benches[i].times)) - ms(base);
    for (label, netd, reference) in [("on", 1, 3), ("off", 2, 4)] {
        let (a, b) = (cost(netd), cost(reference));
        let ratio = if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "n/a (the reference cost nothing measurable)".to_string()
        };
        println!(
            "masquerade {label}: CNI cost netd-cni {a:.1} ms, bridge + host-local {b:.1} ms, netd-cni / reference {ratio}"
        );
    }
    Ok(())
}
