//! Outbound masquerade for nodes where netd does not masquerade itself, programmed over
//! netlink ([`hostnet::nftables`]; no `nft` process).
//!
//! One rule covers the node's whole pod subnet, so the per-container path touches no firewall
//! state: in table `ip netd_cni` (`ip6 netd_cni` for IPv6), a base chain per network and source
//! subnet, `masq-<hash of both>` (type nat, hook postrouting, priority srcnat), holds
//!
//! ```text
//! ip saddr 10.244.3.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 counter masquerade comment "netd-cni: ..."
//! ```
//!
//! — flannel's policy: traffic leaving the cluster network is masqueraded, pod-to-pod traffic
//! and multicast are not (IPv6: the IPv6 cluster network and `ff00::/8`). ADD reads the chain's
//! rules (one netlink dump per family) and writes only when the rule is missing or different
//! (the first container of a network, a new lease, a new cluster network): then one batch adds
//! the table and chain, flushes the chain and adds the rule, which the kernel applies
//! atomically, so a plugin killed mid-ADD leaves the old rule or the new one, never half of
//! one; concurrent ADDs each leave exactly one rule. DEL, GC and a failed ADD's rollback owe
//! nothing: the rule belongs to the subnet, not to a container, and stays while other
//! containers (and later ones) use it. A network's chains are independent of another
//! network's, so several conflists on one host do not disturb each other.
//!
//! The source subnet is the node's subnet of that family from `subnet.env`; an address from a
//! delegated IPAM plugin outside it gets a chain for its own prefix.
//!
//! The plugin's earlier design kept a set element per container in chain `postrouting` and
//! sets `masq` / `nomasq` of the same table; the first write of this one deletes them (the new
//! rules cover those containers too).

use std::net::IpAddr;

use hostnet::nftables::{self, Action, Batch, Family, Hook, Match, Rule};
use ipnetwork::IpNetwork;

use crate::error::{CniError, Result};
use crate::naming;

/// The plugin's table, in each family.
pub const TABLE: &str = "netd_cni";
/// The earlier design's objects in that table, removed on the first write.
const LEGACY_CHAIN: &str = "postrouting";
const LEGACY_SETS: [&str; 2] = ["masq", "nomasq"];
/// How often a write is retried when a concurrent ADD removed the legacy objects first.
const WRITE_ATTEMPTS: usize = 3;

/// What one masquerade rule covers: traffic from `source` to anywhere outside `cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub source: IpNetwork,
    pub cluster: IpNetwork,
}

impl Scope {
    /// The scope of a container address: the node subnet of its family when the address is in
    /// it, else the address's own prefix.
    pub fn of(addr: IpNetwork, node_subnet: Option<IpNetwork>, cluster: IpNetwork) -> Scope {
        let source = match node_subnet {
            Some(s) if s.contains(addr.ip()) => s,
            _ => IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(addr),
        };
        Scope { source, cluster }
    }

    fn family(&self) -> Family {
        match self.source {
            IpNetwork::V4(_) => Family::Ip,
            IpNetwork::V6(_) => Family::Ip6,
        }
    }

