//! The peer watcher: list `<prefix>/subnets/` at revision R, watch from R+1, re-list when the
//! revision was compacted (and every five minutes as a safety net), reconnect with backoff.
//! Emits [`PeerEvent`]s to the daemon loop.
//!
//! Records that are malformed or outside the network are logged and counted, never forwarded;
//! a malformed overwrite of a known subnet is forwarded as a delete so its old routes go away.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::netconf::NetworkConfig;
use crate::store::{RecordEvent, SubnetStore, SubnetWatch, WatchBatch};
use crate::subnet::{PeerRecord, SubnetKey, parse_record};

/// What the daemon loop learns from the KV store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The complete set of valid records (initial list, or re-list after compaction/reconnect).
    Snapshot(Vec<PeerRecord>),
    /// A record was created or changed.
    Put(PeerRecord),
    /// A record was deleted (or expired with its lease).
    Delete(SubnetKey),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the watcher re-lists everything even when the watch is healthy.
const RESYNC: Duration = Duration::from_secs(300);

/// Runs until `events` is closed. Never returns an error: KV trouble means retrying.
pub async fn run<S: SubnetStore>(
    kv: S,
    config: NetworkConfig,
    events: mpsc::Sender<PeerEvent>,
    metrics: Arc<Metrics>,
) {
    let w = Watcher {
        kv,
        config,
        events,
        metrics,
        backoff: BACKOFF_MIN,
    };
    w.run().await;
}

struct Watcher<S> {
    kv: S,
    config: NetworkConfig,
    events: mpsc::Sender<PeerEvent>,
    metrics: Arc<Metrics>,
    backoff: Duration,
}

/// Why following the watch stopped.
enum Stop {
    /// Re-list: the start revision was compacted, or it is time for the periodic re-list.
    Relist,
    /// Nobody listens any more.
    Closed,
}

impl<S: SubnetStore> Watcher<S> {
    async fn run(mut self) {
        loop {
            let Some(revision) = self.relist().await else {
                return;
            };
            match self.follow(revision + 1).await {
                Stop::Relist => continue,
                Stop::Closed => return,
            }
        }
    }

