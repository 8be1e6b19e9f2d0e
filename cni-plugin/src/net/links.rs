//! Typed netlink operations on links, addresses and routes, shared by host and container code.

use std::net::{IpAddr, Ipv4Addr};

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

/// IPv4 addresses (with prefix) on the link `index`.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    let nets = hostnet::netlink::ipv4_addresses(h, index)
        .await
        .map_err(|e| CniError::kernel("list addresses", e))?;
    Ok(nets.iter().map(|n| (n.ip(), n.prefix())).collect())
}

/// Add `ip/prefix` to link `index`; already present is success.
pub async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Err(e) if !is_exists(&e) => Err(CniError::kernel(format!("add address {ip}/{prefix}"), e)),
        _ => Ok(()),
    }
}

pub use hostnet::netlink::Route4;

/// IPv4 routes of the main table.
pub async fn routes(h: &Handle) -> Result<Vec<Route4>> {
    hostnet::netlink::main_routes_v4(h)
        .await
        .map_err(|e| CniError::kernel("list routes", e))
}

/// Add a route `dst/prefix via gw dev oif`; already present is success.
pub async fn add_route(
    h: &Handle,
    dst: Ipv4Addr,
    prefix: u8,
    gw: Ipv4Addr,
    oif: u32,
) -> Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, prefix)
        .gateway(gw)
        .output_interface(oif)
        .build();
    match h.route().add(msg).execute().await {
        Err(e) if !is_exists(&e) => Err(CniError::kernel(
            format!("add route {dst}/{prefix} via {gw}"),
            e,
        )),
        _ => Ok(()),
    }
}
