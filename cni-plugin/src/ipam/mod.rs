//! Address management: the built-in host-local-compatible store, or a delegated IPAM plugin.
//! A dual-stack node (a subnet file with `FLANNEL_IPV6_*`) gives every container an IPv4 and
//! an IPv6 address, each from its node subnet.
//!
//! [`Ipam`] hides which one is in use from the commands.

pub mod delegate;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::config::NetConf;
use crate::env::{Command, Invocation, cni_arg};
use crate::error::{CniError, Result};
use crate::result::{CniResult, IpConfig};
use crate::subnet_env::SubnetEnv;
use store::{Family, Range, Store};

/// The address source of one network config.
pub enum Ipam<'a> {
    Builtin { conf: &'a NetConf },
    Delegate { conf: &'a NetConf, plugin: String },
}

/// The node's ranges, in host-local's order (flannel's `ranges` for it): IPv4 (range 0),
/// then IPv6 (range 1 on a dual-stack node, range 0 on an IPv6-only one).
pub fn ranges(env: &SubnetEnv) -> Vec<Range> {
    let v4 = env
        .ipv4
        .map(|v4| (IpNetwork::V4(v4.subnet), IpAddr::V4(v4.gateway)));
    let v6 = env
        .ipv6
        .map(|v6| (IpNetwork::V6(v6.subnet), IpAddr::V6(v6.gateway)));
    [v4, v6]
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, (subnet, gateway))| Range {
            subnet,
            gateway,
            index,
        })
        .collect()
}

/// The address families a node's containers get.
pub fn families(env: &SubnetEnv) -> Vec<Family> {
    ranges(env).iter().map(|r| Family::of(&r.gateway)).collect()
}

/// `CNI_ARGS` `IP=`: the addresses asked for, at most one per family, comma-separated as
/// host-local takes them (`IP=10.244.3.7,fd00:10:244:3::7`).
fn requested(args: &str) -> Result<Vec<IpAddr>> {
    let Some(value) = cni_arg(args, "IP") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for item in value.split(',').map(str::trim) {
        let ip = item.parse::<IpAddr>().map_err(|_| CniError::BadEnv {
            var: "CNI_ARGS",
            reason: format!("IP={value}: {item:?} is not an IP address"),
        })?;
        if out.iter().any(|o| Family::of(o) == Family::of(&ip)) {
            return Err(CniError::BadEnv {
                var: "CNI_ARGS",
                reason: format!("IP={value} asks for two addresses of one family"),
            });
        }
        out.push(ip);
    }
    Ok(out)
}

