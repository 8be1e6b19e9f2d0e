//! The lease manager against a real etcd: concurrent acquisitions never hand out one subnet
//! twice, and exhaustion is a clear error.

use crate::common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use netd::Error;
use netd::kv::Kv;
use netd::lease::{self, LeaseTiming};
use netd::subnet::{LeaseAttrs, MacAddr, VxlanData};

use common::{World, in_netns};

#[test]
fn concurrent_acquisitions_get_distinct_subnets() {
    let mut w = World::new(0);
    // 15 allocatable /28 subnets (the first is skipped).
    w.start_etcd(r#"{"Network":"10.244.0.0/24","SubnetLen":28}"#);
    let endpoints = vec![w.endpoints.clone()];
    let results = in_netns(&w.underlay(), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let kv = Kv::connect(&endpoints, netd::kv::DEFAULT_PREFIX)
                .await
                .expect("connect");
            let net = kv.get_config().await.expect("config");
            let timing = LeaseTiming {
                ttl: Duration::from_secs(60),
                renew_margin: Duration::from_secs(60),
            };
            let tasks: Vec<_> = (1..=16u8)
                .map(|i| {
                    let kv = kv.clone();
                    let net = net.clone();
                    tokio::spawn(async move {
                        let attrs = LeaseAttrs {
                            public_ip: Ipv4Addr::new(198, 51, 100, i),
                            public_ipv6: None,
                            backend_type: "vxlan".into(),
                            backend_data: Some(VxlanData {
                                vni: 1,
                                vtep_mac: MacAddr([2, 0, 0, 0, 0, i]),
                            }),
                            backend_v6_data: None,
                        };
                        lease::acquire(&kv, &net, &attrs, None, timing).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            out
        })
    });
    let won: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|l| l.subnet)
        .collect();
    let distinct: BTreeSet<_> = won.iter().collect();
    assert_eq!(
        won.len(),
        15,
        "every free subnet handed out once: {results:?}"
    );
    assert_eq!(distinct.len(), 15, "no subnet handed out twice: {won:?}");
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(lost.len(), 1);
    assert!(
        matches!(
            lost[0],
            Error::OutOfSubnets { .. } | Error::LeaseRace { .. }
        ),
        "{}",
        lost[0]
    );
    assert_eq!(w.records().len(), 15);
}
