//! The dataplane seam: what netd wants in the kernel for each peer, and how it gets there.
//!
//! * [`Entry`] is one kernel object netd owns: a neighbour (ARP) entry, an FDB entry or a route.
//! * [`peer_entries`] turns a peer's record into the entries the backend needs, in programming
//!   order (neighbour → FDB → route, so the route never sends before the kernel can resolve it).
//! * [`KernelState`] is a keyed view of those objects; [`diff`] compares the desired view with what
//!   the kernel holds, which is how stale objects from an earlier run or a missed event go away.
//! * [`Dataplane`] is the trait the real netlink implementation ([`netlink`]) and the in-memory
//!   test implementation share; [`program_peer`] and [`remove_peer`] apply per-peer changes with
//!   rollback.

pub mod device;
pub mod netlink;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::error::{Error, Result};
use crate::subnet::{MacAddr, PeerRecord, VxlanData};

/// Which device a route leaves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// The VXLAN device of the route's family (`flannel.<VNI>` or `flannel-v6.<VNI>`),
    /// gateway = the peer's vtep address, `onlink`.
    Overlay,
    /// The underlay interface, gateway = the peer's public IP (host-gw, DirectRouting).
    Underlay,
}

/// A route's next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    pub gateway: IpAddr,
    pub via: Via,
}

/// One kernel object owned by netd. The address family picks the VXLAN device: IPv4 entries
/// live on `flannel.<VNI>`, IPv6 ones on `flannel-v6.<VNI>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// `ip neigh replace <ip> lladdr <mac> dev flannel.N nud permanent`
    Neigh { ip: IpAddr, mac: MacAddr },
    /// `bridge fdb replace <mac> dev flannel.N dst <dst> self permanent`
    Fdb { mac: MacAddr, dst: IpAddr },
    /// `ip route replace <dst> via <gw> dev <overlay|underlay> [onlink]`
    Route { dst: IpNetwork, hop: NextHop },
}

/// The key of an FDB entry: its device (by family) and MAC.
pub type FdbKey = (bool, MacAddr);

pub(crate) fn fdb_key(mac: MacAddr, dst: IpAddr) -> FdbKey {
    (dst.is_ipv6(), mac)
}

/// How the backend reaches peers; derived from the config and the underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingMode {
    /// VXLAN; with `direct` set, peers whose public IP lies in `segment` (or whose PublicIPv6
    /// lies in `segment6`) get a direct route.
    Vxlan {
        vni: u32,
        direct: bool,
        segment: Option<Ipv4Network>,
        segment6: Option<Ipv6Network>,
    },
    /// host-gw: every peer gets a direct route.
    HostGw,
}

/// The address families this node routes: the network config's (IPv4, IPv6, or both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    /// An IPv4-only network.
    pub const V4: Families = Families {
        v4: true,
        v6: false,
    };
    /// A dual-stack network.
    pub const DUAL: Families = Families { v4: true, v6: true };
    /// An IPv6-only network (`"EnableIPv4": false`).
    pub const V6: Families = Families {
        v4: false,
        v6: true,
    };

    /// The families of a network config.
    pub fn of(net: &crate::netconf::NetworkConfig) -> Families {
        Families {
            v4: net.ipv4.is_some(),
            v6: net.ipv6.is_some(),
        }
    }
}

