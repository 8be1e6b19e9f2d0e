//! End to end, the KV store losing a member: hosts 1–3 run netd with an embedded KV member each,
//! forming one replicated store (`--kv-initial-cluster`); host 4's netd is a client of all three.
//! Host 1's netd is killed (SIGKILL: its member is lost with it, as in a crash). The others are
//! unaffected: they stay ready, a TCP stream between containers on hosts 2 and 3 never stalls,
//! the store still takes writes, and a host joining afterwards gets a subnet, is routed to by
//! every surviving host and reaches their containers.

use std::time::Duration;

use testbed::netns;
use testbed::traffic::{self, Stream};
use testbed::world::{VXLAN, World};

#[test]
fn kv_cluster_loses_a_member_netd_unaffected() {
    let mut w = World::with_kv_members(4, VXLAN, 3).expect("world with a 3-member store");
    let members = w.etcdctl(&["member", "list"]).expect("member list");
    assert_eq!(members.lines().count(), 3, "three members: {members}");
    let b = w.add_container(2, "").expect("container on h2");
    let c = w.add_container(3, "").expect("container on h3");
    let d = w.add_container(4, "").expect("container on h4");
    let stream = Stream::start(&b.ns, &c.ns, c.ip).expect("stream h2 → h3");

    w.kill_netd(1).expect("kill h1's netd and its member");
    // The store elects a leader among the two left, and takes writes again.
    let t0 = std::time::Instant::now();
    while w.etcdctl(&["put", "/e2e/after-loss", "1"]).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the store took no write within 15 s of losing a member"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A new host joins as a client of all three members (one of them gone).
    w.add_host(5).expect("host 5");
    w.start_netd(5).expect("netd on h5");
    w.wait_ready(5).expect("h5 ready");
    for h in 2..=5 {
        assert!(w.netd_running(h), "netd on h{h} exited:\n{}", w.netd_log(h));
        assert!(
            w.healthz(h, "/readyz").is_some_and(|(code, _)| code == 200),
            "netd on h{h} is not ready after the loss"
        );
        w.wait_routes(h, &[2, 3, 4, 5])
            .expect("routes among the survivors and h5");
    }
    let e = w.add_container(5, "").expect("container on h5");
    for to in [&b, &c, &d] {
        assert!(netns::ping(&e.ns, to.ip, 2).is_some(), "h5 → {}", to.ip);
        traffic::echo(&e.ns, &to.ns, to.ip, 64 << 10).expect("TCP from h5");
    }
    traffic::echo(&d.ns, &e.ns, e.ip, 64 << 10).expect("TCP h4 → h5");
    let r = stream.finish().expect("no reset, every byte delivered");
    assert!(
        r.max_gap < Duration::from_millis(500),
        "the stream stalled for {:?} while the store lost a member",
        r.max_gap
    );
}
