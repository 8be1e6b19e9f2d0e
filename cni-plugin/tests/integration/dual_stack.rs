//! A dual-stack node (`FLANNEL_IPV6_*` in the subnet file): every container gets an IPv4 and
//! an IPv6 address, both usable at once (no address left "tentative"), both default routes,
//! both masquerade entries; CHECK verifies both, DEL and GC free both, a failed ADD keeps
//! neither; host-local gets both ranges when it is the delegate.

use crate::common;

use common::{CniEnv, World, result_ip, result_ip6};
use serde_json::json;

/// The container namespace's name (`ip netns` form) of a `/run/netns/...` path.
fn ns(path: &str) -> &str {
    path.trim_start_matches("/run/netns/")
}

/// `ip -6 addr show dev <dev>` in namespace `name`.
fn addr6(name: &str, dev: &str) -> String {
    common::must(&[
        "ip", "netns", "exec", name, "ip", "-6", "addr", "show", "dev", dev,
    ])
}

#[test]
fn dual_stack_add_check_del_gc_with_traffic() {
    let mut w = World::new("dual");
    // netd does not masquerade here: the plugin does, for both families.
    w.write_dual_stack_subnet(false);
    let conf = w.conf("1.0.0", json!({}));
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let res1 = w.run("ADD", "dual-one", &c1, &conf).ok().clone();
    let res2 = w.run("ADD", "dual-two", &c2, &conf).ok().clone();

    // The result: both addresses on the container interface, each with its gateway, and a
    // default route per family.
    assert_eq!(res1["ips"][0]["gateway"], "10.244.3.1", "{res1}");
    assert_eq!(res1["ips"][1]["gateway"], "fd00:10:244:3::1", "{res1}");
    assert_eq!(res1["ips"][1]["interface"], 2, "{res1}");
    assert_eq!(
        res1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.244.3.1"},
               {"dst": "::/0", "gw": "fd00:10:244:3::1"}])
    );
    let (ip1, ip2) = (result_ip(&res1), result_ip(&res2));
    let (ip6_1, ip6_2) = (result_ip6(&res1), result_ip6(&res2));
    assert!(
        ip6_1.starts_with("fd00:10:244:3::") && ip6_1 != ip6_2,
        "{ip6_1} {ip6_2}"
    );
    assert_eq!(res1["ips"][1]["address"], format!("{ip6_1}/64"));

    // The kernel: addresses usable at once (nothing tentative), both default routes, the
    // bridge holding both gateways, IPv6 forwarding on in the host namespace.
    // (Only the gateway's line of the bridge: its link-local address is the kernel's own.)
    let a = addr6(ns(&c1), "eth0");
    assert!(a.contains(&format!("{ip6_1}/64")), "{a}");
    assert!(!a.contains("tentative"), "{a}");
    let r4 = common::must(&["ip", "netns", "exec", ns(&c1), "ip", "route"]);
    assert!(r4.contains("default via 10.244.3.1 dev eth0"), "{r4}");
    let r6 = common::must(&["ip", "netns", "exec", ns(&c1), "ip", "-6", "route"]);
    assert!(r6.contains("default via fd00:10:244:3::1 dev eth0"), "{r6}");
    let br = addr6(&w.host, "cni0");
    let gw_line = br.lines().find(|l| l.contains("fd00:10:244:3::1/64"));
    assert!(gw_line.is_some_and(|l| !l.contains("tentative")), "{br}");
    let fwd = w.in_host(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    // Real traffic over IPv6: to the gateway, between the containers both ways, from the
    // host; and byte-checked TCP from one container to the other.
    assert!(
        w.ping(Some(&c1), "fd00:10:244:3::1"),
        "c1 cannot reach the v6 gateway"
    );
    assert!(w.ping(Some(&c1), &ip6_2), "c1 cannot reach c2 over IPv6");
    assert!(w.ping(Some(&c2), &ip6_1), "c2 cannot reach c1 over IPv6");
    assert!(w.ping(None, &ip6_1), "host cannot reach c1 over IPv6");
    assert!(w.ping(Some(&c1), &ip2), "c1 cannot reach c2 over IPv4");
    let server: std::net::Ipv6Addr = ip6_2.parse().expect("IPv6 address");
    testbed::traffic::echo(ns(&c1), ns(&c2), server, 64 * 1024).expect("TCP over IPv6");

    // The store: one file per address in host-local's layout, a position file per range.
    let mut want = vec![ip1.clone(), ip2.clone(), ip6_1.clone(), ip6_2.clone()];
    want.sort();
    assert_eq!(w.allocations(), want);
    let dir = w.data_dir().join("testnet");
    assert_eq!(
        std::fs::read_to_string(dir.join(&ip6_1)).ok().as_deref(),
        Some("dual-one\r\neth0")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.1")).ok(),
        Some(ip6_2.clone())
    );

    // Masquerade: one rule per family for the node's subnet of that family, shared by both
    // containers; an IPv6 packet to an address outside the cluster leaves with the host's.
    let rule4 = vec![World::masq_rule_v4("10.244.3.0/24")];
    let rule6 = vec!["ip6 saddr fd00:10:244:3::/64 ip6 daddr != fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade".to_string()];
    assert_eq!(
        (w.masq_rules("ip"), w.masq_rules("ip6")),
        (rule4.clone(), rule6)
    );

    // CHECK passes (with the cached result, and from the store alone), then names what is
    // missing once the IPv6 address and its masquerade entry are taken away by hand.
    let mut check = conf.clone();
    check["prevResult"] = res1.clone();
    w.run("CHECK", "dual-one", &c1, &check).ok();
    w.run("CHECK", "dual-one", &c1, &conf).ok();
    common::must(&[
        "ip",
        "netns",
        "exec",
        ns(&c1),
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{ip6_1}/64"),
        "dev",
        "eth0",
    ]);
    assert!(
        w.in_host(&["nft", "flush", "table", "ip6", "netd_cni"])
            .status
            .success()
    );
    let failed = w.run("CHECK", "dual-one", &c1, &check);
    let msg = failed.err(101)["msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains(&format!("address {ip6_1}/64 missing"))
            && msg.contains("masquerade rule for fd00:10:244:3::/64 missing"),
        "{msg}"
    );

    // DEL without prevResult: the container still has its IPv4 address only, yet both of its
    // addresses leave the store; a repeated DEL is fine.
    w.run("DEL", "dual-one", &c1, &conf).ok();
    w.run("DEL", "dual-one", &c1, &conf).ok();
    assert!(
        w.allocations().iter().all(|a| *a != ip1 && *a != ip6_1),
        "{:?}",
        w.allocations()
    );
    // DEL touches no firewall state: the IPv4 rule stays, the IPv6 one stays flushed.
    assert_eq!(w.masq_rules("ip"), rule4);
    assert!(w.masq_rules("ip6").is_empty());

    // GC with no valid attachment: the other container's two addresses go; the rule stays.
    let mut gc = w.conf("1.1.0", json!({}));
    gc["cni.dev/valid-attachments"] = json!([]);
    let reply = w.plugin(&CniEnv::new("GC", "", "", ""), &gc);
    assert_eq!(reply.status, 0, "{}", reply.stdout);
    assert!(w.allocations().is_empty(), "{:?}", w.allocations());
    assert_eq!(w.masq_rules("ip"), rule4);

    w.run("DEL", "dual-two", &c2, &conf).ok();
    assert_eq!(
        w.settled_host_links(),
        vec!["lo".to_string(), "cni0".to_string()]
    );
    w.assert_detached(&c1, "eth0");
    w.assert_detached(&c2, "eth0");
}

