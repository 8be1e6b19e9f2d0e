//! Cross-host TCP throughput between containers, measured with iperf3 (Debian's) in one run:
//! container → container over VXLAN, container → container over host-gw, and host → host over
//! the bare underlay (the same veth + bridge the overlays ride on).
//!
//! `cargo run --release --example throughput -- [--seconds 3] [--rounds 5]` (as root).
//!
//! It builds two worlds of two hosts each (one VXLAN, one host-gw; see `testbed::world`),
//! attaches a container per host through netd-cni, and runs the three transfers round-robin,
//! `--rounds` times, so all three see the same machine load. It prints the median, min and max
//! per path and the ratio to the underlay, checks the container MTU (VXLAN: underlay − 50;
//! host-gw: the underlay's) and that no IP fragment was created or reassembled in any namespace
//! on the path (the kernel's `/proc/net/snmp` counters, before and after). Exit code 0 only if
//! the MTUs are right, nothing was fragmented and VXLAN reaches `--min-ratio` of the underlay.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;

use testbed::world::{HOST_GW, VXLAN, World};

#[derive(Debug, Parser)]
#[command(name = "throughput")]
struct Args {
    /// Seconds per transfer.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Transfers per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// VXLAN's required share of the underlay's throughput.
    #[arg(long, default_value_t = 0.9)]
    min_ratio: f64,
}

/// One measured path: client namespace, server namespace and address.
struct Path {
    name: &'static str,
    client: String,
    server: String,
    ip: Ipv4Addr,
}

/// One iperf3 transfer's result.
struct Sample {
    gbps: f64,
    retransmits: u64,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("throughput failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    ensure!(
        testbed::cmd::on_path("iperf3"),
        "iperf3 is missing: apt-get install iperf3"
    );
    println!("building netd and netd-cni, then two worlds (VXLAN, host-gw) of two hosts each");
    let mut vx = World::new(2, VXLAN)?;
    let mut gw = World::new(2, HOST_GW)?;
    let va = vx.add_container(1, "")?;
    let vb = vx.add_container(2, "")?;
    let ga = gw.add_container(1, "")?;
    let gb = gw.add_container(2, "")?;

    let mut ok = true;
    let underlay_mtu = World::mtu(&vx.host(1), "eth0")?;
    let checks = [
        (
            "VXLAN container eth0",
            World::mtu(&va.ns, "eth0")?,
            underlay_mtu - 50,
        ),
        (
            "VXLAN flannel.1",
            World::mtu(&vx.host(1), "flannel.1")?,
            underlay_mtu - 50,
        ),
        (
            "host-gw container eth0",
            World::mtu(&ga.ns, "eth0")?,
            underlay_mtu,
        ),
    ];
    println!("MTU: underlay eth0 {underlay_mtu}");
    for (what, have, want) in checks {
        let verdict = if have == want { "ok" } else { "WRONG" };
        println!("MTU: {what} {have} (want {want}) {verdict}");
        ok &= have == want;
    }

    let paths = [
        Path {
            name: "underlay host → host",
            client: vx.host(1),
            server: vx.host(2),
            ip: World::host_ip(2),
        },
        Path {
            name: "VXLAN container → container",
            client: va.ns.clone(),
            server: vb.ns.clone(),
            ip: vb.ip,
        },
        Path {
            name: "host-gw container → container",
            client: ga.ns.clone(),
            server: gb.ns.clone(),
            ip: gb.ip,
        },
    ];
    // Every namespace a packet crosses, for the fragment counters.
    let watched: Vec<String> = vec![
        vx.host(1),
        vx.host(2),
        vx.underlay(),
        va.ns.clone(),
        vb.ns.clone(),
        gw.host(1),
        gw.host(2),
        gw.underlay(),
        ga.ns.clone(),
        gb.ns.clone(),
    ];
    let before = fragment_counters(&watched)?;
    let mut samples: Vec<Vec<Sample>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.rounds {
        for (p, s) in paths.iter().zip(samples.iter_mut()) {
            let r = iperf(p, args.seconds).with_context(|| format!("{} transfer", p.name))?;
            println!(
                "round {round}: {:<30} {:>7.2} Gbit/s  {} retransmits",
                p.name, r.gbps, r.retransmits
            );
            s.push(r);
        }
    }
    let after = fragment_counters(&watched)?;
    let fragmented: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect();

    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    println!(
        "\n{} s per transfer, {} rounds, kernel {}, {} CPUs:",
        args.seconds,
        args.rounds,
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| path | Gbit/s (median) | min–max | vs underlay | retransmits |");
    println!("|---|---|---|---|---|");
    for ((p, s), m) in paths.iter().zip(&samples).zip(&medians) {
        let lo = s.iter().map(|x| x.gbps).fold(f64::INFINITY, f64::min);
        let hi = s.iter().map(|x| x.gbps).fold(0.0, f64::max);
        let rt: u64 = s.iter().map(|x| x.retransmits).sum();
        println!(
            "| {} | {m:.2} | {lo:.2}–{hi:.2} | {:.0}% | {rt} |",
            p.name,
            100.0 * m / medians[0]
        );
    }
    if fragmented.is_empty() {
        println!(
            "fragmentation: none (IP fragment counters unchanged in all {} namespaces)",
            watched.len()
        );
    } else {
        println!("fragmentation: YES: {}", fragmented.join(", "));
        ok = false;
    }
    println!(
        "VXLAN / host-gw = {:.1}% (encapsulation alone; host-gw crosses the same veths, bridges and forwarding)",
        100.0 * medians[1] / medians[2]
    );
    let ratio = medians[1] / medians[0];
    let pass = ratio >= args.min_ratio;
    println!(
        "VXLAN / underlay = {:.1}% (required {:.0}%): {}",
        100.0 * ratio,
        100.0 * args.min_ratio,
        if pass { "ok" } else { "BELOW" }
    );
    Ok(ok && pass)
}

fn median(s: &[Sample]) -> f64 {
    let mut v: Vec<f64> = s.iter().map(|x| x.gbps).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// "ns:Counter" → value, for the IP fragmentation and reassembly counters.
fn fragment_counters(namespaces: &[String]) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for ns in namespaces {
        for (k, v) in World::ip_counters(ns)? {
            if k.starts_with("Frag") || k.starts_with("Reasm") {
                m.insert(format!("{ns}:{k}"), v);
            }
        }
    }
    Ok(m)
}

/// Kills the iperf3 server if the client failed.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 transfer of `seconds` from `p.client` to a one-off server in `p.server`.
fn iperf(p: &Path, seconds: u32) -> Result<Sample> {
    let _server = Server(
        Command::new("ip")
            .args([
                "netns", "exec", &p.server, "iperf3", "-s", "-1", "-p", "5201",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?,
    );
    let ip = p.ip.to_string();
    let secs = seconds.to_string();
    let mut last = String::new();
    // The server needs a moment to listen.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let out = Command::new("ip")
            .args([
                "netns", "exec", &p.client, "iperf3", "-c", &ip, "-p", "5201",
            ])
            .args(["-t", &secs, "-J"])
            .output()
            .context("run iperf3 -c")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() {
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 reported no received rate")?;
            return Ok(Sample {
                gbps: bps / 1e9,
                retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            });
        }
        last = v["error"].as_str().unwrap_or("").to_string();
    }
    anyhow::bail!("iperf3 to {ip} kept failing: {last}")
}
