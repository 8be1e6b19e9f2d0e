//! The real [`Dataplane`]: neighbours, FDB entries and routes through rtnetlink.
//!
//! Ownership rule: netd owns main-table routes whose destination lies inside the cluster
//! network of their family (IPv4 `Network`, IPv6 `IPv6Network`) and that leave through that
//! family's VXLAN device, or through the underlay interface with a gateway; permanent
//! neighbours on the VXLAN devices; FDB entries on the VXLAN devices that carry a destination.
//! Nothing else is ever touched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Dataplane, Entry, KernelState, NextHop, Via, fdb_key};
use crate::error::{Error, Result};
use crate::subnet::MacAddr;

/// Kernel access through one rtnetlink handle (bound to the namespace it was created in).
#[derive(Clone)]
pub struct NetlinkDataplane {
    handle: Handle,
    /// Index of `flannel.<VNI>`; `None` for host-gw.
    overlay: Option<u32>,
    /// Index of `flannel-v6.<VNI>`; `None` for host-gw or without IPv6.
    overlay6: Option<u32>,
    underlay: u32,
    /// The IPv4 cluster network; `None` in an IPv6-only network.
    network: Option<Ipv4Network>,
    /// The IPv6 cluster network of a dual-stack or IPv6-only config.
    network6: Option<Ipv6Network>,
}

impl NetlinkDataplane {
    pub fn new(handle: Handle, overlay: Option<u32>, underlay: u32, network: Ipv4Network) -> Self {
        NetlinkDataplane {
            handle,
            overlay,
            overlay6: None,
            underlay,
            network: Some(network),
            network6: None,
        }
    }

    /// A dataplane of an IPv6-only network: it owns no IPv4 object; [`Self::with_ipv6`]
    /// names the IPv6 network and device.
    pub fn ipv6_only(handle: Handle, underlay: u32) -> Self {
        NetlinkDataplane {
            handle,
            overlay: None,
            overlay6: None,
            underlay,
            network: None,
            network6: None,
        }
    }

    /// Also owns IPv6 objects: routes inside `network6`, and entries on `overlay6`.
    pub fn with_ipv6(mut self, network6: Ipv6Network, overlay6: Option<u32>) -> Self {
        self.network6 = Some(network6);
        self.overlay6 = overlay6;
        self
    }

    /// The VXLAN device of an address's family.
    fn overlay_for(&self, v6: bool) -> Result<u32> {
        let dev = if v6 { self.overlay6 } else { self.overlay };
        dev.ok_or_else(|| {
            Error::Kernel(format!(
                "no {} VXLAN device in this backend",
                if v6 { "IPv6" } else { "IPv4" }
            ))
        })
    }

    /// Which of netd's next hops a route of the main table is, if any. On the IPv6 device a
    /// route without a gateway is the kernel's own (the prefix route of the `/128` vtep
    /// address), never netd's.
    fn via(&self, oif: Option<u32>, gw: bool, v6: bool) -> Option<Via> {
        let overlay = if v6 { self.overlay6 } else { self.overlay };
        match oif {
            Some(i) if Some(i) == overlay && (gw || !v6) => Some(Via::Overlay),
            Some(i) if i == self.underlay && gw => Some(Via::Underlay),
            _ => None,
        }
    }

