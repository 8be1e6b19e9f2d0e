//! IP masquerade and forward rules in nftables, owned by netd: one table, `ip netd`, replaced
//! atomically with `nft -f -` and deleted when neither is wanted.
//!
//! Same policy as flannel's `--ip-masq`: traffic inside the cluster network is never NATed;
//! traffic from the cluster network to the outside (except multicast) is masqueraded (with
//! fully-random ports unless `--ip-masq-fully-random-disable`); traffic from outside to another
//! host's subnet is masqueraded; kube-proxy's mark is respected. As flannel's
//! `--iptables-forward-rules` (on by default), forwarded traffic from and to the cluster network
//! is accepted.

use ipnetwork::Ipv4Network;

use crate::error::{Error, Result};
use crate::subnet::Subnet;

/// Name of the table netd owns.
pub const TABLE: &str = "netd";

/// Which rules netd's table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `--ip-masq`.
    pub masquerade: bool,
    /// Fully-random source ports when masquerading (off with `--ip-masq-fully-random-disable`).
    pub fully_random: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
}

impl Rules {
    /// True when the table has anything to hold.
    pub fn any(&self) -> bool {
        self.masquerade || self.forward
    }
}

/// The nft script that (re)creates the table.
pub fn ruleset(network: Ipv4Network, subnet: Subnet, rules: Rules) -> String {
    let net = network;
    let sub = subnet;
    let mut out = format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n"
    );
    if rules.masquerade {
        let random = if rules.fully_random {
            " fully-random"
        } else {
            ""
        };
        out.push_str(&format!(
            "\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x4000 == 0x4000 return\n\
             \t\tip saddr {sub} ip daddr {net} return\n\
             \t\tip saddr {net} ip daddr {sub} return\n\
             \t\tip saddr != {net} ip daddr {sub} return\n\
             \t\tip saddr {net} ip daddr != 224.0.0.0/4 masquerade{random}\n\
             \t\tip saddr != {net} ip daddr {net} masquerade{random}\n\
             \t}}\n"
        ));
    }
    if rules.forward {
        out.push_str(&format!(
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr {net} accept\n\
             \t\tip daddr {net} accept\n\
             \t}}\n"
        ));
    }
    out.push_str("}\n");
    out
}

fn nft(script: &str) -> Result<()> {
    hostnet::nft::run(&["-f", "-"], Some(script))
        .map(drop)
        .map_err(|reason| Error::Command {
            cmd: "nft -f -".into(),
            reason,
        })
}

/// Installs (or replaces) the rules; with none wanted, removes the table.
pub fn install(network: Ipv4Network, subnet: Subnet, rules: Rules) -> Result<()> {
    if !rules.any() {
        return remove();
    }
    nft(&ruleset(network, subnet, rules))
}

/// Re-installs the rules when netd's table is missing (e.g. someone flushed the ruleset).
pub fn ensure(network: Ipv4Network, subnet: Subnet, rules: Rules) -> Result<()> {
    if !rules.any() {
        return Ok(());
    }
    let present = hostnet::nft::run(&["list", "table", "ip", TABLE], None).is_ok();
    if present {
        return Ok(());
    }
    tracing::warn!("netd's nftables table is missing; re-installing it");
    install(network, subnet, rules)
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
        let all = super::Rules {
            masquerade: true,
            fully_random: true,
            forward: true,
        };
        let net = "10.244.0.0/16".parse().unwrap();
        let sub = crate::subnet::Subnet::from_key("10.244.3.0-24").unwrap();
        let r = super::ruleset(net, sub, all);
        assert!(
            r.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        );
        assert!(r.contains("ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return"));
        assert!(r.contains("chain forward"));
        assert!(r.starts_with("table ip netd\ndelete table ip netd\n"));
        let plain = super::ruleset(
            net,
            sub,
            super::Rules {
                fully_random: false,
                forward: false,
                ..all
            },
        );
        assert!(
            plain.contains("masquerade\n") && !plain.contains("fully-random"),
            "{plain}"
        );
        assert!(!plain.contains("chain forward"), "{plain}");
    }
}
