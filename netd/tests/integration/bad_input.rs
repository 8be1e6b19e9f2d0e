//! End-to-end: malformed and out-of-network records, a config with bad JSON, an exhausted
//! network, bad command lines, and the operator subcommands.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{NETD, World, wait_until};

#[test]
fn malformed_and_out_of_network_records_do_not_disturb_routing() {
    let mut w = World::new(2);
    w.start_etcd(common::DEFAULT_CONFIG);
    for i in 1..=2 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    w.wait_converged(&[1, 2]);
    let c1 = w.add_container(1);
    let c2 = w.add_container(2);
    wait_until("c1 reaches c2", Duration::from_secs(10), || {
        World::ping(&c1.0, c2.1)
    });

    let p = format!("{}/subnets/", w.prefix_key);
    let vx = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    let bad = [
        (format!("{p}garbage"), vx("192.0.2.77", "02:00:00:00:00:77")),
        (format!("{p}10.244.77.0-24"), "{not json".to_string()),
        // Outside the network, and a would-be default route: must never be installed.
        (
            format!("{p}10.245.1.0-24"),
            vx("192.0.2.78", "02:00:00:00:00:78"),
        ),
        (
            format!("{p}0.0.0.0-0"),
            vx("192.0.2.79", "02:00:00:00:00:79"),
        ),
        // PublicIP inside the cluster network.
        (
            format!("{p}10.244.80.0-24"),
            vx("10.244.2.9", "02:00:00:00:00:80"),
        ),
    ];
    for (k, v) in &bad {
        w.etcdctl(&["put", k, v]);
    }
    // A good host joining afterwards is still routed: the bad records did not stall the watch.
    w.add_host(3);
    w.start_netd(3, &[]);
    w.wait_ready(3);
    w.wait_converged(&[1, 2, 3]);
    for h in 1..=3 {
        assert_eq!(
            w.cluster_routes(h).len(),
            2,
            "h{h}: {:?}",
            w.cluster_routes(h)
        );
        let def = common::try_run(&["ip", "-n", &w.host(h), "route", "show", "default"]);
        assert!(
            String::from_utf8_lossy(&def.stdout).trim().is_empty(),
            "no default route hijacked"
        );
        assert!(w.netd_running(h));
    }
    // Lost echoes under load are not a routing failure; a broken route fails for the whole
    // 15 s (5 s ran out once beside the whole suite).
    wait_until("c1 still reaches c2", Duration::from_secs(15), || {
        World::ping(&c1.0, c2.1)
    });
    let log = w.netd_log(1);
    assert!(
        log.contains("ignoring subnet record"),
        "bad records are logged"
    );

    // The operator listing shows all records, malformed ones marked.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.host(1),
            NETD,
            "leases",
            "--etcd-endpoints",
            &w.endpoints,
        ])
        .output()
        .expect("netd leases");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("malformed"), "{table}");
    assert!(table.contains("192.0.2.1 "), "{table}");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.host(1),
            NETD,
            "leases",
            "--json",
            "--etcd-endpoints",
            &w.endpoints,
        ])
        .output()
        .expect("netd leases --json");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("leases JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(3 + bad.len()));
    // Every live host's lease says when it expires (the KV's TimeToLive; netd's default
    // lease is 24 h, renewed long before).
    let hosts: Vec<&serde_json::Value> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["error"].is_null() && !r["reservation"].as_bool().unwrap_or(true))
        .collect();
    assert_eq!(hosts.len(), 3, "{rows}");
    for r in hosts {
        let left = r["expires_in"].as_i64().expect("expires_in");
        assert!((86_000..=86_400).contains(&left), "{r}");
    }
    assert!(table.contains("EXPIRES-IN"), "{table}");
    assert!(table.contains(" 23h59m "), "{table}");

    // Output to a reader that goes away ends quietly, as a tool killed by SIGPIPE does.
    let script = format!(
        "set -o pipefail; {NETD} leases --json --etcd-endpoints {} | true",
        w.endpoints
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &w.host(1), "bash", "-c", &script])
        .output()
        .expect("netd leases | head");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

#[test]
fn bad_config_is_retried_then_used_and_exhaustion_is_reported() {
    let mut w = World::new(4);
    w.start_etcd(r#"{"Network":"10.244.0.0/16""#);
    w.start_netd(1, &[]);
    wait_until("bad config is reported", Duration::from_secs(10), || {
        w.netd_log(1).contains("invalid network config")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.netd_running(1), "no crash on a bad config");
    assert!(w.subnet_of(1).is_none(), "not ready without a config");
    assert_eq!(w.http_get(1, "/readyz").map(|r| r.0), Some(503));
    assert_eq!(w.http_get(1, "/healthz").map(|r| r.0), Some(200));
    let errors = w.netd_log(1).matches("invalid network config").count();
    assert_eq!(errors, 1, "one clear line, not a flood");

    // The operator fixes it with `netd config set`; a tiny network: 3 subnets of /28.
    let set = |json: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &w.host(1),
                NETD,
                "config",
                "set",
                json,
                "--etcd-endpoints",
                &w.endpoints,
            ])
            .output()
            .expect("netd config set")
    };
    let out = set("{nope");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("bad JSON"), "{err}");
    let out = set(r#"{"Network":"10.244.0.0/26","Backend":{"Type":"vxlan"}}"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_ready(1);
    let shown = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.host(1),
            NETD,
            "config",
            "show",
            "--etcd-endpoints",
            &w.endpoints,
        ])
        .output()
        .expect("netd config show");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("10.244.0.0/26"));

    w.start_netd(2, &[]);
    w.start_netd(3, &[]);
    w.wait_ready(2);
    w.wait_ready(3);
    w.start_netd(4, &[]);
    wait_until("exhaustion is reported", Duration::from_secs(10), || {
        w.netd_log(4).contains("out of subnets")
    });
    assert!(w.netd_running(4), "no crash when out of subnets");
    assert!(w.subnet_of(4).is_none());
    // The others are unaffected.
    let c1 = w.add_container(1);
    let c3 = w.add_container(3);
    wait_until("c1 reaches c3", Duration::from_secs(10), || {
        World::ping(&c1.0, c3.1)
    });
    let routes = w.cluster_routes(1);
    assert_eq!(routes.len(), 2, "{routes:?}");
}

