//! The real rtnetlink dataplane, driven directly inside a test namespace: device creation and
//! reuse, idempotent upserts and removals, observation and the ownership rule, for IPv4 and
//! for IPv6 (`flannel-v6.1` over the host's IPv6 underlay address).

use crate::common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netd::dataplane::device::{self, VxlanSpec};
use netd::dataplane::netlink::NetlinkDataplane;
use netd::dataplane::{Dataplane, Entry, NextHop, Via};
use netd::subnet::MacAddr;

use common::{World, in_netns, run};

#[test]
fn vxlan_device_and_entries_in_a_namespace() {
    let w = World::new(1);
    let ns = w.host(1);
    // A route inside the network that netd does not own (no gateway, other device).
    run(&["ip", "-n", &ns, "link", "add", "cni0", "type", "bridge"]);
    run(&[
        "ip", "-n", &ns, "link", "add", "v6only0", "type", "veth", "peer", "name", "v6only1",
    ]);
    run(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "2001:db8:77::1/64",
        "dev",
        "v6only0",
        "nodad",
    ]);
    run(&["ip", "-n", &ns, "link", "set", "v6only0", "up"]);
    run(&["ip", "-n", &ns, "link", "set", "cni0", "up"]);
    run(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "10.244.9.0/24",
        "dev",
        "cni0",
    ]);

    let gbp_shown = {
        let ns = ns.clone();
        move || run(&["ip", "-n", &ns, "-d", "link", "show", "flannel.1"]).contains(" gbp")
    };
    in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (conn, h, _) = rtnetlink::new_connection().expect("netlink");
            tokio::spawn(conn);
            let under = device::find_underlay(&h, Some("eth0"))
                .await
                .expect("underlay");
            let v4 = under.v4.expect("an IPv4 address");
            assert_eq!(v4.ip(), Ipv4Addr::new(192, 0, 2, 1));
            assert_eq!(
                (v4.network().to_string(), v4.prefix()),
                ("192.0.2.0".into(), 24)
            );
            let by_ip = device::find_underlay(&h, Some("192.0.2.1"))
                .await
                .expect("by address");
            assert_eq!(by_ip.index, under.index);
            assert!(device::find_underlay(&h, Some("nope0")).await.is_err());
            // flanneld's ways of choosing: --iface in order, --iface-regex on names and
            // addresses, --iface-can-reach through the routing table.
            let choose = |ifaces: &[&str], regexes: &[&str], can_reach: Option<Ipv4Addr>| {
                device::IfaceChoice {
                    ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
                    regexes: regexes
                        .iter()
                        .map(|r| regex_lite::Regex::new(r).expect("regex"))
                        .collect(),
                    can_reach,
                }
            };
            let pick = |c: device::IfaceChoice| {
                let h = h.clone();
                async move { device::choose_underlay(&h, &c, true).await }
            };
            let u = pick(choose(&["nope0", "eth0"], &[], None))
                .await
                .expect("second --iface");
            assert_eq!(u.name, "eth0");
            let u = pick(choose(&[], &["^e.h"], None))
                .await
                .expect("regex on names");
            assert_eq!(u.name, "eth0");
            let u = pick(choose(&[], &[r"^192\.0\.2\."], None))
                .await
                .expect("regex on addresses");
            assert_eq!(u.v4.map(|n| n.ip()), Some(Ipv4Addr::new(192, 0, 2, 1)));
            let gw = Ipv4Addr::new(192, 0, 2, 254);
            let u = pick(choose(&[], &[], Some(gw))).await.expect("can reach");
            assert_eq!(u.name, "eth0");
            let far = Ipv4Addr::new(203, 0, 113, 1);
            let e = pick(choose(&["nope0"], &["^zz"], Some(far)))
                .await
                .expect_err("nothing fits");
            let e = e.to_string();
            assert!(
                e.contains("nope0") && e.contains("^zz") && e.contains("203.0.113.1"),
                "{e}"
            );

            // An interface with IPv6 alone: refused where IPv4 is needed, the underlay of an
            // IPv6-only network (by name and by address).
            let only6 = device::IfaceChoice {
                ifaces: vec!["v6only0".into()],
                ..Default::default()
            };
            let e = device::choose_underlay(&h, &only6, true)
                .await
                .expect_err("no IPv4");
            assert!(e.to_string().contains("no IPv4 address"), "{e}");
            let u = device::choose_underlay(&h, &only6, false)
                .await
                .expect("IPv6-only underlay");
            assert_eq!(u.v4, None);
            assert_eq!(
                u.v6.map(|n| n.ip()),
                Some("2001:db8:77::1".parse::<Ipv6Addr>().expect("literal"))
            );
            let by6 = device::IfaceChoice {
                ifaces: vec!["2001:db8:77::1".into()],
                ..Default::default()
            };
            let u6 = device::choose_underlay(&h, &by6, false)
                .await
                .expect("by IPv6 address");
            assert_eq!(u6.index, u.index);

            let spec = VxlanSpec {
                vni: 1,
                port: 8472,
                learning: false,
                gbp: false,
                local: IpAddr::V4(v4.ip()),
                underlay_index: under.index,
                mtu: under.mtu - 50,
            };
            let dev = device::ensure_vxlan(&h, &spec).await.expect("create");
            let again = device::ensure_vxlan(&h, &spec).await.expect("reuse");
            assert_eq!(dev, again, "a compatible device is reused with its MAC");
            let other = VxlanSpec {
                port: 4789,
                ..spec.clone()
            };
            let replaced = device::ensure_vxlan(&h, &other).await.expect("recreate");
            assert_ne!(replaced.mac, dev.mac, "an incompatible device is replaced");
            // Group Based Policy (flannel's Backend.GBP) is part of compatibility too.
            let gbp = VxlanSpec {
                gbp: true,
                ..spec.clone()
            };
            assert!(!gbp_shown(), "no GBP unless asked");
            let with_gbp = device::ensure_vxlan(&h, &gbp).await.expect("gbp");
            assert_ne!(with_gbp.mac, replaced.mac, "GBP needs a new device");
            assert!(gbp_shown(), "the kernel has GBP on the device");
            assert_eq!(
                device::ensure_vxlan(&h, &gbp).await.expect("gbp again"),
                with_gbp,
                "and keeps it"
            );
            let dev = device::ensure_vxlan(&h, &spec).await.expect("back to 8472");
            let net: ipnetwork::Ipv4Network = "10.244.0.0/16".parse().expect("net");
            let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            device::ensure_vtep_address(&h, dev.index, v4(10, 244, 1, 0), net.into())
                .await
                .expect("vtep address");
            // Moving to another subnet replaces the old vtep address.
            device::ensure_vtep_address(&h, dev.index, v4(10, 244, 5, 0), net.into())
                .await
                .expect("vtep address");
            let addrs = device::ipv4_addresses(&h, dev.index)
                .await
                .expect("addresses");
            assert_eq!(addrs.len(), 1, "{addrs:?}");

            let dp = NetlinkDataplane::new(h.clone(), Some(dev.index), under.index, net);
            let mac = MacAddr([2, 0, 0, 0, 0, 7]);
            let entries = [
                Entry::Neigh {
                    ip: v4(10, 244, 7, 0),
                    mac,
                },
                Entry::Fdb {
                    mac,
                    dst: v4(192, 0, 2, 7),
                },
                Entry::Route {
                    dst: "10.244.7.0/24".parse().expect("dst"),
                    hop: NextHop {
                        gateway: v4(10, 244, 7, 0),
                        via: Via::Overlay,
                    },
                },
                Entry::Route {
                    dst: "10.244.8.0/24".parse().expect("dst"),
                    hop: NextHop {
                        gateway: v4(192, 0, 2, 8),
                        via: Via::Underlay,
                    },
                },
            ];
            for _ in 0..2 {
                for e in &entries {
                    dp.upsert(e).await.expect("upsert is idempotent");
                }
            }
            let seen = dp.observe().await.expect("observe");
            assert_eq!(
                seen.entries(),
                entries.to_vec(),
                "exactly netd's objects: {seen:?}"
            );

            // Replace semantics: a new MAC for the same neighbour.
            let mac2 = MacAddr([2, 0, 0, 0, 0, 8]);
            dp.upsert(&Entry::Neigh {
                ip: v4(10, 244, 7, 0),
                mac: mac2,
            })
            .await
            .expect("replace");
            let seen = dp.observe().await.expect("observe");
            assert_eq!(seen.neighs.get(&v4(10, 244, 7, 0)), Some(&mac2));

            for _ in 0..2 {
                for e in entries.iter().rev() {
                    dp.remove(e).await.expect("remove is idempotent");
                }
            }
            let seen = dp.observe().await.expect("observe");
            assert!(seen.is_empty(), "{seen:?}");

            // IPv6: flannel-v6.1 over the underlay's IPv6 address, reused with its MAC.
            let local6 = under.v6.expect("the underlay has an IPv6 address").ip();
            let spec6 = VxlanSpec {
                local: IpAddr::V6(local6),
                mtu: under.mtu - 70,
                ..spec.clone()
            };
            assert_eq!(spec6.name(), "flannel-v6.1");
            let dev6 = device::ensure_vxlan(&h, &spec6).await.expect("create v6");
            assert_ne!(dev6.index, dev.index);
            assert_eq!(
                device::ensure_vxlan(&h, &spec6).await.expect("reuse v6"),
                dev6,
                "a compatible IPv6 device is reused with its MAC"
            );
            let net6: ipnetwork::Ipv6Network = "fd00:10:244::/56".parse().expect("net6");
            let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"));
            for a in ["fd00:10:244:1::", "fd00:10:244:5::"] {
                device::ensure_vtep_address(&h, dev6.index, v6(a), net6.into())
                    .await
                    .expect("v6 vtep address");
            }
            let dp = dp.with_ipv6(net6, Some(dev6.index));
            let mac6 = MacAddr([2, 0, 0, 0, 6, 7]);
            let entries6 = [
                Entry::Neigh {
                    ip: v6("fd00:10:244:7::"),
                    mac: mac6,
                },
                // The same MAC as an IPv4 FDB entry would be another key: another device.
                Entry::Fdb {
                    mac: mac6,
                    dst: v6("2001:db8::7"),
                },
                Entry::Route {
                    dst: "fd00:10:244:7::/64".parse().expect("dst"),
                    hop: NextHop {
                        gateway: v6("fd00:10:244:7::"),
                        via: Via::Overlay,
                    },
                },
                Entry::Route {
                    dst: "fd00:10:244:8::/64".parse().expect("dst"),
                    hop: NextHop {
                        gateway: v6("2001:db8::8"),
                        via: Via::Underlay,
                    },
                },
            ];
            for _ in 0..2 {
                for e in entries.iter().chain(&entries6) {
                    dp.upsert(e).await.expect("upsert is idempotent");
                }
            }
            let seen = dp.observe().await.expect("observe");
            let mut want: Vec<Entry> = entries.iter().chain(&entries6).copied().collect();
            let mut got = seen.entries();
            want.sort();
            got.sort();
            assert_eq!(
                got, want,
                "exactly netd's objects of both families: {seen:?}"
            );
            for e in entries.iter().chain(&entries6).rev() {
                dp.remove(e).await.expect("remove");
            }
            let seen = dp.observe().await.expect("observe");
            assert!(seen.is_empty(), "{seen:?}");
        });
    });
    // The foreign route survived everything.
    let out = run(&["ip", "-n", &ns, "route", "show", "10.244.9.0/24"]);
    assert!(out.contains("cni0"), "{out}");
}
