//! The peer watcher: list `<prefix>/subnets/` at revision R, watch from R+1, re-list when the
//! revision was compacted (and every five minutes as a safety net), reconnect with backoff.
//! Emits [`PeerEvent`]s to the daemon loop.
//!
//! Records that are malformed or outside the network are logged and counted, never forwarded;
//! a malformed overwrite of a known subnet is forwarded as a delete so its old routes go away.

use std::sync::Arc;
use std::time::Duration;

use kvstore::proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use crate::config::NetworkConfig;
use crate::kv::Kv;
use crate::metrics::Metrics;
use crate::subnet::{PeerRecord, Subnet, parse_record};

/// What the daemon loop learns from the KV store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The complete set of valid records (initial list, or re-list after compaction/reconnect).
    Snapshot(Vec<PeerRecord>),
    /// A record was created or changed.
    Put(PeerRecord),
    /// A record was deleted (or expired with its lease).
    Delete(Subnet),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the watcher re-lists everything even when the watch is healthy.
const RESYNC: Duration = Duration::from_secs(300);

/// Runs until `events` is closed. Never returns an error: KV trouble means retrying.
pub async fn run(
    kv: Kv,
    config: NetworkConfig,
    events: mpsc::Sender<PeerEvent>,
    metrics: Arc<Metrics>,
) {
    let prefix = kv.subnets_prefix();
    let mut backoff = BACKOFF_MIN;
    loop {
        // List at revision R.
        let listing = match kv.list_subnets(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "listing subnets failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        for e in &listing.rejected {
            metrics.watch_event("rejected");
            tracing::warn!(error = %e, "ignoring subnet record");
        }
        if events
            .send(PeerEvent::Snapshot(listing.records))
            .await
            .is_err()
        {
            return;
        }
        let mut next = listing.revision + 1;
        // A full re-list now and then: a safety net against any event lost on the way.
        let resync_at = tokio::time::Instant::now() + RESYNC;
        // Watch from R+1; on a broken stream resume from the last revision seen.
        'watch: loop {
            let mut stream = match kv.watch_subnets(next).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "opening watch failed");
                    metrics.watch_restarts.inc();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    () = tokio::time::sleep_until(resync_at) => {
                        tracing::debug!("periodic re-list of subnet records");
                        break 'watch;
                    }
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        tracing::warn!("watch stream closed by the server; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch stream failed; reconnecting");
                        break;
                    }
                };
                backoff = BACKOFF_MIN;
                if resp.canceled {
                    if resp.compact_revision > 0 {
                        tracing::warn!(
                            compacted = resp.compact_revision,
                            "watch revision compacted; re-listing"
                        );
                        metrics.watch_restarts.inc();
                        break 'watch;
                    }
                    tracing::warn!(
                        reason = %resp.cancel_reason,
                        "watch canceled; reconnecting"
                    );
                    break;
                }
                for ev in &resp.events {
                    let Some(kv_) = &ev.kv else { continue };
                    let key = String::from_utf8_lossy(&kv_.key);
                    let suffix = key.strip_prefix(&prefix).unwrap_or(&key);
                    let out = match ev.r#type() {
                        EventType::Delete => match Subnet::from_key(suffix) {
                            Ok(s) => {
                                metrics.watch_event("delete");
                                Some(PeerEvent::Delete(s))
                            }
                            Err(reason) => {
                                metrics.watch_event("rejected");
                                tracing::warn!(key = suffix, %reason, "ignoring delete of malformed key");
                                None
                            }
                        },
                        EventType::Put => {
                            match parse_record(
                                &config,
                                suffix,
                                &kv_.value,
                                kv_.lease,
                                kv_.create_revision,
                                kv_.mod_revision,
                            ) {
                                Ok(r) => {
                                    metrics.watch_event("put");
                                    Some(PeerEvent::Put(r))
                                }
                                Err(e) => {
                                    metrics.watch_event("rejected");
                                    tracing::warn!(error = %e, "ignoring subnet record");
                                    // A known subnet overwritten with garbage: drop its old routes.
                                    Subnet::from_key(suffix).ok().map(PeerEvent::Delete)
                                }
                            }
                        }
                    };
                    if let Some(out) = out
                        && events.send(out).await.is_err()
                    {
                        return;
                    }
                }
                if let Some(h) = &resp.header {
                    next = next.max(h.revision + 1);
                }
            }
            metrics.watch_restarts.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}
