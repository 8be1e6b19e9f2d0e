//! Host side of an attachment: the bridge with the gateway address (both gateways on a
//! dual-stack node), forwarding, and the veth pair whose peer is created directly inside the
//! container netns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use ipnetwork::{Ipv4Network, Ipv6Network};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::links::{self, Link};
use super::netns::Netns;
use crate::error::{CniError, Result};

/// Make sure bridge `name` exists, is up and carries `gateway/prefix` (and, on a dual-stack
/// node, the IPv6 gateway `gateway6`, its prefix the subnet's). Safe when many plugin
/// processes race to create it.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    gateway: Option<Ipv4Network>,
    gateway6: Option<Ipv6Network>,
    mtu: u32,
) -> Result<Link> {
    let mac = bridge_mac(gateway.map(|g| g.ip()), gateway6.map(|g| g.ip()));
    let bridge = match links::get_by_name(h, name).await? {
        Some(b) => b,
        None => {
            if let Err(e) = h
                .link()
                .add(
                    LinkBridge::new(name)
                        .mtu(mtu)
                        .address(mac.to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                && !links::is_exists(&e)
            {
                return Err(CniError::kernel(format!("create bridge {name}"), e));
            }
            links::get_by_name(h, name).await?.ok_or_else(|| {
                CniError::kernel(format!("bridge {name}"), "vanished after creation")
            })?
        }
    };
    if !bridge.up {
        h.link()
            .set(LinkUnspec::new_with_index(bridge.index).up().build())
            .execute()
            .await
            .map_err(|e| CniError::kernel(format!("set {name} up"), e))?;
    }
    // Add unconditionally (EEXIST is success): listing addresses would dump every address of
    // the host netns, one per veth, and make ADD cost grow with the container count.
    if let Some(gw) = gateway {
        links::add_address(h, bridge.index, IpAddr::V4(gw.ip()), gw.prefix()).await?;
    }
    if let Some(gw6) = gateway6 {
        links::add_address(h, bridge.index, IpAddr::V6(gw6.ip()), gw6.prefix()).await?;
    }
    Ok(bridge)
}

/// A fixed, locally administered MAC for the bridge (`0a:58:` + the IPv4 gateway address, or
/// the last four bytes of the IPv6 one on an IPv6-only node). Without an explicit address the
/// kernel would switch the bridge to its lowest port's MAC, changing it under the containers'
/// neighbour caches whenever ports come and go.
fn bridge_mac(gateway: Option<Ipv4Addr>, gateway6: Option<Ipv6Addr>) -> [u8; 6] {
    let [a, b, c, d] = match (gateway, gateway6) {
        (Some(g), _) => g.octets(),
        (None, Some(g6)) => {
            let o = g6.octets();
            [o[12], o[13], o[14], o[15]]
        }
        (None, None) => [0; 4],
    };
    [0x0a, 0x58, a, b, c, d]
}

/// Create veth `host_name` here and its peer `ifname` directly in `netns`, both with `mtu`.
pub async fn create_veth(
    h: &Handle,
    host_name: &str,
    ifname: &str,
    netns: &Netns,
    mtu: u32,
) -> Result<Link> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ifname.to_string())
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NetNsFd(netns.fd().as_raw_fd()))
        .build();
    let msg = LinkVeth::new(host_name, ifname)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link().add(msg).execute().await.map_err(|e| {
        CniError::kernel(
            format!(
                "create veth {host_name} with peer {ifname} in {}",
                netns.path
            ),
            e,
        )
    })?;
    links::get_by_name(h, host_name)
        .await?
        .ok_or_else(|| CniError::kernel(format!("veth {host_name}"), "vanished after creation"))
}

/// Enslave the host end `host` to `bridge` and bring it up, then set hairpin mode.
pub async fn attach_port(h: &Handle, host: &Link, bridge: &Link, hairpin: bool) -> Result<()> {
    let host_name = &host.name;
    h.link()
        .set(
            LinkUnspec::new_with_index(host.index)
                .controller(bridge.index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("attach {host_name} to {}", bridge.name), e))?;
    if hairpin {
        h.link()
            .set_port(LinkBridgePort::new(host.index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| CniError::kernel(format!("hairpin mode on {host_name}"), e))?;
    }
    Ok(())
}

/// Waits (up to 1 s) until the bridge forwards frames from port `name`. The kernel enables a
/// port only once it has processed the carrier change of a newly paired veth, which happens
/// asynchronously after both ends are up; a frame sent before that (the container's gratuitous
/// ARP) would be dropped. Returns whether the port became forwarding in time.
pub async fn wait_forwarding(h: &Handle, name: &str) -> Result<bool> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(1) {
        if links::get_by_name(h, name)
            .await?
            .is_some_and(|l| l.forwarding)
        {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(false)
}

/// Turn on IPv4 forwarding in the plugin's netns (as the reference bridge does for a gateway),
/// and IPv6 forwarding (`net.ipv6.conf.all.forwarding`) when `ipv6` is in use.
pub fn enable_ip_forward(ipv6: bool) -> Result<()> {
    const V4: &str = "/proc/sys/net/ipv4/ip_forward";
    const V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    let paths: &[&str] = if ipv6 { &[V4, V6] } else { &[V4] };
    for path in paths {
        let current =
            std::fs::read_to_string(path).map_err(|e| CniError::io(format!("read {path}"), e))?;
        if current.trim() != "1" {
            std::fs::write(path, "1").map_err(|e| CniError::io(format!("write {path}"), e))?;
        }
    }
    Ok(())
}
