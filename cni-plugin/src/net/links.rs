//! Typed netlink operations on links, addresses and routes (either address family), shared by
//! host and container code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::{CniError, Result};

/// The facts about a link the plugin uses.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    /// Index of the bridge this link is enslaved to.
    pub controller: Option<u32>,
    /// As a bridge port: the bridge forwards its frames (the port's carrier is up and the
    /// kernel has processed it; until then the bridge drops what arrives on it).
    pub forwarding: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: String::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            forwarding: false,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = format_mac(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    link.forwarding = infos.iter().any(|i| {
                        matches!(i, LinkInfo::PortData(InfoPortData::BridgePort(p))
                        if p.contains(&InfoBridgePort::State(BridgePortState::Forwarding)))
                    })
                }
                _ => {}
            }
        }
        link
    }
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub use hostnet::netlink::{is_exists, is_gone};

/// The link named `name`, or `None` when there is none.
pub async fn get_by_name(h: &Handle, name: &str) -> Result<Option<Link>> {
    hostnet::netlink::link_by_name(h, name)
        .await
        .map(|m| m.as_ref().map(Link::from_message))
        .map_err(|e| CniError::kernel(format!("look up link {name}"), e))
}

/// Delete the link named `name`; absent is success. Returns whether it existed.
pub async fn delete_by_name(h: &Handle, name: &str) -> Result<bool> {
    let Some(link) = get_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(CniError::kernel(format!("delete link {name}"), e)),
    }
}

/// The addresses (with prefix) on the link `index`: IPv4, then global IPv6 (link-local ones
/// are the kernel's own and left out).
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNetwork>> {
    let v4 = hostnet::netlink::ipv4_addresses(h, index)
        .await
        .map_err(|e| CniError::kernel("list IPv4 addresses", e))?;
    let v6 = hostnet::netlink::ipv6_addresses(h, index)
        .await
        .map_err(|e| CniError::kernel("list IPv6 addresses", e))?;
    Ok(v4
        .into_iter()
        .map(IpNetwork::V4)
        .chain(v6.into_iter().map(IpNetwork::V6))
        .collect())
}

/// Add `ip/prefix` to link `index`; already present is success. An IPv6 address is added
/// without duplicate address detection (`IFA_F_NODAD`), so it is usable at once instead of
/// "tentative" for a second; the node's IPAM is what keeps addresses unique.
pub async fn add_address(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    let mut req = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Err(e) if !is_exists(&e) => Err(CniError::kernel(format!("add address {ip}/{prefix}"), e)),
        _ => Ok(()),
    }
}

pub use hostnet::netlink::{Route4, Route6};

/// IPv4 routes of the main table.
pub async fn routes(h: &Handle) -> Result<Vec<Route4>> {
    hostnet::netlink::main_routes_v4(h)
        .await
        .map_err(|e| CniError::kernel("list routes", e))
}

/// IPv6 routes of the main table.
pub async fn routes6(h: &Handle) -> Result<Vec<Route6>> {
    hostnet::netlink::main_routes_v6(h)
        .await
        .map_err(|e| CniError::kernel("list IPv6 routes", e))
}

/// Add a route `dst via gw dev oif` (both of one family); already present is success.
pub async fn add_route(h: &Handle, dst: IpNetwork, gw: IpAddr, oif: u32) -> Result<()> {
    let msg = match (dst, gw) {
        (IpNetwork::V4(d), IpAddr::V4(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .output_interface(oif)
            .build(),
        (IpNetwork::V6(d), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .output_interface(oif)
            .build(),
        _ => {
            return Err(CniError::InvalidConfig(format!(
                "route to {dst} via {gw}: the gateway is of another address family"
            )));
        }
    };
    match h.route().add(msg).execute().await {
        Err(e) if !is_exists(&e) => Err(CniError::kernel(format!("add route {dst} via {gw}"), e)),
        _ => Ok(()),
    }
}