    /// Waits the current backoff, then doubles it (up to the maximum).
    async fn back_off(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Lists every record (retrying until the store answers) and sends the snapshot; the
    /// revision it was taken at, or `None` when nobody listens.
    async fn relist(&mut self) -> Option<i64> {
        let listing = loop {
            match self.kv.list_subnets(&self.config).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?self.backoff, "listing subnets failed");
                    self.back_off().await;
                }
            }
        };
        for e in &listing.rejected {
            self.metrics.watch_event("rejected");
            tracing::warn!(error = %e, "ignoring subnet record");
        }
        self.events
            .send(PeerEvent::Snapshot(listing.records))
            .await
            .ok()?;
        Some(listing.revision)
    }

    /// Follows the watch from `next`, reconnecting from the last revision seen when the
    /// stream breaks, until a re-list is due or nobody listens.
    async fn follow(&mut self, mut next: i64) -> Stop {
        // A full re-list now and then: a safety net against any event lost on the way.
        let resync_at = tokio::time::Instant::now() + RESYNC;
        loop {
            let mut watch = match self.kv.watch_subnets(next).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?self.backoff, "opening watch failed");
                    self.metrics.watch_restarts.inc();
                    self.back_off().await;
                    continue;
                }
            };
            loop {
                let batch = tokio::select! {
                    b = watch.next() => b,
                    () = tokio::time::sleep_until(resync_at) => {
                        tracing::debug!("periodic re-list of subnet records");
                        return Stop::Relist;
                    }
                };
                match batch {
                    Ok(Some(WatchBatch::Events { revision, events })) => {
                        self.backoff = BACKOFF_MIN;
                        for ev in &events {
                            if let Some(out) = self.translate(ev)
                                && self.events.send(out).await.is_err()
                            {
                                return Stop::Closed;
                            }
                        }
                        next = next.max(revision + 1);
                    }
                    Ok(Some(WatchBatch::Compacted(compacted))) => {
                        tracing::warn!(compacted, "watch revision compacted; re-listing");
                        self.metrics.watch_restarts.inc();
                        return Stop::Relist;
                    }
                    Ok(Some(WatchBatch::Canceled(reason))) => {
                        tracing::warn!(%reason, "watch canceled; reconnecting");
                        break;
                    }
                    Ok(None) => {
                        tracing::warn!("watch stream closed by the server; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch stream failed; reconnecting");
                        break;
                    }
                }
            }
            self.metrics.watch_restarts.inc();
            self.back_off().await;
        }
    }

    /// What one change means for the peer table: malformed records are counted and dropped,
    /// and a known subnet overwritten with garbage becomes a delete (its old routes go away).
    fn translate(&self, ev: &RecordEvent) -> Option<PeerEvent> {
        let suffix = ev.key_suffix.as_str();
        if !ev.put {
            return match SubnetKey::from_key(suffix) {
                Ok(s) => {
                    self.metrics.watch_event("delete");
                    Some(PeerEvent::Delete(s))
                }
                Err(reason) => {
                    self.metrics.watch_event("rejected");
                    tracing::warn!(key = suffix, %reason, "ignoring delete of malformed key");
                    None
                }
            };
        }
        match parse_record(
            &self.config,
            suffix,
            &ev.value,
            ev.lease,
            ev.create_revision,
            ev.mod_revision,
        ) {
            Ok(r) => {
                self.metrics.watch_event("put");
                Some(PeerEvent::Put(r))
            }
            Err(e) => {
                self.metrics.watch_event("rejected");
                tracing::warn!(error = %e, "ignoring subnet record");
                SubnetKey::from_key(suffix).ok().map(PeerEvent::Delete)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Listing;
    use crate::store::MemoryStore;
    use crate::subnet::LeaseAttrs;

    fn record(n: u8) -> String {
        format!(
            r#"{{"PublicIP":"192.0.2.{n}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:{n:02}"}}}}"#
        )
    }

    fn config() -> NetworkConfig {
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .expect("config")
    }

    /// The twin, whose first listing reports an old revision: as if the watcher listed, then
    /// the store moved on and compacted before the watch opened.
    #[derive(Clone)]
    struct ListedLongAgo {
        store: MemoryStore,
        first: Arc<std::sync::atomic::AtomicBool>,
    }

    impl SubnetStore for ListedLongAgo {
        async fn list_subnets(&self, config: &NetworkConfig) -> crate::error::Result<Listing> {
            let mut l = self.store.list_subnets(config).await?;
            if !self.first.swap(true, std::sync::atomic::Ordering::SeqCst) {
                l.revision = 1;
            }
            Ok(l)
        }
        async fn create_subnet(
            &self,
            s: &SubnetKey,
            a: &LeaseAttrs,
            l: i64,
        ) -> crate::error::Result<bool> {
            self.store.create_subnet(s, a, l).await
        }
        async fn update_subnet(
            &self,
            s: &SubnetKey,
            a: &LeaseAttrs,
            l: i64,
            m: i64,
        ) -> crate::error::Result<bool> {
            self.store.update_subnet(s, a, l, m).await
        }
        async fn delete_subnet_if(&self, s: &SubnetKey, m: i64) -> crate::error::Result<bool> {
            self.store.delete_subnet_if(s, m).await
        }
        async fn grant(&self, ttl: i64) -> crate::error::Result<i64> {
            self.store.grant(ttl).await
        }
        async fn revoke(&self, id: i64) -> crate::error::Result<()> {
            self.store.revoke(id).await
        }
        async fn keep_alive_once(&self, id: i64) -> crate::error::Result<i64> {
            self.store.keep_alive_once(id).await
        }
        type Watch = crate::store::MemoryWatch;
        async fn watch_subnets(&self, start: i64) -> crate::error::Result<Self::Watch> {
            self.store.watch_subnets(start).await
        }
    }

    fn subnets(ev: &PeerEvent) -> Vec<String> {
        match ev {
            PeerEvent::Snapshot(rs) => rs.iter().map(|r| r.subnet.key()).collect(),
            PeerEvent::Put(r) => vec![format!("put {}", r.subnet.key())],
            PeerEvent::Delete(s) => vec![format!("delete {}", s.key())],
        }
    }

    async fn next(rx: &mut mpsc::Receiver<PeerEvent>) -> PeerEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event in time")
            .expect("watcher alive")
    }

    #[tokio::test]
    async fn compaction_during_a_watch_relists_then_events_flow() {
        let store = MemoryStore::default();
        store.put_raw("10.244.1.0-24", &record(1), 0);
        store.put_raw("10.244.2.0-24", &record(2), 0);
        store.delete_raw("10.244.1.0-24");
        store.compact(3);
        let kv = ListedLongAgo {
            store: store.clone(),
            first: Arc::default(),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(run(kv, config(), tx, Arc::new(Metrics::new())));
        assert_eq!(
            subnets(&next(&mut rx).await),
            ["10.244.2.0-24"],
            "first listing"
        );
        // Its watch starts at revision 2, compacted away: the watcher lists again.
        assert_eq!(
            subnets(&next(&mut rx).await),
            ["10.244.2.0-24"],
            "re-list after compaction"
        );
        store.put_raw("10.244.3.0-24", &record(3), 0);
        assert_eq!(subnets(&next(&mut rx).await), ["put 10.244.3.0-24"]);
        store.delete_raw("10.244.2.0-24");
        assert_eq!(subnets(&next(&mut rx).await), ["delete 10.244.2.0-24"]);
        // A known subnet overwritten with garbage: its routes must go.
        store.put_raw("10.244.3.0-24", "{not json", 0);
        assert_eq!(subnets(&next(&mut rx).await), ["delete 10.244.3.0-24"]);
        // A record outside the network is never routed: like any rejected record it arrives
        // as a delete of its key, which removes nothing that was not programmed.
        store.put_raw("10.245.1.0-24", &record(4), 0);
        assert_eq!(subnets(&next(&mut rx).await), ["delete 10.245.1.0-24"]);
        store.put_raw("10.244.5.0-24", &record(5), 0);
        assert_eq!(subnets(&next(&mut rx).await), ["put 10.244.5.0-24"]);
        task.abort();
    }
}
