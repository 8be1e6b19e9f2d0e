//! DEL: idempotent teardown. Succeeds when already deleted, with an empty `CNI_NETNS`, or when
//! the netns is gone — and still removes the host veth and the address, which are both found
//! from the attachment's identity rather than from the container. On a dual-stack node that is
//! both addresses. Masquerade owes nothing here: its rule covers the node's subnet, not one
//! container (see [`crate::masq`]).

use std::net::IpAddr;

use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{CniError, Result};
use crate::ipam::Ipam;
use crate::naming;
use crate::net::{links, netns::Netns, retire};
use crate::result::CniResult;

pub async fn run(inv: &Invocation, conf: &NetConf) -> Result<()> {
    // DEL must work even when netd is down and the subnet file is missing.
    let env = crate::subnet_env::load(&conf.subnet_file).ok();
    let mut errors = Vec::new();
    let mut hints: Vec<IpAddr> = Vec::new();
    if let Some(prev) = &conf.prev_result
        && let Ok(prev) = CniResult::from_value(prev, "prevResult")
    {
        hints.extend(prev.ips.iter().map(|ip| ip.address.ip()));
    }

    let host_h = crate::net::netns::connect_host()?;
    let host_name = naming::host_veth(&conf.name, &inv.container_id, &inv.ifname);
    let host_link = links::get_by_name(&host_h, &host_name).await?;

    // Container side: learn its address (saves the IPAM directory scan), then take it away.
    if let Some(path) = &inv.netns {
        let has_host_end = host_link.is_some();
        match container_teardown(path, &inv.ifname, has_host_end, conf.async_teardown).await {
            Ok(addrs) => hints.extend(addrs),
            Err(e) => errors.push(e),
        }
    }
    // Host side, by name: covers an empty or vanished netns. Removing it removes the peer.
    if let Some(link) = host_link {
        let done = if conf.async_teardown {
            match retire::retire(&host_h, &link).await {
                Ok(Some(name)) => retire::spawn_reaper(&[name]),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            links::delete_by_name(&host_h, &host_name).await.map(drop)
        };
        if let Err(e) = done {
            errors.push(e);
        }
    }
    if let Err(e) = Ipam::for_conf(conf).del(inv, env.as_ref(), &hints) {
        errors.push(e);
    }
    match CniError::combine(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Read the container interface's addresses and take it out of service: retire it (async
/// teardown) or leave it to the deletion of its host end; delete it here only when the host
/// end is missing. A netns that no longer exists, or is no longer a netns, is not an error.
async fn container_teardown(
    path: &str,
    ifname: &str,
    has_host_end: bool,
    async_teardown: bool,
) -> Result<Vec<IpAddr>> {
    let Some(ns) = Netns::open(path)? else {
        return Ok(Vec::new());
    };
    // setns fails with EINVAL on a leftover mount point whose netns died: treat as gone.
    let Ok(h) = ns.connect() else {
        return Ok(Vec::new());
    };
    let Some(link) = links::get_by_name(&h, ifname).await? else {
        return Ok(Vec::new());
    };
    let addrs = links::addresses(&h, link.index)
        .await?
        .iter()
        .map(|a| a.ip())
        .collect();
    if !has_host_end {
        links::delete_by_name(&h, ifname).await?;
    } else if async_teardown {
        retire::retire(&h, &link).await?;
    }
    Ok(addrs)
}
