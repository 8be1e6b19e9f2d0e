//! Masquerade as the plugin programs it (one nf_tables rule per network and node subnet, over
//! netlink), proven with traffic and with what the kernel holds: a container's packet to an
//! address outside the cluster network leaves with the host's address, pod-to-pod traffic
//! (same host, or another host's subnet) keeps its source; a plugin killed mid-ADD never
//! leaves half a rule; networks keep their own rules; the earlier per-container objects go.

use std::net::IpAddr;
use std::time::Duration;

use crate::common;

use common::{CniEnv, PLUGIN, World, result_ip, udp_source};
use serde_json::json;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

#[test]
fn only_traffic_leaving_the_cluster_is_masqueraded() {
    let mut w = World::new("mqt");
    w.write_subnet("10.244.0.0/16", "10.244.3.1/24", 1450, false);
    let conf = w.conf("1.0.0", json!({}));
    let out = w.outside();
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let ip1 = ip(&result_ip(w.run("ADD", "mq-1", &c1, &conf).ok()));
    let ip2 = ip(&result_ip(w.run("ADD", "mq-2", &c2, &conf).ok()));

    // Outside the cluster network: the host's address on the way out.
    assert_eq!(
        udp_source(&c1, &out, ip("198.51.100.2"), 4101),
        Some(ip("198.51.100.1")),
        "{}",
        w.nft_ruleset()
    );
    // Another host's pod subnet, and a container on this host: the container's own address.
    assert_eq!(udp_source(&c1, &out, ip("10.244.9.2"), 4102), Some(ip1));
    assert_eq!(udp_source(&c1, &c2, ip2, 4103), Some(ip1));
    assert_eq!(
        udp_source(&c2, &out, ip("198.51.100.2"), 4104),
        Some(ip("198.51.100.1"))
    );

    // After both DELs the rule is still there, and a new container is masqueraded by it
    // without the plugin writing anything.
    w.run("DEL", "mq-1", &c1, &conf).ok();
    w.run("DEL", "mq-2", &c2, &conf).ok();
    let c3 = w.container("c3");
    w.run("ADD", "mq-3", &c3, &conf).ok();
    assert_eq!(
        w.masq_rules("ip"),
        vec![World::masq_rule_v4("10.244.3.0/24")]
    );
    assert_eq!(
        udp_source(&c3, &out, ip("198.51.100.2"), 4105),
        Some(ip("198.51.100.1"))
    );
    w.run("DEL", "mq-3", &c3, &conf).ok();
}

