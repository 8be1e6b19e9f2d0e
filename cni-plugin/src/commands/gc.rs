//! GC (spec 1.1): release every allocation of this network whose attachment is not in the
//! runtime's list of valid attachments, and reap retired veths. Continues past errors. The
//! masquerade rule covers the node's subnet, not attachments, so there is none to collect.

use std::collections::HashSet;

use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::CniError;
use crate::error::Result;
use crate::ipam::Ipam;
use crate::net::retire;

pub fn run(inv: &Invocation, conf: &NetConf) -> Result<()> {
    // A missing list means no attachment is valid (as libcni does for `cnitool gc`).
    let keep: HashSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let mut errors = Vec::new();
    if let Err(e) = Ipam::for_conf(conf).gc(inv, &keep) {
        errors.push(e);
    }
    if let Err(e) = reap_leftovers() {
        errors.push(e);
    }
    match CniError::combine(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Delete retired veths whose reaper never ran (killed, or the node rebooted mid-DEL).
fn reap_leftovers() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("start async runtime", e))?;
    rt.block_on(async {
        let h = crate::net::netns::connect_host()?;
        let names = retire::leftovers(&h).await?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        retire::reap(&h, &refs).await
    })
}
