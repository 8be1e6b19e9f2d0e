//! Outbound masquerade with nftables, for nodes where netd does not masquerade itself.
//!
//! The plugin owns table `ip netd_cni`: a `postrouting` NAT chain with one fixed rule,
//! `ip saddr @masq ip daddr != @nomasq masquerade`, and two sets. Each container is one element
//! of `masq` (its address, commented with a hash of its attachment), added on ADD and removed
//! on DEL or GC — so the per-container state is a single atomic set update, and DEL finds it by
//! comment even without the container's address. `nomasq` holds the cluster networks and
//! multicast, which are never masqueraded.
//!
//! On a dual-stack node, table `ip6 netd_cni` is its IPv6 twin, made by the same code:
//! `ip6 saddr @masq ip6 daddr != @nomasq masquerade`, the container's IPv6 address in `masq`
//! under the same comment, `nomasq` holding `FLANNEL_IPV6_NETWORK` and `ff00::/8`. Both
//! elements of a container are added in one transaction. A node that is IPv4 only never
//! creates or reads the IPv6 table.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::error::{CniError, Result};

/// One family's table: its nft family, address type, and the multicast range left alone.
struct Table {
    family: &'static str,
    addr_type: &'static str,
    multicast: &'static str,
}

const V4: Table = Table {
    family: "ip",
    addr_type: "ipv4_addr",
    multicast: "224.0.0.0/4",
};
const V6: Table = Table {
    family: "ip6",
    addr_type: "ipv6_addr",
    multicast: "ff00::/8",
};
const TABLE_NAME: &str = "netd_cni";

impl Table {
    fn of(ip: &IpAddr) -> &'static Table {
        match ip {
            IpAddr::V4(_) => &V4,
            IpAddr::V6(_) => &V6,
        }
    }

    /// The nft commands that make sure the table exists and masquerades `ip` (commented
    /// `comment`) unless it talks to `cluster`.
    fn add_script(&self, ip: IpAddr, comment: &str, cluster: IpNetwork) -> String {
        let Table {
            family: fam,
            addr_type,
            multicast,
        } = self;
        let table = format!("{fam} {TABLE_NAME}");
        format!(
            "add table {table}\n\
             add chain {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add set {table} masq {{ type {addr_type}; }}\n\
             add set {table} nomasq {{ type {addr_type}; flags interval; auto-merge; }}\n\
             add element {table} nomasq {{ {cluster}, {multicast} }}\n\
             flush chain {table} postrouting\n\
             add rule {table} postrouting {fam} saddr @masq {fam} daddr != @nomasq masquerade\n\
             add element {table} masq {{ {ip} comment \"{comment}\" }}\n"
        )
    }
}

/// Which of the plugin's tables an operation looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    /// `ip netd_cni` only: an IPv4-only node.
    Ipv4,
    /// `ip netd_cni` and `ip6 netd_cni`: a dual-stack node, or one whose subnet file is unknown.
    DualStack,
}

impl Families {
    fn tables(self) -> &'static [Table] {
        match self {
            Families::Ipv4 => std::slice::from_ref(&V4),
            Families::DualStack => &[V4, V6],
        }
    }
}

/// True when nftables tooling is installed.
pub fn available() -> bool {
    hostnet::nft::available()
}

fn nft(args: &[&str], script: Option<&str>) -> Result<String> {
    hostnet::nft::run(args, script).map_err(CniError::Firewall)
}

/// Masquerade traffic from each address leaving its cluster network: `entries` are
/// `(container address, cluster network of that family)`, all commented `comment`.
pub fn add(comment: &str, entries: &[(IpAddr, IpNetwork)]) -> Result<()> {
    let script: String = entries
        .iter()
        .map(|(ip, cluster)| Table::of(ip).add_script(*ip, comment, *cluster))
        .collect();
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

/// Elements `(address, comment)` of the `masq` sets of `families`' tables; a table that does
/// not exist has none.
pub fn list(families: Families) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for table in families.tables() {
        out.extend(list_table(table)?);
    }
    Ok(out)
}

fn list_table(table: &Table) -> Result<Vec<(String, String)>> {
    let text = match nft(
        &["-j", "list", "set", table.family, TABLE_NAME, "masq"],
        None,
    ) {
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

/// Remove every element of `families`' tables whose comment satisfies `doomed`; returns how
/// many were removed.
pub fn remove_where(families: Families, doomed: impl Fn(&str) -> bool) -> Result<usize> {
    let mut errors = Vec::new();
    let mut removed = 0;
    for table in families.tables() {
        let victims: Vec<String> = list_table(table)?
            .into_iter()
            .filter(|(_, c)| doomed(c))
            .map(|(ip, _)| ip)
            .collect();
        for ip in &victims {
            let script = format!(
                "delete element {} {TABLE_NAME} masq {{ {ip} }}\n",
                table.family
            );
            match nft(&["-f", "-"], Some(&script)) {
                // A concurrent DEL or GC removed it first: that is the state we want.
                Err(CniError::Firewall(msg)) if msg.contains("No such file or directory") => {}
                Err(e) => errors.push(e),
                Ok(_) => {}
            }
        }
        removed += victims.len();
    }
    match CniError::combine(errors) {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_gets_its_own_table_and_types() {
        let v4 = V4.add_script(
            "10.244.3.2".parse().expect("literal"),
            "c",
            "10.244.0.0/16".parse().expect("literal"),
        );
        // The IPv4 script is the one the plugin always ran.
        assert_eq!(
            v4,
            "add table ip netd_cni\n\
             add chain ip netd_cni postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
             add set ip netd_cni masq { type ipv4_addr; }\n\
             add set ip netd_cni nomasq { type ipv4_addr; flags interval; auto-merge; }\n\
             add element ip netd_cni nomasq { 10.244.0.0/16, 224.0.0.0/4 }\n\
             flush chain ip netd_cni postrouting\n\
             add rule ip netd_cni postrouting ip saddr @masq ip daddr != @nomasq masquerade\n\
             add element ip netd_cni masq { 10.244.3.2 comment \"c\" }\n"
        );
        let ip6: IpAddr = "fd00:10:244:3::2".parse().expect("literal");
        let v6 = Table::of(&ip6).add_script(ip6, "c", "fd00:10:244::/56".parse().expect("literal"));
        assert!(v6.contains("add table ip6 netd_cni\n"), "{v6}");
        assert!(v6.contains("type ipv6_addr;"), "{v6}");
        assert!(v6.contains("{ fd00:10:244::/56, ff00::/8 }"), "{v6}");
        assert!(
            v6.contains("ip6 saddr @masq ip6 daddr != @nomasq masquerade"),
            "{v6}"
        );
        assert!(
            v6.contains("masq { fd00:10:244:3::2 comment \"c\" }"),
            "{v6}"
        );
        assert_eq!(Families::Ipv4.tables().len(), 1);
        assert_eq!(Families::DualStack.tables().len(), 2);
    }
}
