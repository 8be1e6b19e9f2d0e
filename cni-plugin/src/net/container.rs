//! Container side of an attachment: configuring the interface the veth peer became, and
//! inspecting it for CHECK.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rtnetlink::{Handle, LinkUnspec};

use super::links::{self, Link};
use crate::error::{CniError, Result};

/// A route to install in the container: `dst via gw dev <ifname>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Network,
    pub gw: Ipv4Addr,
}

/// Bring `ifname` up with `addrs` and `routes`. Returns the link (for its MAC).
pub async fn configure(
    h: &Handle,
    ifname: &str,
    addrs: &[Ipv4Network],
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
        links::add_route(h, r.dst.network(), r.dst.prefix(), r.gw, link.index).await?;
    }
    Ok(link)
}

/// Everything wrong with `ifname` compared with what ADD configured; empty when all is well.
pub async fn problems(
    h: &Handle,
    ifname: &str,
    addrs: &[Ipv4Network],
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
        if !present.contains(&(a.ip(), a.prefix())) {
            out.push(format!("address {a} missing on {ifname}"));
        }
    }
    let table = links::routes(h).await?;
    for r in routes {
        let found = table.iter().any(|t| {
            t.dst == r.dst.network()
                && t.prefix == r.dst.prefix()
                && t.gw == Some(r.gw)
                && t.oif == Some(link.index)
        });
        if !found {
            out.push(format!("route {} via {} dev {ifname} missing", r.dst, r.gw));
        }
    }
    Ok(out)
}
