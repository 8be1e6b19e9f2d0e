//! The peer table: the records the watcher reported, what was programmed for each, and the
//! event and reconcile paths that keep the kernel in line with them.
//!
//! Generic over [`Dataplane`], so the whole event logic is unit-tested in memory.
//!
//! One collision rule, on the event path and at reconcile alike: when two peers' entries claim
//! the same kernel object with different values (a neighbour for one VTEP address, an FDB entry
//! for one VtepMAC), the older record keeps it — the one with the lower KV create revision (then
//! the lower subnet) — and the younger one is left out whole, so a record that copies a live
//! host's VtepMAC can never take that host's traffic. A record that copies only a PublicIP claims
//! nothing another peer holds and is routed like any other. Both paths rank peers with
//! [`rank`], and the event path hands any collision to a full reconcile, which applies the rule
//! to every peer at once.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::dataplane::{
    Dataplane, Entry, Families, KernelState, RoutingMode, apply_plan, diff, peer_entries,
    program_peer, remove_peer,
};
use crate::metrics::Metrics;
use crate::subnet::{PeerRecord, SubnetKey};
use crate::watch::PeerEvent;

/// What an event meant for this host's own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnRecord {
    /// Nothing about our record.
    Untouched,
    /// Our record was deleted or taken over: the lease must be re-acquired.
    Lost(String),
    /// Our record was rewritten by us (e.g. a renewal with a new KV lease).
    Updated(PeerRecord),
}

/// Peer state of one host.
pub struct Peers<D> {
    dp: D,
    mode: RoutingMode,
    /// The families this node routes: a peer's subnet of each gets entries.
    families: Families,
    /// This host's subnet and public IP (its PublicIPv6 in an IPv6-only network): never
    /// programmed as a peer.
    own_subnet: SubnetKey,
    own_ip: IpAddr,
    records: BTreeMap<SubnetKey, PeerRecord>,
    programmed: Programmed,
    metrics: Arc<Metrics>,
}

/// The kernel key an entry occupies (a neighbour's IP, an FDB MAC, a route's destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    Neigh(IpAddr),
    Fdb(crate::dataplane::FdbKey),
    Route(ipnetwork::IpNetwork),
}

/// The order in which peers claim kernel objects: oldest record first.
fn rank(p: &PeerRecord) -> (i64, SubnetKey) {
    (p.create_revision, p.subnet)
}

fn claim(e: &Entry) -> Claim {
    match e {
        Entry::Neigh { ip, .. } => Claim::Neigh(*ip),
        Entry::Fdb { mac, dst } => Claim::Fdb(crate::dataplane::fdb_key(*mac, *dst)),
        Entry::Route { dst, .. } => Claim::Route(*dst),
    }
}

/// What is programmed for each peer, with an index of which peer holds each kernel key, so
/// checking a peer for collisions costs its own entries, not every peer's.
#[derive(Default)]
struct Programmed {
    by_peer: BTreeMap<SubnetKey, Vec<Entry>>,
    claims: BTreeMap<Claim, (SubnetKey, Entry)>,
}

impl Programmed {
    fn len(&self) -> usize {
        self.by_peer.len()
    }

    fn remove(&mut self, subnet: &SubnetKey) -> Option<Vec<Entry>> {
        let entries = self.by_peer.remove(subnet)?;
        for e in &entries {
            let k = claim(e);
            if self
                .claims
                .get(&k)
                .is_some_and(|(owner, _)| owner == subnet)
            {
                self.claims.remove(&k);
            }
        }
        Some(entries)
    }

    fn insert(&mut self, subnet: SubnetKey, entries: Vec<Entry>) {
        self.remove(&subnet);
        for e in &entries {
            self.claims.entry(claim(e)).or_insert((subnet, *e));
        }
        self.by_peer.insert(subnet, entries);
    }

    /// Whether any of `new` takes a key another peer holds with a different value.
    fn collides(&self, subnet: &SubnetKey, new: &[Entry]) -> bool {
        new.iter().any(|e| {
            self.claims
                .get(&claim(e))
                .is_some_and(|(owner, held)| owner != subnet && held != e)
        })
    }

    fn replace_all(&mut self, per_peer: BTreeMap<SubnetKey, Vec<Entry>>) {
        *self = Programmed::default();
        for (subnet, entries) in per_peer {
            self.insert(subnet, entries);
        }
    }
}

