//! End-to-end: reservations (records without a KV lease) are used by their own host only and
//! never taken by another host.

mod common;

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
