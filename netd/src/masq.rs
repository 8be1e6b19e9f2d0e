//! IP masquerade and forward rules in nf_tables, owned by netd: one table per family the
//! network has, `ip netd` and `ip6 netd`, replaced atomically (both families in one netlink
//! batch, through [`hostnet::nftables`]: no `nft` process); a family's table is deleted when
//! the network lacks that family or no rule set is wanted.
//!
//! Same policy as flannel's `--ip-masq`: traffic inside the cluster network is never NATed;
//! traffic from the cluster network to the outside (except multicast) is masqueraded (with
//! fully-random ports unless `--ip-masq-fully-random-disable`); traffic from outside to another
//! host's subnet is masqueraded; kube-proxy's mark is respected. As flannel's
//! `--iptables-forward-rules` (on by default), forwarded traffic from and to the cluster network
//! is accepted. IPv6 gets the same rules against `IPv6Network` (multicast is `ff00::/8`).
//!
//! `nft list table ip netd` shows them as:
//! ```text
//! chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     meta mark & 0x00004000 == 0x00004000 counter return
//!     ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 counter return
//!     ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 counter return
//!     ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 counter return
//!     ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 counter masquerade fully-random
//!     ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 counter masquerade fully-random
//! }
//! chain forward {
//!     type filter hook forward priority filter; policy accept;
//!     ip saddr 10.244.0.0/16 counter accept
//!     ip daddr 10.244.0.0/16 counter accept
//! }
//! ```

use hostnet::nftables::{Action, Batch, Family, Hook, Match, Rule};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::error::{Error, Result};
use crate::subnet::SubnetKey;

/// Name of the tables netd owns.
pub const TABLE: &str = "netd";

/// kube-proxy's masquerade mark: packets it marked are left to its own rules.
const KUBE_MARK: u32 = 0x4000;

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

/// One family's tables' contents: the cluster network, this host's subnet, multicast.
struct FamilyScope {
    family: Family,
    net: IpNetwork,
    sub: IpNetwork,
    multicast: IpNetwork,
}

/// The families the scope has both a network and a subnet of.
fn families(scope: Scope) -> Vec<FamilyScope> {
    let mut out = Vec::new();
    if let (Some(net), Some(sub)) = (scope.network, scope.subnet.v4) {
        out.push(FamilyScope {
            family: Family::Ip,
            net: IpNetwork::V4(net),
            sub: IpNetwork::V4(sub.0),
            multicast: IpNetwork::V4(
                Ipv4Network::new_checked([224, 0, 0, 0].into(), 4).unwrap_or(net),
            ),
        });
    }
    if let (Some(net6), Some(sub6)) = (scope.network6, scope.subnet.v6) {
        out.push(FamilyScope {
            family: Family::Ip6,
            net: IpNetwork::V6(net6),
            sub: IpNetwork::V6(sub6.0),
            multicast: IpNetwork::V6(
                Ipv6Network::new_checked([0xff00, 0, 0, 0, 0, 0, 0, 0].into(), 8).unwrap_or(net6),
            ),
        });
    }
    out
}

/// The chains of one family's table, rule by rule: (chain, hook, rules).
fn chains(f: &FamilyScope, rules: Rules) -> Vec<(&'static str, Hook, Vec<Rule>)> {
    let (net, sub) = (f.net, f.sub);
    let mut out = Vec::new();
    if rules.masquerade {
        let masq = Action::Masquerade {
            fully_random: rules.fully_random,
        };
        out.push((
            "postrouting",
            Hook::NatPostrouting,
            vec![
                Rule::new(vec![Match::MarkHas(KUBE_MARK)], Action::Return),
                Rule::new(vec![Match::from(sub), Match::to(net)], Action::Return),
                Rule::new(vec![Match::from(net), Match::to(sub)], Action::Return),
                Rule::new(vec![Match::not_from(net), Match::to(sub)], Action::Return),
                Rule::new(vec![Match::from(net), Match::not_to(f.multicast)], masq),
                Rule::new(vec![Match::not_from(net), Match::to(net)], masq),
            ],
        ));
    }
    if rules.forward {
        out.push((
            "forward",
            Hook::FilterForward,
            vec![
                Rule::new(vec![Match::from(net)], Action::Accept),
                Rule::new(vec![Match::to(net)], Action::Accept),
            ],
        ));
    }
    out
}

/// Adds to `batch` what (re)creates the tables: each family's table is created if missing,
/// deleted with its contents and built anew, in the same transaction.
pub fn ruleset(batch: &mut Batch, scope: Scope, rules: Rules) {
    for f in families(scope) {
        batch.add_table(f.family, TABLE);
        batch.delete_table(f.family, TABLE);
        batch.add_table(f.family, TABLE);
        for (chain, hook, chain_rules) in chains(&f, rules) {
            batch.add_chain(f.family, TABLE, chain, Some(hook));
            for rule in &chain_rules {
                batch.add_rule(f.family, TABLE, chain, rule);
            }
        }
    }
}

