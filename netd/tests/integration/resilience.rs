//! End-to-end: stale kernel state from an earlier run, a KV store that goes away and comes
//! back, and a subnet lease revoked under a running netd.

use crate::common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{DEFAULT_CONFIG, World, run, wait_until};

#[test]
fn stale_kernel_entries_are_removed_at_startup() {
    let mut w = World::new(3);
    w.start_etcd(DEFAULT_CONFIG);
    for i in 1..=3 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    w.wait_converged(&[1, 2, 3]);

    // netd on h1 stops; h3 leaves while h1 is not watching.
    assert!(w.stop_netd(1).success());
    assert!(w.stop_netd(3).success());
    let (net3, len3) = w.subnet_of(3).expect("h3 subnet");
    w.etcdctl(&["del", &format!("{}/subnets/{net3}-{len3}", w.prefix_key)]);
    let h1 = w.host(1);
    assert!(
        w.cluster_routes(1).contains_key(&format!("{net3}/{len3}")),
        "h3's route left behind"
    );

    // Junk from an earlier life on h1, for a subnet no host holds (leases are drawn at
    // random, so a fixed one is sometimes a live host's), and a route netd does not own.
    let held: Vec<Ipv4Addr> = (1..=3)
        .filter_map(|i| w.subnet_of(i))
        .map(|(n, _)| n)
        .collect();
    let junk = (240..=254)
        .map(|o| Ipv4Addr::new(10, 244, o, 0))
        .find(|n| !held.contains(n))
        .expect("a subnet no host holds");
    run(&[
        "ip",
        "-n",
        &h1,
        "route",
        "add",
        &format!("{junk}/24"),
        "via",
        &junk.to_string(),
        "dev",
        "flannel.1",
        "onlink",
    ]);
    run(&[
        "ip",
        "-n",
        &h1,
        "neigh",
        "add",
        &junk.to_string(),
        "lladdr",
        "02:00:00:00:fa:01",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &h1,
        "bridge",
        "fdb",
        "add",
        "02:00:00:00:fa:01",
        "dev",
        "flannel.1",
        "dst",
        "192.0.2.250",
        "self",
        "permanent",
    ]);
    run(&[
        "ip",
        "-n",
        &h1,
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.254",
        "dev",
        "eth0",
    ]);

    w.start_netd(1, &[]);
    w.wait_ready(1);
    w.wait_converged(&[1]);
    assert_eq!(
        w.cluster_routes(1).len(),
        1,
        "only h2 remains: {:?}",
        w.cluster_routes(1)
    );
    let other = common::try_run(&["ip", "-n", &h1, "route", "show", "198.51.100.0/24"]);
    assert!(
        String::from_utf8_lossy(&other.stdout).contains("198.51.100.0/24"),
        "a route netd does not own survives"
    );
    let (_, body) = w.http_get(1, "/metrics").expect("metrics");
    assert!(!body.contains("netd_reconcile_fixes_total 0\n"), "{body}");

    // Kernel state removed behind netd's back comes back with the next reconcile.
    let (net1, _) = w.subnet_of(1).expect("h1 subnet");
    run(&["ip", "-n", &h1, "addr", "flush", "dev", "flannel.1"]);
    run(&["ip", "-n", &h1, "route", "flush", "dev", "flannel.1"]);
    wait_until("vtep address restored", Duration::from_secs(10), || {
        run(&["ip", "-n", &h1, "-4", "addr", "show", "dev", "flannel.1"])
            .contains(&format!("{net1}/32"))
    });
    w.wait_converged(&[1]);
}