impl<'a> Ipam<'a> {
    pub fn for_conf(conf: &'a NetConf) -> Ipam<'a> {
        match &conf.ipam_plugin {
            Some(p) => Ipam::Delegate {
                conf,
                plugin: p.clone(),
            },
            None => Ipam::Builtin { conf },
        }
    }

    /// Allocate the container's address(es). The result has no interfaces.
    pub fn add(&self, inv: &Invocation, env: &SubnetEnv) -> Result<CniResult> {
        match self {
            Ipam::Builtin { conf } => {
                let mut asked = requested(&inv.args)?;
                let ranges = ranges(env);
                let wants: Vec<(Range, Option<IpAddr>)> = ranges
                    .iter()
                    .map(|r| {
                        let pos = asked
                            .iter()
                            .position(|ip| Family::of(ip) == Family::of(&r.gateway));
                        (*r, pos.map(|p| asked.remove(p)))
                    })
                    .collect();
                if let Some(ip) = asked.first() {
                    return Err(CniError::InvalidConfig(format!(
                        "requested address {ip} is of a family the subnet file {} has no \
                         subnet of",
                        conf.subnet_file
                    )));
                }
                let store = Store::open(&conf.network_dir())?;
                let ips = store.allocate_each(&wants, &inv.container_id, &inv.ifname)?;
                let ips = ips
                    .iter()
                    .zip(&ranges)
                    .map(|(ip, range)| {
                        let address = IpNetwork::new(*ip, range.subnet.prefix())
                            .map_err(|e| CniError::InvalidConfig(e.to_string()))?;
                        Ok(IpConfig {
                            address,
                            gateway: Some(range.gateway),
                            interface: None,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(CniResult {
                    ips,
                    ..CniResult::default()
                })
            }
            Ipam::Delegate { conf, plugin } => {
                let config = delegate::delegate_config(conf, Some(env));
                delegate::run(plugin, Command::Add, inv, &config)?.ok_or_else(|| CniError::Decode {
                    what: "IPAM plugin result",
                    reason: "empty".into(),
                })
            }
        }
    }

    /// Release the container's addresses; idempotent. `hints` are addresses it probably holds.
    pub fn del(&self, inv: &Invocation, env: Option<&SubnetEnv>, hints: &[IpAddr]) -> Result<()> {
        match self {
            Ipam::Builtin { conf } => {
                // Without the subnet file, the hints' own families are all that is known.
                let families = match env {
                    Some(env) => families(env),
                    None => {
                        let mut f: Vec<Family> = hints.iter().map(Family::of).collect();
                        f.dedup();
                        f
                    }
                };
                if let Some(store) = Store::existing(&conf.network_dir())? {
                    store.release(&inv.container_id, &inv.ifname, hints, &families)?;
                }
                Ok(())
            }
            Ipam::Delegate { conf, plugin } => {
                let config = delegate::delegate_config(conf, env);
                delegate::run(plugin, Command::Del, inv, &config).map(drop)
            }
        }
    }

    /// CHECK: the addresses the store holds for this attachment (built-in), or forward CHECK.
    pub fn check(&self, inv: &Invocation, env: &SubnetEnv) -> Result<Option<Vec<IpAddr>>> {
        match self {
            Ipam::Builtin { conf } => {
                let held = match Store::existing(&conf.network_dir())? {
                    Some(store) => store.find(&inv.container_id, &inv.ifname)?,
                    None => Vec::new(),
                };
                let missing: Vec<&str> = families(env)
                    .into_iter()
                    .filter(|f| !held.iter().any(|ip| Family::of(ip) == *f))
                    .map(|f| match f {
                        Family::V4 => "IPv4",
                        Family::V6 => "IPv6",
                    })
                    .collect();
                if !missing.is_empty() {
                    return Err(CniError::CheckFailed(format!(
                        "no {} address allocated to {}/{} in {}",
                        missing.join(" or "),
                        inv.container_id,
                        inv.ifname,
                        conf.network_dir().display()
                    )));
                }
                Ok(Some(held))
            }
            Ipam::Delegate { conf, plugin } => {
                let config = delegate::delegate_config(conf, Some(env));
                delegate::run(plugin, Command::Check, inv, &config).map(|_| None)
            }
        }
    }

    /// GC: drop allocations not in `keep`, or forward GC.
    pub fn gc(&self, inv: &Invocation, keep: &HashSet<(String, String)>) -> Result<()> {
        match self {
            Ipam::Builtin { conf } => {
                if let Some(store) = Store::existing(&conf.network_dir())? {
                    store.gc(keep)?;
                }
                Ok(())
            }
            Ipam::Delegate { conf, plugin } => {
                delegate::run(plugin, Command::Gc, inv, &conf.raw).map(drop)
            }
        }
    }

    /// STATUS: forwarded to a delegate; the built-in store is always ready.
    pub fn status(&self, inv: &Invocation) -> Result<()> {
        match self {
            Ipam::Builtin { .. } => Ok(()),
            Ipam::Delegate { conf, plugin } => {
                delegate::run(plugin, Command::Status, inv, &conf.raw).map(drop)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_addresses_one_per_family() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
        assert_eq!(requested("K8S_POD_NAME=x").ok(), Some(vec![]));
        assert_eq!(
            requested("IgnoreUnknown=1;IP=10.244.3.7").ok(),
            Some(vec![ip("10.244.3.7")])
        );
        assert_eq!(
            requested("IP=10.244.3.7, fd00::7").ok(),
            Some(vec![ip("10.244.3.7"), ip("fd00::7")])
        );
        for bad in [
            "IP=banana",
            "IP=10.0.0.1,10.0.0.2",
            "IP=fd00::1,fd00::2",
            "IP=",
        ] {
            assert!(
                matches!(requested(bad), Err(CniError::BadEnv { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ranges_in_host_locals_order() {
        let env = SubnetEnv::new(
            "10.244.0.0/16".parse().expect("literal"),
            "10.244.3.0/24".parse().expect("literal"),
            1450,
            false,
        );
        assert_eq!(ranges(&env).len(), 1);
        let dual = env.with_ipv6(
            "fd00:10:244::/56".parse().expect("literal"),
            "fd00:10:244:3::/64".parse().expect("literal"),
        );
        let r = ranges(&dual);
        assert_eq!((r[0].index, r[1].index), (0, 1));
        assert_eq!(
            r[1].gateway,
            "fd00:10:244:3::1".parse::<IpAddr>().expect("literal")
        );
        assert_eq!(families(&dual), vec![Family::V4, Family::V6]);
        // IPv6-only: the IPv6 range alone, range 0 as host-local numbers `ranges: [[v6]]`.
        let only6 = SubnetEnv::ipv6_only(
            "fd00:10:244::/56".parse().expect("literal"),
            "fd00:10:244:3::/64".parse().expect("literal"),
            1450,
            false,
        );
        let r = ranges(&only6);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].index, 0);
        assert_eq!(
            r[0].subnet,
            "fd00:10:244:3::/64".parse::<IpNetwork>().expect("literal")
        );
        assert_eq!(families(&only6), vec![Family::V6]);
    }
}
