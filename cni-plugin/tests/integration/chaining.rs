//! The plugin among others: first in a chain with Debian's `portmap` (a host port forwarded
//! into the container), after `loopback` (its `prevResult` passed through), delegating IPAM
//! to Debian's `host-local`, and sharing a data directory with host-local.

use crate::common;

use std::process::{Command, Stdio};

use common::{CniEnv, World, result_ip};
use serde_json::{Value, json};

fn require(tool: &str) {
    common::require_prereqs(&[tool]);
}

#[test]
fn portmap_after_netd_cni_forwards_a_host_port() {
    require("/usr/lib/cni/portmap");
    require("/usr/bin/busybox");
    let mut w = World::new("pmap");
    let c = w.container("c");
    let conf = w.conf("1.0.0", json!({}));
    let ours = w.run("ADD", "web", &c, &conf);
    let res = ours.ok().clone();
    let container_ip = result_ip(&res);

    // The runtime passes our result to portmap, with the port mapping in runtimeConfig.
    let host_port = 20000 + (std::process::id() % 20000);
    let portmap_conf = json!({
        "cniVersion": "1.0.0",
        "name": "testnet",
        "type": "portmap",
        "runtimeConfig": {"portMappings": [
            {"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}
        ]},
        "prevResult": res,
    });
    let env = CniEnv::new("ADD", "web", &c, "eth0");
    let pm = common::exec_plugin(
        &w.host,
        "/usr/lib/cni/portmap",
        &env,
        portmap_conf.to_string().as_bytes(),
    );
    assert_eq!(pm.ok()["ips"][0]["address"], res["ips"][0]["address"]);

    // A server in the container, a client on the host talking to the host port.
    let name = c.trim_start_matches("/run/netns/").to_string();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &name,
            "busybox",
            "nc",
            "-l",
            "-p",
            "8080",
            "-e",
            "echo",
            "hello-from-container",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start server");
    let mut got = String::new();
    for _ in 0..50 {
        let out = w.in_host(&[
            "busybox",
            "nc",
            "-w",
            "2",
            "10.244.3.1",
            &host_port.to_string(),
        ]);
        got = String::from_utf8_lossy(&out.stdout).to_string();
        if got.contains("hello") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        got.contains("hello-from-container"),
        "no reply via host port: {got:?}"
    );

    // DEL in reverse order: portmap, then us.
    let mut del = env.clone();
    del.command = Some("DEL".into());
    let pm = common::exec_plugin(
        &w.host,
        "/usr/lib/cni/portmap",
        &del,
        portmap_conf.to_string().as_bytes(),
    );
    pm.ok();
    let mut conf_del = conf.clone();
    conf_del["prevResult"] = portmap_conf["prevResult"].clone();
    w.plugin(&del, &conf_del).ok();
    assert!(w.allocations().is_empty());
    w.assert_detached(&c, "eth0");
    let rules =
        String::from_utf8_lossy(&w.in_host(&["iptables-save", "-t", "nat"]).stdout).to_string();
    assert!(
        !rules.contains(&container_ip),
        "portmap left rules: {rules}"
    );
}

#[test]
fn prev_result_of_loopback_is_passed_through() {
    require("/usr/lib/cni/loopback");
    let mut w = World::new("prev");
    let c = w.container("c");
    let lo_conf = json!({"cniVersion": "1.0.0", "name": "testnet", "type": "loopback"});
    let lo_env = CniEnv::new("ADD", "chain", &c, "lo");
    let lo = common::exec_plugin(
        &w.host,
        "/usr/lib/cni/loopback",
        &lo_env,
        lo_conf.to_string().as_bytes(),
    );
    let prev = lo.ok().clone();

    let mut conf = w.conf("1.0.0", json!({}));
    conf["prevResult"] = prev.clone();
    let reply = w.run("ADD", "chain", &c, &conf);
    let res = reply.ok().clone();
    let n_prev = prev["interfaces"].as_array().map_or(0, Vec::len);
    assert_eq!(res["interfaces"][0], prev["interfaces"][0], "{res}");
    assert_eq!(res["interfaces"][n_prev + 2]["name"], "eth0");
    let ours = res["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter().find(|ip| {
                ip["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("10.244."))
            })
        })
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(ours["interface"], n_prev + 2, "{res}");
    assert!(
        res["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|ip| ip["address"] == "127.0.0.1/8"))
    );

    // CHECK with the final cached result picks our interface out of it.
    let mut check = w.conf("1.0.0", json!({}));
    check["prevResult"] = res.clone();
    w.run("CHECK", "chain", &c, &check).ok();
    w.run("DEL", "chain", &c, &check).ok();
    assert!(w.allocations().is_empty());
}

#[test]
fn delegates_ipam_to_host_local() {
    require("/usr/lib/cni/host-local");
    let mut w = World::new("deleg");
    let hl_dir = w.tmp.path().join("host-local");
    let conf = w.conf(
        "1.0.0",
        json!({"ipam": {"type": "host-local", "dataDir": hl_dir}}),
    );
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let r1 = w.run("ADD", "d1", &c1, &conf);
    let ip1 = result_ip(r1.ok());
    let r2 = w.run("ADD", "d2", &c2, &conf);
    let res2 = r2.ok().clone();
    let ip2 = result_ip(&res2);
    // host-local got the node subnet filled in and allocated from it.
    assert!(ip1.starts_with("10.244.3.") && ip1 != ip2, "{ip1} {ip2}");
    assert!(hl_dir.join("testnet").join(&ip1).exists());
    assert!(!w.data_dir().exists(), "built-in store must stay unused");
    assert!(w.ping(Some(&c1), &ip2));

    let mut check = conf.clone();
    check["prevResult"] = res2;
    w.run("CHECK", "d2", &c2, &check).ok();

    // Missing CNI_PATH when a delegate is needed: bad environment.
    let mut env = CniEnv::new("ADD", "d3", &c1, "eth1");
    env.path = None;
    w.plugin(&env, &conf).err(4);

    for (cid, c) in [("d1", &c1), ("d2", &c2)] {
        w.run("DEL", cid, c, &conf).ok();
        w.run("DEL", cid, c, &conf).ok();
    }
    assert!(!hl_dir.join("testnet").join(&ip1).exists());
    assert!(!hl_dir.join("testnet").join(&ip2).exists());
}

#[test]
fn built_in_store_interoperates_with_host_local() {
    require("/usr/lib/cni/host-local");
    let mut w = World::new("interop");
    let conf = w.conf("1.0.0", json!({}));
    let c = w.container("c");
    let ours = w.run("ADD", "ours", &c, &conf);
    let our_ip = result_ip(ours.ok());
    let file = w.data_dir().join("testnet").join(&our_ip);
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("ours\r\neth0")
    );

    // host-local on the same directory and range must see our reservation and skip it.
    let hl_conf = json!({
        "cniVersion": "1.0.0", "name": "testnet", "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": w.data_dir(),
                 "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]}
    });
    let env = CniEnv::new("ADD", "theirs", &c, "eth1");
    let hl = common::exec_plugin(
        &w.host,
        "/usr/lib/cni/host-local",
        &env,
        hl_conf.to_string().as_bytes(),
    );
    let their_ip = result_ip(hl.ok());
    assert_ne!(their_ip, our_ip);
    let mut del = env.clone();
    del.command = Some("DEL".into());
    common::exec_plugin(
        &w.host,
        "/usr/lib/cni/host-local",
        &del,
        hl_conf.to_string().as_bytes(),
    )
    .ok();
    w.run("DEL", "ours", &c, &conf).ok();
    assert!(w.allocations().is_empty());
}
