//! The store seam: what lease acquisition and renewal need from the KV store, as a trait.
//! [`crate::kv::Kv`] implements it over the etcd v3 API; [`MemoryStore`] is its in-memory twin
//! (records with create and mod revisions, compare-and-swap, KV leases that expire when told
//! to), so reuse, reservations, races and lease loss are unit-tested without a store running.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use crate::config::NetworkConfig;
use crate::error::Result;
use crate::kv::{Kv, Listing};
use crate::subnet::{LeaseAttrs, Subnet, parse_record};

/// Subnet records and KV leases, as the lease manager uses them.
pub trait SubnetStore: Send + Sync {
    /// Every subnet record, checked against `config`.
    fn list_subnets(&self, config: &NetworkConfig) -> impl Future<Output = Result<Listing>> + Send;
    /// Creates a record only if its key does not exist; false when another host got there first.
    fn create_subnet(
        &self,
        subnet: &Subnet,
        attrs: &LeaseAttrs,
        lease: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Rewrites a record only if unchanged since `mod_revision`.
    fn update_subnet(
        &self,
        subnet: &Subnet,
        attrs: &LeaseAttrs,
        lease: i64,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes a record only if unchanged since `mod_revision`.
    fn delete_subnet_if(
        &self,
        subnet: &Subnet,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Grants a KV lease of `ttl` seconds; its id.
    fn grant(&self, ttl: i64) -> impl Future<Output = Result<i64>> + Send;
    /// Revokes a KV lease (and deletes the records attached to it).
    fn revoke(&self, id: i64) -> impl Future<Output = Result<()>> + Send;
    /// One keep-alive; the remaining TTL (≤ 0: the lease is gone).
    fn keep_alive_once(&self, id: i64) -> impl Future<Output = Result<i64>> + Send;
}

impl SubnetStore for Kv {
    async fn list_subnets(&self, config: &NetworkConfig) -> Result<Listing> {
        Kv::list_subnets(self, config).await
    }
    async fn create_subnet(&self, subnet: &Subnet, attrs: &LeaseAttrs, lease: i64) -> Result<bool> {
        Kv::create_subnet(self, subnet, attrs, lease).await
    }
    async fn update_subnet(
        &self,
        subnet: &Subnet,
        attrs: &LeaseAttrs,
        lease: i64,
        mod_revision: i64,
    ) -> Result<bool> {
        Kv::update_subnet(self, subnet, attrs, lease, mod_revision).await
    }
    async fn delete_subnet_if(&self, subnet: &Subnet, mod_revision: i64) -> Result<bool> {
        Kv::delete_subnet_if(self, subnet, mod_revision).await
    }
    async fn grant(&self, ttl: i64) -> Result<i64> {
        Kv::grant(self, ttl).await
    }
    async fn revoke(&self, id: i64) -> Result<()> {
        Kv::revoke(self, id).await
    }
    async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        Kv::keep_alive_once(self, id).await
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
}

/// The in-memory twin of the store (see the module docs).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
    }

    /// Expires a KV lease as the store would once its TTL ran out: the lease and every record
    /// attached to it are gone.
    pub fn expire(&self, id: i64) {
        let mut s = self.state();
        if s.leases.remove(&id).is_some() {
            s.revision += 1;
            s.records.retain(|_, r| r.lease != id);
        }
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

    async fn create_subnet(&self, subnet: &Subnet, attrs: &LeaseAttrs, lease: i64) -> Result<bool> {
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
        subnet: &Subnet,
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

    async fn delete_subnet_if(&self, subnet: &Subnet, mod_revision: i64) -> Result<bool> {
        let mut s = self.state();
        let key = subnet.key();
        if s.records.get(&key).map(|r| r.mod_revision) != Some(mod_revision) {
            return Ok(false);
        }
        s.records.remove(&key);
        s.revision += 1;
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
}