/// Chains of the plugin's IPv4 table that are masquerade chains.
fn masq_chains(w: &World) -> usize {
    let out = w.in_host(&["nft", "list", "table", "ip", "netd_cni"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("chain masq-"))
        .count()
}

#[test]
fn a_plugin_killed_mid_add_leaves_whole_rules() {
    let mut w = World::new("mqk");
    w.write_subnet("10.244.0.0/16", "10.244.6.1/24", 1450, false);
    let conf = w.conf("1.0.0", json!({"asyncTeardown": false}));
    let stdin = conf.to_string();
    let rule = vec![World::masq_rule_v4("10.244.6.0/24")];
    let mut first_rule_seen = None;
    // Killed at every point of the first ADDs (the ones that write), then of ADDs that find
    // the rule: the table holds no rule and no chain, or the whole rule in its chain.
    for (i, delay) in [0u64, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30]
        .iter()
        .enumerate()
    {
        let c = w.container(&format!("k{i}"));
        let env = CniEnv::new("ADD", &format!("kill-{i}"), &c, "eth0");
        let mut child = common::spawn_plugin(&w.host, PLUGIN, &env, stdin.as_bytes());
        std::thread::sleep(Duration::from_millis(*delay));
        let _ = child.kill();
        let _ = child.wait();
        let rules = w.masq_rules("ip");
        assert!(
            rules.is_empty() || rules == rule,
            "killed after {delay} ms: {rules:?}"
        );
        assert_eq!(masq_chains(&w), rules.len(), "{}", w.nft_ruleset());
        if !rules.is_empty() && first_rule_seen.is_none() {
            first_rule_seen = Some(*delay);
        }
        // What a runtime does after a failed ADD.
        w.run("DEL", &format!("kill-{i}"), &c, &conf).ok();
    }
    eprintln!("the rule was first whole after a kill at {first_rule_seen:?} ms");
    let out = w.outside();
    let c = w.container("after");
    w.run("ADD", "after", &c, &conf).ok();
    assert_eq!(w.masq_rules("ip"), rule);
    assert_eq!(masq_chains(&w), 1);
    assert_eq!(
        udp_source(&c, &out, ip("198.51.100.2"), 4201),
        Some(ip("198.51.100.1"))
    );
    w.run("DEL", "after", &c, &conf).ok();
}

#[test]
fn networks_keep_their_own_rules_and_the_old_objects_go() {
    let mut w = World::new("mqn");
    w.write_subnet("10.244.0.0/16", "10.244.3.1/24", 1450, false);
    // The earlier design's objects, as its plugin left them, with one container's element.
    let legacy = "add table ip netd_cni\n\
        add chain ip netd_cni postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
        add set ip netd_cni masq { type ipv4_addr; }\n\
        add set ip netd_cni nomasq { type ipv4_addr; flags interval; auto-merge; }\n\
        add element ip netd_cni nomasq { 10.244.0.0/16, 224.0.0.0/4 }\n\
        add rule ip netd_cni postrouting ip saddr @masq ip daddr != @nomasq masquerade\n\
        add element ip netd_cni masq { 10.244.3.9 comment \"netd-cni:0:0\" }\n";
    let script = w.tmp.path().join("legacy.nft");
    std::fs::write(&script, legacy).expect("write script");
    let path = script.to_string_lossy().to_string();
    assert!(w.in_host(&["nft", "-f", &path]).status.success());

    let conf = w.conf("1.0.0", json!({}));
    // A second network on the same host: its own bridge, subnet file and store.
    let other_subnet = w.tmp.path().join("other.env");
    std::fs::write(
        &other_subnet,
        "FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET=10.245.8.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("write subnet file");
    let other = json!({"cniVersion": "1.0.0", "name": "other", "type": "netd-cni",
        "bridge": "cni1", "subnetFile": other_subnet, "dataDir": w.tmp.path().join("data2")});
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let r1 = w.run("ADD", "n1", &c1, &conf).ok().clone();
    let text = w.nft_ruleset();
    assert!(
        !text.contains("chain postrouting") && !text.contains("@masq") && !text.contains("nomasq"),
        "the old objects are left:\n{text}"
    );
    let r2 = w.run("ADD", "n2", &c2, &other).ok().clone();
    let other_rule =
        "ip saddr 10.245.8.0/24 ip daddr != 10.245.0.0/16 ip daddr != 224.0.0.0/4 masquerade";
    let mut rules = w.masq_rules("ip");
    rules.sort();
    assert_eq!(
        rules,
        vec![World::masq_rule_v4("10.244.3.0/24"), other_rule.to_string()]
    );

    // CHECK sees each network's rule. The second network's chain removed by hand is noticed
    // by that network only, and its next ADD puts the rule back.
    let with_prev = |conf: &serde_json::Value, prev: &serde_json::Value| {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        c
    };
    w.run("CHECK", "n1", &c1, &with_prev(&conf, &r1)).ok();
    w.run("CHECK", "n2", &c2, &with_prev(&other, &r2)).ok();
    let listing = String::from_utf8_lossy(
        &w.in_host(&["nft", "list", "table", "ip", "netd_cni"])
            .stdout,
    )
    .to_string();
    let mut chain = None;
    let mut current = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ") {
            current = name.split_whitespace().next().map(str::to_string);
        }
        if line.contains("10.245.8.0/24") {
            chain = current.clone();
        }
    }
    let chain = chain.expect("the second network's chain");
    assert!(
        w.in_host(&["nft", "delete", "chain", "ip", "netd_cni", &chain])
            .status
            .success()
    );
    let failed = w.run("CHECK", "n2", &c2, &with_prev(&other, &r2));
    let msg = failed.err(101)["msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("masquerade rule for 10.245.8.0/24 missing"),
        "{msg}"
    );
    w.run("CHECK", "n1", &c1, &with_prev(&conf, &r1)).ok();
    let c3 = w.container("c3");
    w.run("ADD", "n3", &c3, &other).ok();
    w.run("CHECK", "n2", &c2, &with_prev(&other, &r2)).ok();

    for (cid, c, conf) in [("n1", &c1, &conf), ("n2", &c2, &other), ("n3", &c3, &other)] {
        w.run("DEL", cid, c, conf).ok();
    }
    assert_eq!(
        w.masq_rules("ip").len(),
        2,
        "DEL leaves both networks' rules"
    );
}
