//! CHECK: verify that the attachment is still as ADD left it (both addresses, routes and
//! masquerade rules on a dual-stack node), and say what is wrong if not.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{addresses, container_routes, gateways, masq_enabled, masq_scopes};
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{CniError, Result};
use crate::ipam::Ipam;
use crate::masq;
use crate::naming;
use crate::net::{container, links, netns::Netns};
use crate::result::{CniResult, IpConfig};
use crate::subnet_env::SubnetEnv;

pub async fn run(inv: &Invocation, conf: &NetConf) -> Result<()> {
    let env = crate::subnet_env::load(&conf.subnet_file)?;
    let netns = Netns::open_required(inv.netns.as_deref().unwrap_or_default())?;
    let mtu = conf.mtu.unwrap_or(env.mtu);
    let prev = match &conf.prev_result {
        Some(v) => Some(CniResult::from_value(v, "prevResult")?),
        None => None,
    };

    // Expected addresses: prevResult's entries for our interface, else the IPAM store's.
    let held = Ipam::for_conf(conf).check(inv, &env)?;
    let expected = expected_result(inv, prev.as_ref(), held, &env);
    let addrs = addresses(&expected);
    if addrs.is_empty() {
        return Err(CniError::CheckFailed(format!(
            "no address known for {}/{} (no prevResult, nothing allocated)",
            inv.container_id, inv.ifname
        )));
    }
    let gws = gateways(&expected, &env);
    let routes = container_routes(conf, &env, &gws, &CniResult::default());

    let cont_h = netns.connect()?;
    let mut problems = container::problems(&cont_h, &inv.ifname, &addrs, &routes, mtu).await?;

    let host_h = crate::net::netns::connect_host()?;
    let host_name = naming::host_veth(&conf.name, &inv.container_id, &inv.ifname);
    let bridge = links::get_by_name(&host_h, &conf.bridge).await?;
    match (links::get_by_name(&host_h, &host_name).await?, &bridge) {
        (None, _) => problems.push(format!("host veth {host_name} missing")),
        (Some(_), None) => problems.push(format!("bridge {} missing", conf.bridge)),
        (Some(v), Some(b)) if v.controller != Some(b.index) => {
            problems.push(format!(
                "host veth {host_name} not attached to {}",
                conf.bridge
            ));
        }
        (Some(v), Some(_)) if !v.up => problems.push(format!("host veth {host_name} is down")),
        _ => {}
    }
    if masq_enabled(conf, Some(&env)) {
        problems.extend(masq::problems(&conf.name, &masq_scopes(&env, &addrs))?);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckFailed(problems.join("; ")))
    }
}

/// The addresses CHECK expects on the interface: `prevResult`'s entries for it, else what
/// the store holds (with the prefix of the node's subnet of each family).
fn expected_result(
    inv: &Invocation,
    prev: Option<&CniResult>,
    held: Option<Vec<IpAddr>>,
    env: &SubnetEnv,
) -> CniResult {
    if let Some(prev) = prev {
        let ours = prev
            .interfaces
            .iter()
            .position(|i| i.name == inv.ifname && !i.sandbox.is_empty());
        let ips: Vec<IpConfig> = prev
            .ips
            .iter()
            .filter(|ip| ours.is_none() || ip.interface == ours)
            .cloned()
            .collect();
        if !ips.is_empty() {
            return CniResult {
                ips,
                ..CniResult::default()
            };
        }
    }
    let ranges = crate::ipam::ranges(env);
    CniResult {
        ips: held
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ip| {
                let range = ranges
                    .iter()
                    .find(|r| r.gateway.is_ipv6() == ip.is_ipv6())?;
                let address = IpNetwork::new(ip, range.subnet.prefix()).ok()?;
                Some(IpConfig {
                    address,
                    gateway: Some(range.gateway),
                    interface: None,
                })
            })
            .collect(),
        ..CniResult::default()
    }
}
