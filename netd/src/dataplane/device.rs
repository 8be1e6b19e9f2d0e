//! Devices: finding the underlay interface and creating (or reusing) the VXLAN device.
//!
//! [`ensure_vxlan`] is idempotent: a compatible `flannel.<VNI>` (or, for IPv6,
//! `flannel-v6.<VNI>` over the underlay's IPv6 address) is reused as it is, so its MAC
//! (published as VtepMAC) survives daemon restarts; an incompatible one is replaced.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::error::{Error, Result};
use crate::subnet::MacAddr;

/// The interface peers are reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    /// The interface's IPv4 address with its connected network (peers inside it are on the
    /// same L2 segment): the local address of `flannel.<VNI>` and, by default, the public IP.
    /// `None` on an interface without IPv4, which only an IPv6-only network can use.
    pub v4: Option<Ipv4Network>,
    /// The interface's first global IPv6 address and its connected network, if it has one.
    pub v6: Option<Ipv6Network>,
    pub mtu: u32,
}

/// The VXLAN device as netd wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub port: u16,
    pub learning: bool,
    /// The Group Based Policy extension (flannel's `GBP`).
    pub gbp: bool,
    /// The local (underlay) address: IPv4 for `flannel.<VNI>`, IPv6 for `flannel-v6.<VNI>`.
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mtu: u32,
}

impl VxlanSpec {
    /// Device name, flannel's: `flannel.<VNI>`, or `flannel-v6.<VNI>` over an IPv6 underlay.
    pub fn name(&self) -> String {
        if self.local.is_ipv6() {
            format!("flannel-v6.{}", self.vni)
        } else {
            format!("flannel.{}", self.vni)
        }
    }
}

/// The VXLAN device as it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanDevice {
    pub index: u32,
    pub mac: MacAddr,
}

/// Looks a link up by name; `None` when it does not exist.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    hostnet::netlink::link_by_name(h, name)
        .await
        .map_err(|e| Error::netlink(format!("get link {name}"), e))
}

async fn link_by_index(h: &Handle, index: u32) -> Result<LinkMessage> {
    h.link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(|e| Error::netlink(format!("get link #{index}"), e))?
        .ok_or_else(|| Error::Interface(format!("link #{index} vanished")))
}

fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mtu(m: &LinkMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(1500)
}

fn link_mac(m: &LinkMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut out = [0u8; 6];
            out.copy_from_slice(b);
            Some(MacAddr(out))
        }
        _ => None,
    })
}

/// IPv4 addresses (with prefix) configured on a link.
pub async fn ipv4_addresses(h: &Handle, index: u32) -> Result<Vec<Ipv4Network>> {
    hostnet::netlink::ipv4_addresses(h, index)
        .await
        .map_err(|e| Error::netlink("list addresses", e))
}

/// Finds the underlay: `iface` may be an interface name or one of its IPv4 or IPv6 addresses;
/// without it, the interface of the IPv4 default route is used.
pub async fn find_underlay(h: &Handle, iface: Option<&str>) -> Result<Underlay> {
    find_underlay_for(h, iface, true).await
}

