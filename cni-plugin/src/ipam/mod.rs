//! Address management: the built-in host-local-compatible store, or a delegated IPAM plugin.
//!
//! [`Ipam`] hides which one is in use from the commands.

pub mod delegate;
pub mod store;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::config::NetConf;
use crate::env::{Command, Invocation, cni_arg};
use crate::error::{CniError, Result};
use crate::result::{CniResult, IpConfig};
use crate::subnet_env::SubnetEnv;
use store::{Range, Store};

/// The address source of one network config.
pub enum Ipam<'a> {
    Builtin { conf: &'a NetConf },
    Delegate { conf: &'a NetConf, plugin: String },
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
                let requested = match cni_arg(&inv.args, "IP") {
                    Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| CniError::BadEnv {
                        var: "CNI_ARGS",
                        reason: format!("IP={s} is not an IPv4 address"),
                    })?),
                    None => None,
                };
                let store = Store::open(&conf.network_dir())?;
                let range = Range {
                    subnet: env.subnet,
                    gateway: env.gateway,
                };
                let ip = store.allocate(&range, &inv.container_id, &inv.ifname, requested)?;
                let address = Ipv4Network::new(ip, env.subnet.prefix())
                    .map_err(|e| CniError::InvalidConfig(e.to_string()))?;
                Ok(CniResult {
                    ips: vec![IpConfig {
                        address: IpNetwork::V4(address),
                        gateway: Some(IpAddr::V4(env.gateway)),
                        interface: None,
                    }],
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
    pub fn del(&self, inv: &Invocation, env: Option<&SubnetEnv>, hints: &[Ipv4Addr]) -> Result<()> {
        match self {
            Ipam::Builtin { conf } => {
                if let Some(store) = Store::existing(&conf.network_dir())? {
                    store.release(&inv.container_id, &inv.ifname, hints)?;
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
    pub fn check(&self, inv: &Invocation, env: &SubnetEnv) -> Result<Option<Vec<Ipv4Addr>>> {
        match self {
            Ipam::Builtin { conf } => {
                let held = match Store::existing(&conf.network_dir())? {
                    Some(store) => store.find(&inv.container_id, &inv.ifname)?,
                    None => Vec::new(),
                };
                if held.is_empty() {
                    return Err(CniError::CheckFailed(format!(
                        "no address allocated to {}/{} in {}",
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
