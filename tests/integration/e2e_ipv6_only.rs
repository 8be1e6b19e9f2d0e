//! End to end, IPv6-only (flannel's `"EnableIPv4": false` with `EnableIPv6`): three hosts each
//! lease an IPv6 subnet alone, keyed `0.0.0.0-0&<v6>-<len>` as flanneld keys it; their subnet
//! files name no IPv4 network; containers attached by netd-cni get an IPv6 address and an IPv6
//! default route and no IPv4 address; TCP between containers on different hosts is
//! byte-checked over IPv6 through VXLAN (`flannel-v6.1` only, no `flannel.1`) and through
//! host-gw. A host removed for good takes its IPv6 route with it.
//!
//! The underlay keeps its IPv4 addresses (the KV store is reached over them); netd's devices,
//! routes and records use only the IPv6 ones.

use std::time::{Duration, Instant};

use testbed::cmd::run;
use testbed::traffic;
use testbed::world::{HOST_GW_V6_ONLY, VXLAN_V6_ONLY, World};

/// Three hosts, a container on each; every ordered pair of containers on different hosts
/// exchanges 256 KiB over IPv6. Returns the world for further checks.
fn three_hosts_talk_ipv6_only(config: &str, v6_device: &str) -> World {
    let mut w = World::new(3, config).expect("world");
    for h in 1..=3 {
        assert_eq!(w.subnet(h), None, "h{h}'s subnet file names no IPv4 subnet");
        let text = std::fs::read_to_string(w.subnet_file(h)).expect("subnet file");
        assert!(
            !text.contains("FLANNEL_NETWORK=") && text.contains("FLANNEL_IPV6_NETWORK="),
            "{text}"
        );
        let routes = w.cluster_routes6(h).expect("routes");
        assert_eq!(
            routes.len(),
            2,
            "h{h} routes to both other hosts: {routes:?}"
        );
        assert!(
            routes.values().all(|dev| dev == v6_device),
            "h{h}'s IPv6 routes leave through {v6_device}: {routes:?}"
        );
        assert!(
            w.cluster_routes(h).expect("routes").is_empty(),
            "no IPv4 cluster routes on h{h}"
        );
    }
    let containers: Vec<_> = (1..=3)
        .map(|h| w.add_container(h, "").expect("container"))
        .collect();
    for c in &containers {
        assert!(c.ip.is_unspecified(), "no IPv4 address: {}", c.ip);
        let v4 =
            run(&["ip", "-n", &c.ns, "-4", "-o", "addr", "show", "dev", "eth0"]).expect("ip addr");
        assert!(v4.trim().is_empty(), "{} has IPv4: {v4}", c.ns);
        let default6 =
            run(&["ip", "-n", &c.ns, "-6", "route", "show", "default"]).expect("ip route");
        assert!(default6.contains("via fd00:10:244:"), "{default6}");
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
            let ip6 = b.ip6.expect("IPv6 address");
            traffic::echo(&a.ns, &b.ns, ip6, 256 << 10)
                .unwrap_or_else(|e| panic!("TCP {} → [{ip6}]: {e:#}", a.ns));
        }
    }
    w
}

#[test]
fn vxlan_ipv6_only_carries_ipv6_and_forgets_a_removed_host() {
    let mut w = three_hosts_talk_ipv6_only(VXLAN_V6_ONLY, "flannel-v6.1");
    // Records as flanneld writes them without IPv4: PublicIP 0.0.0.0, no BackendData.
    let records = w.records().expect("records");
    assert_eq!(records.len(), 3, "{records:?}");
    for (key, value) in &records {
        assert!(
            key.starts_with("0.0.0.0-0&fd00:10:244:"),
            "IPv6-only key {key}"
        );
        assert_eq!(value["PublicIP"], "0.0.0.0", "{value}");
        assert!(value["PublicIPv6"].is_string(), "{value}");
        assert!(value.get("BackendData").is_none(), "{value}");
        assert!(value["BackendV6Data"]["VtepMAC"].is_string(), "{value}");
    }
    // Only the IPv6 device, as flanneld has it.
    for h in 1..=3 {
        let ns = w.host(h);
        assert!(run(&["ip", "-n", &ns, "link", "show", "flannel-v6.1"]).is_ok());
        assert!(
            run(&["ip", "-n", &ns, "link", "show", "flannel.1"]).is_err(),
            "h{h} has no IPv4 VXLAN device"
        );
    }
    // netd leases shows the IPv6 subnets.
    let table = w.netd_cmd(&["leases"]).expect("netd leases");
    assert_eq!(table.matches("fd00:10:244:").count(), 3, "{table}");
    // h3 leaves for good: its IPv6 route vanishes from h1 and h2.
    let (n6, l6) = w.subnet6(3).expect("h3 IPv6 subnet");
    let gone = format!("{n6}/{l6}");
    w.stop_netd(3).expect("stop netd on h3");
    w.delete_record(3).expect("delete h3's record");
    for h in [1, 2] {
        let t0 = Instant::now();
        loop {
            let r6 = w.cluster_routes6(h).expect("routes");
            if !r6.contains_key(&gone) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "h{h} still routes to h3: {r6:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn host_gw_ipv6_only_carries_ipv6() {
    three_hosts_talk_ipv6_only(HOST_GW_V6_ONLY, "eth0");
}