/// [`find_underlay`] for a network that needs IPv4 (`need_v4`) or not (IPv6-only): an
/// interface without an IPv4 address is refused when it is needed, and without `iface` an
/// IPv6-only network takes the interface of the IPv6 default route (of the IPv4 one when
/// there is none).
async fn find_underlay_for(h: &Handle, iface: Option<&str>, need_v4: bool) -> Result<Underlay> {
    let wanted = iface.and_then(|s| s.parse::<IpAddr>().ok());
    let link = match (iface, wanted) {
        (Some(_), Some(ip)) => link_with_address(h, ip).await?,
        (Some(spec), None) => link_by_name(h, spec)
            .await?
            .ok_or_else(|| Error::Interface(format!("interface {spec} not found")))?,
        (None, _) => {
            let v4 = default_route_oif(h).await?;
            let index = if need_v4 {
                v4
            } else {
                default_route6_oif(h).await?.or(v4)
            };
            let index = index.ok_or_else(|| {
                Error::Interface(
                    if need_v4 {
                        "no IPv4 default route to pick an interface from; pass --iface"
                    } else {
                        "no IPv6 (or IPv4) default route to pick an interface from; pass --iface"
                    }
                    .into(),
                )
            })?;
            link_by_index(h, index).await?
        }
    };
    let index = link.header.index;
    let name = link_name(&link);
    let v4 = ipv4_addresses(h, index)
        .await?
        .into_iter()
        .find(|n| wanted.is_none_or(|w| !w.is_ipv4() || IpAddr::V4(n.ip()) == w));
    let v6 = hostnet::netlink::ipv6_addresses(h, index)
        .await
        .map_err(|e| Error::netlink("list IPv6 addresses", e))?
        .into_iter()
        .find(|n| wanted.is_none_or(|w| !w.is_ipv6() || IpAddr::V6(n.ip()) == w));
    if need_v4 && v4.is_none() {
        return Err(Error::Interface(format!(
            "interface {name} has no IPv4 address"
        )));
    }
    if v4.is_none() && v6.is_none() {
        return Err(Error::Interface(format!(
            "interface {name} has no IPv4 or global IPv6 address"
        )));
    }
    Ok(Underlay {
        name,
        index,
        v4,
        v6,
        mtu: link_mtu(&link),
    })
}

/// How the underlay is chosen, as flanneld's flags choose it: each `--iface` in order, then each
/// `--iface-regex` (against interface names and IPv4 addresses), then `--iface-can-reach`;
/// with none of them, the interface of the default route.
#[derive(Debug, Clone, Default)]
pub struct IfaceChoice {
    pub ifaces: Vec<String>,
    pub regexes: Vec<regex_lite::Regex>,
    pub can_reach: Option<Ipv4Addr>,
}

/// Finds the underlay per `choice`; the error names every candidate tried. `need_v4`: the
/// network has IPv4, so the underlay needs an IPv4 address (an IPv6-only network's does not).
pub async fn choose_underlay(h: &Handle, choice: &IfaceChoice, need_v4: bool) -> Result<Underlay> {
    if choice.ifaces.is_empty() && choice.regexes.is_empty() && choice.can_reach.is_none() {
        return find_underlay_for(h, None, need_v4).await;
    }
    let mut tried = Vec::new();
    for spec in &choice.ifaces {
        match find_underlay_for(h, Some(spec), need_v4).await {
            Ok(u) => return Ok(u),
            Err(e) => tried.push(e.to_string()),
        }
    }
    if !choice.regexes.is_empty() {
        let links = all_links(h).await?;
        for re in &choice.regexes {
            for l in &links {
                let name = link_name(l);
                if re.is_match(&name) {
                    match find_underlay_for(h, Some(&name), need_v4).await {
                        Ok(u) => return Ok(u),
                        Err(e) => tried.push(e.to_string()),
                    }
                    continue;
                }
                let v6 = hostnet::netlink::ipv6_addresses(h, l.header.index)
                    .await
                    .map_err(|e| Error::netlink("list IPv6 addresses", e))?;
                let addrs = ipv4_addresses(h, l.header.index)
                    .await?
                    .into_iter()
                    .map(|n| n.ip().to_string())
                    .chain(v6.into_iter().map(|n| n.ip().to_string()));
                for addr in addrs {
                    if re.is_match(&addr) {
                        match find_underlay_for(h, Some(&addr), need_v4).await {
                            Ok(u) => return Ok(u),
                            Err(e) => tried.push(e.to_string()),
                        }
                    }
                }
            }
            tried.push(format!("no interface name or IP address matches {re}"));
        }
    }
    if let Some(target) = choice.can_reach {
        match route_oif_to(h, target).await? {
            Some(index) => {
                let name = link_name(&link_by_index(h, index).await?);
                return find_underlay_for(h, Some(&name), need_v4).await;
            }
            None => tried.push(format!("no route reaches {target}")),
        }
    }
    Err(Error::Interface(format!(
        "no usable interface: {}",
        tried.join("; ")
    )))
}