impl<D: Dataplane> Peers<D> {
    pub fn new(
        dp: D,
        mode: RoutingMode,
        families: Families,
        own_subnet: SubnetKey,
        own_ip: IpAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        Peers {
            dp,
            mode,
            families,
            own_subnet,
            own_ip,
            records: BTreeMap::new(),
            programmed: Programmed::default(),
            metrics,
        }
    }

    /// Number of peers with kernel entries.
    /// Programs through `dp` from now on (the VXLAN device was recreated); the next
    /// reconcile brings the new device up to date.
    pub fn replace_dataplane(&mut self, dp: D) {
        self.dp = dp;
    }

    /// This host's subnet changed (the lease was re-acquired elsewhere): never a peer's.
    pub fn set_own_subnet(&mut self, subnet: SubnetKey) {
        self.own_subnet = subnet;
    }

    pub fn programmed_count(&self) -> usize {
        self.programmed.len()
    }

    /// The record for `subnet`, as last reported.
    pub fn record(&self, subnet: &SubnetKey) -> Option<&PeerRecord> {
        self.records.get(subnet)
    }

    /// The entries a peer should have, or why it gets none.
    fn entries_for(&self, p: &PeerRecord) -> Result<Vec<Entry>, String> {
        if p.subnet == self.own_subnet {
            return Err("own subnet".into());
        }
        if p.attrs.host_ip(self.families.v4) == self.own_ip {
            return Err(format!(
                "record names this host's own public IP {}",
                self.own_ip
            ));
        }
        peer_entries(&self.mode, self.families, p)
    }

    /// Desired kernel state for all known peers. Peers claim in [`rank`] order; one whose
    /// entries collide with an older peer's (e.g. a copied VtepMAC) is left out whole, so it
    /// cannot redirect another's traffic.
    fn desired(&self, log: bool) -> (KernelState, BTreeMap<SubnetKey, Vec<Entry>>) {
        let mut state = KernelState::default();
        let mut per_peer = BTreeMap::new();
        let mut ranked: Vec<&PeerRecord> = self.records.values().collect();
        ranked.sort_by_key(|p| rank(p));
        for p in ranked {
            let subnet = &p.subnet;
            let entries = match self.entries_for(p) {
                Ok(e) => e,
                Err(reason) => {
                    if log && *subnet != self.own_subnet {
                        tracing::warn!(%subnet, %reason, "not routing to peer");
                    }
                    continue;
                }
            };
            if entries
                .iter()
                .any(|e| state.has_key(e) && !state.contains(e))
            {
                if log {
                    tracing::warn!(%subnet, "peer's entries collide with another peer's; ignoring it");
                }
                continue;
            }
            for e in &entries {
                state.insert(*e);
            }
            per_peer.insert(*subnet, entries);
        }
        (state, per_peer)
    }

