//! A mixed cluster on one etcd 3.4: two netd hosts beside a host set up exactly as flanneld
//! sets itself up (pkg/backend/vxlan): its record written as flanneld writes it (`LeaseAttrs`
//! with `PublicIPv6` and `BackendV6Data`, the dual-stack key `<v4>-<len>&<v6>-<len>`, a lease),
//! its devices made with flannel's settings (`flannel.1` without UDP checksums, `flannel-v6.1`
//! over the IPv6 underlay, no learning, port 8472, MTU 50 below the underlay for both, the
//! subnet's network address as /32 and /128), and its peers programmed with flannel's commands
//! (neighbour, FDB, `onlink` route). Containers on all three hosts exchange TCP both ways, over
//! IPv4 and, in the dual-stack case, over IPv6.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::{World, run, wait_until};

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
const V4: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// The flannel host: h3, subnets 10.244.200.0/24 and fd00:10:244:c8::/64.
const FLANNEL: usize = 3;
const F4: Ipv4Addr = Ipv4Addr::new(10, 244, 200, 0);
const F6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0xc8, 0, 0, 0, 0);

fn ip(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full);
}

/// The MAC of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> String {
    let l = World::json(ns, "ip", &["link", "show", dev]);
    l.first()
        .and_then(|l| l["address"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no MAC for {dev}"))
}

fn sysctl(ns: &str, key: &str, value: &str) {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]);
}

/// Sets up h3 as flanneld would, and writes its record; returns nothing, panics on failure.
fn flannel_host(w: &World, dual: bool) {
    let ns = w.host(FLANNEL);
    let public = World::host_ip(FLANNEL);
    let public6 = testbed::lab::host_ip6(FLANNEL);
    sysctl(&ns, "net.ipv4.ip_forward", "1");
    // flannel's newVXLANDevice: vxlan id 1, local PublicIP, dev eth0, nolearning, port 8472,
    // no UDP checksum (the netlink library's default), MTU underlay − 50.
    ip(
        &ns,
        &[
            "link",
            "add",
            "flannel.1",
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &public.to_string(),
            "dev",
            "eth0",
            "nolearning",
            "dstport",
            "8472",
            "noudpcsum",
        ],
    );
    ip(&ns, &["link", "set", "flannel.1", "up"]);
    ip(
        &ns,
        &["addr", "add", &format!("{F4}/32"), "dev", "flannel.1"],
    );
    let mut value = serde_json::json!({
        "PublicIP": public.to_string(),
        "PublicIPv6": null,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": mac(&ns, "flannel.1")},
    });
    let mut key = format!("{F4}-24");
    if dual {
        sysctl(&ns, "net.ipv6.conf.all.forwarding", "1");
        // The same over the IPv6 underlay (UDP checksums stay on for IPv6). flannel asks for
        // the same 50-byte allowance; the kernel clamps the MTU to 70 below the underlay's.
        ip(
            &ns,
            &[
                "link",
                "add",
                "flannel-v6.1",
                "mtu",
                "1450",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &public6.to_string(),
                "dev",
                "eth0",
                "nolearning",
                "dstport",
                "8472",
            ],
        );
        ip(&ns, &["link", "set", "flannel-v6.1", "up"]);
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{F6}/128"),
                "dev",
                "flannel-v6.1",
                "nodad",
            ],
        );
        value["PublicIPv6"] = public6.to_string().into();
        value["BackendV6Data"] = serde_json::json!({"VNI": 1, "VtepMAC": mac(&ns, "flannel-v6.1")});
        key = format!("{key}&{F6}-64");
    }
    let lease = w.etcdctl(&["lease", "grant", "600"]);
    let id = lease
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("lease grant said {lease:?}"));
    w.etcdctl(&[
        "put",
        &format!("{}/subnets/{key}", w.prefix_key),
        &value.to_string(),
        "--lease",
        id,
    ]);
}

