//! The plugin driven as a runtime drives it, in private namespaces: ADD gives working
//! connectivity, CHECK notices damage, DEL is idempotent in every situation the spec names,
//! failed ADDs roll back, and nothing is left behind.

use crate::common;

use common::{CniEnv, World, result_ip};
use serde_json::json;

#[test]
fn add_check_del_with_traffic_and_no_leftovers() {
    let mut w = World::new("life");
    // netd does not masquerade here, so the plugin must (one nf_tables rule for the subnet).
    w.write_subnet("10.244.0.0/16", "10.244.3.1/24", 1450, false);
    let conf = w.conf("1.0.0", json!({}));
    let c1 = w.container("c1");
    let c2 = w.container("c2");

    let r1 = w.run("ADD", "cid-one", &c1, &conf);
    let res1 = r1.ok().clone();
    let r2 = w.run("ADD", "cid-two", &c2, &conf);
    let res2 = r2.ok().clone();
    assert_eq!(res1["cniVersion"], "1.0.0");
    assert_eq!(res1["interfaces"][2]["name"], "eth0");
    assert_eq!(res1["interfaces"][2]["sandbox"], c1.as_str());
    assert_eq!(res1["ips"][0]["interface"], 2);
    assert_eq!(res1["ips"][0]["gateway"], "10.244.3.1");
    assert_eq!(res1["routes"][0]["dst"], "0.0.0.0/0");
    let (ip1, ip2) = (result_ip(&res1), result_ip(&res2));
    assert_ne!(ip1, ip2);

    // Interface, address, MTU and route inside the container.
    let name1 = c1.trim_start_matches("/run/netns/");
    let addr = common::must(&[
        "ip", "netns", "exec", name1, "ip", "-o", "addr", "show", "eth0",
    ]);
    assert!(addr.contains(&format!("{ip1}/24")), "{addr}");
    let link = common::must(&["ip", "netns", "exec", name1, "ip", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450") && link.contains("UP"), "{link}");
    let route = common::must(&["ip", "netns", "exec", name1, "ip", "route"]);
    assert!(route.contains("default via 10.244.3.1 dev eth0"), "{route}");

    // Host side: veth enslaved to cni0 in hairpin mode; the bridge keeps its fixed MAC.
    let host_veth1 = res1["interfaces"][1]["name"].as_str().expect("host veth");
    let detail = w.in_host(&["ip", "-d", "link", "show", host_veth1]);
    let detail = String::from_utf8_lossy(&detail.stdout).to_string();
    assert!(
        detail.contains("master cni0") && detail.contains("hairpin on"),
        "{detail}"
    );
    assert_eq!(res1["interfaces"][0]["mac"], "0a:58:0a:f4:03:01");
    assert_eq!(res2["interfaces"][0]["mac"], "0a:58:0a:f4:03:01");

    // Real traffic: container → gateway, container → container, host → container.
    assert!(
        w.ping(Some(&c1), "10.244.3.1"),
        "c1 cannot reach the gateway"
    );
    assert!(w.ping(Some(&c1), &ip2), "c1 cannot reach c2");
    assert!(w.ping(Some(&c2), &ip1), "c2 cannot reach c1");
    assert!(w.ping(None, &ip1), "host cannot reach c1");

    // One masquerade rule covers both containers.
    let rule = vec![World::masq_rule_v4("10.244.3.0/24")];
    assert_eq!(w.masq_rules("ip"), rule);

    // CHECK passes with the cached result, then fails once the veth is deleted by hand.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = res1.clone();
    w.run("CHECK", "cid-one", &c1, &check_conf).ok();
    let host_veth = res1["interfaces"][1]["name"]
        .as_str()
        .expect("host veth name");
    let out = w.in_host(&["ip", "link", "del", host_veth]);
    assert!(out.status.success());
    let failed = w.run("CHECK", "cid-one", &c1, &check_conf);
    let err = failed.err(101);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("eth0 missing") && msg.contains(host_veth),
        "{msg}"
    );

    // DEL twice (with prevResult, as 1.1 runtimes send).
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = res1.clone();
    w.run("DEL", "cid-one", &c1, &del_conf).ok();
    w.run("DEL", "cid-one", &c1, &del_conf).ok();

    // DEL with an empty netns (containerd) still cleans the host side and the address.
    w.run("DEL", "cid-two", "", &conf).ok();
    assert!(
        !w.ping(Some(&c1), "10.244.3.1"),
        "c1 still connected after DEL"
    );
    let links = w.settled_host_links();
    assert_eq!(
        links,
        vec!["lo".to_string(), "cni0".to_string()],
        "left behind"
    );
    assert!(
        w.allocations().is_empty(),
        "addresses left: {:?}",
        w.allocations()
    );
    // DEL owes the firewall nothing: the subnet's rule stays for the next container.
    assert_eq!(w.masq_rules("ip"), rule, "{}", w.nft_ruleset());
    // c2's interface went with its host end.
    let name2 = c2.trim_start_matches("/run/netns/");
    assert!(
        !common::sh(&["ip", "netns", "exec", name2, "ip", "link", "show", "eth0"])
            .status
            .success()
    );
}

#[test]
fn del_after_the_netns_is_gone_and_proc_pid_netns() {
    let mut w = World::new("gone");
    w.write_subnet("10.244.0.0/16", "10.244.7.1/24", 1400, false);
    let conf = w.conf("0.4.0", json!({}));
    // A netns reachable only as /proc/<pid>/ns/net, as containerd passes it.
    let (pid, path) = w.pid_container();
    let res = w.run("ADD", "ctr-default-x1", &path, &conf);
    let ip = result_ip(res.ok());
    assert!(
        w.ping(None, &ip),
        "host cannot reach the /proc/<pid> container"
    );
    assert!(w.ping(Some(&path), "10.244.7.1"));
    let rule = vec![World::masq_rule_v4("10.244.7.0/24")];
    assert_eq!(w.masq_rules("ip"), rule);

    // The container dies: its netns (and so its veth) vanish; the runtime still DELs.
    w.kill_pid_container(pid);
    w.run("DEL", "ctr-default-x1", &path, &conf).ok();
    assert!(w.allocations().is_empty());
    assert_eq!(w.masq_rules("ip"), rule, "{}", w.nft_ruleset());

    // A named netns removed before DEL.
    let c = w.container("c");
    let res = w.run("ADD", "podman-1", &c, &conf);
    res.ok();
    w.remove_container(&c);
    w.run("DEL", "podman-1", &c, &conf).ok();
    assert!(w.allocations().is_empty());
    assert_eq!(w.masq_rules("ip"), rule);
    assert_eq!(
        w.settled_host_links(),
        vec!["lo".to_string(), "cni0".to_string()]
    );
}

#[test]
fn failed_add_rolls_back_everything() {
    let mut w = World::new("roll");
    w.write_subnet("10.244.0.0/16", "10.244.9.1/24", 1450, false);
    let conf = w.conf("1.0.0", json!({}));
    let c = w.container("c");

    // Occupy the host veth name this attachment will want: creation fails after IPAM ran.
    let first = w.run("ADD", "victim", &c, &conf);
    let host_veth = first.ok()["interfaces"][1]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    w.run("DEL", "victim", &c, &conf).ok();
    let out = w.in_host(&["ip", "link", "add", &host_veth, "type", "bridge"]);
    assert!(out.status.success());
    let failed = w.run("ADD", "victim", &c, &conf);
    failed.err(100);
    assert!(w.allocations().is_empty(), "leaked {:?}", w.allocations());
    // The rollback leaves the subnet's rule alone: other containers share it.
    assert_eq!(
        w.masq_rules("ip"),
        vec![World::masq_rule_v4("10.244.9.0/24")]
    );
    // The pre-existing link is not ours: it must survive the rollback.
    assert!(w.host_links().contains(&host_veth));

    // An interface that already exists in the container: error, nothing allocated.
    let name = c.trim_start_matches("/run/netns/");
    common::must(&[
        "ip", "netns", "exec", name, "ip", "link", "add", "eth0", "type", "veth", "peer", "name",
        "x0",
    ]);
    let dup = w.run("ADD", "other", &c, &conf);
    dup.err(103);
    assert!(w.allocations().is_empty());
}

#[test]
fn cluster_only_routes_mtu_override_no_masquerade_sync_teardown() {
    let mut w = World::new("route");
    let conf = w.conf(
        "1.1.0",
        json!({"defaultRoute": false, "mtu": 1300, "ipMasq": false, "bridge": "br-test",
               "asyncTeardown": false}),
    );
    let c = w.container("c");
    let env = CniEnv::new("ADD", "cid", &c, "net1");
    let reply = w.plugin(&env, &conf);
    let res = reply.ok();
    assert_eq!(res["interfaces"][0]["name"], "br-test");
    assert_eq!(res["interfaces"][2]["mtu"], 1300);
    assert_eq!(res["routes"][0]["dst"], "10.244.0.0/16");
    let name = c.trim_start_matches("/run/netns/");
    let routes = common::must(&["ip", "netns", "exec", name, "ip", "route"]);
    assert!(
        routes.contains("10.244.0.0/16 via 10.244.3.1 dev net1"),
        "{routes}"
    );
    assert!(!routes.contains("default"), "{routes}");
    assert!(
        !w.nft_ruleset().contains("netd_cni"),
        "masquerade must be off"
    );
    let mut del = env.clone();
    del.command = Some("DEL".into());
    w.plugin(&del, &conf).ok();
    assert!(w.allocations().is_empty());
    // Synchronous teardown: gone when DEL returns, no waiting.
    assert_eq!(
        w.host_links(),
        vec!["lo".to_string(), "br-test".to_string()]
    );
    let ns_links = common::must(&["ip", "netns", "exec", name, "ip", "-o", "link"]);
    assert!(!ns_links.contains("net1"), "{ns_links}");
}

#[test]
fn cni_args_from_runtimes_and_requested_addresses() {
    let mut w = World::new("args");
    let conf = w.conf("1.0.0", json!({"ipMasq": false}));
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    // podman's CNI_ARGS plus a requested address.
    let mut env = CniEnv::new("ADD", "req", &c1, "eth0");
    env.args = Some("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.244.3.77".into());
    let reply = w.plugin(&env, &conf);
    assert_eq!(reply.ok()["ips"][0]["address"], "10.244.3.77/24");
    // The same address again: taken. Outside the subnet, or the gateway: invalid.
    let mut taken = CniEnv::new("ADD", "req2", &c2, "eth0");
    taken.args = Some("IP=10.244.3.77".into());
    w.plugin(&taken, &conf).err(103);
    for bad in ["IP=10.9.9.9", "IP=10.244.3.1", "IP=banana"] {
        taken.args = Some(bad.into());
        let reply = w.plugin(&taken, &conf);
        assert!(reply.status != 0 && [4, 7].contains(&reply.json["code"].as_u64().unwrap_or(0)));
    }
    assert_eq!(w.allocations(), vec!["10.244.3.77".to_string()]);
    let mut del = env.clone();
    del.command = Some("DEL".into());
    w.plugin(&del, &conf).ok();
    assert!(w.allocations().is_empty());
}