    /// Compares the kernel with the peer table and fixes every difference (missing, changed and
    /// stale objects). Returns the number of failed steps.
    pub async fn reconcile(&mut self, log: bool) -> usize {
        self.metrics.reconcile_runs.inc();
        let (want, per_peer) = self.desired(log);
        let observed = match self.dp.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile: reading kernel state failed");
                self.metrics.reconcile_errors.inc();
                return 1;
            }
        };
        let plan = diff(&want, &observed);
        if !plan.is_empty() {
            tracing::info!(
                upserts = plan.upserts.len(),
                removals = plan.removals.len(),
                "reconcile: fixing kernel state"
            );
            tracing::debug!(?plan, "reconcile plan");
            self.metrics
                .reconcile_fixes
                .inc_by((plan.upserts.len() + plan.removals.len()) as u64);
        }
        let failed = apply_plan(&self.dp, &plan).await;
        self.metrics.reconcile_errors.inc_by(failed as u64);
        self.programmed.replace_all(per_peer);
        self.metrics.peers.set(self.programmed.len() as i64);
        failed
    }

    /// Applies one watcher event.
    pub async fn handle(&mut self, ev: PeerEvent) -> OwnRecord {
        match ev {
            PeerEvent::Snapshot(records) => {
                let own = records
                    .iter()
                    .find(|r| r.subnet == self.own_subnet)
                    .cloned();
                self.records = records.into_iter().map(|r| (r.subnet, r)).collect();
                self.reconcile(true).await;
                match own {
                    Some(r) => self.check_own(r),
                    None => OwnRecord::Lost(format!(
                        "record for {} missing from listing",
                        self.own_subnet
                    )),
                }
            }
            PeerEvent::Put(r) => {
                let subnet = r.subnet;
                self.records.insert(subnet, r.clone());
                if subnet == self.own_subnet {
                    return self.check_own(r);
                }
                self.program(subnet).await;
                OwnRecord::Untouched
            }
            PeerEvent::Delete(subnet) => {
                self.records.remove(&subnet);
                if let Some(old) = self.programmed.remove(&subnet) {
                    tracing::info!(%subnet, "peer removed");
                    self.tear_down(subnet, &old).await;
                    // A peer left out for colliding with this one may now take its place.
                    if self.records.len() > self.programmed.len() + 1 {
                        self.reconcile(false).await;
                    }
                }
                if subnet == self.own_subnet {
                    return OwnRecord::Lost(format!("record for {subnet} was deleted"));
                }
                OwnRecord::Untouched
            }
        }
    }

    fn check_own(&self, r: PeerRecord) -> OwnRecord {
        let ip = r.attrs.host_ip(self.families.v4);
        if ip != self.own_ip {
            OwnRecord::Lost(format!(
                "record for {} now names {ip} instead of this host",
                r.subnet
            ))
        } else {
            OwnRecord::Updated(r)
        }
    }

    /// Removes entries programmed for a peer that is no longer (or no longer validly) known.
    async fn tear_down(&mut self, subnet: SubnetKey, old: &[Entry]) {
        if let Err(e) = remove_peer(&self.dp, old).await {
            tracing::warn!(%subnet, error = %e, "removing peer entries failed");
        }
        self.metrics.peers.set(self.programmed.len() as i64);
    }

    /// Programs one peer from its current record (or tears it down if it no longer qualifies).
    async fn program(&mut self, subnet: SubnetKey) {
        let old = self.programmed.remove(&subnet).unwrap_or_default();
        let Some(rec) = self.records.get(&subnet).cloned() else {
            return;
        };
        let new = match self.entries_for(&rec) {
            Ok(e) => e,
            Err(reason) => {
                tracing::warn!(%subnet, %reason, "not routing to peer");
                self.tear_down(subnet, &old).await;
                return;
            }
        };
        if self.programmed.collides(&subnet, &new) {
            // Which of the two keeps the object is the reconcile's rule, applied to all peers.
            self.reconcile(true).await;
            return;
        }
        let start = Instant::now();
        match program_peer(&self.dp, &old, &new).await {
            Ok(()) => {
                self.metrics
                    .peer_program_seconds
                    .observe(start.elapsed().as_secs_f64());
                tracing::info!(%subnet, public_ip = %rec.attrs.host_ip(self.families.v4), "peer programmed");
                self.programmed.insert(subnet, new);
            }
            Err(e) => {
                tracing::warn!(%subnet, error = %e, "programming peer failed; reconcile will retry");
                // Remember everything that may exist so a later delete removes it all.
                self.programmed
                    .insert(subnet, old.into_iter().chain(new).collect());
            }
        }
        self.metrics.peers.set(self.programmed.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dataplane::memory::MemoryDataplane;
    use crate::subnet::{LeaseAttrs, MacAddr, Subnet, VxlanData};

    fn rec(n: u8, ip_last: u8, mac_last: u8) -> PeerRecord {
        PeerRecord {
            subnet: SubnetKey::v4(Subnet::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap()),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 0, 2, ip_last),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: 1,
                    vtep_mac: MacAddr([2, 0, 0, 0, 0, mac_last]),
                }),
                backend_v6_data: None,
            },
            lease: 1,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    fn peers() -> Peers<MemoryDataplane> {
        Peers::new(
            MemoryDataplane::default(),
            RoutingMode::Vxlan {
                vni: 1,
                direct: false,
                segment: Some("192.0.2.0/24".parse().unwrap()),
                segment6: None,
            },
            Families::V4,
            SubnetKey::v4(Subnet::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap()),
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn events_program_and_remove_peers() {
        let mut p = peers();
        let own = p
            .handle(PeerEvent::Snapshot(vec![rec(1, 1, 1), rec(2, 2, 2)]))
            .await;
        assert!(matches!(own, OwnRecord::Updated(_)));
        assert_eq!(p.programmed_count(), 1);
        assert_eq!(p.dp.snapshot().len(), 3);

        assert_eq!(
            p.handle(PeerEvent::Put(rec(3, 3, 3))).await,
            OwnRecord::Untouched
        );
        assert_eq!(p.dp.snapshot().len(), 6);

        // MAC change of peer 3 drops its old FDB entry.
        p.handle(PeerEvent::Put(rec(3, 3, 33))).await;
        let s = p.dp.snapshot();
        assert_eq!(s.len(), 6);
        assert!(s.fdb_v4(&MacAddr([2, 0, 0, 0, 0, 3])).is_none());

        p.handle(PeerEvent::Delete(rec(3, 3, 33).subnet)).await;
        assert_eq!(p.dp.snapshot().len(), 3);

        // A peer that copies peer 2's MAC is ignored and leaves peer 2 intact.
        p.handle(PeerEvent::Put(rec(4, 4, 2))).await;
        assert_eq!(p.dp.snapshot().len(), 3);
        assert_eq!(p.programmed_count(), 1);

        // A record naming our own PublicIP is never routed.
        p.handle(PeerEvent::Put(rec(5, 1, 5))).await;
        assert_eq!(p.programmed_count(), 1);

        // Own record deleted: lease lost.
        let lost = p.handle(PeerEvent::Delete(rec(1, 1, 1).subnet)).await;
        assert!(matches!(lost, OwnRecord::Lost(_)));
    }

    #[tokio::test]
    async fn snapshot_removes_stale_kernel_entries() {
        let mut p = peers();
        p.handle(PeerEvent::Snapshot(vec![
            rec(1, 1, 1),
            rec(2, 2, 2),
            rec(3, 3, 3),
        ]))
        .await;
        assert_eq!(p.dp.snapshot().len(), 6);
        // Peer 3 vanished while we were not watching: the next snapshot cleans it up.
        p.handle(PeerEvent::Snapshot(vec![rec(1, 1, 1), rec(2, 2, 2)]))
            .await;
        assert_eq!(p.dp.snapshot().len(), 3);
        assert_eq!(p.reconcile(false).await, 0);
    }

    /// A record made after peer 2's, in a lower subnet, copying peer 2's VtepMAC (then one
    /// copying its PublicIP): peer 2 keeps its neighbour, FDB entry and route, on the event and
    /// across reconciles, whichever path sees the records first.
    #[tokio::test]
    async fn the_older_record_keeps_a_copied_vtep_mac() {
        let live = |p: &Peers<MemoryDataplane>| {
            let s = p.dp.snapshot();
            s.fdb_v4(&MacAddr([2, 0, 0, 0, 0, 2])) == Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
                && s.routes
                    .contains_key(&ipnetwork::IpNetwork::V4(rec(2, 2, 2).subnet.v4.unwrap().0))
        };
        let mut copy = rec(0, 9, 2);
        copy.create_revision = 50;
        let mut older = rec(2, 2, 2);
        older.create_revision = 10;

        // Event path: the copy arrives after peer 2.
        let mut p = peers();
        p.handle(PeerEvent::Snapshot(vec![rec(1, 1, 1), older.clone()]))
            .await;
        assert!(live(&p));
        p.handle(PeerEvent::Put(copy.clone())).await;
        assert!(live(&p), "event: {:?}", p.dp.snapshot());
        for _ in 0..3 {
            assert_eq!(p.reconcile(true).await, 0);
            assert!(live(&p), "reconcile: {:?}", p.dp.snapshot());
        }
        assert_eq!(p.programmed_count(), 1);

        // Snapshot path, and the copy seen first: the same outcome.
        let mut p = peers();
        p.handle(PeerEvent::Snapshot(vec![rec(1, 1, 1), copy.clone()]))
            .await;
        p.handle(PeerEvent::Put(older.clone())).await;
        assert!(
            live(&p),
            "older record arriving second: {:?}",
            p.dp.snapshot()
        );
        p.reconcile(true).await;
        assert!(live(&p));
        assert_eq!(p.programmed_count(), 1);

        // Peer 2 leaves: the copy, no longer colliding, is routed at once.
        p.handle(PeerEvent::Delete(older.subnet)).await;
        assert_eq!(p.programmed_count(), 1);
        assert!(
            p.dp.snapshot()
                .routes
                .contains_key(&ipnetwork::IpNetwork::V4(copy.subnet.v4.unwrap().0))
        );

        // A record copying only peer 2's PublicIP claims nothing of peer 2's.
        let mut p = peers();
        p.handle(PeerEvent::Snapshot(vec![rec(1, 1, 1), older.clone()]))
            .await;
        let mut same_ip = rec(0, 2, 7);
        same_ip.create_revision = 60;
        p.handle(PeerEvent::Put(same_ip)).await;
        for _ in 0..3 {
            p.reconcile(true).await;
            assert!(live(&p));
        }
        assert_eq!(p.programmed_count(), 2);
    }
}