/// flannel's handleSubnetEvents for one peer record, with its commands.
fn flannel_programs_peer(ns: &str, key: &str, value: &serde_json::Value) {
    let (v4, v6) = key
        .split_once('&')
        .map_or((key, None), |(a, b)| (a, Some(b)));
    let (vtep, len) = v4.rsplit_once('-').expect("key");
    let public = value["PublicIP"].as_str().expect("PublicIP");
    let vmac = value["BackendData"]["VtepMAC"].as_str().expect("VtepMAC");
    ip(
        ns,
        &[
            "neigh",
            "replace",
            vtep,
            "lladdr",
            vmac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
    );
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "bridge",
        "fdb",
        "replace",
        vmac,
        "dev",
        "flannel.1",
        "dst",
        public,
        "self",
        "permanent",
    ]);
    ip(
        ns,
        &[
            "route",
            "replace",
            &format!("{vtep}/{len}"),
            "via",
            vtep,
            "dev",
            "flannel.1",
            "onlink",
        ],
    );
    if let Some(v6) = v6 {
        let (vtep6, len6) = v6.rsplit_once('-').expect("v6 key");
        let public6 = value["PublicIPv6"].as_str().expect("PublicIPv6");
        let mac6 = value["BackendV6Data"]["VtepMAC"]
            .as_str()
            .expect("v6 VtepMAC");
        ip(
            ns,
            &[
                "-6",
                "neigh",
                "replace",
                vtep6,
                "lladdr",
                mac6,
                "dev",
                "flannel-v6.1",
                "nud",
                "permanent",
            ],
        );
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "bridge",
            "fdb",
            "replace",
            mac6,
            "dev",
            "flannel-v6.1",
            "dst",
            public6,
            "self",
            "permanent",
        ]);
        ip(
            ns,
            &[
                "-6",
                "route",
                "replace",
                &format!("{vtep6}/{len6}"),
                "via",
                vtep6,
                "dev",
                "flannel-v6.1",
                "onlink",
            ],
        );
    }
}

