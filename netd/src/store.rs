//! The store seam: what netd needs from the KV store (subnet records, compare-and-swap, KV
//! leases, a watch of the records), as a trait. [`crate::kv::Kv`] implements it over the etcd
//! v3 API (in `kv.rs`); [`MemoryStore`] is its in-memory twin (records with create and mod revisions,
//! compare-and-swap, KV leases that expire when told to, a history that can be compacted), so
//! lease acquisition and the peer watcher are unit-tested without a store running.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use kvstore::proto::mvccpb::event::EventType;
use tokio::sync::Notify;

use crate::error::Result;
use crate::kv::Listing;
use crate::netconf::NetworkConfig;
use crate::subnet::{LeaseAttrs, SubnetKey, parse_record};

/// One change to a subnet record, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEvent {
    /// A put (create or change); otherwise a delete (or expiry with its lease).
    pub put: bool,
    /// The part of the key after `<prefix>/subnets/`.
    pub key_suffix: String,
    pub value: Vec<u8>,
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// What a watch delivers next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes, and the store revision they bring the watcher to.
    Events {
        revision: i64,
        events: Vec<RecordEvent>,
    },
    /// The watch's start revision was compacted away: re-list.
    Compacted(i64),
    /// The store ended the watch for another reason (reconnect).
    Canceled(String),
}

/// An open watch of the subnet records.
pub trait SubnetWatch: Send {
    /// The next batch; `Ok(None)` when the store closed the stream.
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchBatch>>> + Send;
}