/// The entries a peer needs, in programming order; `Err(reason)` when the record does not suit
/// this backend, e.g. a host-gw record seen by a vxlan node. `families` says which of a peer's
/// subnets this node routes: each family's subnet gets its own entries.
pub fn peer_entries(
    mode: &RoutingMode,
    families: Families,
    peer: &PeerRecord,
) -> Result<Vec<Entry>, String> {
    // Each half: the record's subnet and public address, when both ends route that family.
    let v4 = match (families.v4, peer.subnet.v4) {
        (true, Some(s)) => Some((s, peer.attrs.public_ip)),
        _ => None,
    };
    let v6 = match (families.v6, peer.subnet.v6, peer.attrs.public_ipv6) {
        (true, Some(s), Some(ip)) => Some((s, ip)),
        _ => None,
    };
    if v4.is_none() && v6.is_none() {
        return Err("the record has no subnet of a family this node routes".into());
    }
    let direct = |dst: IpNetwork, gateway: IpAddr| Entry::Route {
        dst,
        hop: NextHop {
            gateway,
            via: Via::Underlay,
        },
    };
    match mode {
        RoutingMode::HostGw => {
            if peer.attrs.backend_type != "host-gw" {
                return Err(format!(
                    "backend type {:?} differs from this node's host-gw",
                    peer.attrs.backend_type
                ));
            }
            let mut out = Vec::with_capacity(2);
            if let Some((s, ip)) = v4 {
                out.push(direct(IpNetwork::V4(s.0), IpAddr::V4(ip)));
            }
            if let Some((s, ip)) = v6 {
                out.push(direct(IpNetwork::V6(s.0), IpAddr::V6(ip)));
            }
            Ok(out)
        }
        RoutingMode::Vxlan {
            vni,
            direct: direct_routing,
            segment,
            segment6,
        } => {
            if peer.attrs.backend_type != "vxlan" {
                return Err(format!(
                    "backend type {:?} differs from this node's vxlan",
                    peer.attrs.backend_type
                ));
            }
            let check_vni = |d: &VxlanData| {
                if d.vni != 0 && d.vni != *vni {
                    Err(format!("VNI {} differs from this node's VNI {vni}", d.vni))
                } else {
                    Ok(())
                }
            };
            let encap = |vtep: IpAddr, dst: IpNetwork, public: IpAddr, mac: MacAddr| {
                [
                    Entry::Neigh { ip: vtep, mac },
                    Entry::Fdb { mac, dst: public },
                    Entry::Route {
                        dst,
                        hop: NextHop {
                            gateway: vtep,
                            via: Via::Overlay,
                        },
                    },
                ]
            };
            let mut out = Vec::with_capacity(6);
            if let Some((s, ip)) = v4 {
                let Some(data) = &peer.attrs.backend_data else {
                    return Err("vxlan record without BackendData".into());
                };
                check_vni(data)?;
                if *direct_routing && segment.is_some_and(|seg| seg.contains(ip)) {
                    out.push(direct(IpNetwork::V4(s.0), IpAddr::V4(ip)));
                } else {
                    out.extend(encap(
                        IpAddr::V4(s.addr()),
                        IpNetwork::V4(s.0),
                        IpAddr::V4(ip),
                        data.vtep_mac,
                    ));
                }
            }
            if let Some((s, ip)) = v6 {
                let Some(d6) = &peer.attrs.backend_v6_data else {
                    return Err("vxlan record with an IPv6 subnet but no BackendV6Data".into());
                };
                check_vni(d6)?;
                if *direct_routing && segment6.is_some_and(|seg| seg.contains(ip)) {
                    out.push(direct(IpNetwork::V6(s.0), IpAddr::V6(ip)));
                } else {
                    out.extend(encap(
                        IpAddr::V6(s.addr()),
                        IpNetwork::V6(s.0),
                        IpAddr::V6(ip),
                        d6.vtep_mac,
                    ));
                }
            }
            // Programming order across both families: neighbours, FDB, then routes.
            out.sort_by_key(|e| match e {
                Entry::Neigh { .. } => 0,
                Entry::Fdb { .. } => 1,
                Entry::Route { .. } => 2,
            });
            Ok(out)
        }
    }
}

/// A keyed view of netd's kernel objects: neighbours by IP, FDB entries by MAC, routes by
/// destination — the keys the kernel itself uses for `replace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub neighs: BTreeMap<IpAddr, MacAddr>,
    pub fdb: BTreeMap<FdbKey, IpAddr>,
    pub routes: BTreeMap<IpNetwork, NextHop>,
}

impl KernelState {
    /// Adds an entry; returns false (and changes nothing) when its key is already taken by a
    /// different value, e.g. two records claiming the same VtepMAC.
    pub fn insert(&mut self, e: Entry) -> bool {
        fn put<K: Ord, V: PartialEq>(m: &mut BTreeMap<K, V>, k: K, v: V) -> bool {
            match m.get(&k) {
                Some(old) => *old == v,
                None => {
                    m.insert(k, v);
                    true
                }
            }
        }
        match e {
            Entry::Neigh { ip, mac } => put(&mut self.neighs, ip, mac),
            Entry::Fdb { mac, dst } => put(&mut self.fdb, fdb_key(mac, dst), dst),
            Entry::Route { dst, hop } => put(&mut self.routes, dst, hop),
        }
    }

    /// True when the exact entry (key and value) is present.
    pub fn contains(&self, e: &Entry) -> bool {
        match e {
            Entry::Neigh { ip, mac } => self.neighs.get(ip) == Some(mac),
            Entry::Fdb { mac, dst } => self.fdb.get(&fdb_key(*mac, *dst)) == Some(dst),
            Entry::Route { dst, hop } => self.routes.get(dst) == Some(hop),
        }
    }

    /// True when an entry with the same key is present, whatever its value.
    pub fn has_key(&self, e: &Entry) -> bool {
        match e {
            Entry::Neigh { ip, .. } => self.neighs.contains_key(ip),
            Entry::Fdb { mac, dst } => self.fdb.contains_key(&fdb_key(*mac, *dst)),
            Entry::Route { dst, .. } => self.routes.contains_key(dst),
        }
    }