    fn multicast(&self) -> IpNetwork {
        match self.source {
            IpNetwork::V4(_) => IpNetwork::new(IpAddr::from([224, 0, 0, 0]), 4),
            IpNetwork::V6(_) => IpNetwork::new(IpAddr::from([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8),
        }
        .unwrap_or(self.cluster)
    }

    fn chain(&self, network: &str) -> String {
        naming::masq_chain(network, &self.source.to_string())
    }

    /// The comment doubles as the rule's fingerprint: equal comment, equal rule.
    fn comment(&self, network: &str) -> String {
        format!(
            "netd-cni: masquerade {} leaving {}, network {network}",
            self.source, self.cluster
        )
    }

    fn rule(&self, network: &str) -> Rule {
        Rule::new(
            vec![
                Match::from(self.source),
                Match::not_to(self.cluster),
                Match::not_to(self.multicast()),
            ],
            Action::Masquerade {
                fully_random: false,
            },
        )
        .with_comment(self.comment(network))
    }

    /// True when the scope's chain holds exactly its rule.
    fn installed(&self, network: &str) -> Result<bool> {
        let comments = nftables::rule_comments(self.family(), TABLE, &self.chain(network))
            .map_err(firewall)?;
        Ok(comments == [Some(self.comment(network))])
    }
}

fn firewall(e: nftables::Error) -> CniError {
    CniError::Firewall(e.to_string())
}

/// Makes sure network `network` masquerades each of `scopes`; writes only what is missing.
pub fn ensure(network: &str, scopes: &[Scope]) -> Result<()> {
    let mut missing = Vec::new();
    for s in scopes {
        if !s.installed(network)? {
            missing.push(*s);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        match write(network, &missing) {
            Err(CniError::Firewall(_)) if attempt < WRITE_ATTEMPTS && legacy_race(&missing) => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True when a failed write may have lost a race over the legacy objects (they are gone now).
fn legacy_race(scopes: &[Scope]) -> bool {
    scopes.iter().all(|s| {
        nftables::chains(s.family(), TABLE).is_ok_and(|c| !c.iter().any(|n| n == LEGACY_CHAIN))
    })
}

/// One batch: table, the legacy objects' removal, each scope's chain flushed and refilled.
fn write(network: &str, scopes: &[Scope]) -> Result<()> {
    let mut batch = Batch::new();
    let mut families: Vec<Family> = scopes.iter().map(Scope::family).collect();
    families.dedup();
    for family in families {
        batch.add_table(family, TABLE);
        let chains = nftables::chains(family, TABLE).map_err(firewall)?;
        if chains.iter().any(|c| c == LEGACY_CHAIN) {
            batch.delete_chain(family, TABLE, LEGACY_CHAIN);
            for set in LEGACY_SETS {
                batch.delete_set(family, TABLE, set);
            }
        }
    }
    for s in scopes {
        let chain = s.chain(network);
        batch.add_chain(s.family(), TABLE, &chain, Some(Hook::NatPostrouting));
        batch.flush_chain(s.family(), TABLE, &chain);
        batch.add_rule(s.family(), TABLE, &chain, &s.rule(network));
    }
    batch.commit().map_err(firewall)
}

/// What CHECK reports: one line per scope whose rule is missing or different.
pub fn problems(network: &str, scopes: &[Scope]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in scopes {
        if !s.installed(network)? {
            out.push(format!("masquerade rule for {} missing", s.source));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("literal")
    }

    #[test]
    fn scopes_cover_the_node_subnet_and_name_their_chain() {
        let cluster = net("10.244.0.0/16");
        let s = Scope::of(net("10.244.3.7/24"), Some(net("10.244.3.0/24")), cluster);
        assert_eq!(s.source, net("10.244.3.0/24"));
        // Every container of the subnet shares the scope, so the chain and rule.
        let t = Scope::of(net("10.244.3.9/24"), Some(net("10.244.3.0/24")), cluster);
        assert_eq!(s, t);
        assert_eq!(s.chain("n"), t.chain("n"));
        assert_ne!(s.chain("n"), s.chain("other"));
        // A delegated address outside the node subnet: its own prefix.
        let d = Scope::of(net("192.168.5.4/26"), Some(net("10.244.3.0/24")), cluster);
        assert_eq!(d.source, net("192.168.5.0/26"));
        assert_ne!(d.chain("n"), s.chain("n"));
        let r = s.rule("n");
        assert_eq!(
            r.matches,
            vec![
                Match::from(net("10.244.3.0/24")),
                Match::not_to(cluster),
                Match::not_to(net("224.0.0.0/4"))
            ]
        );
        assert!(
            r.comment
                .as_deref()
                .is_some_and(|c| c.contains("10.244.3.0/24 leaving 10.244.0.0/16"))
        );
        let v6 = Scope::of(
            net("fd00:10:244:3::5/64"),
            Some(net("fd00:10:244:3::/64")),
            net("fd00:10:244::/56"),
        );
        assert_eq!(v6.family(), Family::Ip6);
        assert_eq!(v6.multicast(), net("ff00::/8"));
    }
}