/// Installs (or replaces) the rules; with none wanted, removes the tables.
pub fn install(scope: Scope, rules: Rules) -> Result<()> {
    if !rules.any() {
        return remove();
    }
    let mut batch = Batch::new();
    // A run with another config before may have left the table of a family not in use now.
    for (family, used) in [
        (Family::Ip, scope.network.is_some()),
        (Family::Ip6, scope.network6.is_some()),
    ] {
        if !used {
            batch.add_table(family, TABLE);
            batch.delete_table(family, TABLE);
        }
    }
    ruleset(&mut batch, scope, rules);
    Ok(batch.commit()?)
}

/// Re-installs the rules when one of netd's tables is missing (e.g. someone flushed the ruleset).
pub fn ensure(scope: Scope, rules: Rules) -> Result<()> {
    if !rules.any() {
        return Ok(());
    }
    let present = |family| hostnet::nftables::table_exists(family, TABLE);
    if (scope.network.is_none() || present(Family::Ip)?)
        && (scope.network6.is_none() || present(Family::Ip6)?)
    {
        return Ok(());
    }
    tracing::warn!("netd's nftables table is missing; re-installing it");
    install(scope, rules)
}

/// Removes netd's tables if present.
pub fn remove() -> Result<()> {
    let mut batch = Batch::new();
    for family in [Family::Ip, Family::Ip6] {
        batch.add_table(family, TABLE);
        batch.delete_table(family, TABLE);
    }
    Ok(batch.commit()?)
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
    use super::*;

    fn all() -> Rules {
        Rules {
            masquerade: true,
            fully_random: true,
            forward: true,
        }
    }

    /// The batch as its list of changes, for reading in assertions.
    fn script(scope: Scope, rules: Rules) -> String {
        let mut b = Batch::new();
        ruleset(&mut b, scope, rules);
        format!("{b:?}")
    }

    #[test]
    fn rules_follow_flannel_per_family() {
        let scope = Scope {
            network: Some("10.244.0.0/16".parse().unwrap()),
            network6: None,
            subnet: SubnetKey::from_key("10.244.3.0-24").unwrap(),
        };
        let f = &families(scope)[0];
        let c = chains(f, all());
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].0, "postrouting");
        assert_eq!(c[0].2.len(), 6);
        let sub: IpNetwork = "10.244.3.0/24".parse().unwrap();
        let net: IpNetwork = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            c[0].2[1].matches,
            vec![Match::from(sub), Match::to(net)],
            "pod to pod from this host is not NATed"
        );
        assert_eq!(
            c[0].2[4],
            Rule::new(
                vec![
                    Match::from(net),
                    Match::not_to("224.0.0.0/4".parse().unwrap())
                ],
                Action::Masquerade { fully_random: true }
            )
        );
        assert_eq!(c[1].1, Hook::FilterForward);
        let plain = chains(
            f,
            Rules {
                fully_random: false,
                forward: false,
                ..all()
            },
        );
        assert_eq!(plain.len(), 1);
        assert_eq!(
            plain[0].2[5].action,
            Action::Masquerade {
                fully_random: false
            }
        );
        // The table is replaced: added, deleted and built anew in one batch.
        let s = script(scope, all());
        assert!(
            s.contains("add table ip netd") && s.contains("delete table ip netd"),
            "{s}"
        );
        assert!(!s.contains("ip6"), "{s}");
        // Dual-stack: the same rules for IPv6 in an ip6 table, in the same batch.
        let dual = Scope {
            network6: Some("fd00:10:244::/56".parse().unwrap()),
            subnet: SubnetKey::from_key("10.244.3.0-24&fd00:10:244:3::-64").unwrap(),
            ..scope
        };
        let fams = families(dual);
        assert_eq!(fams.len(), 2);
        assert_eq!(fams[1].family, Family::Ip6);
        assert_eq!(fams[1].multicast, "ff00::/8".parse::<IpNetwork>().unwrap());
        assert!(script(dual, all()).contains("add chain ip6 netd postrouting"));
        // IPv6-only: the ip6 table alone.
        let v6only = Scope {
            network: None,
            subnet: SubnetKey::from_key("0.0.0.0-0&fd00:10:244:3::-64").unwrap(),
            ..dual
        };
        let s = script(v6only, all());
        assert!(
            s.contains("add table ip6 netd") && !s.contains("table ip netd"),
            "{s}"
        );
    }
}