/// Subnet records and KV leases, as the lease manager uses them.
pub trait SubnetStore: Send + Sync {
    /// Every subnet record, checked against `config`.
    fn list_subnets(&self, config: &NetworkConfig) -> impl Future<Output = Result<Listing>> + Send;
    /// Creates a record only if its key does not exist; false when another host got there first.
    fn create_subnet(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        lease: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Rewrites a record only if unchanged since `mod_revision`.
    fn update_subnet(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        lease: i64,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes a record only if unchanged since `mod_revision`.
    fn delete_subnet_if(
        &self,
        subnet: &SubnetKey,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Grants a KV lease of `ttl` seconds; its id.
    fn grant(&self, ttl: i64) -> impl Future<Output = Result<i64>> + Send;
    /// Revokes a KV lease (and deletes the records attached to it).
    fn revoke(&self, id: i64) -> impl Future<Output = Result<()>> + Send;
    /// One keep-alive; the remaining TTL (≤ 0: the lease is gone).
    fn keep_alive_once(&self, id: i64) -> impl Future<Output = Result<i64>> + Send;
    /// The watch this store opens.
    type Watch: SubnetWatch;
    /// Watches the subnet records from `start_revision`.
    fn watch_subnets(
        &self,
        start_revision: i64,
    ) -> impl Future<Output = Result<Self::Watch>> + Send;
}

/// [`Kv`]'s watch: the etcd watch stream, its responses turned into [`WatchBatch`]es.
pub struct KvWatch {
    pub(crate) stream: kvstore::client::WatchStream,
    pub(crate) prefix: String,
}

impl SubnetWatch for KvWatch {
    async fn next(&mut self) -> Result<Option<WatchBatch>> {
        let Some(resp) = self.stream.message().await? else {
            return Ok(None);
        };
        if resp.canceled {
            return Ok(Some(if resp.compact_revision > 0 {
                WatchBatch::Compacted(resp.compact_revision)
            } else {
                WatchBatch::Canceled(resp.cancel_reason)
            }));
        }
        let events = resp
            .events
            .iter()
            .filter_map(|ev| {
                let kv = ev.kv.as_ref()?;
                let key = String::from_utf8_lossy(&kv.key);
                Some(RecordEvent {
                    put: ev.r#type() == EventType::Put,
                    key_suffix: key.strip_prefix(&self.prefix).unwrap_or(&key).to_string(),
                    value: kv.value.to_vec(),
                    lease: kv.lease,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect();
        Ok(Some(WatchBatch::Events {
            revision: resp.header.map_or(0, |h| h.revision),
            events,
        }))
    }
}

/// One record of the twin: the JSON value as stored, and its KV metadata.
#[derive(Debug, Clone)]
struct Stored {
    value: Vec<u8>,
    lease: i64,
    create_revision: i64,
    mod_revision: i64,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_lease: i64,
    /// Key suffix (`10.244.3.0-24`) → record.
    records: BTreeMap<String, Stored>,
    /// Live KV leases → their TTL.
    leases: BTreeMap<i64, i64>,
    /// Every change since `compacted`, in revision order.
    history: Vec<(i64, RecordEvent)>,
    compacted: i64,
}

impl State {
    fn record(&mut self, key: &str, put: bool) {
        let event = match self.records.get(key) {
            Some(r) if put => RecordEvent {
                put,
                key_suffix: key.to_string(),
                value: r.value.clone(),
                lease: r.lease,
                create_revision: r.create_revision,
                mod_revision: r.mod_revision,
            },
            _ => RecordEvent {
                put: false,
                key_suffix: key.to_string(),
                value: Vec::new(),
                lease: 0,
                create_revision: 0,
                mod_revision: self.revision,
            },
        };
        self.history.push((self.revision, event));
    }
}

/// The in-memory twin of the store (see the module docs). Clones share the same store.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the history before `revision`: a watch from below it is told to re-list.
    pub fn compact(&self, revision: i64) {
        let mut s = self.state();
        s.compacted = s.compacted.max(revision);
        s.history.retain(|(rev, _)| *rev >= revision);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Deletes a record as an operator would.
    pub fn delete_raw(&self, key_suffix: &str) {
        let mut s = self.state();
        if s.records.remove(key_suffix).is_some() {
            s.revision += 1;
            s.record(key_suffix, false);
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Writes a record as an operator (or another host) would: `lease` 0 makes a reservation.
    pub fn put_raw(&self, key_suffix: &str, value: &str, lease: i64) {
        let mut s = self.state();
        s.revision += 1;
        let rev = s.revision;
        let create_revision = s.records.get(key_suffix).map_or(rev, |r| r.create_revision);
        s.records.insert(
            key_suffix.to_string(),
            Stored {
                value: value.as_bytes().to_vec(),
                lease,
                create_revision,
                mod_revision: rev,
            },
        );
        s.record(key_suffix, true);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Expires a KV lease as the store would once its TTL ran out: the lease and every record
    /// attached to it are gone.
    pub fn expire(&self, id: i64) {
        let mut s = self.state();
        if s.leases.remove(&id).is_some() {
            s.revision += 1;
            let gone: Vec<String> = s
                .records
                .iter()
                .filter(|(_, r)| r.lease == id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                s.records.remove(&k);
                s.record(&k, false);
            }
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// The records' key suffixes and lease ids.
    pub fn keys(&self) -> Vec<(String, i64)> {
        self.state()
            .records
            .iter()
            .map(|(k, r)| (k.clone(), r.lease))
            .collect()
    }

    /// Live KV lease ids.
    pub fn live_leases(&self) -> Vec<i64> {
        self.state().leases.keys().copied().collect()
    }
}

impl SubnetStore for MemoryStore {
    async fn list_subnets(&self, config: &NetworkConfig) -> Result<Listing> {
        let s = self.state();
        let mut listing = Listing {
            revision: s.revision,
            ..Listing::default()
        };
        for (key, r) in &s.records {
            match parse_record(
                config,
                key,
                &r.value,
                r.lease,
                r.create_revision,
                r.mod_revision,
            ) {
                Ok(rec) => listing.records.push(rec),
                Err(e) => listing.rejected.push(e),
            }
        }
        Ok(listing)
    }

    async fn create_subnet(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        lease: i64,
    ) -> Result<bool> {
        let value = serde_json::to_string(attrs)?;
        let key = subnet.key();
        if self.state().records.contains_key(&key) {
            return Ok(false);
        }
        self.put_raw(&key, &value, lease);
        Ok(true)
    }

    async fn update_subnet(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        lease: i64,
        mod_revision: i64,
    ) -> Result<bool> {
        let value = serde_json::to_string(attrs)?;
        let key = subnet.key();
        let current = self.state().records.get(&key).map(|r| r.mod_revision);
        if current != Some(mod_revision) {
            return Ok(false);
        }
        self.put_raw(&key, &value, lease);
        Ok(true)
    }

    async fn delete_subnet_if(&self, subnet: &SubnetKey, mod_revision: i64) -> Result<bool> {
        let mut s = self.state();
        let key = subnet.key();
        if s.records.get(&key).map(|r| r.mod_revision) != Some(mod_revision) {
            return Ok(false);
        }
        s.records.remove(&key);
        s.revision += 1;
        s.record(&key, false);
        drop(s);
        self.changed.notify_waiters();
        Ok(true)
    }

    async fn grant(&self, ttl: i64) -> Result<i64> {
        let mut s = self.state();
        s.next_lease += 1;
        let id = 0x1000 + s.next_lease;
        s.leases.insert(id, ttl);
        Ok(id)
    }

    async fn revoke(&self, id: i64) -> Result<()> {
        self.expire(id);
        Ok(())
    }

    async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        Ok(self.state().leases.get(&id).copied().unwrap_or(0))
    }

    type Watch = MemoryWatch;

    async fn watch_subnets(&self, start_revision: i64) -> Result<MemoryWatch> {
        Ok(MemoryWatch {
            store: self.clone(),
            next: start_revision,
        })
    }
}

/// [`MemoryStore`]'s watch: the history from `next` on, waiting for changes.
pub struct MemoryWatch {
    store: MemoryStore,
    next: i64,
}

impl SubnetWatch for MemoryWatch {
    async fn next(&mut self) -> Result<Option<WatchBatch>> {
        loop {
            let changed = self.store.changed.clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.store.state();
                if self.next < s.compacted {
                    return Ok(Some(WatchBatch::Compacted(s.compacted)));
                }
                let events: Vec<RecordEvent> = s
                    .history
                    .iter()
                    .filter(|(rev, _)| *rev >= self.next)
                    .map(|(_, e)| e.clone())
                    .collect();
                if !events.is_empty() {
                    self.next = s.revision + 1;
                    return Ok(Some(WatchBatch::Events {
                        revision: s.revision,
                        events,
                    }));
                }
            }
            notified.await;
        }
    }
}
