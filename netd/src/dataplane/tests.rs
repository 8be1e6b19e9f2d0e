//! Unit tests of the pure dataplane logic against the in-memory dataplane.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::memory::MemoryDataplane;
use super::*;
use crate::subnet::{LeaseAttrs, Subnet, Subnet6, SubnetKey, VxlanData};

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, last])
}

fn peer(n: u8, public: Ipv4Addr, m: MacAddr) -> PeerRecord {
    PeerRecord {
        subnet: SubnetKey::v4(Subnet::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap()),
        attrs: LeaseAttrs {
            public_ip: public,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanData {
                vni: 1,
                vtep_mac: m,
            }),
            backend_v6_data: None,
        },
        lease: 5,
        create_revision: 1,
        mod_revision: 1,
    }
}

fn vxlan(direct: bool) -> RoutingMode {
    RoutingMode::Vxlan {
        vni: 1,
        direct,
        segment: Some("192.0.2.0/24".parse().unwrap()),
        segment6: Some("2001:db8::/64".parse().unwrap()),
    }
}

fn desired(mode: &RoutingMode, peers: &[PeerRecord]) -> KernelState {
    let mut s = KernelState::default();
    for p in peers {
        for e in peer_entries(mode, Families::V4, p).unwrap() {
            assert!(s.insert(e));
        }
    }
    s
}

#[test]
fn vxlan_peer_gets_neigh_fdb_route_in_order() {
    let p = peer(3, Ipv4Addr::new(198, 51, 100, 3), mac(3));
    let e = peer_entries(&vxlan(false), Families::V4, &p).unwrap();
    assert!(matches!(e[0], Entry::Neigh { ip, .. } if ip == v4(Ipv4Addr::new(10, 244, 3, 0))));
    assert!(matches!(e[1], Entry::Fdb { dst, .. } if dst == v4(Ipv4Addr::new(198, 51, 100, 3))));
    assert!(matches!(
        e[2],
        Entry::Route {
            hop: NextHop {
                via: Via::Overlay,
                ..
            },
            ..
        }
    ));
    // DirectRouting only applies to peers on the same segment.
    assert_eq!(
        peer_entries(&vxlan(true), Families::V4, &p).unwrap().len(),
        3
    );
    let near = peer(4, Ipv4Addr::new(192, 0, 2, 4), mac(4));
    let d = peer_entries(&vxlan(true), Families::V4, &near).unwrap();
    assert_eq!(
        d,
        vec![Entry::Route {
            dst: IpNetwork::V4(near.subnet.v4.unwrap().0),
            hop: NextHop {
                gateway: v4(Ipv4Addr::new(192, 0, 2, 4)),
                via: Via::Underlay
            }
        }]
    );
}

#[test]
fn mismatched_backend_or_vni_is_refused() {
    let mut p = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    p.attrs.backend_type = "host-gw".into();
    assert!(peer_entries(&vxlan(false), Families::V4, &p).is_err());
    let mut q = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    assert!(peer_entries(&RoutingMode::HostGw, Families::V4, &q).is_err());
    q.attrs.backend_data = Some(VxlanData {
        vni: 9,
        vtep_mac: mac(3),
    });
    assert!(
        peer_entries(&vxlan(false), Families::V4, &q)
            .unwrap_err()
            .contains("VNI")
    );
}

#[test]
fn diff_removes_stale_and_replaces_changed() {
    let mode = vxlan(false);
    let a = peer(2, Ipv4Addr::new(192, 0, 2, 2), mac(2));
    let b = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    let gone = peer(9, Ipv4Addr::new(192, 0, 2, 9), mac(9));
    let observed = desired(&mode, &[a.clone(), b.clone(), gone]);
    let mut b2 = b.clone();
    b2.attrs.backend_data = Some(VxlanData {
        vni: 1,
        vtep_mac: mac(33),
    });
    let want = desired(&mode, &[a, b2]);
    let plan = diff(&want, &observed);
    // b's neighbour is replaced (same key), b's new FDB added; old FDB, stale peer removed.
    assert_eq!(plan.upserts.len(), 2, "{plan:?}");
    assert!(
        matches!(plan.removals[0], Entry::Route { .. }),
        "routes go first: {plan:?}"
    );
    assert_eq!(plan.removals.len(), 4, "{plan:?}"); // route+neigh+fdb of peer 9, fdb of old mac
    assert!(diff(&want, &want).is_empty());
}

