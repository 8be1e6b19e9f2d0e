//! End-to-end: the host-gw backend, VXLAN with DirectRouting, and IP masquerade.

use crate::common;

use std::time::Duration;

use common::{World, run, try_run, wait_until};

/// Every host has a direct route to every other host's subnet via its underlay address.
fn direct_routes_match(w: &World, host: usize, hosts: &[usize]) -> bool {
    let routes = w.cluster_routes(host);
    let want: common::Routes = hosts
        .iter()
        .filter(|&&h| h != host)
        .filter_map(|&h| {
            let (net, len) = w.subnet_of(h)?;
            Some((
                format!("{net}/{len}"),
                (World::host_ip(h).to_string(), "eth0".to_string()),
            ))
        })
        .collect();
    want.len() == hosts.len() - 1 && routes == want
}

fn direct_routing_world(config: &str) {
    let mut w = World::new(3);
    w.start_etcd(config);
    for i in 1..=3 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    for h in 1..=3 {
        wait_until(
            &format!("h{h} direct routes"),
            Duration::from_secs(20),
            || direct_routes_match(&w, h, &[1, 2, 3]),
        );
        assert!(w.vxlan_neighbours(h).is_empty(), "no encapsulation entries");
        assert!(w.vxlan_fdb(h).is_empty(), "no encapsulation entries");
    }
    let c: Vec<_> = (1..=3).map(|i| w.add_container(i)).collect();
    for (from, _) in &c {
        for (_, to) in &c {
            wait_until(
                &format!("ping {from} -> {to}"),
                Duration::from_secs(10),
                || World::ping(from, *to),
            );
        }
    }
}

#[test]
fn host_gw_routes_directly_and_forwards() {
    direct_routing_world(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
}

#[test]
fn vxlan_direct_routing_uses_direct_routes_on_one_segment() {
    direct_routing_world(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
}

/// The rules of an `nft list table` listing, one per line, without their counters.
fn rule_lines(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("return") || l.ends_with("accept") || l.contains("masquerade"))
        .filter(|l| !l.starts_with("type "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let mut kept = Vec::new();
            let mut i = 0;
            while i < words.len() {
                if words[i] == "counter" {
                    i += 5; // counter packets N bytes M
                    continue;
                }
                kept.push(words[i]);
                i += 1;
            }
            kept.join(" ")
        })
        .collect()
}

#[test]
fn ip_masq_lets_containers_reach_outside_the_cluster() {
    let mut w = World::new(2);
    w.start_etcd(common::DEFAULT_CONFIG);
    w.start_netd(1, &["--ip-masq"]);
    w.start_netd(2, &[]);
    w.wait_ready(1);
    w.wait_ready(2);
    let h1 = w.host(1);
    let table = run(&[
        "ip", "netns", "exec", &h1, "nft", "list", "table", "ip", "netd",
    ]);
    // flannel's rules, as nft reads back what netd wrote over netlink.
    let (net, len) = w.subnet_of(1).expect("h1 subnet");
    let sub = format!("{net}/{len}");
    let want = [
        "meta mark & 0x00004000 == 0x00004000 return".to_string(),
        format!("ip saddr {sub} ip daddr 10.244.0.0/16 return"),
        format!("ip saddr 10.244.0.0/16 ip daddr {sub} return"),
        format!("ip saddr != 10.244.0.0/16 ip daddr {sub} return"),
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random".to_string(),
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random".to_string(),
        "ip saddr 10.244.0.0/16 accept".to_string(),
        "ip daddr 10.244.0.0/16 accept".to_string(),
    ];
    assert_eq!(rule_lines(&table), want, "{table}");
    let env = std::fs::read_to_string(w.subnet_file(1)).expect("subnet file");
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");

    // The underlay gateway has no route back to 10.244.0.0/16: only a masqueraded ping returns.
    let c1 = w.add_container(1);
    let c2 = w.add_container(2);
    let outside = common::UNDERLAY_GW;
    wait_until(
        "c1 reaches the outside through masquerade",
        Duration::from_secs(10),
        || World::ping(&c1.0, outside),
    );
    assert!(
        !World::ping(&c2.0, outside),
        "without --ip-masq h2's container is not NATed"
    );
    // Cluster-internal traffic is not NATed and still flows.
    wait_until("c1 reaches c2", Duration::from_secs(10), || {
        World::ping(&c1.0, c2.1)
    });

    // Someone flushes the ruleset: the next reconcile puts the table back.
    run(&["ip", "netns", "exec", &h1, "nft", "flush", "ruleset"]);
    wait_until("masquerade table restored", Duration::from_secs(10), || {
        try_run(&[
            "ip", "netns", "exec", &h1, "nft", "list", "table", "ip", "netd",
        ])
        .status
        .success()
    });
    wait_until(
        "c1 reaches the outside again",
        Duration::from_secs(10),
        || World::ping(&c1.0, outside),
    );

    // Restarted without --ip-masq (and with flannel's --ip-blackhole-route): the table keeps
    // only the forward rules (flannel's --iptables-forward-rules, on by default).
    assert!(w.stop_netd(1).success());
    w.start_netd(1, &["--ip-blackhole-route"]);
    w.wait_ready(1);
    wait_until(
        "only the forward rules left",
        Duration::from_secs(10),
        || {
            let t = try_run(&[
                "ip", "netns", "exec", &h1, "nft", "list", "table", "ip", "netd",
            ]);
            let text = String::from_utf8_lossy(&t.stdout);
            t.status.success() && !text.contains("masquerade") && text.contains("chain forward")
        },
    );
    // The bridge's route for the subnet stays: its container is still reached.
    wait_until("c2 reaches c1", Duration::from_secs(10), || {
        World::ping(&c2.0, c1.1)
    });
    // Without a bridge holding the subnet (per-container routes, as Canal's), the subnet is
    // routed to a blackhole within a reconcile.
    run(&["ip", "-n", &h1, "link", "del", "cni0"]);
    wait_until(
        "blackhole route for h1's subnet",
        Duration::from_secs(10),
        || {
            run(&["ip", "-n", &h1, "route", "show", "type", "blackhole"])
                .contains(&format!("blackhole {net}/{len}"))
        },
    );

    // Without forward rules either (in Go's one-dash form, as a flanneld unit would write it),
    // netd removes its table.
    assert!(w.stop_netd(1).success());
    w.start_netd(1, &["-iptables-forward-rules=false"]);
    w.wait_ready(1);
    wait_until("netd's table removed", Duration::from_secs(10), || {
        !try_run(&[
            "ip", "netns", "exec", &h1, "nft", "list", "table", "ip", "netd",
        ])
        .status
        .success()
    });
}
