//! IP masquerade and forward rules in nftables, owned by netd: one table, `ip netd`, replaced
//! atomically with `nft -f -` and deleted when masquerading is turned off.
//!
//! Same policy as flannel's `--ip-masq`: traffic inside the cluster network is never NATed;
//! traffic from the cluster network to the outside (except multicast) is masqueraded; traffic from
//! outside to another host's subnet is masqueraded; kube-proxy's mark is respected.

use ipnetwork::Ipv4Network;

use crate::error::{Error, Result};
use crate::subnet::Subnet;

/// Name of the table netd owns.
pub const TABLE: &str = "netd";

/// The nft script that (re)creates the table.
pub fn ruleset(network: Ipv4Network, subnet: Subnet) -> String {
    let net = network;
    let sub = subnet;
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x4000 == 0x4000 return\n\
         \t\tip saddr {sub} ip daddr {net} return\n\
         \t\tip saddr {net} ip daddr {sub} return\n\
         \t\tip saddr != {net} ip daddr {sub} return\n\
         \t\tip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {net} ip daddr {net} masquerade fully-random\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {net} accept\n\
         \t\tip daddr {net} accept\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(script: &str) -> Result<()> {
    hostnet::nft::run(&["-f", "-"], Some(script))
        .map(drop)
        .map_err(|reason| Error::Command {
            cmd: "nft -f -".into(),
            reason,
        })
}

/// Installs (or replaces) the masquerade rules.
pub fn install(network: Ipv4Network, subnet: Subnet) -> Result<()> {
    nft(&ruleset(network, subnet))
}

/// Re-installs the rules when netd's table is missing (e.g. someone flushed the ruleset).
pub fn ensure(network: Ipv4Network, subnet: Subnet) -> Result<()> {
    let present = hostnet::nft::run(&["list", "table", "ip", TABLE], None).is_ok();
    if present {
        return Ok(());
    }
    tracing::warn!("masquerade table missing; re-installing it");
    install(network, subnet)
}

/// Removes netd's table if present.
pub fn remove() -> Result<()> {
    nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

/// Enables IPv4 forwarding in this network namespace (no write when it is already on, so a
/// read-only /proc/sys with forwarding enabled is fine).
pub fn enable_forwarding() -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ruleset_mentions_both_networks() {
        let r = super::ruleset(
            "10.244.0.0/16".parse().unwrap(),
            crate::subnet::Subnet::from_key("10.244.3.0-24").unwrap(),
        );
        assert!(r.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade"));
        assert!(r.contains("ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return"));
        assert!(r.starts_with("table ip netd\ndelete table ip netd\n"));
    }
}
