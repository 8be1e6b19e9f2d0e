//! The overlay netd sets up on its host from the network config's backend: for VXLAN, the
//! `flannel.<VNI>` device on the underlay (MTU 50 below the underlay's, or below the configured
//! `Backend.MTU` as flannel does it), in a dual-stack network also `flannel-v6.<VNI>` over the
//! underlay's IPv6 address (MTU 70 below), and the record attributes that carry their VtepMACs;
//! for host-gw, direct routes through the underlay itself.

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
    /// The VXLAN device spec and device; `None` for host-gw.
    pub vxlan: Option<(VxlanSpec, VxlanDevice)>,
    /// The IPv6 VXLAN device (`flannel-v6.<VNI>`) of a dual-stack vxlan network.
    pub vxlan6: Option<(VxlanSpec, VxlanDevice)>,
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
            "interface {} has no global IPv6 address, which a dual-stack network \
             (EnableIPv6) needs",
            underlay.name
        ))
    })?;
    Ok(Some((local, public_ipv6.unwrap_or(local))))
}

/// Sets up the configured backend on `underlay`: the VXLAN devices (created or adopted), or
/// checks for host-gw that the public IPs are the underlay's own.
pub async fn set_up(
    h: &Handle,
    net: &NetworkConfig,
    underlay: &Underlay,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Overlay> {
    let v6 = ipv6_addresses(net, underlay, public_ipv6)?;
    match &net.backend {
        BackendConfig::Vxlan(v) => {
            let base = v.mtu.unwrap_or(underlay.mtu);
            let spec = VxlanSpec {
                vni: v.vni,
                port: v.port,
                learning: v.learning,
                gbp: v.gbp,
                local: IpAddr::V4(underlay.addr),
                underlay_index: underlay.index,
                mtu: base.saturating_sub(netconf::VXLAN_OVERHEAD),
            };
            let dev = device::ensure_vxlan(h, &spec).await?;
            tracing::info!(device = %spec.name(), mac = %dev.mac, mtu = spec.mtu, "VXLAN device ready");
            let mut attrs = LeaseAttrs {
                public_ip,
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: v.vni,
                    vtep_mac: dev.mac,
                }),
                backend_v6_data: None,
            };
            let mut mtu = spec.mtu;
            let vxlan6 = match v6 {
                None => None,
                Some((local6, public6)) => {
                    // The IPv6 outer header is 20 bytes longer: 70, not flannel's 50 (its
                    // issue #1781). Containers get the smaller MTU of the two devices.
                    let spec6 = VxlanSpec {
                        local: IpAddr::V6(local6),
                        mtu: base.saturating_sub(netconf::VXLAN_OVERHEAD_V6),
                        ..spec.clone()
                    };
                    let dev6 = device::ensure_vxlan(h, &spec6).await?;
                    tracing::info!(device = %spec6.name(), mac = %dev6.mac, mtu = spec6.mtu, "VXLAN device ready");
                    attrs.public_ipv6 = Some(public6);
                    attrs.backend_v6_data = Some(VxlanData {
                        vni: v.vni,
                        vtep_mac: dev6.mac,
                    });
                    mtu = mtu.min(spec6.mtu);
                    Some((spec6, dev6))
                }
            };
            Ok(Overlay {
                mode: RoutingMode::Vxlan {
                    vni: v.vni,
                    direct: v.direct_routing,
                    segment: underlay.segment,
                    segment6: underlay
                        .v6
                        .and_then(|n| ipnetwork::Ipv6Network::new(n.network(), n.prefix()).ok()),
                },
                attrs,
                mtu,
                vxlan: Some((spec, dev)),
                vxlan6,
            })
        }
        BackendConfig::HostGw => {
            if public_ip != underlay.addr {
                return Err(Error::PublicIpNotLocal {
                    ip: IpAddr::V4(public_ip),
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
                attrs: LeaseAttrs {
                    public_ip,
                    public_ipv6: v6.map(|(_, p)| p),
                    backend_type: "host-gw".into(),
                    backend_data: None,
                    backend_v6_data: None,
                },
                mtu: underlay.mtu,
                vxlan: None,
                vxlan6: None,
            })
        }
    }
}