/// The interface the main table sends `target` through (longest matching prefix).
async fn route_oif_to(h: &Handle, target: Ipv4Addr) -> Result<Option<u32>> {
    let routes = hostnet::netlink::main_routes_v4(h)
        .await
        .map_err(|e| Error::netlink("list routes", e))?;
    Ok(routes
        .iter()
        .filter(|r| {
            Ipv4Network::new(r.dst, r.prefix).is_ok_and(|n| n.contains(target)) && r.oif.is_some()
        })
        .max_by_key(|r| r.prefix)
        .and_then(|r| r.oif))
}

/// Every link of the namespace.
async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("list links", e))
}

async fn link_with_address(h: &Handle, ip: IpAddr) -> Result<LinkMessage> {
    for l in all_links(h).await? {
        let found = match ip {
            IpAddr::V4(ip) => ipv4_addresses(h, l.header.index)
                .await?
                .iter()
                .any(|n| n.ip() == ip),
            IpAddr::V6(ip) => hostnet::netlink::ipv6_addresses(h, l.header.index)
                .await
                .map_err(|e| Error::netlink("list IPv6 addresses", e))?
                .iter()
                .any(|n| n.ip() == ip),
        };
        if found {
            return Ok(l);
        }
    }
    Err(Error::Interface(format!("no interface has address {ip}")))
}

async fn default_route_oif(h: &Handle) -> Result<Option<u32>> {
    let routes = hostnet::netlink::main_routes_v4(h)
        .await
        .map_err(|e| Error::netlink("list routes", e))?;
    Ok(routes.iter().find(|r| r.prefix == 0).and_then(|r| r.oif))
}

async fn default_route6_oif(h: &Handle) -> Result<Option<u32>> {
    let routes = hostnet::netlink::main_routes_v6(h)
        .await
        .map_err(|e| Error::netlink("list IPv6 routes", e))?;
    Ok(routes.iter().find(|r| r.prefix == 0).and_then(|r| r.oif))
}

/// True when an existing link matches the spec closely enough to be reused.
fn compatible(m: &LinkMessage, spec: &VxlanSpec) -> bool {
    let mut kind_ok = false;
    let mut data: &[InfoVxlan] = &[];
    for a in &m.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => kind_ok = true,
                    LinkInfo::Data(InfoData::Vxlan(d)) => data = d,
                    _ => {}
                }
            }
        }
    }
    let has = |want: &InfoVxlan| data.iter().any(|d| d == want);
    kind_ok
        && has(&InfoVxlan::Id(spec.vni))
        && has(&InfoVxlan::Link(spec.underlay_index))
        && match spec.local {
            IpAddr::V4(a) => has(&InfoVxlan::Local(a)),
            IpAddr::V6(a) => has(&InfoVxlan::Local6(a)),
        }
        && has(&InfoVxlan::Port(spec.port))
        && has(&InfoVxlan::Learning(spec.learning))
        && has(&InfoVxlan::Gbp) == spec.gbp
}

