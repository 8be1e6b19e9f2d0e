//! End to end, hosts joining and leaving while containers talk: a host added while a TCP stream
//! flows between containers on two others (the stream never stalls, the new host's container
//! reaches everyone), and a host removed for good — its netd stopped and its subnet record
//! deleted — whose routes then disappear from the others while their own traffic goes on.

use std::time::Duration;

use testbed::netns;
use testbed::traffic::{self, Stream};
use testbed::world::{VXLAN, World};

/// A stream pausing longer than this counts as interrupted (the sender writes every 10 ms).
const MAX_STALL: Duration = Duration::from_millis(500);

#[test]
fn host_added_while_traffic_flows() {
    let mut w = World::new(2, VXLAN).expect("world");
    let a = w.add_container(1, "").expect("container on h1");
    let b = w.add_container(2, "").expect("container on h2");
    let stream = Stream::start(&a.ns, &b.ns, b.ip).expect("stream h1 → h2");

    w.add_host(3).expect("host 3");
    w.start_netd(3).expect("netd on h3");
    w.wait_ready(3).expect("h3 ready");
    for h in 1..=3 {
        w.wait_routes(h, &[1, 2, 3])
            .expect("routes to all three subnets");
    }
    let c = w.add_container(3, "").expect("container on h3");
    stream
        .wait_flowing(256 << 10, Duration::from_secs(5))
        .expect("the stream flows after the join");

    for (from, to) in [(&c, &a), (&c, &b), (&a, &c), (&b, &c)] {
        assert!(
            netns::ping(&from.ns, to.ip, 2).is_some(),
            "{} cannot ping {}",
            from.ns,
            to.ip
        );
        traffic::echo(&from.ns, &to.ns, to.ip, 256 << 10)
            .unwrap_or_else(|e| panic!("TCP {} → {}: {e:#}", from.ns, to.ip));
    }
    let r = stream
        .finish()
        .expect("the stream ends cleanly with every byte");
    assert!(
        r.max_gap < MAX_STALL,
        "the stream stalled for {:?} while h3 joined",
        r.max_gap
    );
}

#[test]
fn host_removed_routes_disappear_others_unaffected() {
    let mut w = World::new(3, VXLAN).expect("world");
    let a = w.add_container(1, "").expect("container on h1");
    let b = w.add_container(2, "").expect("container on h2");
    let c = w.add_container(3, "").expect("container on h3");
    assert!(netns::ping(&a.ns, c.ip, 2).is_some(), "h1 → h3 before");
    let (net3, len3) = w.subnet(3).expect("h3 subnet");
    let gone = format!("{net3}/{len3}");
    let stream = Stream::start(&a.ns, &b.ns, b.ip).expect("stream h1 → h2");

    // Remove h3 for good: its netd stops (leaving its routes and record, as on any SIGTERM),
    // then the operator deletes its record.
    w.stop_netd(3).expect("stop netd on h3");
    assert_eq!(
        w.records().expect("records").len(),
        3,
        "SIGTERM kept the record"
    );
    w.delete_record(3).expect("delete h3's record");

    for h in [1, 2] {
        let t0 = std::time::Instant::now();
        loop {
            let routes = w.cluster_routes(h).expect("routes");
            if !routes.contains_key(&gone) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "h{h} still routes to {gone} 10 s after the record went: {routes:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let neigh =
            testbed::cmd::run(&["ip", "-n", &w.host(h), "neigh", "show", "dev", "flannel.1"])
                .expect("neighbours");
        assert!(
            !neigh.contains(&net3.to_string()),
            "h{h} kept a neighbour for {net3}: {neigh}"
        );
    }
    assert!(
        netns::ping(&a.ns, c.ip, 1).is_none(),
        "h1's container still reaches the removed host's container"
    );
    // The others: routes to each other intact, traffic flowing all along.
    w.wait_routes(1, &[1, 2]).expect("h1 → h2 route");
    w.wait_routes(2, &[1, 2]).expect("h2 → h1 route");
    stream
        .wait_flowing(256 << 10, Duration::from_secs(5))
        .expect("the stream flows after the removal");
    traffic::echo(&b.ns, &a.ns, a.ip, 256 << 10).expect("h2 → h1 TCP");
    let r = stream
        .finish()
        .expect("the stream ends cleanly with every byte");
    assert!(
        r.max_gap < MAX_STALL,
        "the stream stalled for {:?} while h3 left",
        r.max_gap
    );
}
