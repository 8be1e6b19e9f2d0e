//! End to end, the full path: hosts in namespaces running netd (host 1 with the embedded KV
//! member), containers attached by netd-cni as a runtime does, real ICMP and TCP between
//! containers on different hosts; and a container deleted (CNI DEL) whose address is reused by
//! a new container that then works from both directions.

use std::time::{Duration, Instant};

use testbed::netns;
use testbed::traffic;
use testbed::world::{VXLAN, World};

/// Retries `f` for up to `timeout`; the last error if it never succeeds.
fn eventually(timeout: Duration, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(e) if t0.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn cross_host_containers_talk_tcp_and_icmp() {
    let mut w = World::new(2, VXLAN).expect("world");
    let a = w.add_container(1, "").expect("container on h1");
    let b = w.add_container(2, "").expect("container on h2");
    let (na, la) = w.subnet(1).expect("h1 subnet");
    let (nb, lb) = w.subnet(2).expect("h2 subnet");
    assert_ne!(na, nb, "hosts share a subnet");
    assert!(
        u32::from(a.ip) & (u32::MAX << (32 - la)) == u32::from(na),
        "{} not in h1's subnet {na}/{la}",
        a.ip
    );
    assert!(
        u32::from(b.ip) & (u32::MAX << (32 - lb)) == u32::from(nb),
        "{} not in h2's subnet {nb}/{lb}",
        b.ip
    );
    // The container MTU is the VXLAN MTU: underlay 1500 − 50.
    assert_eq!(World::mtu(&a.ns, "eth0").expect("mtu"), 1450);
    // flannel's VXLAN device settings: no learning, no outer UDP checksum.
    let dev = testbed::cmd::run(&["ip", "-n", &w.host(1), "-d", "link", "show", "flannel.1"])
        .expect("flannel.1");
    assert!(
        dev.contains("nolearning") && dev.contains("noudpcsum"),
        "{dev}"
    );

    // ICMP both ways, and a full-size packet that must not be fragmented (DF set).
    for (from, to) in [(&a, &b), (&b, &a)] {
        assert!(
            netns::ping(&from.ns, to.ip, 2).is_some(),
            "{} cannot ping {}",
            from.ns,
            to.ip
        );
        let out = testbed::cmd::output(&[
            "ip",
            "netns",
            "exec",
            &from.ns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1422",
            &to.ip.to_string(),
        ])
        .expect("ping");
        assert!(
            out.status.success(),
            "1450-byte DF ping {} → {} failed: {}",
            from.ns,
            to.ip,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // TCP both ways, 4 MiB echoed and checked byte for byte.
    traffic::echo(&a.ns, &b.ns, b.ip, 4 << 20).expect("TCP h1 container → h2 container");
    traffic::echo(&b.ns, &a.ns, a.ip, 4 << 20).expect("TCP h2 container → h1 container");
}

#[test]
fn deleted_containers_address_is_reused_by_a_working_container() {
    let mut w = World::new(2, VXLAN).expect("world");
    let old = w.add_container(1, "").expect("container on h1");
    // A neighbour on the same host keeps the bridge up (with no port left, the kernel would
    // flush the bridge's ARP cache and hide a stale entry).
    let bystander = w.add_container(1, "").expect("second container on h1");
    let peer = w.add_container(2, "").expect("container on h2");
    // Traffic both ways first, so every cache on the path knows the old container.
    traffic::echo(&peer.ns, &old.ns, old.ip, 64 << 10).expect("peer → old");
    traffic::echo(&old.ns, &peer.ns, peer.ip, 64 << 10).expect("old → peer");

    w.del_container(&old).expect("CNI DEL");
    assert!(
        netns::ping(&peer.ns, old.ip, 1).is_none(),
        "{} still answers after DEL",
        old.ip
    );
    let lease = w.cni_data_dir(1).join("netd").join(old.ip.to_string());
    assert!(
        !lease.exists(),
        "address file {} survived DEL",
        lease.display()
    );

    // A new container asks for the same address, as `podman run --ip` does through CNI_ARGS.
    let new = w
        .add_container(1, &format!("IP={}", old.ip))
        .expect("ADD with the old address");
    assert_eq!(new.ip, old.ip);
    let owner = std::fs::read_to_string(&lease).expect("address file of the new container");
    assert!(owner.starts_with(&new.ns), "address owned by {owner:?}");

    // The remote side reaches the new container first (it has sent nothing yet), then the
    // other way round. A stale neighbour entry for the old MAC would stall this for seconds.
    let t0 = Instant::now();
    eventually(Duration::from_secs(10), || {
        traffic::echo(&peer.ns, &new.ns, new.ip, 64 << 10)
    })
    .expect("peer → new container with the reused address");
    let took = t0.elapsed();
    traffic::echo(&new.ns, &peer.ns, peer.ip, 64 << 10).expect("new container → peer");
    traffic::echo(&bystander.ns, &new.ns, new.ip, 64 << 10).expect("same-host neighbour → new");
    assert!(
        took < Duration::from_secs(2),
        "the reused address was reachable only after {took:?}"
    );
}
