//! The robustness soak: the CI-sized robustness run's harness (`integration/robustness.rs`:
//! traffic of every kind, two watchers, compactions, then the linearizability and watch
//! checks) for much longer, with faults drawn at random one after another (thousands in 30
//! minutes), on a 3-member kvstore cluster and then on etcd 3.4 (the faults that apply to it:
//! kills, blackholes, partitions; kvstore also gets crashes at failpoints and delayed and
//! dropped raft messages). It prints each run's report and a side-by-side table, and exits
//! non-zero when a run found a violation.
//!
//!     scripts/soak.sh [--minutes 30] [--servers kvstore,etcd] [--seed N] [--shared-faults]
//!
//! A program rather than a test (the test command does not run it): a test target without
//! libtest's harness (`harness = false`, `test = false` in Cargo.toml), built with the
//! integration tests' dev-dependencies, so that it shares their code and runs the server
//! binary built with failpoints. Needs root (network namespaces), like those tests.

#[allow(dead_code)]
#[path = "integration/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "integration/robustness.rs"]
mod robustness;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use common::Kind;
use robustness::{FaultKind, Plan, Report};

/// The robustness soak against kvstore and etcd 3.4, side by side.
#[derive(Parser, Debug)]
#[command(name = "soak")]
struct Args {
    /// How long the traffic and faults run on each server, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// The servers, run one after the other: kvstore, etcd.
    #[arg(long, value_delimiter = ',', default_value = "kvstore,etcd")]
    servers: Vec<String>,
    /// The seed of the operations and faults (random when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Inject on kvstore only the kinds of fault that apply to etcd too (leader and follower
    /// kills, a blackholed follower, a partitioned leader), so both runs draw from the same
    /// four kinds.
    #[arg(long)]
    shared_faults: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut kinds = Vec::new();
    for s in &args.servers {
        match s.as_str() {
            "kvstore" => kinds.push(Kind::Kvstore),
            "etcd" => kinds.push(Kind::Etcd),
            other => {
                eprintln!("soak: unknown server {other:?} (kvstore or etcd)");
                return ExitCode::from(2);
            }
        }
    }
    if !(args.minutes > 0.0) {
        eprintln!("soak: --minutes must be positive");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let workload = Duration::from_secs_f64(args.minutes * 60.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "soak: {} minutes per server, seed {seed}, load average before: {}",
        args.minutes,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut reports = Vec::new();
    for kind in kinds {
        let plan = Plan {
            shared_faults_only: args.shared_faults,
            ..Plan::soak(workload)
        };
        let r = robustness::run(kind, plan, seed);
        println!("{}", r.summary());
        for v in r
            .not_linearizable
            .iter()
            .chain(&r.inconclusive)
            .chain(&r.watch_violations)
            .take(20)
        {
            println!("  {kind:?}: {v}");
        }
        let mut errors: Vec<(&String, &usize)> = r.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (e, n) in errors.iter().take(8) {
            println!("  {kind:?} client error {n:>6} x {e}");
        }
        reports.push(r);
    }
    println!();
    print!("{}", table(&reports));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if reports.iter().all(Report::clean) {
        ExitCode::SUCCESS
    } else {
        println!("soak: a run found violations (above)");
        ExitCode::FAILURE
    }
}

/// The reports side by side, as a Markdown table.
fn table(reports: &[Report]) -> String {
    let kvstore_only = |r: &Report, n: usize| {
        if r.kind == Kind::Kvstore {
            n.to_string()
        } else {
            "n/a".to_string()
        }
    };
    let rows: Vec<(&str, Box<dyn Fn(&Report) -> String>)> = vec![
        (
            "traffic and faults",
            Box::new(|r| format!("{:.0} s", r.took.as_secs_f64())),
        ),
        (
            "faults injected",
            Box::new(|r| r.faults.total().to_string()),
        ),
        (
            "leader SIGKILLed",
            Box::new(|r| r.faults.leader_kills.to_string()),
        ),
        (
            "follower SIGKILLed",
            Box::new(|r| r.faults.follower_kills.to_string()),
        ),
        (
            "follower blackholed",
            Box::new(|r| r.faults.blackholes.to_string()),
        ),
        (
            "leader partitioned",
            Box::new(|r| r.faults.leader_partitions.to_string()),
        ),
        (
            "crash at a failpoint",
            Box::new(move |r| kvstore_only(r, r.faults.failpoint_crashes)),
        ),
        (
            "raft messages delayed",
            Box::new(move |r| kvstore_only(r, r.faults.peer_delays)),
        ),
        (
            "raft messages dropped",
            Box::new(move |r| kvstore_only(r, r.faults.peer_drops)),
        ),
        (
            "operations acknowledged",
            Box::new(|r| r.counts.ok.to_string()),
        ),
        (
            "client errors (failed / unknown outcome)",
            Box::new(|r| {
                format!(
                    "{} ({} / {})",
                    r.client_errors(),
                    r.counts.failed,
                    r.counts.unknown
                )
            }),
        ),
        (
            "longest time without a successful operation",
            Box::new(|r| format!("{:.2} s", r.longest_gap.as_secs_f64())),
        ),
        ("gaps over 1 s", Box::new(|r| r.gaps_over_1s.to_string())),
        ("compactions", Box::new(|r| r.compactions.to_string())),
        (
            "keys checked: not linearizable / inconclusive",
            Box::new(|r| {
                format!(
                    "{}: {} / {}",
                    r.keys_checked,
                    r.not_linearizable.len(),
                    r.inconclusive.len()
                )
            }),
        ),
        (
            "watch events checked",
            Box::new(|r| r.events_watched.to_string()),
        ),
        (
            "watch guarantee violations",
            Box::new(|r| r.watch_violations.len().to_string()),
        ),
        (
            "acknowledged writes lost",
            Box::new(|r| r.writes_lost.to_string()),
        ),
        (
            "untruthful progress notifications",
            Box::new(|r| r.untruthful_progress.len().to_string()),
        ),
        (
            "no leader within 20 s of a fault",
            Box::new(|r| {
                r.unsettled
                    .iter()
                    .filter(|u| u.starts_with("no leader"))
                    .count()
                    .to_string()
            }),
        ),
    ];
    let mut rows = rows;
    for kind in FaultKind::ALL {
        if reports.iter().all(|r| !r.during.contains_key(&kind)) {
            continue;
        }
        let name: &'static str = match kind {
            FaultKind::LeaderKill => "during leader kills: client errors, longest gap",
            FaultKind::FollowerKill => "during follower kills: client errors, longest gap",
            FaultKind::Blackhole => "during blackholes: client errors, longest gap",
            FaultKind::LeaderPartition => "during leader partitions: client errors, longest gap",
            FaultKind::FailpointCrash => "during failpoint crashes: client errors, longest gap",
            FaultKind::PeerDelay => "during delays: client errors, longest gap",
            FaultKind::PeerDrop => "during drops: client errors, longest gap",
        };
        rows.push((
            name,
            Box::new(move |r| match r.during.get(&kind) {
                Some(d) => format!("{}, {:.2} s", d.errors, d.longest_gap.as_secs_f64()),
                None => "n/a".into(),
            }),
        ));
    }
    let mut out = String::from("| |");
    for r in reports {
        out.push_str(match r.kind {
            Kind::Kvstore => " kvstore |",
            Kind::Etcd => " etcd 3.4 |",
        });
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(reports.len()));
    out.push('\n');
    for (name, cell) in &rows {
        out.push_str(&format!("| {name} |"));
        for r in reports {
            out.push_str(&format!(" {} |", cell(r)));
        }
        out.push('\n');
    }
    out
}
