//! Backups (etcd's disaster recovery): a running member streams one through
//! `Maintenance.Snapshot` (`etcdctl snapshot save FILE` works unchanged) ([`save`]); the
//! file's layout is [`format`]'s; `kvstore snapshot status FILE` and `kvstore snapshot
//! restore FILE ...` read it ([`restore`]), with etcdctl's (etcdutl's) flags and output.

pub mod format;
pub mod restore;
pub mod save;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, defaults};
use crate::error::{Error, Result};

/// `kvstore snapshot ...`.
#[derive(Debug, Parser)]
#[command(
    name = "kvstore snapshot",
    bin_name = "kvstore snapshot",
    about = "Reads kvstore backup files (taken with `etcdctl snapshot save FILE` from a running member).",
    long_about = "Reads kvstore backup files. Take one from a running member with the stock \
`etcdctl snapshot save FILE` (it checks the download's SHA-256 position as it does for etcd). \
`status` prints what a file holds; `restore` builds the data dir of one member of a new \
cluster from it (run it once per member with that member's --name and the same \
--initial-cluster and --initial-cluster-token, then start each member on its data dir)."
)]
pub struct SnapshotCli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a backup's hash, revision, total keys (records) and size.
    Status {
        /// The backup file.
        file: PathBuf,
        /// Output format: simple, table or json (etcdctl's).
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: String,
    },
    /// Builds a member's data dir for a new cluster from a backup: the same keys, values,
    /// revisions, leases and users; a new cluster id; the members named by the flags.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Name of the member the data dir is for.
        #[arg(long, default_value = defaults::NAME)]
        name: String,
        /// Where the data dir goes (must not exist); default NAME.etcd.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The new cluster's members: name=peer-url,...
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// The new cluster's token (members and cluster ids derive from it).
        #[arg(long, default_value = defaults::INITIAL_CLUSTER_TOKEN)]
        initial_cluster_token: String,
        /// This member's peer URLs, as in --initial-cluster.
        #[arg(long, value_delimiter = ',', default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: Vec<String>,
        /// Restore even if the file's SHA-256 does not match its contents.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

/// Runs `kvstore snapshot ARGS` (`args` starts with the program name); returns the
/// process's exit code, having printed the result or one error line.
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    let cli = match SnapshotCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("kvstore snapshot: {e}");
            1
        }
    }
}

fn run(cli: SnapshotCli) -> Result<String> {
    match cli.command {
        Command::Status { file, write_out } => {
            let s = restore::status(&file)?;
            format_status(&s, &write_out)
        }
        Command::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            let member = Config {
                name,
                data_dir,
                initial_cluster: Some(initial_cluster),
                initial_cluster_token,
                initial_advertise_peer_urls,
                ..Config::default()
            };
            let r = restore::restore(
                &file,
                &restore::RestoreOptions {
                    member,
                    skip_hash_check,
                },
            )?;
            Ok(format!(
                "restored snapshot {} (revision {}, {} records) into {}: member {:x} of cluster {:x}",
                file.display(),
                r.revision,
                r.records,
                r.data_dir.display(),
                r.member_id,
                r.cluster_id
            ))
        }
    }
}

/// etcdctl's `snapshot status` output in its three formats.
fn format_status(s: &restore::Status, write_out: &str) -> Result<String> {
    let row = [
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_key.to_string(),
        human_bytes(s.total_size),
    ];
    match write_out {
        "simple" => Ok(row.join(", ")),
        "json" => Ok(serde_json::json!({
            "hash": s.hash,
            "revision": s.revision,
            "totalKey": s.total_key,
            "totalSize": s.total_size,
        })
        .to_string()),
        "table" => {
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, c)| h.len().max(c.len()) + 2)
                .collect();
            let rule = widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("+");
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!(" {c:<width$}", width = w - 1))
                    .collect::<Vec<_>>()
                    .join("|")
            };
            let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
            Ok(format!(
                "+{rule}+\n|{}|\n+{rule}+\n|{}|\n+{rule}+",
                line(&head),
                line(&row)
            ))
        }
        other => Err(Error::Config(format!(
            "unsupported output format {other:?} (simple, table or json)"
        ))),
    }
}

/// Bytes in SI units as etcdctl prints them (go-humanize's `Bytes`: "512 B", "2.1 MB",
/// "15 MB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let val = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(15_000_000), "15 MB");
    }
}
