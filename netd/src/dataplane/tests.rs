//! Unit tests of the pure dataplane logic against the in-memory dataplane.

use std::net::Ipv4Addr;

use super::memory::MemoryDataplane;
use super::*;
use crate::subnet::{LeaseAttrs, Subnet, VxlanData};

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, last])
}

fn peer(n: u8, public: Ipv4Addr, m: MacAddr) -> PeerRecord {
    PeerRecord {
        subnet: Subnet::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap(),
        attrs: LeaseAttrs {
            public_ip: public,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanData {
                vni: 1,
                vtep_mac: m,
            }),
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
        segment: "192.0.2.0/24".parse().unwrap(),
    }
}

fn desired(mode: &RoutingMode, peers: &[PeerRecord]) -> KernelState {
    let mut s = KernelState::default();
    for p in peers {
        for e in peer_entries(mode, p).unwrap() {
            assert!(s.insert(e));
        }
    }
    s
}

#[test]
fn vxlan_peer_gets_neigh_fdb_route_in_order() {
    let p = peer(3, Ipv4Addr::new(198, 51, 100, 3), mac(3));
    let e = peer_entries(&vxlan(false), &p).unwrap();
    assert!(matches!(e[0], Entry::Neigh { ip, .. } if ip == Ipv4Addr::new(10, 244, 3, 0)));
    assert!(matches!(e[1], Entry::Fdb { dst, .. } if dst == Ipv4Addr::new(198, 51, 100, 3)));
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
    assert_eq!(peer_entries(&vxlan(true), &p).unwrap().len(), 3);
    let near = peer(4, Ipv4Addr::new(192, 0, 2, 4), mac(4));
    let d = peer_entries(&vxlan(true), &near).unwrap();
    assert_eq!(
        d,
        vec![Entry::Route {
            dst: near.subnet.0,
            hop: NextHop {
                gateway: Ipv4Addr::new(192, 0, 2, 4),
                via: Via::Underlay
            }
        }]
    );
}

#[test]
fn mismatched_backend_or_vni_is_refused() {
    let mut p = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    p.attrs.backend_type = "host-gw".into();
    assert!(peer_entries(&vxlan(false), &p).is_err());
    let mut q = peer(3, Ipv4Addr::new(192, 0, 2, 3), mac(3));
    assert!(peer_entries(&RoutingMode::HostGw, &q).is_err());
    q.attrs.backend_data = Some(VxlanData {
        vni: 9,
        vtep_mac: mac(3),
    });
    assert!(peer_entries(&vxlan(false), &q).unwrap_err().contains("VNI"));
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
    let first = peer_entries(&mode, &p).unwrap();
    program_peer(&dp, &[], &first).await.unwrap();
    assert_eq!(dp.snapshot().len(), 3);

    // VtepMAC change: the old FDB entry goes, the neighbour is replaced.
    let mut p2 = p.clone();
    p2.attrs.backend_data = Some(VxlanData {
        vni: 1,
        vtep_mac: mac(30),
    });
    let second = peer_entries(&mode, &p2).unwrap();
    program_peer(&dp, &first, &second).await.unwrap();
    let s = dp.snapshot();
    assert_eq!(s.len(), 3);
    assert!(!s.fdb.contains_key(&mac(3)));
    assert_eq!(s.neighs.get(&Ipv4Addr::new(10, 244, 3, 0)), Some(&mac(30)));

    // Delete: all three go.
    remove_peer(&dp, &second).await.unwrap();
    assert!(dp.snapshot().is_empty());

    // Reconcile removes stale entries left behind and adds missing ones.
    let stale = peer(7, Ipv4Addr::new(192, 0, 2, 7), mac(7));
    program_peer(&dp, &[], &peer_entries(&mode, &stale).unwrap())
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
    let entries = peer_entries(&vxlan(false), &p).unwrap();
    *dp.fail_on.lock().unwrap() = Some(entries[2]); // the route fails
    assert!(program_peer(&dp, &[], &entries).await.is_err());
    assert!(dp.snapshot().is_empty(), "neighbour and FDB rolled back");
}

#[test]
fn duplicate_mac_is_detected() {
    let mut s = KernelState::default();
    assert!(s.insert(Entry::Fdb {
        mac: mac(1),
        dst: Ipv4Addr::new(192, 0, 2, 1)
    }));
    assert!(!s.insert(Entry::Fdb {
        mac: mac(1),
        dst: Ipv4Addr::new(192, 0, 2, 2)
    }));
    assert!(s.insert(Entry::Fdb {
        mac: mac(1),
        dst: Ipv4Addr::new(192, 0, 2, 1)
    }));
}
