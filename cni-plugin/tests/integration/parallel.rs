//! Many plugin processes at once on one host: distinct addresses, all reachable, all freed.

use crate::common;

use std::collections::HashSet;

use common::{CniEnv, World, result_ip};
use serde_json::json;

const N: usize = 50;

#[test]
fn fifty_parallel_adds_then_fifty_parallel_dels() {
    let mut w = World::new("par");
    // Masquerade on, so the first ADDs race to install the subnet's rule: exactly one results.
    w.write_subnet("10.244.0.0/16", "10.244.5.1/24", 1450, false);
    let conf = w.conf("1.0.0", json!({}));
    let netns: Vec<String> = (0..N).map(|i| w.container(&format!("c{i}"))).collect();

    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = netns
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (w, conf) = (&w, &conf);
                s.spawn(move || {
                    let env = CniEnv::new("ADD", &format!("par-{i}"), ns, "eth0");
                    w.plugin(&env, conf).ok().clone()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread panicked"))
            .collect()
    });
    let ips: Vec<String> = results.iter().map(result_ip).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), N, "duplicate addresses: {ips:?}");
    assert_eq!(w.allocations().len(), N);
    let rule = vec![World::masq_rule_v4("10.244.5.0/24")];
    assert_eq!(w.masq_rules("ip"), rule);

    // Every container answers, from the host and from a neighbour.
    std::thread::scope(|s| {
        for (i, ip) in ips.iter().enumerate() {
            let (w, netns) = (&w, &netns);
            s.spawn(move || {
                assert!(w.ping(None, ip), "host cannot reach container {i} at {ip}");
                let neighbour = &netns[(i + 1) % N];
                assert!(w.ping(Some(neighbour), ip), "neighbour cannot reach {ip}");
            });
        }
    });

    std::thread::scope(|s| {
        for (i, ns) in netns.iter().enumerate() {
            let (w, conf) = (&w, &conf);
            s.spawn(move || {
                let env = CniEnv::new("DEL", &format!("par-{i}"), ns, "eth0");
                w.plugin(&env, conf).ok();
            });
        }
    });
    assert!(w.allocations().is_empty(), "left: {:?}", w.allocations());
    assert_eq!(
        w.masq_rules("ip"),
        rule,
        "the subnet's rule stays for later containers"
    );
    let links = w.settled_host_links();
    assert_eq!(links, vec!["lo".to_string(), "cni0".to_string()]);
}