#[tokio::test]
async fn program_remove_and_reconcile_in_memory() {
    let dp = MemoryDataplane::default();
    let mode = vxlan(false);
    let p = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    let first = peer_entries(&mode, Families::V4, &p).unwrap();
    program_peer(&dp, &[], &first).await.unwrap();
    assert_eq!(dp.snapshot().len(), 3);

    // VtepMAC change: the old FDB entry goes, the neighbour is replaced.
    let mut p2 = p.clone();
    p2.attrs.backend_data = Some(VxlanData {
        vni: 1,
        vtep_mac: mac(30),
    });
    let second = peer_entries(&mode, Families::V4, &p2).unwrap();
    program_peer(&dp, &first, &second).await.unwrap();
    let s = dp.snapshot();
    assert_eq!(s.len(), 3);
    assert!(s.fdb_v4(&mac(3)).is_none());
    assert_eq!(
        s.neighs.get(&v4(Ipv4Addr::new(10, 244, 3, 0))),
        Some(&mac(30))
    );

    // Delete: all three go.
    remove_peer(&dp, &second).await.unwrap();
    assert!(dp.snapshot().is_empty());

    // Reconcile removes stale entries left behind and adds missing ones.
    let stale = peer(7, Ipv4Addr::new(192, 0, 2, 7), mac(7));
    program_peer(
        &dp,
        &[],
        &peer_entries(&mode, Families::V4, &stale).unwrap(),
    )
    .await
    .unwrap();
    let want = desired(&mode, std::slice::from_ref(&p));
    let plan = diff(&want, &dp.observe().await.unwrap());
    assert_eq!(apply_plan(&dp, &plan).await, 0);
    assert_eq!(dp.snapshot(), want);
}

#[tokio::test]
async fn failed_step_rolls_back_earlier_steps() {
    let dp = MemoryDataplane::default();
    let p = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    let entries = peer_entries(&vxlan(false), Families::V4, &p).unwrap();
    *dp.fail_on.lock().unwrap() = Some(entries[2]); // the route fails
    assert!(program_peer(&dp, &[], &entries).await.is_err());
    assert!(dp.snapshot().is_empty(), "neighbour and FDB rolled back");
}

#[test]
fn duplicate_mac_is_detected() {
    let mut s = KernelState::default();
    assert!(s.insert(Entry::Fdb {
        mac: mac(1),
        dst: v4(Ipv4Addr::new(192, 0, 2, 1))
    }));
    assert!(!s.insert(Entry::Fdb {
        mac: mac(1),
        dst: v4(Ipv4Addr::new(192, 0, 2, 2))
    }));
    assert!(s.insert(Entry::Fdb {
        mac: mac(1),
        dst: v4(Ipv4Addr::new(192, 0, 2, 1))
    }));
}