#[test]
fn kv_outage_keeps_forwarding_and_catches_up() {
    let mut w = World::new(4);
    w.start_etcd(DEFAULT_CONFIG);
    for i in 1..=3 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    w.wait_converged(&[1, 2, 3]);
    let c1 = w.add_container(1);
    let c2 = w.add_container(2);
    wait_until("c1 reaches c2", Duration::from_secs(10), || {
        World::ping(&c1.0, c2.1)
    });

    // Cut h1 off from the KV store: nothing arrives, and what h1 sends is reset.
    let h1 = w.host(1);
    let gw = common::UNDERLAY_GW;
    run(&[
        "ip", "netns", "exec", &h1, "nft", "add", "table", "inet", "ndblock",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &h1,
        "nft",
        "add chain inet ndblock out { type filter hook output priority 0; policy accept; }",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &h1,
        "nft",
        &format!("add rule inet ndblock out ip daddr {gw} tcp dport 2379 reject with tcp reset"),
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &h1,
        "nft",
        "add chain inet ndblock in { type filter hook input priority 0; policy accept; }",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &h1,
        "nft",
        &format!("add rule inet ndblock in ip saddr {gw} tcp sport 2379 drop"),
    ]);

    // Changes while h1 cannot see them: h3 leaves, h4 joins.
    assert!(w.stop_netd(3).success());
    let (net3, len3) = w.subnet_of(3).expect("h3 subnet");
    w.etcdctl(&["del", &format!("{}/subnets/{net3}-{len3}", w.prefix_key)]);
    w.start_netd(4, &[]);
    w.wait_ready(4);
    w.wait_converged(&[2, 4]);

    // h1 has not seen the changes (proves the cut), and keeps forwarding with what it has.
    let (net4, len4) = w.subnet_of(4).expect("h4 subnet");
    let routes = w.cluster_routes(1);
    assert!(
        routes.contains_key(&format!("{net3}/{len3}")),
        "h1 unaware of h3 leaving: {routes:?}"
    );
    assert!(
        !routes.contains_key(&format!("{net4}/{len4}")),
        "h1 unaware of h4: {routes:?}"
    );
    for _ in 0..3 {
        assert!(
            World::ping(&c1.0, c2.1),
            "forwarding continues during the KV outage"
        );
    }
    assert!(w.netd_running(1), "netd survives the outage");

    // The store comes back: h1 applies what it missed.
    run(&[
        "ip", "netns", "exec", &h1, "nft", "delete", "table", "inet", "ndblock",
    ]);
    w.wait_converged(&[1]);
    let c4 = w.add_container(4);
    wait_until("c1 reaches c4", Duration::from_secs(10), || {
        World::ping(&c1.0, c4.1)
    });

    // The whole store restarts: forwarding continues, and later changes still arrive.
    w.stop_etcd();
    wait_until(
        "forwarding continues with the store down",
        Duration::from_secs(5),
        || World::ping(&c1.0, c4.1),
    );
    w.restart_etcd();
    assert!(w.stop_netd(4).success());
    w.etcdctl(&["del", &format!("{}/subnets/{net4}-{len4}", w.prefix_key)]);
    w.wait_converged(&[1, 2]);
    wait_until("c1 reaches c2", Duration::from_secs(5), || {
        World::ping(&c1.0, c2.1)
    });
}

#[test]
fn revoked_lease_is_reacquired_without_exiting() {
    let mut w = World::new(2);
    w.start_etcd(DEFAULT_CONFIG);
    for i in 1..=2 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    w.wait_converged(&[1, 2]);
    let (net1, len1) = w.subnet_of(1).expect("h1 subnet");
    let key = format!("{}/subnets/{net1}-{len1}", w.prefix_key);
    let json: serde_json::Value =
        serde_json::from_str(&w.etcdctl(&["get", &key, "-w", "json"])).expect("etcdctl json");
    let lease = json["kvs"][0]["lease"]
        .as_i64()
        .expect("record has a lease");
    assert!(lease != 0);
    w.etcdctl(&["lease", "revoke", &format!("{lease:x}")]);

    // The record disappears with the lease, and h1 puts it back with a new lease.
    wait_until("h1 re-acquires its subnet", Duration::from_secs(20), || {
        let out = w.etcdctl(&["get", &key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["kvs"][0]["lease"]
            .as_i64()
            .is_some_and(|l| l != 0 && l != lease)
    });
    assert!(w.netd_running(1), "netd did not exit on revocation");
    assert_eq!(w.subnet_of(1), Some((net1, len1)), "same subnet");
    w.wait_converged(&[1, 2]);
}

#[test]
fn recreated_vxlan_device_publishes_new_mac_and_peers_drop_the_old_fdb() {
    let mut w = World::new(3);
    w.start_etcd(DEFAULT_CONFIG);
    for i in 1..=3 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    w.wait_converged(&[1, 2, 3]);
    let c1 = w.add_container(1);
    let c2 = w.add_container(2);
    let (net2, len2) = w.subnet_of(2).expect("h2 subnet");
    let key2 = format!("{net2}-{len2}");
    let mac = |w: &World| {
        w.records()[&key2]["BackendData"]["VtepMAC"]
            .as_str()
            .map(String::from)
    };
    let old_mac = mac(&w).expect("h2 VtepMAC");

    // Someone deletes h2's VXLAN device: netd recreates it (new MAC) and republishes.
    run(&["ip", "-n", &w.host(2), "link", "del", "flannel.1"]);
    wait_until(
        "h2 publishes a new VtepMAC",
        Duration::from_secs(20),
        || mac(&w).is_some_and(|m| m != old_mac),
    );
    // Exact match: the FDB entry of the old MAC is gone on h1 and h3.
    w.wait_converged(&[1, 2, 3]);
    for h in [1, 3] {
        assert!(
            !w.vxlan_fdb(h).contains_key(&old_mac),
            "h{h} still has the old FDB entry"
        );
    }
    wait_until("c1 reaches c2 again", Duration::from_secs(10), || {
        World::ping(&c1.0, c2.1)
    });
    assert_eq!(w.subnet_of(2), Some((net2, len2)), "same subnet");
}
