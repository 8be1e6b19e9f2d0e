//! Side-by-side benchmark: netd-cni against Debian's reference `bridge` + `host-local`, with
//! the same bridge name, subnet, MTU and hairpin setting, in private network namespaces.
//!
//! Build and run (as root):
//! ```sh
//! cargo build --release -p netd-cni --bins --examples
//! target/release/examples/bench_cni            # or: bench_cni --latency 100 --parallel 8
//! target/release/examples/bench_cni --sync-teardown   # DEL deletes the veth synchronously
//! target/release/examples/bench_cni --ip-masq  # both plugins masquerade ("ipMasq": true)
//! ```
//! For each plugin it measures (1) sequential ADD, DEL and ADD+DEL latency of one container on
//! an otherwise empty host, (2) throughput of 100 ADDs then 100 DELs with `--parallel`
//! concurrent invocations, (3) ADD+DEL latency of a probe container while 10, 50, 100 and 200
//! other containers are attached (is the cost per container flat?). Plugins are exec'd the way
//! a runtime does it: environment + config on stdin, from a thread inside the host netns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const REF_DIR: &str = "/usr/lib/cni";

struct Opts {
    plugin: PathBuf,
    latency_runs: usize,
    throughput: usize,
    parallel: usize,
    probes: usize,
    levels: Vec<usize>,
    /// Run netd-cni with `"asyncTeardown": false` (DEL waits for the kernel's veth destruction).
    sync_teardown: bool,
    /// `"ipMasq": true` on both sides: each plugin masquerades the containers' outbound traffic
    /// (netd-cni with its nf_tables rule, the reference with iptables).
    ip_masq: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let default_plugin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("netd-cni"))
        .ok_or("cannot locate netd-cni next to the example")?;
    let mut o = Opts {
        plugin: default_plugin,
        latency_runs: 100,
        throughput: 100,
        parallel: 8,
        probes: 20,
        levels: vec![10, 50, 100, 200],
        sync_teardown: false,
        ip_masq: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        match a.as_str() {
            "--plugin" => o.plugin = PathBuf::from(val()?),
            "--sync-teardown" => o.sync_teardown = true,
            "--ip-masq" => o.ip_masq = true,
            "--latency" => o.latency_runs = num(val()?)?,
            "--throughput" => o.throughput = num(val()?)?,
            "--parallel" => o.parallel = num(val()?)?.max(1),
            "--probes" => o.probes = num(val()?)?,
            "--levels" => {
                o.levels = val()?
                    .split(',')
                    .map(|s| num(s.to_string()))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !o.plugin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p netd-cni --bins --examples`",
            o.plugin.display()
        ));
    }
    for p in ["bridge", "host-local"] {
        if !Path::new(REF_DIR).join(p).is_file() {
            return Err(format!(
                "{REF_DIR}/{p} missing (apt install containernetworking-plugins)"
            ));
        }
    }
    if o.levels.iter().any(|l| *l > 250) {
        return Err("levels above 250 do not fit the /24 node subnet".into());
    }
    Ok(o)
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One plugin under test: how to invoke it and the world it runs in.
struct Subject {
    label: &'static str,
    bin: PathBuf,
    conf: Value,
    host_ns: String,
    containers: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Subject {
    fn new(
        label: &'static str,
        bin: PathBuf,
        reference: bool,
        tag: &str,
        sync_teardown: bool,
        ip_masq: bool,
    ) -> Result<Subject, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let host_ns = format!("ncbench{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &host_ns])?;
        let data = tmp.path().join("data");
        let conf = if reference {
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni0",
                   "isGateway": true, "isDefaultGateway": true, "ipMasq": ip_masq, "mtu": 1450,
                   "hairpinMode": true,
                   "ipam": {"type": "host-local", "dataDir": data,
                            "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]}})
        } else {
            let subnet = tmp.path().join("subnet.env");
            std::fs::write(
                &subnet,
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            )
            .map_err(|e| e.to_string())?;
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "netd-cni", "bridge": "cni0",
                   "subnetFile": subnet, "dataDir": data, "ipMasq": ip_masq, "hairpinMode": true,
                   "asyncTeardown": !sync_teardown})
        };
        Ok(Subject {
            label,
            bin,
            conf,
            host_ns,
            containers: Vec::new(),
            _tmp: tmp,
        })
    }

    /// Make sure container netns `0..n` exist.
    fn ensure_containers(&mut self, n: usize) -> Result<(), String> {
        while self.containers.len() < n {
            let name = format!("{}-c{}", self.host_ns, self.containers.len());
            sh(&["ip", "netns", "add", &name])?;
            self.containers.push(name);
        }
        Ok(())
    }

    /// Exec the plugin for container `i` from the calling thread (which must be in host_ns).
    fn invoke(&self, command: &str, i: usize) -> Result<Duration, String> {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("bench-{i}"))
            .env("CNI_NETNS", format!("/run/netns/{}", self.containers[i]))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REF_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(self.conf.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{} {command} bench-{i}: {}",
                self.label,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(took)
    }

    fn enter(&self) -> Result<(), String> {
        hostnet::netns::Netns::named(&self.host_ns)
            .and_then(|n| n.enter_this_thread())
            .map_err(|e| e.to_string())
    }

    /// Run `work(i)` for `items` on `parallel` threads, each inside the host netns.
    fn fan_out(&self, items: &[usize], parallel: usize, command: &str) -> Result<Duration, String> {
        let start = Instant::now();
        let chunks: Vec<Vec<usize>> = (0..parallel)
            .map(|t| items.iter().copied().skip(t).step_by(parallel).collect())
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    s.spawn(move || -> Result<(), String> {
                        self.enter()?;
                        for i in chunk {
                            self.invoke(command, *i)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| "worker panicked".to_string())?)
                .collect::<Result<Vec<()>, String>>()
        })?;
        Ok(start.elapsed())
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = sh(&["ip", "netns", "del", c]);
        }
        let _ = sh(&["ip", "netns", "del", &self.host_ns]);
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Report {
    add: Vec<Duration>,
    del: Vec<Duration>,
    pair: Vec<Duration>,
    add_rate: Vec<f64>,
    del_rate: Vec<f64>,
    levels: Vec<(usize, f64)>,
}

/// One ADD+DEL of container `i`, recorded into `r`; the calling thread must be in the netns.
fn cycle(s: &Subject, i: usize, r: &mut Report) -> Result<Duration, String> {
    let a = s.invoke("ADD", i)?;
    let d = s.invoke("DEL", i)?;
    r.add.push(a);
    r.del.push(d);
    r.pair.push(a + d);
    Ok(a + d)
}

/// Run `f` on a fresh thread inside `s`'s host netns.
fn in_host<T: Send>(
    s: &Subject,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                s.enter()?;
                f()
            })
            .join()
            .map_err(|_| "worker panicked".to_string())?
    })
}

/// Measure all subjects side by side: every phase alternates between them, so a machine
/// shared with other work loads them equally.
fn measure(subjects: &mut [Subject], o: &Opts) -> Result<Vec<Report>, String> {
    let max_level = o.levels.iter().copied().max().unwrap_or(0);
    for s in subjects.iter_mut() {
        s.ensure_containers(o.throughput.max(max_level) + 1)?;
    }
    let mut reports: Vec<Report> = subjects.iter().map(|_| Report::default()).collect();
    // Warm-up: creates the bridge and pages in the binaries.
    for s in subjects.iter() {
        in_host(s, || cycle(s, 0, &mut Report::default()))?;
    }
    for _ in 0..o.latency_runs {
        for (s, r) in subjects.iter().zip(reports.iter_mut()) {
            in_host(s, || cycle(s, 0, r))?;
        }
    }
    for r in reports.iter_mut() {
        for v in [&mut r.add, &mut r.del, &mut r.pair] {
            v.sort();
        }
    }
    let all: Vec<usize> = (1..=o.throughput).collect();
    for _round in 0..2 {
        for (s, r) in subjects.iter().zip(reports.iter_mut()) {
            let t_add = s.fan_out(&all, o.parallel, "ADD")?;
            let t_del = s.fan_out(&all, o.parallel, "DEL")?;
            r.add_rate.push(o.throughput as f64 / t_add.as_secs_f64());
            r.del_rate.push(o.throughput as f64 / t_del.as_secs_f64());
        }
    }

    // Flatness: containers 1..=level stay attached; container 0 is the probe.
    let mut attached = 0;
    for &level in &o.levels {
        let more: Vec<usize> = (attached + 1..=level).collect();
        for s in subjects.iter() {
            s.fan_out(&more, o.parallel, "ADD")?;
        }
        attached = level;
        let mut probes: Vec<Report> = subjects.iter().map(|_| Report::default()).collect();
        for _ in 0..o.probes {
            for (s, p) in subjects.iter().zip(probes.iter_mut()) {
                in_host(s, || cycle(s, 0, p))?;
            }
        }
        for (r, mut p) in reports.iter_mut().zip(probes) {
            p.pair.sort();
            r.levels.push((level, pct(&p.pair, 0.5)));
        }
    }
    let bg: Vec<usize> = (1..=attached).collect();
    for s in subjects.iter() {
        s.fan_out(&bg, o.parallel, "DEL")?;
    }
    Ok(reports)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_cni: {e}");
            std::process::exit(2);
        }
    };
    let run = || -> Result<Vec<(&'static str, Report)>, String> {
        let mut subjects = vec![
            Subject::new(
                "netd-cni",
                o.plugin.clone(),
                false,
                "ours",
                o.sync_teardown,
                o.ip_masq,
            )?,
            Subject::new(
                "bridge+host-local",
                Path::new(REF_DIR).join("bridge"),
                true,
                "ref",
                false,
                o.ip_masq,
            )?,
        ];
        let reports = measure(&mut subjects, &o)?;
        Ok(subjects.iter().map(|s| s.label).zip(reports).collect())
    };
    let results = match run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench_cni: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "latency: {} sequential ADD+DEL of one container; throughput: {} containers, {} parallel",
        o.latency_runs, o.throughput, o.parallel
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "plugin", "ADD p50", "DEL p50", "pair p50", "pair p90", "pair p99", "ADD/s", "DEL/s"
    );
    for (label, r) in &results {
        println!(
            "{:<18} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>9.1} {:>9.1}",
            label,
            pct(&r.add, 0.5),
            pct(&r.del, 0.5),
            pct(&r.pair, 0.5),
            pct(&r.pair, 0.9),
            pct(&r.pair, 0.99),
            mean(&r.add_rate),
            mean(&r.del_rate)
        );
    }
    println!(
        "ADD+DEL p50 of a probe container with N others attached ({} probes):",
        o.probes
    );
    for (label, r) in &results {
        let cells: Vec<String> = r
            .levels
            .iter()
            .map(|(n, ms)| format!("N={n}: {ms:.2}ms"))
            .collect();
        println!("{:<18} {}", label, cells.join("  "));
    }
    if let [(_, ours), (_, reference)] = &results[..] {
        println!(
            "speed-up (reference / netd-cni, ADD+DEL p50): {:.1}x",
            pct(&reference.pair, 0.5) / pct(&ours.pair, 0.5)
        );
    }
}