    async fn observe_routes(&self, state: &mut KernelState) -> Result<()> {
        // Every main-table route of the families netd routes: (destination, gateway, device).
        let mut routes: Vec<(IpNetwork, Option<IpAddr>, Option<u32>)> = Vec::new();
        if self.network.is_some() {
            for r in hostnet::netlink::main_routes_v4(&self.handle)
                .await
                .map_err(|e| Error::netlink("list routes", e))?
            {
                if let Ok(dst) = Ipv4Network::new(r.dst, r.prefix) {
                    routes.push((dst.into(), r.gw.map(IpAddr::V4), r.oif));
                }
            }
        }
        if self.network6.is_some() {
            for r in hostnet::netlink::main_routes_v6(&self.handle)
                .await
                .map_err(|e| Error::netlink("list IPv6 routes", e))?
            {
                if let Ok(dst) = Ipv6Network::new(r.dst, r.prefix) {
                    routes.push((dst.into(), r.gw.map(IpAddr::V6), r.oif));
                }
            }
        }
        for (dst, gw, oif) in routes {
            let network: Option<IpNetwork> = match dst {
                IpNetwork::V4(_) => self.network.map(Into::into),
                IpNetwork::V6(_) => self.network6.map(Into::into),
            };
            let Some(network) = network else { continue };
            if !(network.contains(dst.network()) && dst.prefix() >= network.prefix()) {
                continue;
            }
            let Some(via) = self.via(oif, gw.is_some(), dst.is_ipv6()) else {
                continue;
            };
            let unspecified = if dst.is_ipv6() {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            let gateway = gw.unwrap_or(unspecified);
            state.routes.insert(dst, NextHop { gateway, via });
        }
        Ok(())
    }

    async fn observe_neighbours(&self, ov: u32, v6: bool, state: &mut KernelState) -> Result<()> {
        let family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let neighs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list neighbours", e))?;
        for n in neighs {
            if n.header.ifindex != ov || n.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (neigh_dst(&n).and_then(as_ip), neigh_mac(&n))
                && ip.is_ipv6() == v6
            {
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
            if let (Some(dst), Some(mac)) = (neigh_dst(&n).and_then(as_ip), neigh_mac(&n))
                && mac.0 != [0; 6]
                && dst.is_ipv6() == v6
            {
                state.fdb.insert(fdb_key(mac, dst), dst);
            }
        }
        Ok(())
    }
}

/// The route `replace` message for `dst` via `hop` out of `oif`.
fn route_msg(dst: IpNetwork, hop: NextHop, oif: u32) -> Result<RouteMessage> {
    let onlink = hop.via == Via::Overlay;
    Ok(match (dst, hop.gateway) {
        (IpNetwork::V4(d), IpAddr::V4(g)) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .gateway(g)
                .output_interface(oif);
            if onlink { b.onlink() } else { b }.build()
        }
        (IpNetwork::V6(d), IpAddr::V6(g)) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .gateway(g)
                .output_interface(oif);
            if onlink { b.onlink() } else { b }.build()
        }
        _ => {
            return Err(Error::Kernel(format!(
                "route to {dst} via {} mixes address families",
                hop.gateway
            )));
        }
    })
}

/// The route `delete` message for `dst` out of `oif`, matching any protocol, scope and type:
/// a stale route may have been added by another tool (protocol boot) or an older netd.
fn route_del_msg(dst: IpNetwork, oif: u32) -> RouteMessage {
    match dst {
        IpNetwork::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .output_interface(oif)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec)
            .build(),
        IpNetwork::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .output_interface(oif)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec)
            .build(),
    }
}

fn neigh_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v) => NeighbourAddress::Inet(v),
        IpAddr::V6(v) => NeighbourAddress::Inet6(v),
    }
}

fn neigh_dst(n: &NeighbourMessage) -> Option<NeighbourAddress> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => Some(d.clone()),
        _ => None,
    })
}

/// The IP address of a neighbour attribute. Bridge-family (FDB) messages carry it as raw bytes
/// because the parser keys the address type on the message family.
fn as_ip(a: NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some(IpAddr::V4(v)),
        NeighbourAddress::Inet6(v) => Some(IpAddr::V6(v)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
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
            self.observe_neighbours(ov, false, &mut state).await?;
        }
        if let Some(ov) = self.overlay6 {
            self.observe_neighbours(ov, true, &mut state).await?;
        }
        Ok(state)
    }

    async fn upsert(&self, entry: &Entry) -> Result<()> {
        let h = &self.handle;
        match *entry {
            Entry::Neigh { ip, mac } => h
                .neighbours()
                .add(self.overlay_for(ip.is_ipv6())?, ip)
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("neigh replace {ip} {mac}"), e)),
            Entry::Fdb { mac, dst } => h
                .neighbours()
                .add_bridge(self.overlay_for(dst.is_ipv6())?, &mac.0)
                .destination(dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("fdb replace {mac} dst {dst}"), e)),
            Entry::Route { dst, hop } => {
                let oif = match hop.via {
                    Via::Overlay => self.overlay_for(dst.is_ipv6())?,
                    Via::Underlay => self.underlay,
                };
                h.route()
                    .add(route_msg(dst, hop, oif)?)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| {
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
                m.header.family = if ip.is_ipv6() {
                    AddressFamily::Inet6
                } else {
                    AddressFamily::Inet
                };
                m.header.ifindex = self.overlay_for(ip.is_ipv6())?;
                m.attributes
                    .push(NeighbourAttribute::Destination(neigh_address(ip)));
                h.neighbours().del(m).execute().await
            }
            Entry::Fdb { mac, dst } => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = self.overlay_for(dst.is_ipv6())?;
                m.header.flags = NeighbourFlags::Own;
                m.header.state = NeighbourState::Permanent;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(neigh_address(dst)));
                h.neighbours().del(m).execute().await
            }
            Entry::Route { dst, hop } => {
                let oif = match hop.via {
                    Via::Overlay => self.overlay_for(dst.is_ipv6())?,
                    Via::Underlay => self.underlay,
                };
                h.route().del(route_del_msg(dst, oif)).execute().await
            }
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if hostnet::netlink::is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::netlink(format!("delete {entry:?}"), e)),
        }
    }
}
