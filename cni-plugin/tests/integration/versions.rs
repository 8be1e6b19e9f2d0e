//! Every supported spec version gets a result of its own shape; GC releases exactly the
//! attachments the runtime no longer lists.

use crate::common;

use common::{CniEnv, World, result_ip};
use serde_json::json;

#[test]
fn each_version_answers_in_its_own_shape() {
    let mut w = World::new("vers");
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .into_iter()
        .enumerate()
    {
        let conf = w.conf(v, json!({}));
        let c = w.container(&format!("c{i}"));
        let cid = format!("v{i}");
        let reply = w.run("ADD", &cid, &c, &conf);
        let res = reply.ok().clone();
        assert_eq!(res["cniVersion"], v);
        let ip = &res["ips"][0];
        if v.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{v}: {res}");
        } else {
            assert!(ip.get("version").is_none(), "{v}: {res}");
        }
        assert_eq!(
            res["interfaces"][2].get("mtu").is_some(),
            v == "1.1.0",
            "{v}: {res}"
        );
        assert!(w.ping(Some(&c), "10.244.3.1"), "{v}: no connectivity");
        if v != "0.3.0" && v != "0.3.1" {
            let mut check = conf.clone();
            check["prevResult"] = res.clone();
            w.run("CHECK", &cid, &c, &check).ok();
        }
        w.run("DEL", &cid, &c, &conf).ok();
    }
    assert!(w.allocations().is_empty());
}

#[test]
fn gc_releases_everything_not_listed() {
    let mut w = World::new("gc");
    w.write_subnet("10.244.0.0/16", "10.244.4.1/24", 1450, false);
    let base = w.conf("1.1.0", json!({}));
    let mut ips = Vec::new();
    let mut netns = Vec::new();
    for name in ["keep", "drop1", "drop2", "keep2"] {
        let c = w.container(name);
        let reply = w.run("ADD", name, &c, &base);
        ips.push(result_ip(reply.ok()));
        netns.push(c);
    }
    // One masquerade rule for the node subnet, whatever the number of containers.
    let rule = vec![World::masq_rule_v4("10.244.4.0/24")];
    assert_eq!(w.masq_rules("ip"), rule);

    // libcni >= 1.2.3 style key; the runtime has already DELed the others' interfaces.
    let mut gc = base.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "keep", "ifname": "eth0"},
        {"containerID": "keep2", "ifname": "eth0"},
        {"containerID": "drop1", "ifname": "eth9"},
    ]);
    let env = CniEnv::new("GC", "", "", "");
    let reply = w.plugin(&env, &gc);
    assert_eq!(reply.status, 0, "{}", reply.stdout);
    let mut want = vec![ips[0].clone(), ips[3].clone()];
    want.sort();
    assert_eq!(w.allocations(), want);
    // GC owes the firewall nothing: the rule is the subnet's, the kept containers use it.
    assert_eq!(w.masq_rules("ip"), rule);
    assert!(
        w.ping(Some(&netns[0]), "10.244.4.1"),
        "kept container lost connectivity"
    );

    // The spec-1.1.0 text's key works too.
    let mut gc = base.clone();
    gc["cni.dev/attachments"] = json!([{"containerID": "keep2", "ifname": "eth0"}]);
    w.plugin(&env, &gc).ok();
    assert_eq!(w.allocations(), vec![ips[3].clone()]);
    assert_eq!(w.masq_rules("ip"), rule);

    // GC is idempotent, and reaps retired veths whose reaper never ran.
    let out = w.in_host(&[
        "ip", "link", "add", "ncd-4242", "type", "veth", "peer", "name", "ncd-4243",
    ]);
    assert!(out.status.success());
    w.plugin(&env, &gc).ok();
    assert!(
        w.host_links().iter().all(|l| !l.starts_with("ncd-")),
        "{:?}",
        w.host_links()
    );
    for (name, c) in [("keep", &netns[0]), ("keep2", &netns[3])] {
        w.run("DEL", name, c, &base).ok();
    }
    assert!(w.allocations().is_empty());
    assert_eq!(w.masq_rules("ip"), rule);
}
