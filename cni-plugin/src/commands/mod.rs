//! One module per CNI command; each takes the validated invocation and config.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::NetConf;
use crate::masq::Scope;
use crate::net::container::RouteSpec;
use crate::result::CniResult;
use crate::subnet_env::SubnetEnv;

/// Whether this network masquerades: the config decides, else the opposite of netd's setting.
/// Without a readable subnet file (DEL) we assume it might, so cleanup is attempted.
pub fn masq_enabled(conf: &NetConf, env: Option<&SubnetEnv>) -> bool {
    conf.ip_masq
        .unwrap_or_else(|| env.is_none_or(|e| !e.ipmasq))
}

/// The masquerade scopes of a container: for its first address of each family the node has a
/// subnet of, that subnet (or the address's own prefix) leaving that family's cluster network.
pub fn masq_scopes(env: &SubnetEnv, addrs: &[IpNetwork]) -> Vec<Scope> {
    let mut out = Vec::new();
    if let (Some(a), Some(v4)) = (addrs.iter().find(|a| a.is_ipv4()), &env.ipv4) {
        out.push(Scope::of(
            *a,
            Some(IpNetwork::V4(v4.subnet)),
            IpNetwork::V4(v4.network),
        ));
    }
    if let (Some(a), Some(v6)) = (addrs.iter().find(|a| a.is_ipv6()), &env.ipv6) {
        out.push(Scope::of(
            *a,
            Some(IpNetwork::V6(v6.subnet)),
            IpNetwork::V6(v6.network),
        ));
    }
    out
}

/// The addresses of a result (from `prevResult` or IPAM), of both families.
pub fn addresses(result: &CniResult) -> Vec<IpNetwork> {
    result.ips.iter().map(|ip| ip.address).collect()
}

/// The gateways the container routes through, one per family it has an address of: the
/// IPAM result's for that family, else the bridge address of the node's subnet of it. A
/// family with neither (an IPv6 address from a delegate on an IPv4-only node) gets no routes.
pub fn gateways(result: &CniResult, env: &SubnetEnv) -> Vec<IpAddr> {
    let of_family = |v6: bool| {
        let has = result.ips.iter().any(|ip| ip.address.is_ipv6() == v6);
        let from_ipam = result
            .ips
            .iter()
            .filter_map(|ip| ip.gateway)
            .find(|g| g.is_ipv6() == v6);
        let from_env = match v6 {
            false => env.ipv4.map(|e| IpAddr::V4(e.gateway)),
            true => env.ipv6.map(|e| IpAddr::V6(e.gateway)),
        };
        if has { from_ipam.or(from_env) } else { None }
    };
    [of_family(false), of_family(true)]
        .into_iter()
        .flatten()
        .collect()
}

/// Container routes, per family with a gateway: a default route (or only the cluster network
/// of that family) via the gateway, plus any routes a delegated IPAM plugin returned.
pub fn container_routes(
    conf: &NetConf,
    env: &SubnetEnv,
    gateways: &[IpAddr],
    ipam: &CniResult,
) -> Vec<RouteSpec> {
    let mut routes: Vec<RouteSpec> = gateways
        .iter()
        .filter_map(|&gw| {
            let dst = match (conf.default_route, gw) {
                (true, IpAddr::V4(_)) => {
                    IpNetwork::V4(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).ok()?)
                }
                (true, IpAddr::V6(_)) => {
                    IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).ok()?)
                }
                (false, IpAddr::V4(_)) => IpNetwork::V4(env.ipv4?.network),
                (false, IpAddr::V6(_)) => IpNetwork::V6(env.ipv6?.network),
            };
            Some(RouteSpec { dst, gw })
        })
        .collect();
    for r in &ipam.routes {
        let gw = r.gw.filter(|g| g.is_ipv6() == r.dst.is_ipv6()).or_else(|| {
            gateways
                .iter()
                .copied()
                .find(|g| g.is_ipv6() == r.dst.is_ipv6())
        });
        if let Some(gw) = gw {
            let spec = RouteSpec { dst: r.dst, gw };
            if !routes.contains(&spec) {
                routes.push(spec);
            }
        }
    }
    routes
}
