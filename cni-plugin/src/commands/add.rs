//! ADD: bridge, veth pair, addresses (one per family the node's subnet file names: IPv4,
//! IPv6, or both), routes, masquerade; everything rolled back on failure.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::Value;

use super::{addresses, container_routes, gateways, masq_enabled, masq_scopes};
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{CniError, Result};
use crate::ipam::Ipam;
use crate::masq;
use crate::naming;
use crate::net::{container, garp, host, links, netns::Netns};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::subnet_env::SubnetEnv;

/// What ADD has created so far, so a failure undoes exactly that.
#[derive(Default)]
struct Progress {
    allocated: bool,
    veth_created: bool,
}

/// Everything one ADD works with, and what it has created so far.
struct Attach<'a> {
    inv: &'a Invocation,
    conf: &'a NetConf,
    env: SubnetEnv,
    netns: Netns,
    ipam: Ipam<'a>,
    host_h: rtnetlink::Handle,
    cont_h: rtnetlink::Handle,
    progress: Progress,
}

pub async fn run(inv: &Invocation, conf: &NetConf) -> Result<Value> {
    let env = crate::subnet_env::load(&conf.subnet_file)?;
    let netns_path = inv.netns.as_deref().unwrap_or_default();
    let netns = Netns::open_required(netns_path)?;
    let prev = match &conf.prev_result {
        Some(v) => Some(CniResult::from_value(v, "prevResult")?),
        None => None,
    };
    let host_h = crate::net::netns::connect_host()?;
    let cont_h = netns.connect()?;
    if links::get_by_name(&cont_h, &inv.ifname).await?.is_some() {
        return Err(CniError::InterfaceExists(inv.ifname.clone()));
    }
    let mut attach = Attach {
        inv,
        conf,
        env,
        netns,
        ipam: Ipam::for_conf(conf),
        host_h,
        cont_h,
        progress: Progress::default(),
    };
    match attach.run().await {
        Ok(ours) => {
            let mut result = prev.unwrap_or_default();
            result.append(ours);
            Ok(result.to_json(conf.version))
        }
        Err(e) => Err(match attach.rollback().await {
            Some(undo) => CniError::Several(vec![e, undo]),
            None => e,
        }),
    }
}

impl Attach<'_> {
    async fn run(&mut self) -> Result<CniResult> {
        let (inv, conf, env) = (self.inv, self.conf, &self.env);
        let mtu = conf.mtu.unwrap_or(env.mtu);
        let ipam_result = self.ipam.add(inv, env)?;
        self.progress.allocated = true;
        let addrs = addresses(&ipam_result);
        let first = addrs.iter().copied().find(IpNetwork::is_ipv4);
        let first6 = addrs.iter().copied().find(IpNetwork::is_ipv6);
        // The address of each family the node has a subnet of must be there.
        let missing = match (
            env.ipv4.is_some() && first.is_none(),
            env.ipv6.is_some() && first6.is_none(),
        ) {
            (true, _) => Some("IPv4"),
            (false, true) if env.ipv4.is_none() => Some("IPv6"),
            _ => None,
        };
        if let Some(family) = missing {
            return Err(CniError::Delegate {
                plugin: conf.ipam_plugin.clone().unwrap_or_default(),
                code: crate::error::code::DELEGATE,
                msg: format!("IPAM returned no {family} address"),
            });
        }
        let gws = gateways(&ipam_result, env);

        let h = &self.host_h;
        let gateway = env
            .ipv4
            .map(|v4| Ipv4Network::new(v4.gateway, v4.subnet.prefix()))
            .transpose()
            .map_err(|e| CniError::InvalidConfig(e.to_string()))?;
        let gateway6 = env
            .ipv6
            .map(|v6| Ipv6Network::new(v6.gateway, v6.subnet.prefix()))
            .transpose()
            .map_err(|e| CniError::InvalidConfig(e.to_string()))?;
        let bridge = host::ensure_bridge(h, &conf.bridge, gateway, gateway6, mtu).await?;
        host::enable_ip_forward(env.ipv6.is_some() || first6.is_some())?;
        let host_name = naming::host_veth(&conf.name, &inv.container_id, &inv.ifname);
        // Creating the pair is one atomic RTM_NEWLINK: on failure nothing of ours exists (and
        // an EEXIST name belongs to someone else, so it must not be removed).
        let veth = host::create_veth(h, &host_name, &inv.ifname, &self.netns, mtu).await?;
        self.progress.veth_created = true;
        host::attach_port(h, &veth, &bridge, conf.hairpin).await?;
        if first6.is_some() {
            container::disable_dad(&self.netns, &inv.ifname)?;
        }
        let routes = container_routes(conf, env, &gws, &ipam_result);
        let cont = container::configure(&self.cont_h, &inv.ifname, &addrs, &routes).await?;
        // Neighbours may still map a reused address to its previous owner's MAC. The
        // announcement goes out once the bridge forwards from the new port; if it does not
        // within a second, it is sent anyway (the neighbours' entries then age out as usual).
        host::wait_forwarding(h, &veth.name).await?;
        garp::announce(&self.cont_h, &self.netns, &cont, first6.is_some()).await?;

        // The node's masquerade rule covers the whole subnet: written by the first ADD, only
        // read by the others, and never undone by a rollback (other containers share it).
        if masq_enabled(conf, Some(env)) {
            masq::ensure(&conf.name, &masq_scopes(env, &addrs))?;
        }

        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: bridge.name.clone(),
                    mac: bridge.mac.clone(),
                    ..Interface::default()
                },
                Interface {
                    name: veth.name.clone(),
                    mac: veth.mac.clone(),
                    ..Interface::default()
                },
                Interface {
                    name: inv.ifname.clone(),
                    mac: cont.mac.clone(),
                    sandbox: self.netns.path.clone(),
                    mtu: Some(mtu),
                },
            ],
            ips: ipam_result
                .ips
                .iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway.or_else(|| {
                        gws.iter()
                            .copied()
                            .find(|g| g.is_ipv6() == ip.address.is_ipv6())
                    }),
                    interface: Some(2),
                })
                .collect(),
            routes: routes
                .iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: Some(r.gw),
                })
                .collect(),
            dns: ipam_result.dns.clone(),
        })
    }

    /// Undo what `progress` says was created; returns the errors of the undo, if any.
    async fn rollback(&self) -> Option<CniError> {
        let (inv, conf) = (self.inv, self.conf);
        let mut errors = Vec::new();
        if self.progress.veth_created {
            let host_name = naming::host_veth(&conf.name, &inv.container_id, &inv.ifname);
            if let Err(e) = links::delete_by_name(&self.host_h, &host_name).await {
                errors.push(e);
            }
        }
        if self.progress.allocated
            && let Err(e) = self.ipam.del(inv, Some(&self.env), &[])
        {
            errors.push(e);
        }
        CniError::combine(errors)
    }
}