#[test]
fn bad_command_lines_fail_with_one_line() {
    common::require_prerequisites();
    // A port that is taken, for the health server's bind error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dead = "http://127.0.0.1:1";
    let cases: [&[&str]; 4] = [
        &["--etcd-endpoints", dead, "--etcd-prefix", "no-slash"],
        &["--etcd-endpoints", ","],
        &[
            "--etcd-endpoints",
            dead,
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            &port,
        ],
        &["config", "show"],
    ];
    for args in cases {
        let out = common::netd_cli(args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("");
        assert!(last.starts_with("netd: error:"), "{args:?}: {err}");
        let errors = err
            .lines()
            .filter(|l| l.starts_with("netd: error:"))
            .count();
        assert_eq!(errors, 1, "{args:?}: {err}");
    }
    // clap rejects malformed values itself, with a non-zero exit.
    assert!(!common::netd_cli(&["--public-ip", "x"]).status.success());
    let help = common::netd_cli(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("NETD_IFACE"));
}

/// A record that copies a live host's VtepMAC, in a subnet below the host's and so ahead of it
/// in any subnet order, and one that copies its PublicIP: the live host keeps its neighbour,
/// FDB entry and route on every other host across several reconciles, and stays reachable.
#[test]
fn copied_vtep_mac_or_public_ip_never_cuts_off_a_live_host() {
    let mut w = World::new(3);
    w.start_etcd(common::DEFAULT_CONFIG);
    let p = format!("{}/subnets/", w.prefix_key);
    // h2's subnet is pinned high (a reservation), so the copy can sit below it.
    w.etcdctl(&[
        "put",
        &format!("{p}10.244.200.0-24"),
        r#"{"PublicIP":"192.0.2.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}}"#,
    ]);
    for i in 1..=3 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    assert_eq!(
        w.subnet_of(2).map(|s| s.0.to_string()),
        Some("10.244.200.0".into())
    );
    w.wait_converged(&[1, 2, 3]);
    let c1 = w.add_container(1);
    let c2 = w.add_container(2);
    wait_until("c1 reaches c2", Duration::from_secs(10), || {
        World::ping(&c1.0, c2.1)
    });
    let records = w.records();
    let mac2 = records["10.244.200.0-24"]["BackendData"]["VtepMAC"]
        .as_str()
        .expect("h2's VtepMAC")
        .to_string();

    // The copies go in subnets below h2's that no live host holds (subnets are random).
    let held: Vec<String> = [1, 3]
        .iter()
        .filter_map(|&h| w.subnet_of(h).map(|s| s.0.to_string()))
        .collect();
    let mut free = (5..200u8)
        .map(|n| format!("10.244.{n}.0"))
        .filter(|s| !held.contains(s));
    let (mac_copy, ip_copy) = (
        free.next().expect("a free subnet"),
        free.next().expect("another free subnet"),
    );
    let vx = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    w.etcdctl(&[
        "put",
        &format!("{p}{mac_copy}-24"),
        &vx("192.0.2.99", &mac2),
    ]);
    w.etcdctl(&[
        "put",
        &format!("{p}{ip_copy}-24"),
        &vx("192.0.2.2", "02:00:00:00:00:66"),
    ]);
    // Several reconciles (the test world runs one every 2 s) after the events.
    let holds = |h: usize| {
        w.vxlan_fdb(h).get(&mac2).map(String::as_str) == Some("192.0.2.2")
            && w.vxlan_neighbours(h).get("10.244.200.0") == Some(&mac2)
            && w.cluster_routes(h).contains_key("10.244.200.0/24")
            && !w.cluster_routes(h).contains_key(&format!("{mac_copy}/24"))
    };
    for _ in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        for h in [1, 3] {
            assert!(
                holds(h),
                "h{h} lost h2: fdb {:?} neigh {:?} routes {:?}",
                w.vxlan_fdb(h),
                w.vxlan_neighbours(h),
                w.cluster_routes(h)
            );
        }
    }
    // The PublicIP copy claims nothing of h2's and is routed like any peer.
    assert!(w.cluster_routes(1).contains_key(&format!("{ip_copy}/24")));
    wait_until("c1 still reaches c2", Duration::from_secs(5), || {
        World::ping(&c1.0, c2.1)
    });
    assert!(w.netd_log(1).contains("collide"), "the collision is logged");
}
