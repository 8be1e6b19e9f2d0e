//! End-to-end: the VXLAN backend across three and four hosts, with a real 3-member etcd 3.4
//! cluster, the real netd binary and real packets.

use crate::common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{DEFAULT_CONFIG, World};

#[test]
fn three_hosts_converge_forward_join_leave_and_restart() {
    let mut w = World::new(4);
    w.start_etcd_members(DEFAULT_CONFIG, 3);
    let members = w.etcdctl(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "a 3-member etcd: {members}");
    for i in 1..=3 {
        w.start_netd(i, &[]);
    }
    let subnets: Vec<_> = (1..=3).map(|i| w.wait_ready(i)).collect();
    let distinct: std::collections::BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "distinct subnets: {subnets:?}");
    assert_eq!(w.records().len(), 3);
    w.wait_converged(&[1, 2, 3]);

    // Real packets between containers behind different hosts, across VXLAN.
    let c: Vec<(String, Ipv4Addr)> = (1..=3).map(|i| w.add_container(i)).collect();
    for (from, _) in &c {
        for (_, to) in &c {
            common::wait_until(
                &format!("ping {from} -> {to}"),
                Duration::from_secs(10),
                || World::ping(from, *to),
            );
        }
    }

    // Health endpoints.
    let (status, _) = w.http_get(1, "/readyz").expect("readyz answers");
    assert_eq!(status, 200);
    let (status, body) = w.http_get(1, "/metrics").expect("metrics answers");
    assert_eq!(status, 200);
    assert!(body.contains("netd_peers 2"), "{body}");
    assert!(body.contains("netd_reconcile_runs_total"), "{body}");

    // A fourth host joins: everyone converges and reaches it.
    w.start_netd(4, &[]);
    w.wait_ready(4);
    w.wait_converged(&[1, 2, 3, 4]);
    let c4 = w.add_container(4);
    common::wait_until("ping c1 -> c4", Duration::from_secs(10), || {
        World::ping(&c[0].0, c4.1)
    });

    // Host 4 leaves: its netd stops (routes stay), then its record is deleted: routes vanish.
    assert!(w.stop_netd(4).success(), "netd exits cleanly on SIGTERM");
    let (net4, len4) = w.subnet_of(4).expect("h4 subnet");
    let key4 = format!("{}/subnets/{net4}-{len4}", w.prefix_key);
    w.etcdctl(&["del", &key4]);
    w.wait_converged(&[1, 2, 3]);
    for h in 1..=3 {
        assert!(!w.cluster_routes(h).contains_key(&format!("{net4}/{len4}")));
    }

    // Restart netd on h2 while c1 pings c2: same subnet, same VtepMAC, no lost packets.
    let before = w.subnet_of(2);
    let records_before = w.records();
    let pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &c[0].0, "ping", "-c", "40", "-i", "0.1", "-W", "1",
        ])
        .arg(c[1].1.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ping");
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let restart = {
        assert!(w.stop_netd(2).success());
        // SIGTERM left the routes in place: h2 still reaches h1 with netd down.
        assert!(
            World::ping(&c[1].0, c[0].1),
            "forwarding survives netd stop"
        );
        w.start_netd(2, &[]);
        w.wait_ready(2)
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "restart took too long for the ping window"
    );
    let out = pinger.wait_with_output().expect("ping ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "packets lost across restart: {text}"
    );
    assert_eq!(Some(restart), before, "same subnet after restart");
    assert_eq!(
        w.records(),
        records_before,
        "record (VtepMAC) unchanged across the restart"
    );
    w.wait_converged(&[1, 2, 3]);
}

/// A config as flannel's Go decoder reads it: lowercase keys, a VNI and `Backend.MTU`. Every
/// host gets flannel's result: device `flannel.2`, MTU 50 below the configured 1400 on the
/// device and in `FLANNEL_MTU`, VNI 2 in the records, and packets flow.
#[test]
fn lowercase_keys_vni_and_mtu_as_flannel_reads_them() {
    let config = r#"{"network":"10.244.0.0/16","backend":{"type":"vxlan","vni":2,"mtu":1400}}"#;
    let mut w = World::new(2);
    w.start_etcd(config);
    for i in 1..=2 {
        w.start_netd(i, &[]);
    }
    for i in 1..=2 {
        w.wait_ready(i);
        let env = std::fs::read_to_string(w.subnet_file(i)).expect("subnet file");
        assert!(env.contains("FLANNEL_MTU=1350\n"), "{env}");
        let dev = World::json(&w.host(i), "ip", &["link", "show", "flannel.2"]);
        assert_eq!(dev.len(), 1, "flannel.2 on h{i}");
        assert_eq!(dev[0]["mtu"].as_u64(), Some(1350), "{dev:?}");
        assert!(
            World::json(&w.host(i), "ip", &["link", "show", "flannel.1"]).is_empty(),
            "no flannel.1: the lowercase vni was honoured"
        );
    }
    for (key, record) in w.records() {
        assert_eq!(
            record["BackendData"]["VNI"].as_u64(),
            Some(2),
            "{key}: {record}"
        );
    }
    let a = w.add_container(1);
    let b = w.add_container(2);
    common::wait_until("ping across flannel.2", Duration::from_secs(10), || {
        World::ping(&a.0, b.1)
    });
    // Logs written to a file carry no terminal colour codes.
    let log = w.netd_log(1);
    assert!(log.contains("VXLAN device"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes in a log file: {log}"
    );
}
