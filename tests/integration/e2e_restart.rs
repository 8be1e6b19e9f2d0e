//! End to end, netd restarted under traffic: a long-lived TCP connection between containers on
//! two hosts survives netd being stopped (SIGTERM) and started again on the client's host and
//! then on the host that runs the embedded KV member — no reset, no lost or corrupted byte, no
//! stall — and afterwards both hosts still converge on changes.

use std::time::Duration;

use testbed::netns;
use testbed::traffic::{self, Stream};
use testbed::world::{VXLAN, World};

#[test]
fn netd_restart_keeps_a_long_lived_connection() {
    let mut w = World::new(2, VXLAN).expect("world");
    let a = w.add_container(1, "").expect("container on h1");
    let b = w.add_container(2, "").expect("container on h2");
    let stream = Stream::start(&b.ns, &a.ns, a.ip).expect("stream h2 → h1");
    let before_1 = w.cluster_routes(1).expect("routes");
    let before_2 = w.cluster_routes(2).expect("routes");

    // h2: a KV client.
    w.stop_netd(2).expect("stop netd on h2");
    stream
        .wait_flowing(1 << 20, Duration::from_secs(5))
        .expect("flows while h2's netd is down");
    w.start_netd(2).expect("start netd on h2");
    w.wait_ready(2).expect("h2 ready again");
    stream
        .wait_flowing(128 << 10, Duration::from_secs(5))
        .expect("flows after h2's netd restarted");

    // h1: its netd runs the embedded KV member, which goes down and comes back with it.
    w.stop_netd(1).expect("stop netd on h1");
    stream
        .wait_flowing(1 << 20, Duration::from_secs(5))
        .expect("flows while h1's netd and the KV member are down");
    w.start_netd(1).expect("start netd on h1");
    w.wait_ready(1).expect("h1 ready again");
    stream
        .wait_flowing(128 << 10, Duration::from_secs(5))
        .expect("flows after h1's netd restarted");

    assert_eq!(
        w.cluster_routes(1).expect("routes"),
        before_1,
        "h1 routes changed"
    );
    assert_eq!(
        w.cluster_routes(2).expect("routes"),
        before_2,
        "h2 routes changed"
    );
    let r = stream
        .finish()
        .expect("no reset, every byte delivered in order");
    eprintln!(
        "{} bytes over {:?}, longest pause {:?}",
        r.received, r.duration, r.max_gap
    );
    assert!(
        r.max_gap < Duration::from_millis(500),
        "the connection stalled for {:?} across the restarts",
        r.max_gap
    );

    // Both restarted daemons still act on changes: a third host joins and is reached.
    w.add_host(3).expect("host 3");
    w.start_netd(3).expect("netd on h3");
    w.wait_ready(3).expect("h3 ready");
    for h in 1..=3 {
        w.wait_routes(h, &[1, 2, 3])
            .expect("routes after the restarts");
    }
    let c = w.add_container(3, "").expect("container on h3");
    assert!(netns::ping(&a.ns, c.ip, 2).is_some(), "h1 → h3");
    traffic::echo(&c.ns, &b.ns, b.ip, 64 << 10).expect("h3 → h2 TCP");
}
