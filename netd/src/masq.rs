//! IP masquerade and forward rules in nftables, owned by netd: one table per family the network
//! has, `ip netd` and `ip6 netd`, replaced atomically (both in one `nft -f -` script); a
//! family's table is deleted when the network lacks that family or no rule set is wanted.
//!
//! Same policy as flannel's `--ip-masq`: traffic inside the cluster network is never NATed;
//! traffic from the cluster network to the outside (except multicast) is masqueraded (with
//! fully-random ports unless `--ip-masq-fully-random-disable`); traffic from outside to another
//! host's subnet is masqueraded; kube-proxy's mark is respected. As flannel's
//! `--iptables-forward-rules` (on by default), forwarded traffic from and to the cluster network
//! is accepted. IPv6 gets the same rules against `IPv6Network` (multicast is `ff00::/8`).

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::error::{Error, Result};
use crate::subnet::SubnetKey;

/// Name of the tables netd owns.
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

/// The networks the rules are about: the cluster network and this host's subnet, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// `None` in an IPv6-only network.
    pub network: Option<Ipv4Network>,
    pub network6: Option<Ipv6Network>,
    pub subnet: SubnetKey,
}

/// One family's table: nft's family keyword, the match keyword, the networks, multicast.
fn table(
    family: &str,
    ip: &str,
    net: &dyn std::fmt::Display,
    sub: &dyn std::fmt::Display,
    multicast: &str,
    rules: Rules,
) -> String {
    let mut out = format!(
        "table {family} {TABLE}\n\
         delete table {family} {TABLE}\n\
         table {family} {TABLE} {{\n"
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
             \t\t{ip} saddr {sub} {ip} daddr {net} return\n\
             \t\t{ip} saddr {net} {ip} daddr {sub} return\n\
             \t\t{ip} saddr != {net} {ip} daddr {sub} return\n\
             \t\t{ip} saddr {net} {ip} daddr != {multicast} masquerade{random}\n\
             \t\t{ip} saddr != {net} {ip} daddr {net} masquerade{random}\n\
             \t}}\n"
        ));
    }
    if rules.forward {
        out.push_str(&format!(
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\t{ip} saddr {net} accept\n\
             \t\t{ip} daddr {net} accept\n\
             \t}}\n"
        ));
    }
    out.push_str("}\n");
    out
}

/// The nft script that (re)creates the tables.
pub fn ruleset(scope: Scope, rules: Rules) -> String {
    let mut out = String::new();
    if let (Some(net), Some(sub)) = (scope.network, scope.subnet.v4) {
        out.push_str(&table("ip", "ip", &net, &sub, "224.0.0.0/4", rules));
    }
    if let (Some(net6), Some(sub6)) = (scope.network6, scope.subnet.v6) {
        out.push_str(&table("ip6", "ip6", &net6, &sub6, "ff00::/8", rules));
    }
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

/// Installs (or replaces) the rules; with none wanted, removes the tables.
pub fn install(scope: Scope, rules: Rules) -> Result<()> {
    if !rules.any() {
        return remove();
    }
    // A run with another config before may have left the table of a family not in use now.
    for (family, used) in [
        ("ip", scope.network.is_some()),
        ("ip6", scope.network6.is_some()),
    ] {
        if !used {
            nft(&format!(
                "table {family} {TABLE}\ndelete table {family} {TABLE}\n"
            ))?;
        }
    }
    nft(&ruleset(scope, rules))
}

/// Re-installs the rules when one of netd's tables is missing (e.g. someone flushed the ruleset).
pub fn ensure(scope: Scope, rules: Rules) -> Result<()> {
    if !rules.any() {
        return Ok(());
    }
    let present = |family: &str| hostnet::nft::run(&["list", "table", family, TABLE], None).is_ok();
    if (scope.network.is_none() || present("ip")) && (scope.network6.is_none() || present("ip6")) {
        return Ok(());
    }
    tracing::warn!("netd's nftables table is missing; re-installing it");
    install(scope, rules)
}

/// Removes netd's tables if present.
pub fn remove() -> Result<()> {
    nft(&format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip6 {TABLE}\ndelete table ip6 {TABLE}\n"
    ))
}

/// Enables IPv4 forwarding in this network namespace when `ipv4`, and IPv6 forwarding when
/// `ipv6` (no write when it is already on, so a read-only /proc/sys with forwarding enabled is fine). Before
/// turning IPv6 forwarding on, `accept_ra` 1 on the underlay `iface` becomes 2, so that the host
/// keeps taking its IPv6 default route from router adverts (the kernel ignores them on a
/// forwarding host otherwise).
pub fn enable_forwarding(ipv4: bool, ipv6: bool, iface: &str) -> Result<()> {
    let on = |path: &str| -> Result<()> {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            return Ok(());
        }
        std::fs::write(path, "1").map_err(|e| Error::file(path, e))
    };
    if ipv4 {
        on("/proc/sys/net/ipv4/ip_forward")?;
    }
    if ipv6 {
        let ra = format!("/proc/sys/net/ipv6/conf/{iface}/accept_ra");
        if std::fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1") {
            std::fs::write(&ra, "2").map_err(|e| Error::file(&ra, e))?;
        }
        on("/proc/sys/net/ipv6/conf/all/forwarding")?;
    }
    Ok(())
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
        let scope = super::Scope {
            network: Some("10.244.0.0/16".parse().unwrap()),
            network6: None,
            subnet: crate::subnet::SubnetKey::from_key("10.244.3.0-24").unwrap(),
        };
        let r = super::ruleset(scope, all);
        assert!(
            r.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        );
        assert!(r.contains("ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return"));
        assert!(r.contains("chain forward"));
        assert!(r.starts_with("table ip netd\ndelete table ip netd\n"));
        assert!(!r.contains("ip6"), "{r}");
        let plain = super::ruleset(
            scope,
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
        // Dual-stack: the same rules for IPv6 in an ip6 table, in the same script.
        let dual = super::Scope {
            network6: Some("fd00:10:244::/56".parse().unwrap()),
            subnet: crate::subnet::SubnetKey::from_key("10.244.3.0-24&fd00:10:244:3::-64").unwrap(),
            ..scope
        };
        let r = super::ruleset(dual, all);
        assert!(r.contains("table ip6 netd {"), "{r}");
        assert!(
            r.contains("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random"),
            "{r}"
        );
        assert!(r.contains("ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return"));
        assert!(r.contains("ip6 daddr fd00:10:244::/56 accept"));
        // IPv6-only: the ip6 table alone.
        let v6only = super::Scope {
            network: None,
            subnet: crate::subnet::SubnetKey::from_key("0.0.0.0-0&fd00:10:244:3::-64").unwrap(),
            ..dual
        };
        let r = super::ruleset(v6only, all);
        assert!(r.starts_with("table ip6 netd\n"), "{r}");
        assert!(!r.contains("table ip netd"), "{r}");
        assert!(r.contains("ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return"));
    }
}
