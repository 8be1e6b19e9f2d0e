//! `/health` and `/metrics` on `--listen-metrics-urls`: health as etcd answers it, and a few
//! of the member's metrics under etcd's names, checked against etcd 3.4 too (`metrics`
//! compares the whole scrape).

use crate::common;

use common::{Kind, Proc, free_port};

fn start(kind: Kind) -> (Proc, u16) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    (
        Proc::start_with(kind, &["--listen-metrics-urls", &url]),
        port,
    )
}

#[test]
fn health_on_kvstore_and_etcd() {
    for kind in [Kind::Kvstore, Kind::Etcd] {
        let (_p, port) = start(kind);
        let (code, body) = common::http_get(port, "/health");
        assert_eq!(code, 200, "{kind:?}: {body}");
        assert!(body.contains("{\"health\":\"true\""), "{kind:?}: {body}");
    }
}

#[test]
fn metrics_report_the_member() {
    for kind in [Kind::Kvstore, Kind::Etcd] {
        let (p, port) = start(kind);
        p.ok(&["put", "a", "1"]);
        p.ok(&["put", "b", "2"]);
        let (code, body) = common::http_get(port, "/metrics");
        assert_eq!(code, 200, "{kind:?}: {body}");
        for line in [
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 1",
            "etcd_debugging_mvcc_current_revision 3",
            "etcd_debugging_mvcc_keys_total 2",
            "# TYPE etcd_server_proposals_applied_total gauge",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "{kind:?}: missing {line:?} in {body}"
            );
        }
        assert_eq!(common::http_get(port, "/nope").0, 404);
    }
}
