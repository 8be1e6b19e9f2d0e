//! Fast teardown: retire a veth now, destroy it a moment later.
//!
//! Destroying a network device makes the kernel wait for RCU grace periods and for the last
//! references to drop; on the test VMs that is 15–25 ms per veth, far more than everything
//! else DEL does (down, detach and rename cost ~0.1 ms each). So by default DEL *retires* the
//! pair: both ends go down, the host end leaves the bridge, and both are renamed to
//! `ncd-<ifindex>`, which frees their names and ends all traffic at once. A detached reaper
//! process (this binary again, stdio closed) then deletes the retired host end, taking the
//! peer with it. GC also reaps any retired link left behind if a reaper was killed.
//! `"asyncTeardown": false` makes DEL delete synchronously instead.

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

use super::links::{self, Link};
use crate::error::{CniError, Result};

/// Name prefix of retired links; nothing else may be deleted by the reaper.
pub const PREFIX: &str = "ncd-";
/// Environment variable that turns the binary into a reaper (only without `CNI_COMMAND`).
pub const REAP_ENV: &str = "NETD_CNI_REAP";

fn retired_name(index: u32) -> String {
    format!("{PREFIX}{index}")
}

/// Take `link` down (and off its bridge) and rename it out of the way; returns the new name,
/// or `None` when the link vanished meanwhile (e.g. its peer's netns is being destroyed).
pub async fn retire(h: &Handle, link: &Link) -> Result<Option<String>> {
    let mut msg = LinkUnspec::new_with_index(link.index).down();
    if link.controller.is_some() {
        msg = msg.nocontroller();
    }
    match h.link().set(msg.build()).execute().await {
        Err(e) if links::is_gone(&e) => return Ok(None),
        Err(e) => return Err(CniError::kernel(format!("retire {}", link.name), e)),
        Ok(()) => {}
    }
    let name = retired_name(link.index);
    let rename = LinkUnspec::new_with_index(link.index).name(name.clone());
    match h.link().set(rename.build()).execute().await {
        Err(e) if links::is_gone(&e) => Ok(None),
        Err(e) => Err(CniError::kernel(
            format!("rename {} to {name}", link.name),
            e,
        )),
        Ok(()) => Ok(Some(name)),
    }
}

/// Start a detached reaper that deletes the retired host links `names`: this binary again,
/// with stdio on /dev/null (the runtime reads our stdout to EOF and must not wait for the
/// reaper), in a process group of its own (out of reach of signals meant for the runtime's
/// plugin), never waited for.
pub fn spawn_reaper(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    std::process::Command::new("/proc/self/exe")
        .arg0("netd-cni-reaper")
        .env_clear()
        .env(REAP_ENV, names.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| CniError::io("start the reaper", e))
}

/// Delete retired links by name; names without the retired prefix are refused.
pub async fn reap(h: &Handle, names: &[&str]) -> Result<()> {
    let mut errors = Vec::new();
    for name in names.iter().filter(|n| n.starts_with(PREFIX)) {
        if let Err(e) = links::delete_by_name(h, name).await {
            errors.push(e);
        }
    }
    match CniError::combine(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Names of every retired link in `h`'s netns.
pub async fn leftovers(h: &Handle) -> Result<Vec<String>> {
    let msgs: Vec<_> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::kernel("list links", e))?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                netlink_packet_route::link::LinkAttribute::IfName(n) if n.starts_with(PREFIX) => {
                    Some(n.clone())
                }
                _ => None,
            })
        })
        .collect())
}

/// Entry point of the reaper process: delete the links named in `list` (comma-separated).
pub fn reaper_main(list: &str) -> i32 {
    let names: Vec<&str> = list.split(',').collect();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return 1;
    };
    rt.block_on(async {
        match super::netns::connect_host() {
            Ok(h) => i32::from(reap(&h, &names).await.is_err()),
            Err(_) => 1,
        }
    })
}
