//! End-to-end: reservations (records without a KV lease) are used by their own host only and
//! never taken by another host.

use crate::common;

use std::time::Duration;

use common::{World, wait_until};

#[test]
fn reservations_are_honoured() {
    let mut w = World::new(3);
    // Three /28 subnets: 10.244.0.16, .32, .48.
    w.start_etcd(r#"{"Network":"10.244.0.0/26","Backend":{"Type":"vxlan"}}"#);
    let p = format!("{}/subnets/", w.prefix_key);
    let rec = |ip: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}}}"#
        )
    };
    // h1's reservation, and one for a host that is not running.
    w.etcdctl(&["put", &format!("{p}10.244.0.48-28"), &rec("192.0.2.1")]);
    w.etcdctl(&["put", &format!("{p}10.244.0.16-28"), &rec("192.0.2.99")]);

    w.start_netd(1, &[]);
    assert_eq!(
        w.wait_ready(1),
        ("10.244.0.48".parse().expect("ip"), 28),
        "h1 uses its reservation"
    );
    w.start_netd(2, &[]);
    assert_eq!(
        w.wait_ready(2),
        ("10.244.0.32".parse().expect("ip"), 28),
        "h2 takes the only free subnet"
    );
    w.start_netd(3, &[]);
    wait_until("h3 reports exhaustion", Duration::from_secs(10), || {
        w.netd_log(3).contains("out of subnets")
    });

    // The reservations still carry no lease; h1 rewrote its own with its real VtepMAC.
    let json: serde_json::Value =
        serde_json::from_str(&w.etcdctl(&["get", "--prefix", &p, "-w", "json"]))
            .expect("etcdctl json");
    let kvs = json["kvs"].as_array().expect("kvs");
    assert_eq!(kvs.len(), 3);
    for kv in kvs {
        let key = kv["key"].as_str().unwrap_or("");
        let lease = kv["lease"].as_i64().unwrap_or(0);
        // etcdctl -w json prints keys base64-encoded.
        let is_h2 = key == "L2NvcmVvcy5jb20vbmV0d29yay9zdWJuZXRzLzEwLjI0NC4wLjMyLTI4";
        assert_eq!(lease != 0, is_h2, "only h2's record has a lease: {kv}");
    }
    let h1_mac = w.records()["10.244.0.48-28"]["BackendData"]["VtepMAC"].clone();
    assert_ne!(h1_mac, "02:00:00:00:00:01", "h1 published its device's MAC");
    // h1 and h2 route to each other; the reservation of the absent host is routed too.
    w.wait_converged(&[1, 2]);
}

#[test]
fn short_leases_are_kept_alive_and_expire_when_netd_is_gone() {
    let mut w = World::new(2);
    w.start_etcd(common::DEFAULT_CONFIG);
    // TTL 5 s: renewed every ~1.7 s while netd runs.
    w.start_netd(1, &["--subnet-lease-ttl", "5"]);
    w.start_netd(2, &[]);
    let (net1, len1) = w.wait_ready(1);
    w.wait_ready(2);
    w.wait_converged(&[1, 2]);
    std::thread::sleep(Duration::from_secs(8));
    let key = format!("{net1}-{len1}");
    assert!(
        w.records().contains_key(&key),
        "record outlives its TTL while netd renews it"
    );
    w.wait_converged(&[1, 2]);

    // netd gone for good (killed): the lease expires, the record goes, h2 drops the routes.
    w.kill_netd(1);
    wait_until("h1's record expires", Duration::from_secs(15), || {
        !w.records().contains_key(&key)
    });
    w.wait_converged(&[2]);
    assert!(w.cluster_routes(2).is_empty());
}
