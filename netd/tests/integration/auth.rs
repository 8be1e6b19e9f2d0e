//! End-to-end: an etcd with user/password authentication enabled.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{DEFAULT_CONFIG, NETD, World, wait_until};

#[test]
fn netd_authenticates_to_etcd() {
    let mut w = World::new(2);
    w.start_etcd(DEFAULT_CONFIG);
    w.etcdctl(&["user", "add", "root:s3cret"]);
    w.etcdctl(&["auth", "enable"]);

    for i in 1..=2 {
        w.start_netd(i, &["--etcd-username", "root", "--etcd-password", "s3cret"]);
        w.wait_ready(i);
    }
    let c1 = w.add_container(1);
    let c2 = w.add_container(2);
    wait_until("c1 reaches c2", Duration::from_secs(10), || {
        World::ping(&c1.0, c2.1)
    });
    assert_eq!(w.cluster_routes(1).len(), 1);

    let leases = |creds: bool| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &w.host(1), NETD, "leases", "--json"])
            .args(["--etcd-endpoints", &w.endpoints]);
        if creds {
            // The password through the environment, as documented.
            cmd.args(["--etcd-username", "root"])
                .env("NETD_ETCD_PASSWORD", "s3cret");
        }
        cmd.output().expect("netd leases")
    };
    let out = leases(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(2));

    let out = leases(false);
    assert!(
        !out.status.success(),
        "without credentials the store refuses"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("netd: error:"), "{err}");

    // A user name without a password is a usage error.
    let out = Command::new(NETD)
        .args([
            "leases",
            "--etcd-endpoints",
            &w.endpoints,
            "--etcd-username",
            "root",
        ])
        .env_remove("NETD_ETCD_PASSWORD")
        .output()
        .expect("netd leases");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be given together"));
}