/// A dual-stack peer: one set of entries per family, each on its family's device, IPv4 and
/// IPv6 neighbours before FDB entries before routes; DirectRouting per family.
#[test]
fn dual_stack_peer_gets_entries_for_both_families() {
    let mut p = peer(3, Ipv4Addr::new(198, 51, 100, 3), mac(3));
    let s6 = Subnet6::new("fd00:10:244:3::".parse().unwrap(), 64).unwrap();
    p.subnet.v6 = Some(s6);
    p.attrs.public_ipv6 = Some("2001:db8:1::3".parse().unwrap());
    p.attrs.backend_v6_data = Some(VxlanData {
        vni: 1,
        vtep_mac: mac(0x63),
    });
    // A node without IPv6 programs the IPv4 half only.
    assert_eq!(
        peer_entries(&vxlan(false), Families::V4, &p).unwrap().len(),
        3
    );
    let e = peer_entries(&vxlan(false), Families::DUAL, &p).unwrap();
    assert_eq!(e.len(), 6, "{e:?}");
    let kinds: Vec<u8> = e
        .iter()
        .map(|x| match x {
            Entry::Neigh { .. } => 0,
            Entry::Fdb { .. } => 1,
            Entry::Route { .. } => 2,
        })
        .collect();
    assert_eq!(kinds, [0, 0, 1, 1, 2, 2]);
    let vtep6 = IpAddr::V6("fd00:10:244:3::".parse::<Ipv6Addr>().unwrap());
    assert!(e.contains(&Entry::Neigh {
        ip: vtep6,
        mac: mac(0x63)
    }));
    assert!(e.contains(&Entry::Route {
        dst: IpNetwork::V6(s6.0),
        hop: NextHop {
            gateway: vtep6,
            via: Via::Overlay
        }
    }));
    // The same MAC on both devices are two FDB keys, not a collision.
    let mut same = p.clone();
    same.attrs.backend_v6_data = same.attrs.backend_data.clone();
    let mut st = KernelState::default();
    for x in peer_entries(&vxlan(false), Families::DUAL, &same).unwrap() {
        assert!(st.insert(x), "{x:?}");
    }
    assert_eq!(st.fdb.len(), 2);
    // DirectRouting: the IPv6 peer on the same IPv6 segment gets a direct route, the IPv4
    // half (another segment) stays encapsulated.
    p.attrs.public_ipv6 = Some("2001:db8::3".parse().unwrap());
    let d = peer_entries(&vxlan(true), Families::DUAL, &p).unwrap();
    assert_eq!(d.len(), 4, "{d:?}");
    assert!(d.contains(&Entry::Route {
        dst: IpNetwork::V6(s6.0),
        hop: NextHop {
            gateway: IpAddr::V6("2001:db8::3".parse().unwrap()),
            via: Via::Underlay
        }
    }));
    // host-gw: one direct route per family.
    p.attrs.backend_type = "host-gw".into();
    let h = peer_entries(&RoutingMode::HostGw, Families::DUAL, &p).unwrap();
    assert_eq!(h.len(), 2);
    // A dual-stack record without its v6 VtepMAC is refused.
    p.attrs.backend_type = "vxlan".into();
    p.attrs.backend_v6_data = None;
    assert!(peer_entries(&vxlan(false), Families::DUAL, &p).is_err());
}

#[test]
fn ipv6_only_peer_gets_ipv6_entries_only() {
    // A record as flanneld writes it without IPv4: PublicIP 0.0.0.0, no BackendData.
    let s6 = Subnet6::new("fd00:10:244:5::".parse().unwrap(), 64).unwrap();
    let p = PeerRecord {
        subnet: SubnetKey::v6(s6),
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some("2001:db8::5".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: Some(VxlanData {
                vni: 1,
                vtep_mac: mac(0x65),
            }),
        },
        lease: 5,
        create_revision: 1,
        mod_revision: 1,
    };
    let vtep6 = IpAddr::V6("fd00:10:244:5::".parse::<Ipv6Addr>().unwrap());
    let mode = RoutingMode::Vxlan {
        vni: 1,
        direct: false,
        segment: None,
        segment6: Some("2001:db8::/64".parse().unwrap()),
    };
    let e = peer_entries(&mode, Families::V6, &p).unwrap();
    assert_eq!(
        e,
        vec![
            Entry::Neigh {
                ip: vtep6,
                mac: mac(0x65)
            },
            Entry::Fdb {
                mac: mac(0x65),
                dst: IpAddr::V6("2001:db8::5".parse().unwrap())
            },
            Entry::Route {
                dst: IpNetwork::V6(s6.0),
                hop: NextHop {
                    gateway: vtep6,
                    via: Via::Overlay
                }
            },
        ]
    );
    // DirectRouting on the same IPv6 segment: one direct route.
    let direct = RoutingMode::Vxlan {
        vni: 1,
        direct: true,
        segment: None,
        segment6: Some("2001:db8::/64".parse().unwrap()),
    };
    assert_eq!(peer_entries(&direct, Families::V6, &p).unwrap().len(), 1);
    // host-gw: a route via the peer's PublicIPv6.
    let mut h = p.clone();
    h.attrs.backend_type = "host-gw".into();
    h.attrs.backend_v6_data = None;
    assert_eq!(
        peer_entries(&RoutingMode::HostGw, Families::V6, &h).unwrap(),
        vec![Entry::Route {
            dst: IpNetwork::V6(s6.0),
            hop: NextHop {
                gateway: IpAddr::V6("2001:db8::5".parse().unwrap()),
                via: Via::Underlay
            }
        }]
    );
    // An IPv4-only node has nothing to program for it.
    assert!(peer_entries(&vxlan(false), Families::V4, &p).is_err());
}
