//! One module per CNI command; each takes the validated invocation and config.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::config::NetConf;
use crate::net::container::RouteSpec;
use crate::result::CniResult;
use crate::subnet_env::SubnetEnv;

/// Whether this network masquerades: the config decides, else the opposite of netd's setting.
/// Without a readable subnet file (DEL) we assume it might, so cleanup is attempted.
pub fn masq_enabled(conf: &NetConf, env: Option<&SubnetEnv>) -> bool {
    conf.ip_masq
        .unwrap_or_else(|| env.is_none_or(|e| !e.ipmasq))
}

/// IPv4 addresses of a result (from `prevResult` or IPAM).
pub fn v4_addresses(result: &CniResult) -> Vec<Ipv4Network> {
    result
        .ips
        .iter()
        .filter_map(|ip| match ip.address {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        })
        .collect()
}

/// The gateway the container routes through: the IPAM result's, else the bridge address.
pub fn gateway_of(result: &CniResult, env: &SubnetEnv) -> Ipv4Addr {
    result
        .ips
        .iter()
        .find_map(|ip| match ip.gateway {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        })
        .unwrap_or(env.gateway)
}

/// Container routes: a default route (or only the cluster network) via the gateway, plus any
/// IPv4 routes a delegated IPAM plugin returned.
pub fn container_routes(
    conf: &NetConf,
    env: &SubnetEnv,
    gw: Ipv4Addr,
    ipam: &CniResult,
) -> Vec<RouteSpec> {
    let main = if conf.default_route {
        Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).ok()
    } else {
        Some(env.network)
    };
    let mut routes: Vec<RouteSpec> = main.map(|dst| RouteSpec { dst, gw }).into_iter().collect();
    for r in &ipam.routes {
        if let IpNetwork::V4(dst) = r.dst {
            let gw = match r.gw {
                Some(IpAddr::V4(g)) => g,
                _ => gw,
            };
            let spec = RouteSpec { dst, gw };
            if !routes.contains(&spec) {
                routes.push(spec);
            }
        }
    }
    routes
}
