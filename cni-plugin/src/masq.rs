//! Outbound masquerade with nftables, for nodes where netd does not masquerade itself.
//!
//! The plugin owns table `ip netd_cni`: a `postrouting` NAT chain with one fixed rule,
//! `ip saddr @masq ip daddr != @nomasq masquerade`, and two sets. Each container is one element
//! of `masq` (its address, commented with a hash of its attachment), added on ADD and removed
//! on DEL or GC — so the per-container state is a single atomic set update, and DEL finds it by
//! comment even without the container's address. `nomasq` holds the cluster networks and
//! multicast, which are never masqueraded.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use crate::error::{CniError, Result};

const TABLE: &str = "ip netd_cni";

/// True when nftables tooling is installed.
pub fn available() -> bool {
    hostnet::nft::available()
}

fn nft(args: &[&str], script: Option<&str>) -> Result<String> {
    hostnet::nft::run(args, script).map_err(CniError::Firewall)
}

/// Masquerade traffic from `ip` leaving the cluster network.
pub fn add(ip: Ipv4Addr, comment: &str, cluster: Ipv4Network) -> Result<()> {
    let script = format!(
        "add table {TABLE}\n\
         add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add set {TABLE} masq {{ type ipv4_addr; }}\n\
         add set {TABLE} nomasq {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         add element {TABLE} nomasq {{ {cluster}, 224.0.0.0/4 }}\n\
         flush chain {TABLE} postrouting\n\
         add rule {TABLE} postrouting ip saddr @masq ip daddr != @nomasq masquerade\n\
         add element {TABLE} masq {{ {ip} comment \"{comment}\" }}\n"
    );
    // Under many concurrent ADDs on a loaded machine, a transaction has (rarely) been seen
    // failing with ENOENT on the rule while others create the same objects. The script is
    // idempotent (every object is `add`ed, the chain flushed and refilled), so it is retried.
    let mut attempt = 0;
    loop {
        match nft(&["-f", "-"], Some(&script)) {
            Err(CniError::Firewall(msg))
                if msg.contains("No such file or directory") && attempt < ADD_RETRIES =>
            {
                attempt += 1;
                backoff(attempt);
            }
            other => return other.map(drop),
        }
    }
}

/// How often a masquerade transaction failing with ENOENT is retried.
const ADD_RETRIES: u32 = 4;

/// Backs off a little more on each retry (5, 10, 15, 20 ms).
fn backoff(attempt: u32) {
    std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)));
}

/// Elements `(address, comment)` of the `masq` set; empty when the table does not exist.
pub fn list() -> Result<Vec<(String, String)>> {
    let text = match nft(&["-j", "list", "set", "ip", "netd_cni", "masq"], None) {
        Ok(t) => t,
        Err(CniError::Firewall(msg)) if msg.contains("No such file or directory") => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| CniError::Firewall(format!("cannot parse nft -j output: {e}")))?;
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        for elem in item["set"]["elem"].as_array().into_iter().flatten() {
            let (val, comment) = match elem.get("elem") {
                Some(e) => (&e["val"], e["comment"].as_str().unwrap_or_default()),
                None => (elem, ""),
            };
            if let Some(v) = val.as_str() {
                out.push((v.to_string(), comment.to_string()));
            }
        }
    }
    Ok(out)
}

/// Remove every element whose comment satisfies `doomed`; returns how many were removed.
pub fn remove_where(doomed: impl Fn(&str) -> bool) -> Result<usize> {
    let victims: Vec<String> = list()?
        .into_iter()
        .filter(|(_, c)| doomed(c))
        .map(|(ip, _)| ip)
        .collect();
    let mut errors = Vec::new();
    for ip in &victims {
        let script = format!("delete element {TABLE} masq {{ {ip} }}\n");
        match nft(&["-f", "-"], Some(&script)) {
            // A concurrent DEL or GC removed it first: that is the state we want.
            Err(CniError::Firewall(msg)) if msg.contains("No such file or directory") => {}
            Err(e) => errors.push(e),
            Ok(_) => {}
        }
    }
    match CniError::combine(errors) {
        Some(e) => Err(e),
        None => Ok(victims.len()),
    }
}
