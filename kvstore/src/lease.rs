//! Leases: the replicated table of leases and the keys attached to them, plus the
//! leader-only countdowns. Grants and revokes arrive through raft (so every member holds
//! the same table); keep-alives and expiry clocks live only on the leader, which proposes
//! a revoke when a lease runs out. A new leader restarts every countdown at its full TTL.
//!
//! The lessor never touches the keyspace: revoking returns the keys to delete and the
//! apply layer deletes them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The shortest TTL granted; shorter requests are raised to it (etcd: 1.5 × election timeout).
pub const MIN_TTL: i64 = 2;
/// The longest TTL accepted.
pub const MAX_TTL: i64 = 9_000_000_000;

/// One lease.
#[derive(Debug)]
pub struct Lease {
    pub ttl: i64,
    pub keys: BTreeSet<Bytes>,
    /// When the lease runs out; only set on the leader.
    expiry: Option<Instant>,
}

/// The lease table.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    primary: bool,
}

impl Lessor {
    /// Creates a lease (apply of a grant). Returns the TTL granted.
    pub fn grant(&mut self, id: i64, ttl: i64) -> i64 {
        let ttl = ttl.max(MIN_TTL);
        let expiry = self.primary.then(|| deadline(ttl));
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
                expiry,
            },
        );
        ttl
    }

    /// Removes a lease (apply of a revoke); returns the keys attached to it.
    pub fn revoke(&mut self, id: i64) -> Option<BTreeSet<Bytes>> {
        self.leases.remove(&id).map(|l| l.keys)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The keys attached to lease `id` (none for an unknown lease).
    pub fn keys(&self, id: i64) -> impl Iterator<Item = &Bytes> {
        self.leases.get(&id).into_iter().flat_map(|l| l.keys.iter())
    }

    /// Attaches `key` to lease `id` (no-op for lease 0).
    pub fn attach(&mut self, id: i64, key: &Bytes) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.clone());
        }
    }

    /// Detaches `key` from lease `id` (no-op for lease 0 or an unknown lease).
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// Refreshes a lease's countdown (leader only). Returns its TTL, or `None` if unknown.
    pub fn renew(&mut self, id: i64) -> Option<i64> {
        let primary = self.primary;
        let l = self.leases.get_mut(&id)?;
        if primary {
            l.expiry = Some(deadline(l.ttl));
        }
        Some(l.ttl)
    }

    /// `(granted TTL, remaining seconds, keys)` of a lease.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64, Vec<Bytes>)> {
        let l = self.leases.get(&id)?;
        let remaining = match l.expiry {
            Some(e) => {
                let left = e.saturating_duration_since(Instant::now());
                // Round up like etcd so a just-renewed lease reports its full TTL.
                left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
            }
            None => l.ttl,
        };
        Some((
            l.ttl,
            remaining.min(l.ttl),
            l.keys.iter().cloned().collect(),
        ))
    }

    /// Every lease id.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Every lease and its granted TTL, by id.
    pub fn ttls(&self) -> Vec<(i64, i64)> {
        let mut all: Vec<(i64, i64)> = self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect();
        all.sort_unstable();
        all
    }

    /// Becoming leader: every countdown restarts at its full TTL.
    pub fn promote(&mut self) {
        self.primary = true;
        for l in self.leases.values_mut() {
            l.expiry = Some(deadline(l.ttl));
        }
    }

    /// Losing leadership: countdowns stop.
    pub fn demote(&mut self) {
        self.primary = false;
        for l in self.leases.values_mut() {
            l.expiry = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Leases whose countdown ran out (leader only).
    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.leases
            .iter()
            .filter(|(_, l)| l.expiry.is_some_and(|e| e <= now))
            .map(|(id, _)| *id)
            .collect()
    }
}

fn deadline(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(ttl.clamp(0, MAX_TTL) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_attach_revoke() {
        let mut l = Lessor::default();
        assert_eq!(l.grant(7, 1), MIN_TTL);
        l.attach(7, &Bytes::from("k"));
        assert_eq!(l.time_to_live(7).map(|t| t.2.len()), Some(1));
        assert!(l.expired().is_empty(), "followers never expire leases");
        l.promote();
        assert_eq!(l.renew(7), Some(MIN_TTL));
        assert_eq!(l.revoke(7).map(|k| k.len()), Some(1));
        assert!(l.renew(7).is_none());
    }
}