    /// The FDB destination held for `mac` on the IPv4 device.
    pub fn fdb_v4(&self, mac: &MacAddr) -> Option<IpAddr> {
        self.fdb.get(&(false, *mac)).copied()
    }

    /// All entries in programming order (neighbours, FDB, routes).
    pub fn entries(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = Vec::new();
        v.extend(
            self.neighs
                .iter()
                .map(|(ip, mac)| Entry::Neigh { ip: *ip, mac: *mac }),
        );
        v.extend(self.fdb.iter().map(|((_, mac), dst)| Entry::Fdb {
            mac: *mac,
            dst: *dst,
        }));
        v.extend(self.routes.iter().map(|(dst, hop)| Entry::Route {
            dst: *dst,
            hop: *hop,
        }));
        v
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.neighs.len() + self.fdb.len() + self.routes.len()
    }

    /// True when no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The work that turns `observed` into `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Missing or different entries, in programming order (neighbours, FDB, routes).
    pub upserts: Vec<Entry>,
    /// Entries whose key is not desired at all, routes first.
    pub removals: Vec<Entry>,
}

impl Plan {
    /// True when the kernel already matches.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Compares desired with observed state.
pub fn diff(desired: &KernelState, observed: &KernelState) -> Plan {
    let upserts = desired
        .entries()
        .into_iter()
        .filter(|e| !observed.contains(e))
        .collect();
    let mut removals: Vec<Entry> = observed
        .entries()
        .into_iter()
        .filter(|e| !desired.has_key(e))
        .collect();
    removals.reverse();
    Plan { upserts, removals }
}

/// Kernel access used by the peer programmer and the reconciler.
pub trait Dataplane: Send + Sync {
    /// Reads every object netd owns.
    fn observe(&self) -> impl Future<Output = Result<KernelState>> + Send;
    /// Creates or replaces one object.
    fn upsert(&self, entry: &Entry) -> impl Future<Output = Result<()>> + Send;
    /// Deletes one object; an object that is already gone is not an error.
    fn remove(&self, entry: &Entry) -> impl Future<Output = Result<()>> + Send;
}

/// Programs a peer: upserts `new` in order, then removes what `old` had and `new` no longer has
/// (e.g. the FDB entry of a VtepMAC that changed). When a step fails, the entries this call added
/// are rolled back and the error returned; the periodic reconcile retries later.
pub async fn program_peer<D: Dataplane>(dp: &D, old: &[Entry], new: &[Entry]) -> Result<()> {
    let mut old_state = KernelState::default();
    for e in old {
        old_state.insert(*e);
    }
    let mut new_state = KernelState::default();
    for e in new {
        new_state.insert(*e);
    }
    let mut added: Vec<Entry> = Vec::new();
    for e in new {
        if let Err(err) = dp.upsert(e).await {
            for done in added.iter().rev() {
                if let Err(rb) = dp.remove(done).await {
                    tracing::warn!(entry = ?done, error = %rb, "rollback failed");
                }
            }
            return Err(err);
        }
        if !old_state.has_key(e) {
            added.push(*e);
        }
    }
    let stale: Vec<Entry> = old
        .iter()
        .rev()
        .filter(|e| !new_state.has_key(e))
        .copied()
        .collect();
    remove_all(dp, &stale).await
}

/// Removes a peer's entries, route first. Keeps going after a failure and reports every error.
pub async fn remove_peer<D: Dataplane>(dp: &D, entries: &[Entry]) -> Result<()> {
    let rev: Vec<Entry> = entries.iter().rev().copied().collect();
    remove_all(dp, &rev).await
}

async fn remove_all<D: Dataplane>(dp: &D, entries: &[Entry]) -> Result<()> {
    let mut errors = Vec::new();
    for e in entries {
        if let Err(err) = dp.remove(e).await {
            errors.push(format!("{e:?}: {err}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Kernel(format!(
            "removing entries: {}",
            errors.join("; ")
        )))
    }
}

/// Applies a reconcile plan. Keeps going after failures; returns how many steps failed.
pub async fn apply_plan<D: Dataplane>(dp: &D, plan: &Plan) -> usize {
    let mut failed = 0;
    for e in &plan.upserts {
        if let Err(err) = dp.upsert(e).await {
            tracing::warn!(entry = ?e, error = %err, "reconcile: upsert failed");
            failed += 1;
        }
    }
    for e in &plan.removals {
        if let Err(err) = dp.remove(e).await {
            tracing::warn!(entry = ?e, error = %err, "reconcile: removal failed");
            failed += 1;
        }
    }
    failed
}

#[cfg(test)]
pub(crate) mod memory;

#[cfg(test)]
mod tests;
