//! The overlay netd sets up on its host from the network config's backend: for VXLAN, the
//! `flannel.<VNI>` device on the underlay (MTU 50 below the underlay's, or below the configured
//! `Backend.MTU` as flannel does it) when the network has IPv4, `flannel-v6.<VNI>` over the
//! underlay's IPv6 address (MTU 70 below) when it has IPv6 (an IPv6-only network has only this
//! one, as flanneld), and the record attributes that carry their VtepMACs; for host-gw, direct
//! routes through the underlay itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::Handle;

use crate::dataplane::RoutingMode;
use crate::dataplane::device::{self, Underlay, VxlanDevice, VxlanSpec};
use crate::error::{Error, Result};
use crate::netconf::{self, BackendConfig, NetworkConfig};
use crate::subnet::{LeaseAttrs, VxlanData};

/// The overlay as set up on this host: how peers are routed, what this host's record says,
/// the MTU containers get, and the VXLAN devices (none for host-gw).
pub struct Overlay {
    pub mode: RoutingMode,
    pub attrs: LeaseAttrs,
    pub mtu: u32,
    /// The VXLAN device spec and device; `None` for host-gw and in an IPv6-only network.
    pub vxlan: Option<(VxlanSpec, VxlanDevice)>,
    /// The IPv6 VXLAN device (`flannel-v6.<VNI>`) of a vxlan network with IPv6.
    pub vxlan6: Option<(VxlanSpec, VxlanDevice)>,
}

/// This host's IPv4 underlay address and public IP, when the network has IPv4.
fn ipv4_addresses(
    net: &NetworkConfig,
    underlay: &Underlay,
    public_ip: Option<Ipv4Addr>,
) -> Result<Option<(Ipv4Addr, Ipv4Addr)>> {
    if net.ipv4.is_none() {
        return Ok(None);
    }
    let local = underlay.v4.map(|n| n.ip()).ok_or_else(|| {
        Error::Interface(format!(
            "interface {} has no IPv4 address, which a network with IPv4 (Network) needs",
            underlay.name
        ))
    })?;
    Ok(Some((local, public_ip.unwrap_or(local))))
}

/// This host's IPv6 underlay address and public IPv6 address, when the network has IPv6.
fn ipv6_addresses(
    net: &NetworkConfig,
    underlay: &Underlay,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Option<(Ipv6Addr, Ipv6Addr)>> {
    if net.ipv6.is_none() {
        return Ok(None);
    }
    let local = underlay.v6.map(|n| n.ip()).ok_or_else(|| {
        Error::Interface(format!(
            "interface {} has no global IPv6 address, which a network with IPv6 \
             (EnableIPv6) needs",
            underlay.name
        ))
    })?;
    Ok(Some((local, public_ipv6.unwrap_or(local))))
}

/// Sets up the configured backend on `underlay`: the VXLAN devices (created or adopted), one
/// per address family of the network, or checks for host-gw that the public IPs are the
/// underlay's own. `public_ip` and `public_ipv6` default to the underlay's addresses. In an
/// IPv6-only network the record's PublicIP is 0.0.0.0 and it has no BackendData, as
/// flanneld's vxlan backend writes it without an IPv4 device.
pub async fn set_up(
    h: &Handle,
    net: &NetworkConfig,
    underlay: &Underlay,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Overlay> {
    let v4 = ipv4_addresses(net, underlay, public_ip)?;
    let v6 = ipv6_addresses(net, underlay, public_ipv6)?;
    let mut attrs = LeaseAttrs {
        public_ip: v4.map_or(Ipv4Addr::UNSPECIFIED, |(_, p)| p),
        public_ipv6: v6.map(|(_, p)| p),
        backend_type: net.backend.type_name().into(),
        backend_data: None,
        backend_v6_data: None,
    };
    match &net.backend {
        BackendConfig::Vxlan(v) => {
            let base = v.mtu.unwrap_or(underlay.mtu);
            let spec = |local: IpAddr, overhead: u32| VxlanSpec {
                vni: v.vni,
                port: v.port,
                learning: v.learning,
                gbp: v.gbp,
                local,
                underlay_index: underlay.index,
                mtu: base.saturating_sub(overhead),
            };
            let vxlan = match v4 {
                None => None,
                Some((local4, _)) => {
                    let spec4 = spec(IpAddr::V4(local4), netconf::VXLAN_OVERHEAD);
                    let dev = device::ensure_vxlan(h, &spec4).await?;
                    tracing::info!(device = %spec4.name(), mac = %dev.mac, mtu = spec4.mtu, "VXLAN device ready");
                    attrs.backend_data = Some(VxlanData {
                        vni: v.vni,
                        vtep_mac: dev.mac,
                    });
                    Some((spec4, dev))
                }
            };
            let vxlan6 = match v6 {
                None => None,
                Some((local6, _)) => {
                    // The IPv6 outer header is 20 bytes longer: 70, not flannel's 50 (its
                    // issue #1781).
                    let spec6 = spec(IpAddr::V6(local6), netconf::VXLAN_OVERHEAD_V6);
                    let dev6 = device::ensure_vxlan(h, &spec6).await?;
                    tracing::info!(device = %spec6.name(), mac = %dev6.mac, mtu = spec6.mtu, "VXLAN device ready");
                    attrs.backend_v6_data = Some(VxlanData {
                        vni: v.vni,
                        vtep_mac: dev6.mac,
                    });
                    Some((spec6, dev6))
                }
            };
            // Containers get the smaller MTU of the devices.
            let mtu = [&vxlan, &vxlan6]
                .into_iter()
                .flatten()
                .map(|(s, _)| s.mtu)
                .min()
                .unwrap_or(base.saturating_sub(netconf::VXLAN_OVERHEAD));
            Ok(Overlay {
                mode: RoutingMode::Vxlan {
                    vni: v.vni,
                    direct: v.direct_routing,
                    segment: underlay
                        .v4
                        .and_then(|n| ipnetwork::Ipv4Network::new(n.network(), n.prefix()).ok()),
                    segment6: underlay
                        .v6
                        .and_then(|n| ipnetwork::Ipv6Network::new(n.network(), n.prefix()).ok()),
                },
                attrs,
                mtu,
                vxlan,
                vxlan6,
            })
        }
        BackendConfig::HostGw => {
            if let Some((local4, public4)) = v4
                && public4 != local4
            {
                return Err(Error::PublicIpNotLocal {
                    ip: IpAddr::V4(public4),
                    iface: underlay.name.clone(),
                });
            }
            if let Some((local6, public6)) = v6
                && public6 != local6
            {
                return Err(Error::PublicIpNotLocal {
                    ip: IpAddr::V6(public6),
                    iface: underlay.name.clone(),
                });
            }
            Ok(Overlay {
                mode: RoutingMode::HostGw,
                attrs,
                mtu: underlay.mtu,
                vxlan: None,
                vxlan6: None,
            })
        }
    }
}
