//! Netlink pieces netd and netd-cni both use (through `rtnetlink`): what an error's errno
//! means, looking a link up by name, a link's IPv4 and IPv6 addresses, and the main routing
//! table of either family.
//! Errors stay `rtnetlink::Error`: each program says in its own words what it was doing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::{Ipv4Network, Ipv6Network};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use nix::errno::Errno;
use rtnetlink::{Handle, RouteMessageBuilder};

/// The main routing table (`RT_TABLE_MAIN`), where both programs' routes live.
pub const MAIN_TABLE: u8 = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN;

/// The errno of a netlink error, if the kernel answered with one.
pub fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

/// The link is gone (ENODEV).
pub fn is_gone(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(Errno::ENODEV)
}

/// The object already exists (EEXIST).
pub fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(Errno::EEXIST)
}

/// The object to delete is not there (ENOENT, or ESRCH for routes).
pub fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(Errno::ENOENT | Errno::ESRCH))
}

/// The link named `name`; `None` when there is none.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// One IPv6 route of the main table, as netd and the plugin read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route6 {
    pub dst: Ipv6Addr,
    pub prefix: u8,
    pub gw: Option<Ipv6Addr>,
    pub oif: Option<u32>,
}

/// A main-table route of either family: destination (none for a default route), prefix,
/// gateway, output interface.
struct RawRoute {
    dst: Option<RouteAddress>,
    prefix: u8,
    gw: Option<RouteAddress>,
    oif: Option<u32>,
}

/// The main table's routes of the family `request` asks for.
async fn main_routes(
    h: &Handle,
    request: netlink_packet_route::route::RouteMessage,
) -> Result<Vec<RawRoute>, rtnetlink::Error> {
    let family = request.header.address_family;
    let msgs: Vec<_> = h.route().get(request).execute().try_collect().await?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.table == MAIN_TABLE && m.header.address_family == family)
        .map(|m| {
            let mut r = RawRoute {
                dst: None,
                prefix: m.header.destination_prefix_length,
                gw: None,
                oif: None,
            };
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => r.dst = Some(d.clone()),
                    RouteAttribute::Gateway(g) => r.gw = Some(g.clone()),
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    _ => {}
                }
            }
            r
        })
        .collect())
}

/// The IPv4 routes of the main table.
pub async fn main_routes_v4(h: &Handle) -> Result<Vec<Route4>, rtnetlink::Error> {
    let v4 = |a: Option<RouteAddress>| match a {
        Some(RouteAddress::Inet(v)) => Some(v),
        _ => None,
    };
    Ok(
        main_routes(h, RouteMessageBuilder::<Ipv4Addr>::new().build())
            .await?
            .into_iter()
            .map(|r| Route4 {
                dst: v4(r.dst).unwrap_or(Ipv4Addr::UNSPECIFIED),
                prefix: r.prefix,
                gw: v4(r.gw),
                oif: r.oif,
            })
            .collect(),
    )
}

/// The IPv6 routes of the main table.
pub async fn main_routes_v6(h: &Handle) -> Result<Vec<Route6>, rtnetlink::Error> {
    let v6 = |a: Option<RouteAddress>| match a {
        Some(RouteAddress::Inet6(v)) => Some(v),
        _ => None,
    };
    Ok(
        main_routes(h, RouteMessageBuilder::<Ipv6Addr>::new().build())
            .await?
            .into_iter()
            .map(|r| Route6 {
                dst: v6(r.dst).unwrap_or(Ipv6Addr::UNSPECIFIED),
                prefix: r.prefix,
                gw: v6(r.gw),
                oif: r.oif,
            })
            .collect(),
    )
}

/// The addresses of one family (with their prefixes) on link `index`.
async fn addresses(
    h: &Handle,
    index: u32,
    family: AddressFamily,
) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index && m.header.family == family)
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                    Some((*ip, m.header.prefix_len))
                }
                _ => None,
            })
        })
        .collect())
}

/// The global IPv6 addresses (with their prefixes) on link `index`; link-local ones
/// (`fe80::/10`) are left out.
pub async fn ipv6_addresses(h: &Handle, index: u32) -> Result<Vec<Ipv6Network>, rtnetlink::Error> {
    Ok(addresses(h, index, AddressFamily::Inet6)
        .await?
        .into_iter()
        .filter_map(|(ip, len)| match ip {
            IpAddr::V6(a) if (a.segments()[0] & 0xffc0) != 0xfe80 => Ipv6Network::new(a, len).ok(),
            _ => None,
        })
        .collect())
}

/// The IPv4 addresses (with their prefixes) on link `index`.
pub async fn ipv4_addresses(h: &Handle, index: u32) -> Result<Vec<Ipv4Network>, rtnetlink::Error> {
    Ok(addresses(h, index, AddressFamily::Inet)
        .await?
        .into_iter()
        .filter_map(|(ip, len)| match ip {
            IpAddr::V4(a) => Ipv4Network::new(a, len).ok(),
            IpAddr::V6(_) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_error(errno: i32) -> rtnetlink::Error {
        let mut m = netlink_packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn errno_kinds() {
        assert!(is_gone(&kernel_error(Errno::ENODEV as i32)));
        assert!(is_exists(&kernel_error(Errno::EEXIST as i32)));
        assert!(is_not_found(&kernel_error(Errno::ENOENT as i32)));
        assert!(is_not_found(&kernel_error(Errno::ESRCH as i32)));
        assert!(!is_gone(&kernel_error(Errno::EEXIST as i32)));
        assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
        assert_eq!(MAIN_TABLE, 254);
    }

    /// Loopback of a namespace of its own: 127.0.0.1/8, found by name.
    #[test]
    fn loopback_lookup_in_a_fresh_namespace() {
        let out = std::thread::spawn(|| {
            // A namespace that ends with this thread (needs root).
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root?)");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (conn, h, _) = rtnetlink::new_connection().expect("netlink");
                tokio::spawn(conn);
                let lo = link_by_name(&h, "lo")
                    .await
                    .expect("lookup")
                    .expect("lo exists");
                let none = link_by_name(&h, "no-such-link").await.expect("lookup");
                h.link()
                    .set(
                        rtnetlink::LinkUnspec::new_with_index(lo.header.index)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .expect("lo up");
                let addrs = ipv4_addresses(&h, lo.header.index)
                    .await
                    .expect("addresses");
                (none.is_none(), addrs)
            })
        })
        .join()
        .expect("thread");
        assert!(out.0);
        assert_eq!(
            out.1,
            vec!["127.0.0.1/8".parse::<Ipv4Network>().expect("literal")]
        );
    }
}