#[test]
fn dual_stack_cluster_routes_old_versions_requests_and_rollback() {
    let mut w = World::new("dual2");
    w.write_dual_stack_subnet(true);
    // defaultRoute false: a route to each cluster network; 0.4.0 results name each family.
    let conf = w.conf(
        "0.4.0",
        json!({"defaultRoute": false, "asyncTeardown": false}),
    );
    let c1 = w.container("c1");
    let mut env = CniEnv::new("ADD", "req", &c1, "eth0");
    env.args = Some("IgnoreUnknown=1;IP=10.244.3.77,fd00:10:244:3::77".into());
    let res = w.plugin(&env, &conf).ok().clone();
    assert_eq!(res["ips"][0]["address"], "10.244.3.77/24", "{res}");
    assert_eq!(res["ips"][0]["version"], "4", "{res}");
    assert_eq!(res["ips"][1]["address"], "fd00:10:244:3::77/64", "{res}");
    assert_eq!(res["ips"][1]["version"], "6", "{res}");
    assert_eq!(
        res["routes"],
        json!([{"dst": "10.244.0.0/16", "gw": "10.244.3.1"},
               {"dst": "fd00:10:244::/56", "gw": "fd00:10:244:3::1"}])
    );
    let r6 = common::must(&["ip", "netns", "exec", ns(&c1), "ip", "-6", "route"]);
    assert!(
        r6.contains("fd00:10:244::/56 via fd00:10:244:3::1 dev eth0") && !r6.contains("default"),
        "{r6}"
    );
    assert!(w.ping(Some(&c1), "fd00:10:244:3::1"));
    // netd masquerades on this node: no table of the plugin's, of either family.
    assert!(!w.nft_ruleset().contains("netd_cni"));
    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    w.run("CHECK", "req", &c1, &check).ok();

    // An IPv6 address asked for twice is taken; the IPv4 one reserved first is given back.
    let c2 = w.container("c2");
    let mut taken = CniEnv::new("ADD", "req2", &c2, "eth0");
    taken.args = Some("IP=10.244.3.78,fd00:10:244:3::77".into());
    w.plugin(&taken, &conf).err(103);
    assert_eq!(
        w.allocations(),
        vec!["10.244.3.77".to_string(), "fd00:10:244:3::77".to_string()]
    );

    let mut del = env.clone();
    del.command = Some("DEL".into());
    w.plugin(&del, &conf).ok();
    assert!(w.allocations().is_empty());

    // A /126 has room for two IPv6 containers: a third ADD fails as a whole (code 102), its
    // IPv4 address released and its links removed.
    std::fs::write(
        w.subnet_file(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/126\n\
         FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .expect("write subnet file");
    let conf = w.conf("1.0.0", json!({"asyncTeardown": false}));
    let mut netns = Vec::new();
    for i in 0..3 {
        netns.push(w.container(&format!("t{i}")));
    }
    w.run("ADD", "t0", &netns[0], &conf).ok();
    w.run("ADD", "t1", &netns[1], &conf).ok();
    w.run("ADD", "t2", &netns[2], &conf).err(102);
    assert_eq!(w.allocations().len(), 4, "{:?}", w.allocations());
    assert_eq!(w.host_links().len(), 4, "{:?}", w.host_links());
    for (i, c) in netns.iter().enumerate() {
        w.run("DEL", &format!("t{i}"), c, &conf).ok();
    }
    assert!(w.allocations().is_empty());

    // Asking for an IPv6 address on an IPv4-only node is a config error.
    w.write_subnet("10.244.0.0/16", "10.244.3.1/24", 1450, true);
    let mut v6_on_v4 = CniEnv::new("ADD", "req3", &c2, "eth0");
    v6_on_v4.args = Some("IP=fd00:10:244:3::5".into());
    w.plugin(&v6_on_v4, &conf).err(7);
    assert!(w.allocations().is_empty());
}

#[test]
fn dual_stack_through_host_local() {
    common::require_prereqs(&["/usr/lib/cni/host-local"]);
    let mut w = World::new("dualhl");
    w.write_dual_stack_subnet(true);
    let hl_dir = w.tmp.path().join("host-local");
    let conf = w.conf(
        "1.0.0",
        json!({"ipam": {"type": "host-local", "dataDir": hl_dir}}),
    );
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let res1 = w.run("ADD", "h1", &c1, &conf).ok().clone();
    let res2 = w.run("ADD", "h2", &c2, &conf).ok().clone();
    // host-local allocated one address from each range it was handed.
    let (ip6_1, ip6_2) = (result_ip6(&res1), result_ip6(&res2));
    assert!(
        ip6_1.starts_with("fd00:10:244:3::") && ip6_1 != ip6_2,
        "{res1} {res2}"
    );
    assert!(result_ip(&res1).starts_with("10.244.3."), "{res1}");
    let net_dir = hl_dir.join("testnet");
    assert!(net_dir.join(&ip6_1).exists() && net_dir.join("last_reserved_ip.1").exists());
    assert!(!w.data_dir().exists(), "built-in store must stay unused");
    let r6 = common::must(&["ip", "netns", "exec", ns(&c1), "ip", "-6", "route"]);
    assert!(r6.contains("default via fd00:10:244:3::1 dev eth0"), "{r6}");
    assert!(w.ping(Some(&c1), &ip6_2), "c1 cannot reach c2 over IPv6");
    assert!(w.ping(Some(&c2), &ip6_1), "c2 cannot reach c1 over IPv6");

    let mut check = conf.clone();
    check["prevResult"] = res1;
    w.run("CHECK", "h1", &c1, &check).ok();
    for (cid, c) in [("h1", &c1), ("h2", &c2)] {
        w.run("DEL", cid, c, &conf).ok();
        w.run("DEL", cid, c, &conf).ok();
    }
    let left: Vec<String> = std::fs::read_dir(&net_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "host-local kept {left:?}");
}

/// An IPv6-only node (the subnet file has the IPv6 pair alone, as netd and flanneld write it
/// for `"EnableIPv4": false`): the container gets an IPv6 address and default route and no
/// IPv4; the store uses range 0; masquerade is the `ip6` table's alone; CHECK and DEL work.
#[test]
fn ipv6_only_add_check_del() {
    let mut w = World::new("v6only");
    std::fs::write(
        w.subnet_file(),
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
         FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
    )
    .expect("write subnet file");
    let conf = w.conf("1.0.0", json!({}));
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let res1 = w.run("ADD", "v6-one", &c1, &conf).ok().clone();
    let res2 = w.run("ADD", "v6-two", &c2, &conf).ok().clone();
    assert_eq!(res1["ips"].as_array().map(Vec::len), Some(1), "{res1}");
    assert_eq!(res1["ips"][0]["gateway"], "fd00:10:244:3::1", "{res1}");
    assert_eq!(
        res1["routes"],
        json!([{"dst": "::/0", "gw": "fd00:10:244:3::1"}])
    );
    let (ip6_1, ip6_2) = (result_ip6(&res1), result_ip6(&res2));
    assert!(ip6_1.starts_with("fd00:10:244:3::") && ip6_1 != ip6_2);
    let a4 = common::must(&[
        "ip",
        "netns",
        "exec",
        ns(&c1),
        "ip",
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert!(a4.trim().is_empty(), "no IPv4 address: {a4}");
    assert!(!addr6(ns(&c1), "eth0").contains("tentative"));
    let r6 = common::must(&["ip", "netns", "exec", ns(&c1), "ip", "-6", "route"]);
    assert!(r6.contains("default via fd00:10:244:3::1 dev eth0"), "{r6}");
    // The bridge holds the IPv6 gateway only, with a MAC from its last four bytes.
    let br4 = common::must(&[
        "ip", "netns", "exec", &w.host, "ip", "-4", "addr", "show", "dev", "cni0",
    ]);
    assert!(br4.trim().is_empty(), "{br4}");
    let link = common::must(&["ip", "netns", "exec", &w.host, "ip", "link", "show", "cni0"]);
    assert!(link.contains("0a:58:00:00:00:01"), "{link}");
    assert!(w.ping(Some(&c1), &ip6_2), "c1 cannot reach c2 over IPv6");
    let server: std::net::Ipv6Addr = ip6_2.parse().expect("IPv6 address");
    testbed::traffic::echo(ns(&c1), ns(&c2), server, 64 * 1024).expect("TCP over IPv6");
    // host-local's layout with ranges [[v6]]: the IPv6 range is range 0.
    let dir = w.data_dir().join("testnet");
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.0")).ok(),
        Some(ip6_2.clone())
    );
    // IPv6 only: the ip6 rule alone.
    assert!(w.masq_rules("ip").is_empty(), "{:?}", w.masq_rules("ip"));
    let rule6 = vec!["ip6 saddr fd00:10:244:3::/64 ip6 daddr != fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade".to_string()];
    assert_eq!(w.masq_rules("ip6"), rule6);
    let mut check = conf.clone();
    check["prevResult"] = res1.clone();
    w.run("CHECK", "v6-one", &c1, &check).ok();
    w.run("CHECK", "v6-one", &c1, &conf).ok();
    w.run("DEL", "v6-one", &c1, &conf).ok();
    w.run("DEL", "v6-one", &c1, &conf).ok();
    assert_eq!(w.allocations(), vec![ip6_2.clone()]);
    assert_eq!(w.masq_rules("ip6"), rule6);
    w.run("DEL", "v6-two", &c2, &conf).ok();
    assert!(w.allocations().is_empty(), "{:?}", w.allocations());
    w.assert_detached(&c1, "eth0");
    w.assert_detached(&c2, "eth0");
}
