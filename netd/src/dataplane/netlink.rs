//! The real [`Dataplane`]: neighbours, FDB entries and routes through rtnetlink.
//!
//! Ownership rule: netd owns IPv4 main-table routes whose destination lies inside the cluster
//! network and that leave through the VXLAN device, or through the underlay interface with a
//! gateway; permanent IPv4 neighbours on the VXLAN device; FDB entries on the VXLAN device that
//! carry a destination. Nothing else is ever touched.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Dataplane, Entry, KernelState, NextHop, Via};
use crate::error::{Error, Result};
use crate::subnet::MacAddr;

/// Kernel access through one rtnetlink handle (bound to the namespace it was created in).
#[derive(Clone)]
pub struct NetlinkDataplane {
    handle: Handle,
    /// Index of `flannel.<VNI>`; `None` for host-gw.
    overlay: Option<u32>,
    underlay: u32,
    network: Ipv4Network,
}

impl NetlinkDataplane {
    pub fn new(handle: Handle, overlay: Option<u32>, underlay: u32, network: Ipv4Network) -> Self {
        NetlinkDataplane {
            handle,
            overlay,
            underlay,
            network,
        }
    }

    fn overlay(&self) -> Result<u32> {
        self.overlay
            .ok_or_else(|| Error::Kernel("no VXLAN device in this backend".into()))
    }

    fn owns_dst(&self, dst: &Ipv4Network) -> bool {
        self.network.contains(dst.network()) && dst.prefix() >= self.network.prefix()
    }

    async fn observe_routes(&self, state: &mut KernelState) -> Result<()> {
        let routes = hostnet::netlink::main_routes_v4(&self.handle)
            .await
            .map_err(|e| Error::netlink("list routes", e))?;
        for r in routes {
            let Ok(dst) = Ipv4Network::new(r.dst, r.prefix) else {
                continue;
            };
            if !self.owns_dst(&dst) {
                continue;
            }
            let via = match (r.oif, r.gw) {
                (Some(i), _) if Some(i) == self.overlay => Via::Overlay,
                (Some(i), Some(_)) if i == self.underlay => Via::Underlay,
                _ => continue,
            };
            let gateway = r.gw.unwrap_or(Ipv4Addr::UNSPECIFIED);
            state.routes.insert(dst, NextHop { gateway, via });
        }
        Ok(())
    }

    async fn observe_neighbours(&self, ov: u32, state: &mut KernelState) -> Result<()> {
        let neighs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list neighbours", e))?;
        for n in neighs {
            if n.header.ifindex != ov || n.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(NeighbourAddress::Inet(ip)), Some(mac)) = (neigh_dst(&n), neigh_mac(&n)) {
                state.neighs.insert(ip, mac);
            }
        }
        let fdb: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list fdb", e))?;
        for n in fdb {
            if n.header.ifindex != ov {
                continue;
            }
            if let (Some(dst), Some(mac)) = (neigh_dst(&n).and_then(as_v4), neigh_mac(&n))
                && mac.0 != [0; 6]
            {
                state.fdb.insert(mac, dst);
            }
        }
        Ok(())
    }
}

fn neigh_dst(n: &NeighbourMessage) -> Option<NeighbourAddress> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => Some(d.clone()),
        _ => None,
    })
}

/// The IPv4 address of a neighbour attribute. Bridge-family (FDB) messages carry it as raw bytes
/// because the parser keys the address type on the message family.
fn as_v4(a: NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(v) => Some(v),
        NeighbourAddress::Other(b) if b.len() == 4 => Some(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        _ => None,
    }
}

fn neigh_mac(n: &NeighbourMessage) -> Option<MacAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            let mut out = [0u8; 6];
            out.copy_from_slice(b);
            Some(MacAddr(out))
        }
        _ => None,
    })
}

impl Dataplane for NetlinkDataplane {
    async fn observe(&self) -> Result<KernelState> {
        let mut state = KernelState::default();
        self.observe_routes(&mut state).await?;
        if let Some(ov) = self.overlay {
            self.observe_neighbours(ov, &mut state).await?;
        }
        Ok(state)
    }

    async fn upsert(&self, entry: &Entry) -> Result<()> {
        let h = &self.handle;
        match *entry {
            Entry::Neigh { ip, mac } => h
                .neighbours()
                .add(self.overlay()?, IpAddr::V4(ip))
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("neigh replace {ip} {mac}"), e)),
            Entry::Fdb { mac, dst } => h
                .neighbours()
                .add_bridge(self.overlay()?, &mac.0)
                .destination(IpAddr::V4(dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("fdb replace {mac} dst {dst}"), e)),
            Entry::Route { dst, hop } => {
                let b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(hop.gateway);
                let msg = match hop.via {
                    Via::Overlay => b.output_interface(self.overlay()?).onlink().build(),
                    Via::Underlay => b.output_interface(self.underlay).build(),
                };
                h.route().add(msg).replace().execute().await.map_err(|e| {
                    Error::netlink(format!("route replace {dst} via {}", hop.gateway), e)
                })
            }
        }
    }

    async fn remove(&self, entry: &Entry) -> Result<()> {
        let h = &self.handle;
        let res = match *entry {
            Entry::Neigh { ip, .. } => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.ifindex = self.overlay()?;
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
                h.neighbours().del(m).execute().await
            }
            Entry::Fdb { mac, dst } => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = self.overlay()?;
                m.header.flags = NeighbourFlags::Own;
                m.header.state = NeighbourState::Permanent;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
                h.neighbours().del(m).execute().await
            }
            Entry::Route { dst, hop } => {
                let oif = match hop.via {
                    Via::Overlay => self.overlay()?,
                    Via::Underlay => self.underlay,
                };
                // Match any protocol, scope and type: a stale route may have been added by
                // another tool (protocol boot) or an older netd.
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .output_interface(oif)
                    .protocol(RouteProtocol::Unspec)
                    .scope(RouteScope::NoWhere)
                    .kind(RouteType::Unspec)
                    .build();
                h.route().del(msg).execute().await
            }
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if hostnet::netlink::is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::netlink(format!("delete {entry:?}"), e)),
        }
    }
}
