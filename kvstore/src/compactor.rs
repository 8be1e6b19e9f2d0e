//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd 3.4's
//! `v3compactor`: a background task on every member that, while its member leads, proposes an
//! ordinary Compaction through raft, the same request the KV Compact RPC proposes.
//!
//! - **periodic** keeps `retention` of history (a bare number is hours; Go durations such as
//!   `30m` or `5s` are accepted). It notes the current revision every tenth of the retention
//!   (of an hour, past an hour), waits one retention after start, then compacts to the revision
//!   it noted one retention ago, and again every retention (every hour, past an hour); a
//!   failed compaction is retried at the next note.
//! - **revision** keeps the last `retention` revisions: every 5 minutes it compacts to the
//!   current revision minus `retention`, unless that is not positive or was compacted last.
//!
//! Only the leader compacts: a follower's compactor keeps noting revisions (as etcd's paused
//! compactor does) but proposes nothing, so a new leader can compact at once. A compaction
//! that finds the revision already compacted counts as done, as in etcd.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::CompactionRequest;
use crate::proto::kvstorepb::internal_request::Request as Internal;
use crate::replica::Replica;

/// How often the revision compactor looks (etcd 3.4's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Periodic retentions past this compact once per this interval (etcd's).
const HOUR: Duration = Duration::from_secs(3600);

/// What the auto-compaction flags ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention 0: no automatic compaction (etcd's default).
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl AutoCompaction {
    /// Reads the two flags as etcd 3.4 does (`embed.parseCompactionRetention`, then
    /// `v3compactor.New`), with etcd's error messages. A non-negative integer is hours in
    /// periodic mode and revisions in revision mode; anything else must be a Go duration
    /// (which, in revision mode, etcd reads as that many nanoseconds' worth of revisions).
    /// Unlike etcd, a negative duration is refused instead of compacting without pause.
    pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction> {
        match mode {
            "" | "periodic" | "revision" => {}
            other => {
                return Err(Error::Config(format!(
                    "unknown auto-compaction-mode {other:?}"
                )));
            }
        }
        let nanos: i128 = match retention.parse::<i64>() {
            Ok(n) if n >= 0 => match mode {
                "periodic" => i128::from(n) * HOUR.as_nanos() as i128,
                _ => i128::from(n),
            },
            _ => go_duration_nanos(retention)
                .map_err(|e| Error::Config(format!("error parsing CompactionRetention: {e}")))?,
        };
        if nanos == 0 {
            return Ok(AutoCompaction::Off);
        }
        if nanos < 0 {
            return Err(Error::Config(format!(
                "error parsing CompactionRetention: negative retention {retention:?}"
            )));
        }
        match mode {
            "periodic" => Ok(AutoCompaction::Periodic(Duration::from_nanos(
                u64::try_from(nanos).unwrap_or(u64::MAX),
            ))),
            "revision" => Ok(AutoCompaction::Revision(
                i64::try_from(nanos).unwrap_or(i64::MAX),
            )),
            _ => Err(Error::Config(
                "unsupported compaction mode (want periodic or revision)".into(),
            )),
        }
    }
}

/// Go's `time.ParseDuration`: an optional sign, then one or more decimal numbers each with a
/// unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5h`, `300ms`; `0` alone
/// needs no unit. The error reads as Go's.
pub fn go_duration_nanos(s: &str) -> std::result::Result<i128, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let per: f64 = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        total += value * per;
        rest = &rest[unit_len..];
    }
    if total > i64::MAX as f64 {
        return Err(invalid());
    }
    let n = total as i128;
    Ok(if neg { -n } else { n })
}

/// Starts the compactor `policy` asks for on `member`; `revision_interval` is how often the
/// revision compactor looks ([`REVISION_INTERVAL`] outside tests). `None` when off.
pub fn spawn(
    member: Arc<Replica>,
    policy: AutoCompaction,
    revision_interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    match policy {
        AutoCompaction::Off => None,
        AutoCompaction::Periodic(period) => Some(tokio::spawn(periodic(member, period))),
        AutoCompaction::Revision(retention) => {
            Some(tokio::spawn(revision(member, retention, revision_interval)))
        }
    }
}

/// Proposes a compaction to `revision`; an already compacted revision counts as done.
async fn compact(member: &Replica, revision: i64) -> Result<()> {
    let req = CompactionRequest {
        revision,
        physical: false,
    };
    match member.propose(Internal::Compaction(req)).await {
        Ok(_) | Err(Error::Compacted) => Ok(()),
        Err(e) => Err(e),
    }
}