/// A container on host `i` with the first host addresses of `v4/24` and (dual) `v6/64`, on a
/// `cni0` bridge holding the gateways, as the bridge plugin would attach it.
fn container(
    w: &mut World,
    i: usize,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
) -> (String, Ipv4Addr, Option<Ipv6Addr>) {
    let host = w.host(i);
    let c = w.add_ns(&format!("mix{i}"));
    let v4 = u32::from(v4);
    let (gw, addr) = (Ipv4Addr::from(v4 + 1), Ipv4Addr::from(v4 + 2));
    ip(&host, &["link", "add", "cni0", "type", "bridge"]);
    ip(&host, &["addr", "add", &format!("{gw}/24"), "dev", "cni0"]);
    ip(&host, &["link", "set", "cni0", "up"]);
    ip(
        &host,
        &[
            "link", "add", "vmix", "type", "veth", "peer", "name", "eth0", "netns", &c,
        ],
    );
    ip(&host, &["link", "set", "vmix", "master", "cni0", "up"]);
    ip(&c, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    ip(&c, &["link", "set", "eth0", "up"]);
    ip(&c, &["route", "add", "default", "via", &gw.to_string()]);
    let addr6 = v6.map(|v6| {
        let v6 = u128::from(v6);
        let (gw6, addr6) = (Ipv6Addr::from(v6 + 1), Ipv6Addr::from(v6 + 2));
        ip(
            &host,
            &["addr", "add", &format!("{gw6}/64"), "dev", "cni0", "nodad"],
        );
        ip(
            &c,
            &[
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ip(
            &c,
            &["-6", "route", "add", "default", "via", &gw6.to_string()],
        );
        addr6
    });
    (c, addr, addr6)
}

/// Host `i`'s (netd's) subnets from its subnet file.
fn netd_subnets(w: &World, i: usize) -> (Ipv4Addr, Option<Ipv6Addr>) {
    let (v4, _) = w.subnet_of(i).expect("subnet");
    let text = std::fs::read_to_string(w.subnet_file(i)).expect("subnet file");
    let v6 = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .map(|s| {
            let gw: Ipv6Addr = s
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .expect("v6");
            Ipv6Addr::from(u128::from(gw) & !0xffff_ffff_ffff_ffff)
        });
    (v4, v6)
}

fn mixed(config: &str, dual: bool) {
    let mut w = World::new(3);
    w.start_etcd(config);
    // The flannel host's record exists before the netd hosts pick their subnets.
    flannel_host(&w, dual);
    for i in 1..=2 {
        w.start_netd(i, &[]);
        w.wait_ready(i);
    }
    let records = w.records();
    assert_eq!(records.len(), 3, "{records:?}");
    for (key, value) in &records {
        assert_eq!(key.contains('&'), dual, "{key}");
        if !key.starts_with(&format!("{F4}-")) {
            flannel_programs_peer(&w.host(FLANNEL), key, value);
        }
    }
    // Both netd hosts route to the flannel host's subnets through their VXLAN devices.
    for i in 1..=2 {
        let host = w.host(i);
        wait_until(
            "netd routes to the flannel host",
            Duration::from_secs(15),
            || {
                let r4 = World::json(&host, "ip", &["-4", "route", "show", &format!("{F4}/24")]);
                let r6 = World::json(&host, "ip", &["-6", "route", "show", &format!("{F6}/64")]);
                r4.first().is_some_and(|r| r["dev"] == "flannel.1")
                    && (!dual || r6.first().is_some_and(|r| r["dev"] == "flannel-v6.1"))
            },
        );
    }
    // The operator's listing shows the IPv6 half of every record, the flannel host's too.
    let h1 = w.host(1);
    let leases = |json: bool| {
        let mut args = vec!["netns", "exec", &h1, common::NETD, "leases"];
        if json {
            args.push("--json");
        }
        args.extend(["--etcd-endpoints", &w.endpoints]);
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("netd leases");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = leases(false);
    assert_eq!(table.contains("IPV6-SUBNET"), dual, "{table}");
    let rows: serde_json::Value = serde_json::from_str(&leases(true)).expect("leases JSON");
    let flannel_row = rows
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["subnet"] == format!("{F4}/24").as_str())
        .unwrap_or_else(|| panic!("no row for the flannel host: {rows}"));
    if dual {
        assert_eq!(
            flannel_row["ipv6_subnet"],
            format!("{F6}/64").as_str(),
            "{rows}"
        );
        assert_eq!(flannel_row["public_ipv6"], "2001:db8::3", "{rows}");
        assert!(table.contains(&format!("{F6}/64")), "{table}");
    } else {
        assert!(flannel_row["ipv6_subnet"].is_null(), "{rows}");
    }
    let mut cs = Vec::new();
    for i in 1..=2 {
        let (v4, v6) = netd_subnets(&w, i);
        assert_eq!(v6.is_some(), dual);
        cs.push(container(&mut w, i, v4, v6));
    }
    cs.push(container(&mut w, FLANNEL, F4, dual.then_some(F6)));
    let flannel_c = cs[2].clone();
    for netd_c in &cs[..2] {
        for (a, b) in [(netd_c, &flannel_c), (&flannel_c, netd_c)] {
            testbed::traffic::echo(&a.0, &b.0, IpAddr::V4(b.1), 128 << 10)
                .unwrap_or_else(|e| panic!("TCP {} → {}: {e:#}", a.0, b.1));
            if let Some(v6) = b.2 {
                testbed::traffic::echo(&a.0, &b.0, IpAddr::V6(v6), 128 << 10)
                    .unwrap_or_else(|e| panic!("TCP {} → [{v6}]: {e:#}", a.0));
            }
        }
    }
}

#[test]
fn netd_and_a_flannel_host_talk_over_ipv4() {
    mixed(V4, false);
}

#[test]
fn netd_and_a_flannel_host_talk_dual_stack() {
    mixed(DUAL, true);
}