/// Creates `flannel.<VNI>` or reuses a compatible one; sets MTU and brings it up.
pub async fn ensure_vxlan(h: &Handle, spec: &VxlanSpec) -> Result<VxlanDevice> {
    let name = spec.name();
    if let Some(existing) = link_by_name(h, &name).await? {
        if compatible(&existing, spec) {
            let index = existing.header.index;
            h.link()
                .set(LinkUnspec::new_with_index(index).mtu(spec.mtu).up().build())
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("set {name} up"), e))?;
            let mac = link_mac(&existing)
                .ok_or_else(|| Error::Kernel(format!("{name} has no MAC address")))?;
            tracing::debug!(device = %name, %mac, "reusing existing VXLAN device");
            return Ok(VxlanDevice { index, mac });
        }
        tracing::warn!(device = %name, "existing device is incompatible; recreating it");
        h.link()
            .del(existing.header.index)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("delete {name}"), e))?;
    }
    let mac = MacAddr::random();
    let mut vxlan = LinkVxlan::new(&name, spec.vni);
    if spec.gbp {
        vxlan = vxlan.gbp();
    }
    let vxlan = vxlan.dev(spec.underlay_index);
    let vxlan = match spec.local {
        // No outer UDP checksum over IPv4, as flannel's devices: the inner packet carries its
        // own, and a checksum over each encapsulated segment costs CPU on NICs without tunnel
        // offloads. Over IPv6 the checksum stays on (RFC 8200 requires it; flannel's peers
        // drop zero-checksum packets).
        IpAddr::V4(a) => vxlan.local(a).udp_csum(false),
        IpAddr::V6(a) => vxlan.local6(a),
    };
    let msg = vxlan
        .port(spec.port)
        .learning(spec.learning)
        .mtu(spec.mtu)
        .address(mac.0.to_vec())
        .up()
        .build();
    match h.link().add(msg).execute().await {
        Ok(()) => {}
        // Lost a race with another creator: fall through and read what is there.
        Err(e) if hostnet::netlink::is_exists(&e) => {}
        Err(e) => return Err(Error::netlink(format!("create {name}"), e)),
    }
    let link = link_by_name(h, &name)
        .await?
        .ok_or_else(|| Error::Kernel(format!("{name} missing right after creation")))?;
    let mac = link_mac(&link).ok_or_else(|| Error::Kernel(format!("{name} has no MAC address")))?;
    disable_accept_ra(&name);
    tracing::info!(device = %name, %mac, mtu = spec.mtu, "created VXLAN device");
    Ok(VxlanDevice {
        index: link.header.index,
        mac,
    })
}

/// Routes `subnet` (this host's own) to a blackhole in the main table, as flannel's
/// `--ip-blackhole-route` does for set-ups without a bridge holding the subnet (per-container
/// routes, as Canal's): traffic to addresses no container holds is dropped here instead of
/// following the default route. A route for the subnet that is already there (the bridge's
/// connected route, or the blackhole itself) is left as it is. Idempotent; either family.
pub async fn ensure_blackhole(h: &Handle, subnet: IpNetwork) -> Result<()> {
    let blackhole = rtnetlink::packet_route::route::RouteType::BlackHole;
    let msg = match subnet {
        IpNetwork::V4(n) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .kind(blackhole)
            .build(),
        IpNetwork::V6(n) => rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .kind(blackhole)
            .build(),
    };
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if hostnet::netlink::is_exists(&e) => Ok(()),
        Err(e) => Err(Error::netlink(format!("route add blackhole {subnet}"), e)),
    }
}

/// The device must never autoconfigure IPv6 from router adverts (flannel does the same).
fn disable_accept_ra(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
    if std::path::Path::new(&path).exists()
        && let Err(e) = std::fs::write(&path, "0")
    {
        tracing::debug!(%path, error = %e, "could not disable accept_ra");
    }
}

/// Puts `addr/32` (`addr/128` for IPv6) on the device and removes any other address of that
/// family inside `network` (a subnet this host held before).
pub async fn ensure_vtep_address(
    h: &Handle,
    index: u32,
    addr: IpAddr,
    network: IpNetwork,
) -> Result<()> {
    let full = if addr.is_ipv6() { 128 } else { 32 };
    let held: Vec<IpNetwork> = match addr {
        IpAddr::V4(_) => ipv4_addresses(h, index)
            .await?
            .into_iter()
            .map(IpNetwork::V4)
            .collect(),
        IpAddr::V6(_) => hostnet::netlink::ipv6_addresses(h, index)
            .await
            .map_err(|e| Error::netlink("list IPv6 addresses", e))?
            .into_iter()
            .map(IpNetwork::V6)
            .collect(),
    };
    let mut present = false;
    for n in held {
        if n.ip() == addr && n.prefix() == full {
            present = true;
        } else if network.contains(n.ip()) {
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(n.ip())
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink("list addresses", e))?;
            for m in msgs {
                h.address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(format!("delete address {n}"), e))?;
            }
        }
    }
    if !present {
        let mut req = h.address().add(index, addr, full).replace();
        if addr.is_ipv6() {
            // No duplicate address detection: the address is this host's alone (it is its
            // subnet's network address), and a tentative address could not be used as a source.
            req.message_mut().header.flags |=
                rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .map_err(|e| Error::netlink(format!("add address {addr}/{full}"), e))?;
    }
    Ok(())
}
