//! End to end, dual-stack (flannel's `EnableIPv6`): three hosts on an underlay with IPv4 and
//! IPv6 addresses, each leasing an IPv4 and an IPv6 subnet; containers attached by netd-cni get
//! an address of each family; TCP between containers on different hosts is byte-checked over
//! both families, through VXLAN (`flannel.1` and `flannel-v6.1`) and through host-gw. A host
//! removed for good takes its IPv4 and IPv6 routes with it.

use std::time::{Duration, Instant};

use testbed::traffic;
use testbed::world::{HOST_GW_DUAL, VXLAN_DUAL, World};

/// Three hosts, a container on each; every ordered pair of containers on different hosts
/// exchanges 256 KiB over IPv4 and over IPv6. Returns the world for further checks.
fn three_hosts_talk_both_families(config: &str, v6_device: &str) -> World {
    let mut w = World::new(3, config).expect("world");
    for h in 1..=3 {
        w.wait_routes6(h, &[1, 2, 3])
            .expect("IPv6 routes to all three subnets");
        let routes = w.cluster_routes6(h).expect("routes");
        assert!(
            routes.values().all(|dev| dev == v6_device),
            "h{h}'s IPv6 routes leave through {v6_device}: {routes:?}"
        );
    }
    let containers: Vec<_> = (1..=3)
        .map(|h| w.add_container(h, "").expect("container"))
        .collect();
    for c in &containers {
        let ip6 = c.ip6.expect("the container has an IPv6 address");
        let (net6, len6) = w.subnet6(c.host).expect("IPv6 subnet");
        let mask = u128::MAX << (128 - u32::from(len6));
        assert_eq!(
            u128::from(ip6) & mask,
            u128::from(net6),
            "{ip6} lies in its host's IPv6 subnet {net6}/{len6}"
        );
    }
    for a in &containers {
        for b in &containers {
            if a.host == b.host {
                continue;
            }
            traffic::echo(&a.ns, &b.ns, b.ip, 256 << 10)
                .unwrap_or_else(|e| panic!("TCP {} → {}: {e:#}", a.ns, b.ip));
            let ip6 = b.ip6.expect("IPv6 address");
            traffic::echo(&a.ns, &b.ns, ip6, 256 << 10)
                .unwrap_or_else(|e| panic!("TCP {} → [{ip6}]: {e:#}", a.ns));
        }
    }
    w
}

#[test]
fn vxlan_dual_stack_carries_both_families_and_forgets_a_removed_host() {
    let w = three_hosts_talk_both_families(VXLAN_DUAL, "flannel-v6.1");
    // Records carry both halves, as flannel writes them.
    let records = w.records().expect("records");
    assert_eq!(records.len(), 3, "{records:?}");
    for (key, value) in &records {
        assert!(key.contains("&fd00:10:244:"), "dual-stack key {key}");
        assert!(value["PublicIPv6"].is_string(), "{value}");
        assert!(value["BackendV6Data"]["VtepMAC"].is_string(), "{value}");
    }
    // h3 leaves for good: both of its routes vanish from h1 and h2.
    let (n4, l4) = w.subnet(3).expect("h3 subnet");
    let (n6, l6) = w.subnet6(3).expect("h3 IPv6 subnet");
    let (gone4, gone6) = (format!("{n4}/{l4}"), format!("{n6}/{l6}"));
    let mut w = w;
    w.stop_netd(3).expect("stop netd on h3");
    w.delete_record(3).expect("delete h3's record");
    for h in [1, 2] {
        let t0 = Instant::now();
        loop {
            let r4 = w.cluster_routes(h).expect("routes");
            let r6 = w.cluster_routes6(h).expect("routes");
            if !r4.contains_key(&gone4) && !r6.contains_key(&gone6) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "h{h} still routes to h3: {r4:?} {r6:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn host_gw_dual_stack_carries_both_families() {
    three_hosts_talk_both_families(HOST_GW_DUAL, "eth0");
}
