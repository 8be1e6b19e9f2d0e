//! netd's masquerade and forward tables as `netd::masq` writes them over netlink, read back
//! with `nft` in a network namespace of the test's own (a thread unshared into a new one):
//! both families on a dual-stack network, replaced whole, restored when flushed, a family's
//! table dropped when the network loses it, everything removed.

use std::process::Command;

use netd::masq::{self, Rules, Scope};
use netd::subnet::SubnetKey;

fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        f()
    })
    .join()
    .expect("test thread")
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The listing's rules without counters.
fn rules(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" counter "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "counter").unwrap_or(w.len());
            let mut kept = w[..at].to_vec();
            kept.extend(w.iter().skip(at + 5));
            kept.join(" ")
        })
        .collect()
}

#[test]
fn dual_stack_tables_replaced_restored_and_removed() {
    in_new_netns(|| {
        let all = Rules {
            masquerade: true,
            fully_random: false,
            forward: true,
        };
        let dual = Scope {
            network: Some("10.244.0.0/16".parse().expect("net")),
            network6: Some("fd00:10:244::/56".parse().expect("net6")),
            subnet: SubnetKey::from_key("10.244.3.0-24&fd00:10:244:3::-64").expect("key"),
        };
        // Twice: the second install replaces the tables, it does not add to them.
        masq::install(dual, all).expect("install");
        masq::install(dual, all).expect("install again");
        let v6 = nft(&["list", "table", "ip6", "netd"]);
        assert_eq!(
            rules(&v6),
            vec![
                "meta mark & 0x00004000 == 0x00004000 return",
                "ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return",
                "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
                "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
                "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade",
                "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade",
                "ip6 saddr fd00:10:244::/56 accept",
                "ip6 daddr fd00:10:244::/56 accept",
            ],
            "{v6}"
        );
        assert_eq!(rules(&nft(&["list", "table", "ip", "netd"])).len(), 8);

        // With both tables present ensure() writes nothing (the rule handles stay); someone
        // deletes the IPv6 table: ensure() puts it back.
        let handles = nft(&["-a", "list", "table", "ip", "netd"]);
        masq::ensure(dual, all).expect("ensure");
        assert_eq!(nft(&["-a", "list", "table", "ip", "netd"]), handles);
        nft(&["delete", "table", "ip6", "netd"]);
        masq::ensure(dual, all).expect("ensure");
        assert_eq!(rules(&nft(&["list", "table", "ip6", "netd"])).len(), 8);

        // The network loses IPv6: its table goes, the IPv4 one is rebuilt.
        let v4 = Scope {
            network6: None,
            subnet: SubnetKey::from_key("10.244.3.0-24").expect("key"),
            ..dual
        };
        masq::install(v4, all).expect("install v4");
        let ruleset = nft(&["list", "ruleset"]);
        assert!(!ruleset.contains("table ip6 netd"), "{ruleset}");
        assert!(
            ruleset.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4"),
            "{ruleset}"
        );

        masq::remove().expect("remove");
        masq::remove().expect("remove again");
        assert!(!nft(&["list", "ruleset"]).contains("netd"));
    });
}
