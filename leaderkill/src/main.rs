//! leaderkill: issue 24's experiment, kvstore beside etcd 3.4. A 3-member cluster on loopback,
//! 16 writers of unique keys through the stock `etcd-client` crate (each its own client of all
//! three members), the leader SIGKILLed and started again 2 s later, the next kill 8 s after
//! the cluster has a leader again, for 90 s; then every acknowledged key is read back. A
//! failed put is counted by its error text and sent again by its writer after a short pause.
//! `--client etcdctl` puts through etcd's own Go client instead, one `etcdctl put` per put.
//!
//! ```text
//! scripts/leaderkill.sh                         # both servers, 90 s each, the table
//! scripts/leaderkill.sh --seconds 30            # a shorter run
//! scripts/leaderkill.sh --servers kvstore       # one server only
//! ```
//! Prints, per server: leader kills, acknowledged puts, acknowledged puts lost, the longest gap
//! between two successful puts, the slowest successful put, the puts that failed (and were
//! retried) — split into those a server answered with an error and those the client could not
//! deliver (connection refused by the killed member while it is down, or lost with a request on
//! it), which no server can prevent and which grow with the client's request rate — each error
//! text with its count, and the load average at the start and end.

mod cluster;
mod experiment;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use experiment::{ClientKind, Outcome, Plan};

#[derive(Parser, Debug)]
#[command(about = "Leader kills under write load: kvstore beside etcd 3.4")]
struct Args {
    /// The servers to run, in order: kvstore, etcd, or the path of another server binary.
    #[arg(long, value_delimiter = ',', default_value = "kvstore,etcd")]
    servers: Vec<String>,
    /// The kvstore binary (a release build).
    #[arg(long, default_value = "target/release/kvstore")]
    kvstore: PathBuf,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Seconds between the cluster having a leader again and the next kill.
    #[arg(long, default_value_t = 8)]
    kill_every: u64,
    /// Seconds a killed leader stays down.
    #[arg(long, default_value_t = 2)]
    down: u64,
    /// Milliseconds a writer waits after a failed put before sending it again.
    #[arg(long, default_value_t = 25)]
    retry_pause_ms: u64,
    /// The client the writers put through: the `etcd-client` crate, or one `etcdctl put`
    /// process per put (etcd's own Go client).
    #[arg(long, value_enum, default_value_t = ClientKind::Crate)]
    client: ClientKind,
}

fn ms(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A row of the table: its label, and how it reads an outcome.
type Row = (&'static str, fn(&Outcome) -> String);

fn print_table(results: &[(String, Outcome)]) {
    let rows: [Row; 10] = [
        ("leader kills", |o| o.kills.to_string()),
        ("acknowledged puts", |o| o.acked.to_string()),
        ("acknowledged puts lost", |o| o.lost.to_string()),
        ("longest gap between two successful puts", |o| {
            ms(o.longest_gap)
        }),
        ("slowest successful put", |o| ms(o.slowest_put)),
        ("puts that failed and were retried", |o| {
            o.failed().to_string()
        }),
        ("… of which a server answered with an error", |o| {
            (o.failed() - o.failed_in_transport()).to_string()
        }),
        ("… of which the client could not reach a member", |o| {
            o.failed_in_transport().to_string()
        }),
        ("failed puts per 1,000 acknowledged", |o| {
            format!("{:.1}", o.failed() as f64 * 1000.0 / o.acked.max(1) as f64)
        }),
        ("load average (1 min) at start / end", |o| {
            format!("{} / {}", o.load.0, o.load.1)
        }),
    ];
    let head: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    println!("\n| | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(results.len()));
    for (label, f) in rows {
        let cells: Vec<String> = results.iter().map(|(_, o)| f(o)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    for (name, o) in results {
        println!("\n{name}: failed puts by error");
        if o.errors.is_empty() {
            println!("  (none)");
        }
        for (e, n) in &o.errors {
            println!("  {n:>6}  {e}");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan {
        members: 3,
        writers: args.writers,
        duration: Duration::from_secs(args.seconds),
        kill_every: Duration::from_secs(args.kill_every),
        down_for: Duration::from_secs(args.down),
        retry_pause: Duration::from_millis(args.retry_pause_ms),
        give_up: Duration::from_secs(30),
        client: args.client,
    };
    let mut results = Vec::new();
    for server in &args.servers {
        let (name, bin) = match server.as_str() {
            "kvstore" => ("kvstore".to_string(), args.kvstore.clone()),
            "etcd" => ("etcd 3.4".to_string(), PathBuf::from(testbed::etcd::ETCD)),
            path => (path.to_string(), PathBuf::from(path)),
        };
        eprintln!("leaderkill: {name} ({}), {plan:?}", bin.display());
        let outcome = experiment::run(&bin, &plan).await?;
        eprintln!("leaderkill: {name}: {outcome:?}");
        results.push((name, outcome));
    }
    print_table(&results);
    Ok(())
}
