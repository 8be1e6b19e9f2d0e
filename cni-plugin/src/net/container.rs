//! Container side of an attachment: configuring the interface the veth peer became (its
//! IPv4 address, and its IPv6 one on a dual-stack node), and inspecting it for CHECK.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rtnetlink::{Handle, LinkUnspec};

use super::links::{self, Link};
use super::netns::Netns;
use crate::error::{CniError, Result};

/// A route to install in the container: `dst via gw dev <ifname>` (both of one family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: IpAddr,
}

/// Turns duplicate address detection off on the (still down) interface `ifname` of `netns`
/// before it gets an IPv6 address, as the reference bridge plugin does: with hairpin mode the
/// bridge echoes the interface's own neighbour solicitations back to it, so DAD would fail
/// for its link-local address (its other addresses are added with `IFA_F_NODAD`).
pub fn disable_dad(netns: &Netns, ifname: &str) -> Result<()> {
    netns.write_sysctls(&[(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0")])
}

/// Bring `ifname` up with `addrs` and `routes`. Returns the link (for its MAC).
pub async fn configure(
    h: &Handle,
    ifname: &str,
    addrs: &[IpNetwork],
    routes: &[RouteSpec],
) -> Result<Link> {
    let link = links::get_by_name(h, ifname).await?.ok_or_else(|| {
        CniError::kernel(
            format!("container interface {ifname}"),
            "missing after creation",
        )
    })?;
    for a in addrs {
        links::add_address(h, link.index, a.ip(), a.prefix()).await?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("set {ifname} up"), e))?;
    for r in routes {
        links::add_route(h, r.dst, r.gw, link.index).await?;
    }
    Ok(link)
}

/// Everything wrong with `ifname` compared with what ADD configured; empty when all is well.
pub async fn problems(
    h: &Handle,
    ifname: &str,
    addrs: &[IpNetwork],
    routes: &[RouteSpec],
    mtu: u32,
) -> Result<Vec<String>> {
    let Some(link) = links::get_by_name(h, ifname).await? else {
        return Ok(vec![format!("interface {ifname} missing in the container")]);
    };
    let mut out = Vec::new();
    if !link.up {
        out.push(format!("interface {ifname} is down"));
    }
    if link.mtu != mtu {
        out.push(format!(
            "interface {ifname} has MTU {} instead of {mtu}",
            link.mtu
        ));
    }
    let present = links::addresses(h, link.index).await?;
    for a in addrs {
        if !present
            .iter()
            .any(|p| p.ip() == a.ip() && p.prefix() == a.prefix())
        {
            out.push(format!("address {a} missing on {ifname}"));
        }
    }
    // The main table as (destination, prefix, gateway, device), each family's read only when
    // a route of it is expected.
    let mut table: Vec<(IpAddr, u8, Option<IpAddr>, Option<u32>)> = Vec::new();
    if routes.iter().any(|r| r.dst.is_ipv4()) {
        let v4 = links::routes(h).await?;
        table.extend(
            v4.iter()
                .map(|t| (IpAddr::V4(t.dst), t.prefix, t.gw.map(IpAddr::V4), t.oif)),
        );
    }
    if routes.iter().any(|r| r.dst.is_ipv6()) {
        let v6 = links::routes6(h).await?;
        table.extend(
            v6.iter()
                .map(|t| (IpAddr::V6(t.dst), t.prefix, t.gw.map(IpAddr::V6), t.oif)),
        );
    }
    for r in routes {
        let found = table.iter().any(|&(dst, prefix, gw, oif)| {
            dst == r.dst.network()
                && prefix == r.dst.prefix()
                && gw == Some(r.gw)
                && oif == Some(link.index)
        });
        if !found {
            out.push(format!("route {} via {} dev {ifname} missing", r.dst, r.gw));
        }
    }
    Ok(out)
}
