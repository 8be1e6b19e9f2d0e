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

use std::ffi::CString;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use nix::libc;
use nix::unistd::{ForkResult, fork};
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

/// Start a detached reaper that deletes the retired host links `names`.
///
/// A plain fork + exec rather than `std::process::Command`: `Command` waits until the child
/// has exec'd, which on a loaded node can add milliseconds to DEL for nothing. The reaper's
/// stdio is /dev/null (the runtime reads our stdout to EOF and must not wait for the reaper)
/// and it runs in its own session, out of reach of signals meant for the runtime's plugin.
pub fn spawn_reaper(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let bad = |e: std::ffi::NulError| CniError::kernel("reaper arguments", e);
    // Everything the child needs is prepared before fork: after it, only async-signal-safe
    // calls are made.
    let path = CString::new("/proc/self/exe").map_err(bad)?;
    let arg0 = CString::new("netd-cni-reaper").map_err(bad)?;
    let env = CString::new(format!("{REAP_ENV}={}", names.join(","))).map_err(bad)?;
    let argv = [arg0.as_ptr(), std::ptr::null()];
    let envp = [env.as_ptr(), std::ptr::null()];
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| CniError::io("open /dev/null", e))?;
    let null_fd = devnull.as_raw_fd();
    // SAFETY: the plugin is single-threaded here (the current-thread runtime spawns no worker
    // threads, and the netns helper threads have been joined), and the child only calls
    // async-signal-safe functions (setsid, dup2, execve, _exit) on data prepared above.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => Ok(()),
        Ok(ForkResult::Child) => unsafe {
            libc::setsid();
            libc::dup2(null_fd, 0);
            libc::dup2(null_fd, 1);
            libc::dup2(null_fd, 2);
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        },
        Err(e) => Err(CniError::kernel("fork reaper", e)),
    }
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
