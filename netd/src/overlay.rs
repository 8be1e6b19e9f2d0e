//! The overlay netd sets up on its host from the network config's backend: for VXLAN, the
//! `flannel.<VNI>` device on the underlay (MTU 50 below the underlay's, or below the configured
//! `Backend.MTU` as flannel does it) and the record attributes that
//! carry its VtepMAC; for host-gw, direct routes through the underlay itself.

use rtnetlink::Handle;

use crate::dataplane::RoutingMode;
use crate::dataplane::device::{self, Underlay, VxlanDevice, VxlanSpec};
use crate::error::{Error, Result};
use crate::netconf::{self, BackendConfig, NetworkConfig};
use crate::subnet::{LeaseAttrs, VxlanData};

/// The overlay as set up on this host: how peers are routed, what this host's record says,
/// the MTU containers get, and the VXLAN device (none for host-gw).
pub struct Overlay {
    pub mode: RoutingMode,
    pub attrs: LeaseAttrs,
    pub mtu: u32,
    /// The VXLAN device spec and device; `None` for host-gw.
    pub vxlan: Option<(VxlanSpec, VxlanDevice)>,
}

/// Sets up the configured backend on `underlay`: the VXLAN device (created or adopted), or
/// checks for host-gw that the public IP is the underlay's own.
pub async fn set_up(
    h: &Handle,
    net: &NetworkConfig,
    underlay: &Underlay,
    public_ip: std::net::Ipv4Addr,
) -> Result<Overlay> {
    match &net.backend {
        BackendConfig::Vxlan(v) => {
            let spec = VxlanSpec {
                vni: v.vni,
                port: v.port,
                learning: v.learning,
                gbp: v.gbp,
                local: underlay.addr,
                underlay_index: underlay.index,
                mtu: v
                    .mtu
                    .unwrap_or(underlay.mtu)
                    .saturating_sub(netconf::VXLAN_OVERHEAD),
            };
            let dev = device::ensure_vxlan(h, &spec).await?;
            tracing::info!(device = %spec.name(), mac = %dev.mac, mtu = spec.mtu, "VXLAN device ready");
            Ok(Overlay {
                mode: RoutingMode::Vxlan {
                    vni: v.vni,
                    direct: v.direct_routing,
                    segment: underlay.segment,
                },
                attrs: LeaseAttrs {
                    public_ip,
                    public_ipv6: None,
                    backend_type: "vxlan".into(),
                    backend_data: Some(VxlanData {
                        vni: v.vni,
                        vtep_mac: dev.mac,
                    }),
                },
                mtu: spec.mtu,
                vxlan: Some((spec, dev)),
            })
        }
        BackendConfig::HostGw => {
            if public_ip != underlay.addr {
                return Err(Error::PublicIpNotLocal {
                    ip: public_ip,
                    iface: underlay.name.clone(),
                });
            }
            Ok(Overlay {
                mode: RoutingMode::HostGw,
                attrs: LeaseAttrs {
                    public_ip,
                    public_ipv6: None,
                    backend_type: "host-gw".into(),
                    backend_data: None,
                },
                mtu: underlay.mtu,
                vxlan: None,
            })
        }
    }
}