fn leads(member: &Replica) -> bool {
    member.leader() == member.member_id
}

/// etcd's periodic compactor (see the module doc).
async fn periodic(member: Arc<Replica>, period: Duration) {
    let compact_interval = period.min(HOUR);
    // etcd divides by ten; a floor keeps a nanosecond retention from spinning.
    let retry = (compact_interval / 10).max(Duration::from_millis(1));
    let keep = (period.as_nanos() / retry.as_nanos()) as usize + 1;
    let mut revs: VecDeque<i64> = VecDeque::with_capacity(keep.min(64) + 1);
    let mut last_success = tokio::time::Instant::now();
    let mut base = period;
    tracing::info!(compact_period = ?period, "auto periodic compaction enabled");
    loop {
        revs.push_back(member.current_revision());
        if revs.len() > keep {
            revs.pop_front();
        }
        tokio::time::sleep(retry).await;
        if !leads(&member) || last_success.elapsed() < base {
            continue;
        }
        base = compact_interval;
        let Some(&rev) = revs.front() else { continue };
        tracing::info!(
            revision = rev,
            compact_period = ?period,
            "starting auto periodic compaction"
        );
        match compact(&member, rev).await {
            Ok(()) => {
                tracing::info!(
                    revision = rev,
                    compact_period = ?period,
                    took = ?last_success.elapsed(),
                    "completed auto periodic compaction"
                );
                last_success = tokio::time::Instant::now();
            }
            Err(e) => tracing::warn!(
                revision = rev,
                compact_period = ?period,
                retry_interval = ?retry,
                error = %e,
                "failed auto periodic compaction"
            ),
        }
    }
}

/// etcd's revision compactor (see the module doc).
async fn revision(member: Arc<Replica>, retention: i64, interval: Duration) {
    let mut prev = 0;
    tracing::info!(
        revision_compaction_retention = retention,
        "auto revision compaction enabled"
    );
    loop {
        tokio::time::sleep(interval).await;
        if !leads(&member) {
            continue;
        }
        let rev = member.current_revision().saturating_sub(retention);
        if rev <= 0 || rev == prev {
            continue;
        }
        let started = tokio::time::Instant::now();
        tracing::info!(
            revision = rev,
            revision_compaction_retention = retention,
            "starting auto revision compaction"
        );
        match compact(&member, rev).await {
            Ok(()) => {
                prev = rev;
                tracing::info!(
                    revision = rev,
                    revision_compaction_retention = retention,
                    took = ?started.elapsed(),
                    "completed auto revision compaction"
                );
            }
            Err(e) => tracing::warn!(
                revision = rev,
                revision_compaction_retention = retention,
                retry_interval = ?interval,
                error = %e,
                "failed auto revision compaction"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_read_as_etcd_reads_it() {
        let p = |m, r| {
            AutoCompaction::parse(m, r)
                .map_err(|e| e.to_string().replacen("configuration: ", "", 1))
        };
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("periodic", "1"), Ok(AutoCompaction::Periodic(HOUR)));
        assert_eq!(
            p("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            p("periodic", "1.5s"),
            Ok(AutoCompaction::Periodic(Duration::from_millis(1500)))
        );
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        // etcd reads a duration in revision mode as its nanoseconds.
        assert_eq!(p("revision", "1us"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(
            p("periodic", "abc"),
            Err("error parsing CompactionRetention: time: invalid duration \"abc\"".into())
        );
        assert_eq!(
            p("periodic", "-1"),
            Err("error parsing CompactionRetention: time: missing unit in duration \"-1\"".into())
        );
        assert_eq!(
            p("revision", "1.5"),
            Err("error parsing CompactionRetention: time: missing unit in duration \"1.5\"".into())
        );
        assert_eq!(
            p("periodic", "5x"),
            Err(
                "error parsing CompactionRetention: time: unknown unit \"x\" in duration \"5x\""
                    .into()
            )
        );
        assert!(p("periodic", "-5m").is_err());
        assert!(p("periodic", "").is_err());
        assert_eq!(
            p("hourly", "1"),
            Err("unknown auto-compaction-mode \"hourly\"".into())
        );
        assert!(p("", "1").is_err());
        assert_eq!(p("", "0"), Ok(AutoCompaction::Off));
    }
}
