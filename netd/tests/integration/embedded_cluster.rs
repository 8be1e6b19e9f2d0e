//! End-to-end: three netd daemons form one embedded Raft cluster (`--kv-initial-cluster`
//! naming all three, no external store), started in any order; more hosts join as plain
//! clients of those members. Subnets, routes, neighbours and FDB entries against the records,
//! real packets across VXLAN, `etcdctl endpoint status --cluster`; then the leader's host dies
//! (SIGKILL): the other two keep applying record changes and forwarding without a lost packet,
//! and the dead host's netd comes back with its subnet and catches up.

use crate::common;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{DEFAULT_CONFIG, World, wait_until};

const MEMBERS: [usize; 3] = [1, 2, 3];

/// A continuous ping (every 100 ms) from container namespace `from` to `to`.
fn start_pinger(from: &str, to: Ipv4Addr, count: u32) -> Child {
    Command::new("ip")
        .args(["netns", "exec", from, "ping", "-i", "0.1", "-W", "1", "-c"])
        .arg(count.to_string())
        .arg(to.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ping")
}

/// Waits for a pinger and asserts that every packet was answered.
fn assert_no_loss(pinger: Child, what: &str) {
    let out = pinger.wait_with_output().expect("ping ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "packets lost {what}: {text}"
    );
}

/// `endpoint status --cluster`: `n` members answer and all name the same single leader, which
/// is one of them; returns the leader's host index.
fn one_leader(w: &World, n: usize) -> usize {
    let mut leader_host = 0;
    wait_until(
        &format!("{n} members with one leader"),
        Duration::from_secs(20),
        || {
            let st = w.endpoint_status();
            let leaders: std::collections::BTreeSet<u64> = st.iter().map(|s| s.2).collect();
            let leading: Vec<&(String, u64, u64)> = st.iter().filter(|s| s.1 == s.2).collect();
            if st.len() != n || leaders.len() != 1 || leading.len() != 1 {
                return false;
            }
            leader_host = MEMBERS
                .iter()
                .copied()
                .find(|&m| leading[0].0 == World::member_client_url(m))
                .unwrap_or(0);
            leader_host != 0
        },
    );
    leader_host
}

#[test]
fn three_netd_members_form_the_store_and_survive_losing_one() {
    let mut w = World::new(5);
    let all = World::member_client_urls(&MEMBERS);
    w.endpoints = all.clone();

    // Any start order: h3's netd starts alone and waits (no quorum, no leader, no config).
    w.start_netd_member(3, &MEMBERS, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        w.netd_running(3),
        "netd waits for the other members:\n{}",
        w.netd_log(3)
    );
    assert!(
        w.http_get(3, "/readyz").is_none_or(|(code, _)| code != 200),
        "not ready without a store"
    );
    w.start_netd_member(1, &MEMBERS, &[]);
    w.start_netd_member(2, &MEMBERS, &[]);
    wait_until(
        "the embedded cluster to answer",
        Duration::from_secs(30),
        || w.etcdctl_try(&["endpoint", "health"]).status.success(),
    );
    w.etcdctl(&["put", &format!("{}/config", w.prefix_key), DEFAULT_CONFIG]);

    let subnets: Vec<_> = MEMBERS.iter().map(|&i| w.wait_ready(i)).collect();
    let distinct: std::collections::BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "distinct subnets: {subnets:?}");
    assert_eq!(w.records().len(), 3, "records: {:?}", w.records());
    w.wait_converged(&MEMBERS);
    one_leader(&w, 3);
    // Every member holds the same records (a serializable read answered by each member).
    for m in MEMBERS {
        let out = Command::new("ip")
            .args(["netns", "exec", &w.underlay(), "etcdctl", "--endpoints"])
            .arg(World::member_client_url(m))
            .args(["get", "--prefix", "--keys-only", "--consistency=s"])
            .arg(format!("{}/subnets/", w.prefix_key))
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        let keys = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            keys.lines().filter(|l| !l.is_empty()).count(),
            3,
            "h{m}'s member: {keys}"
        );
    }

    let mut c: Vec<(String, Ipv4Addr)> = MEMBERS.iter().map(|&i| w.add_container(i)).collect();
    for (from, _) in &c {
        for (_, to) in &c {
            wait_until(
                &format!("ping {from} -> {to}"),
                Duration::from_secs(10),
                || World::ping(from, *to),
            );
        }
    }

    // A fourth host joins as a plain client of the three members.
    w.start_netd(4, &[]);
    w.wait_ready(4);
    assert_eq!(w.records().len(), 4);
    w.wait_converged(&[1, 2, 3, 4]);
    c.push(w.add_container(4));
    wait_until("ping c4 -> c1", Duration::from_secs(10), || {
        World::ping(&c[3].0, c[0].1)
    });

    // The leader's host dies (SIGKILL: netd and its member at once) while the two other members'
    // containers ping each other.
    let dead = one_leader(&w, 3);
    let survivors: Vec<usize> = MEMBERS.iter().copied().filter(|&m| m != dead).collect();
    let (s1, s2) = (survivors[0], survivors[1]);
    let pinger = start_pinger(&c[s1 - 1].0, c[s2 - 1].1, 60);
    std::thread::sleep(Duration::from_millis(500));
    w.kill_netd(dead);
    w.endpoints = World::member_client_urls(&survivors);
    let new_leader = one_leader(&w, 2);
    assert!(survivors.contains(&new_leader), "a survivor leads");

    // Record changes still reach the survivors (and the plain client h4, whose endpoint list
    // still names the dead member): h5 joins, then leaves and its record is deleted.
    w.endpoints = all.clone();
    w.start_netd(5, &[]);
    w.endpoints = World::member_client_urls(&survivors);
    w.wait_ready(5);
    let mut alive = vec![s1, s2, 4, 5];
    w.wait_converged(&alive);
    let c5 = w.add_container(5);
    wait_until("ping c5 -> survivor", Duration::from_secs(10), || {
        World::ping(&c5.0, c[s1 - 1].1)
    });
    assert!(w.stop_netd(5).success());
    alive.pop();
    let (net5, len5) = w.subnet_of(5).expect("h5 subnet");
    w.etcdctl(&["del", &format!("{}/subnets/{net5}-{len5}", w.prefix_key)]);
    w.wait_converged(&alive);
    for &h in &alive {
        assert!(
            !w.cluster_routes(h).contains_key(&format!("{net5}/{len5}")),
            "h{h} still routes to the deleted subnet"
        );
    }
    assert!(w.netd_running(s1) && w.netd_running(s2) && w.netd_running(4));
    assert_no_loss(pinger, "between the survivors while the leader's host died");

    // The dead host's netd comes back with the same member data: same subnet, catches up on
    // what it missed (h5's deletion), and no packet is lost from its container meanwhile (its
    // kernel state outlived the crash).
    let pinger = start_pinger(&c[dead - 1].0, c[s1 - 1].1, 40);
    std::thread::sleep(Duration::from_millis(300));
    w.start_netd_member(dead, &MEMBERS, &[]);
    assert_eq!(
        w.wait_ready(dead),
        subnets[dead - 1],
        "same subnet after restart"
    );
    assert_no_loss(pinger, "from the restarted host");
    w.endpoints = all;
    one_leader(&w, 3);
    assert_eq!(w.records().len(), 4, "records: {:?}", w.records());
    w.wait_converged(&[1, 2, 3, 4]);
    assert!(
        !w.cluster_routes(dead)
            .contains_key(&format!("{net5}/{len5}")),
        "the restarted host caught up with the deletion"
    );
    wait_until("ping c4 -> restarted host", Duration::from_secs(10), || {
        World::ping(&c[3].0, c[dead - 1].1)
    });
}
