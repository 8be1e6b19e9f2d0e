//! containerd (Debian's 1.6) running pods and containers through netd-cni on the hosts of a netd
//! world: the path Kubernetes uses (the kubelet's CRI calls on containerd's socket, containerd's
//! CRI plugin running the CNI config of its `conf_dir`), and `ctr run --cni`.
//!
//! Each host runs its own containerd ([`testbed::containerd`]: own config, root, state and
//! socket, in the host's network namespace and a private mount namespace), with the shipped
//! standalone conflist pointed at the host's subnet file and a plugin directory holding the
//! installed `netd-cni`. Images are built locally ([`testbed::oci`]: busybox-static as an OCI
//! archive, a `sleep` as the pause image) and imported with `ctr images import`: no registry.
//! The CRI calls go through the project's own client ([`testbed::cri`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::containerd::{Containerd, Setup};
use testbed::cri::v1;
use testbed::world::{VXLAN, World};
use testbed::{cmd, cri, netns, oci};

const PAUSE: &str = "localhost/netd-e2e-pause:1";
const BUSYBOX: &str = "localhost/netd-e2e-busybox:1";
/// Debian's reference `loopback` plugin (containernetworking-plugins).
const LOOPBACK: &str = "/usr/lib/cni/loopback";

/// One host's containerd with its CNI directories.
struct Node {
    host: usize,
    ipam: PathBuf,
    containerd: Containerd,
}

impl Node {
    /// Installs netd-cni and the shipped conflist under `dir`, starts containerd there and
    /// imports `images`.
    fn new(w: &World, host: usize, dir: PathBuf, images: &[&Path]) -> Node {
        let bin = dir.join("cni-bin");
        let conf = dir.join("net.d");
        std::fs::create_dir_all(&bin).expect("cni bin dir");
        std::fs::create_dir_all(&conf).expect("net.d");
        std::fs::copy(&w.bins.cni, bin.join("netd-cni")).expect("install netd-cni");
        // The CRI plugin brings up every pod's `lo` with the reference `loopback` plugin, which
        // it looks up in the same directory.
        std::fs::copy(LOOPBACK, bin.join("loopback")).expect("install loopback");
        let shipped = include_str!("../../examples/cni/10-netd.conflist");
        let mut conflist: serde_json::Value = serde_json::from_str(shipped).expect("conflist");
        conflist["plugins"][0]["subnetFile"] = w.subnet_file(host).to_string_lossy().into();
        conflist["plugins"][0]["dataDir"] = dir.join("ipam").to_string_lossy().into();
        std::fs::write(conf.join("10-netd.conflist"), conflist.to_string()).expect("conflist");
        let containerd = Containerd::start(Setup {
            host_ns: w.host(host),
            dir: dir.join("containerd"),
            cni_bin: bin,
            cni_conf: conf,
            sandbox_image: PAUSE.to_string(),
        })
        .expect("start containerd");
        for image in images {
            containerd.import(image).expect("import image");
        }
        Node {
            host,
            ipam: dir.join("ipam/netd"),
            containerd,
        }
    }

    /// The addresses the built-in IPAM store holds, with their owner (`<id>\r\n<ifname>`).
    fn leases(&self) -> Vec<(String, String)> {
        let Ok(dir) = std::fs::read_dir(&self.ipam) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let ip: Ipv4Addr = name.parse().ok()?;
                let owner = std::fs::read_to_string(e.path()).ok()?;
                Some((ip.to_string(), owner))
            })
            .collect();
        out.sort();
        out
    }

    /// The cached CNI result libcni wrote for `id` (containerd's ADD), if any.
    fn cni_cache(&self, id: &str) -> Option<serde_json::Value> {
        let path = self
            .containerd
            .cni_cache()
            .join(format!("results/netd-{id}-eth0"));
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }
}

fn in_subnet(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    u32::from(ip) >> (32 - len) == u32::from(net) >> (32 - len)
}

/// The container veths in host namespace `ns`: netd-cni's (`veth…`) and those it retired and
/// has not reaped yet (`ncd-…`).
fn cni_veths(ns: &str) -> Vec<String> {
    let links = cmd::run(&["ip", "-n", ns, "-o", "link", "show"]).unwrap_or_default();
    links
        .lines()
        .filter_map(|l| {
            let n = l.split(':').nth(1)?.trim().split('@').next()?;
            (n.starts_with("veth") || n.starts_with("ncd-")).then(|| n.to_string())
        })
        .collect()
}

/// A pod as the CRI reports it.
struct Pod {
    id: String,
    ip: Ipv4Addr,
    pid: u64,
}

async fn pod_status(rt: &mut cri::Runtime, id: &str) -> Pod {
    let resp = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let status = resp.status.expect("a sandbox status");
    assert_eq!(
        status.state,
        v1::PodSandboxState::SandboxReady as i32,
        "pod {id} is not ready"
    );
    let ip_text = status.network.map(|n| n.ip).unwrap_or_default();
    let ip: Ipv4Addr = ip_text
        .parse()
        .unwrap_or_else(|_| panic!("PodSandboxStatus reports no IPv4 address: {ip_text:?}"));
    let info: serde_json::Value =
        serde_json::from_str(resp.info.get("info").map(String::as_str).unwrap_or("{}"))
            .expect("verbose info is JSON");
    let pid = info["pid"].as_u64().expect("the sandbox's pid in the info");
    Pod {
        id: id.to_string(),
        ip,
        pid,
    }
}

async fn runtime_conditions(rt: &mut cri::Runtime) -> Vec<v1::RuntimeCondition> {
    rt.status(v1::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner()
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
}

/// Polls the runtime's status (10 s) until condition NetworkReady is `want`; returns its reason
/// and message.
async fn wait_network_ready(rt: &mut cri::Runtime, node: &Node, want: bool) -> String {
    let t0 = Instant::now();
    loop {
        let conditions = runtime_conditions(rt).await;
        if let Some(c) = conditions
            .iter()
            .find(|c| c.r#type == "NetworkReady" && c.status == want)
        {
            return if c.reason.is_empty() && c.message.is_empty() {
                String::new()
            } else {
                format!("reason {:?}, message {:?}", c.reason, c.message)
            };
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "NetworkReady never became {want}: {conditions:?}\n{}",
            node.containerd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sandbox_config(name: &str, uid: &str) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: "netd-e2e".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        linux: Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: v1::NamespaceMode::Pod as i32,
                    pid: v1::NamespaceMode::Pod as i32,
                    ipc: v1::NamespaceMode::Pod as i32,
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Stops and removes pod `id` through the CRI, then checks that CNI DEL released its address,
/// its host veth and libcni's cache entry.
async fn stop_and_remove(rt: &mut cri::Runtime, node: &Node, ns: &str, pod: &Pod, host_veth: &str) {
    let t0 = Instant::now();
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    println!(
        "h{}: StopPodSandbox {} took {:?}",
        node.host,
        &pod.id[..12],
        t0.elapsed()
    );
    assert!(
        !node
            .leases()
            .iter()
            .any(|(ip, _)| *ip == pod.ip.to_string()),
        "{} still leased after StopPodSandbox: {:?}",
        pod.ip,
        node.leases()
    );
    assert!(
        node.cni_cache(&pod.id).is_none(),
        "libcni's cache entry of {} survived StopPodSandbox",
        pod.id
    );
    cmd::wait_until("the pod's host veth to go", Duration::from_secs(5), || {
        cni_veths(ns)
            .iter()
            .all(|v| v != host_veth && !v.starts_with("ncd-"))
    })
    .expect("host veth removed");
    rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    let left = rt
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(v1::PodSandboxFilter { id: pod.id.clone() }),
        })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(
        left.is_empty(),
        "pod {} still listed after RemovePodSandbox",
        pod.id
    );
}

#[test]
fn cri_pods_on_two_hosts_reach_each_other_across_a_containerd_restart() {
    testbed::containerd::require().expect("containerd");
    let w = World::new(2, VXLAN).expect("world");
    let tmp = tempfile::Builder::new()
        .prefix("netd-cri-")
        .tempdir()
        .expect("temp dir");
    let pause = oci::busybox_image(
        tmp.path(),
        "pause.tar",
        PAUSE,
        &["/bin/sleep", "2147483647"],
    )
    .expect("pause image");
    // Declared after the world: dropped first, so the pods go before the namespaces do.
    let mut nodes: Vec<Node> = (1..=2)
        .map(|h| Node::new(&w, h, tmp.path().join(format!("h{h}")), &[&pause]))
        .collect();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async {
        let mut rts = Vec::new();
        for n in &nodes {
            let (mut rt, mut img) = cri::clients(&n.containerd.socket())
                .await
                .expect("CRI client");
            let v = rt
                .version(v1::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .expect("Version")
                .into_inner();
            println!(
                "h{}: {} {} (CRI {})",
                n.host, v.runtime_name, v.runtime_version, v.runtime_api_version
            );
            // The runtime's conditions: the network is ready once the conflist is loaded.
            let conditions = runtime_conditions(&mut rt).await;
            for want in ["RuntimeReady", "NetworkReady"] {
                let c = conditions.iter().find(|c| c.r#type == want);
                assert!(
                    c.is_some_and(|c| c.status),
                    "h{}: condition {want} not true: {conditions:?}",
                    n.host
                );
            }
            if n.host == 1 {
                // Without a conflist the node's network is not ready (what keeps a kubelet from
                // scheduling pods there), and it is again once the conflist is back: containerd
                // reloads its conf_dir on change.
                // (Written back, not renamed back: containerd 1.6 does not reload on a file
                // moved into the directory.)
                let conflist = n.containerd.setup.cni_conf.join("10-netd.conflist");
                let text = std::fs::read(&conflist).expect("read the conflist");
                std::fs::remove_file(&conflist).expect("remove the conflist");
                let off = wait_network_ready(&mut rt, n, false).await;
                println!("h1: conflist removed: NetworkReady false, {off}");
                std::fs::write(&conflist, text).expect("write the conflist back");
                let on = wait_network_ready(&mut rt, n, true).await;
                println!("h1: conflist back: NetworkReady true{on}");
            }
            let image = img
                .image_status(v1::ImageStatusRequest {
                    image: Some(v1::ImageSpec {
                        image: PAUSE.into(),
                    }),
                    verbose: false,
                })
                .await
                .expect("ImageStatus")
                .into_inner();
            assert!(
                image
                    .image
                    .is_some_and(|i| i.repo_tags.iter().any(|t| t == PAUSE)),
                "h{}: the CRI does not see the imported pause image",
                n.host
            );
            rts.push(rt);
        }

        // One pod per host.
        let mut pods = Vec::new();
        let mut veths = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let name = format!("pod-h{}", n.host);
            let uid = format!("uid-{}-{}", n.host, std::process::id());
            let t0 = Instant::now();
            let id = rts[i]
                .run_pod_sandbox(v1::RunPodSandboxRequest {
                    config: Some(sandbox_config(&name, &uid)),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "RunPodSandbox on h{}: {e}\n{}",
                        n.host,
                        n.containerd.log_tail()
                    )
                })
                .into_inner()
                .pod_sandbox_id;
            println!("h{}: RunPodSandbox {name} took {:?}", n.host, t0.elapsed());
            let pod = pod_status(&mut rts[i], &id).await;
            let subnet = w.subnet(n.host).expect("subnet");
            println!(
                "h{}: pod {name} ({}) has IP {} (host subnet {}/{})",
                n.host,
                &id[..12],
                pod.ip,
                subnet.0,
                subnet.1
            );
            assert!(
                in_subnet(pod.ip, subnet),
                "{} is not in h{}'s subnet {subnet:?}",
                pod.ip,
                n.host
            );
            // What containerd gave netd-cni on ADD, as libcni cached it.
            let cache = n.cni_cache(&id).expect("libcni's cache entry of the ADD");
            let args: Vec<(String, String)> = cache["cniArgs"]
                .as_array()
                .expect("cniArgs")
                .iter()
                .filter_map(|kv| Some((kv[0].as_str()?.to_string(), kv[1].as_str()?.to_string())))
                .collect();
            println!("h{}: CNI_ARGS of the ADD: {args:?}", n.host);
            let arg = |k: &str| {
                args.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(arg("IgnoreUnknown"), Some("1"));
            assert_eq!(arg("K8S_POD_NAMESPACE"), Some("netd-e2e"));
            assert_eq!(arg("K8S_POD_NAME"), Some(name.as_str()));
            assert_eq!(arg("K8S_POD_INFRA_CONTAINER_ID"), Some(id.as_str()));
            assert_eq!(arg("K8S_POD_UID"), Some(uid.as_str()));
            // netd-cni's answer: the address in its store, owned by the sandbox's eth0.
            assert!(
                n.leases()
                    .contains(&(pod.ip.to_string(), format!("{id}\r\neth0"))),
                "netd-cni's store does not hold {} for {id}: {:?}",
                pod.ip,
                n.leases()
            );
            let host_veth = cache["result"]["interfaces"][1]["name"]
                .as_str()
                .expect("the host veth in the cached result")
                .to_string();
            assert!(
                cni_veths(&w.host(n.host)).contains(&host_veth),
                "no {host_veth} on h{}",
                n.host
            );
            veths.push(host_veth);
            pods.push(pod);
        }

        let check_pings = |when: &str| {
            for (a, b) in [(0, 1), (1, 0)] {
                let rtt = netns::ping_in(&format!("/proc/{}/ns/net", pods[a].pid), pods[b].ip, 3);
                println!(
                    "{when}: ping pod-h{} {} -> pod-h{} {}: {}",
                    a + 1,
                    pods[a].ip,
                    b + 1,
                    pods[b].ip,
                    rtt.map_or("no answer".to_string(), |ms| format!("{ms:.3} ms"))
                );
                assert!(rtt.is_some(), "{when}: no echo reply from {}", pods[b].ip);
            }
        };
        check_pings("before the restart");

        // containerd restarts on host 1 with its pod running: the pod keeps its address and
        // reaches the other host's pod; the CRI still knows it.
        nodes[0].containerd.restart().expect("restart containerd");
        rts[0] = cri::clients(&nodes[0].containerd.socket())
            .await
            .expect("CRI client after the restart")
            .0;
        let again = pod_status(&mut rts[0], &pods[0].id).await;
        println!(
            "h1: after the containerd restart, pod-h1 has IP {}",
            again.ip
        );
        assert_eq!(
            again.ip, pods[0].ip,
            "the pod's address changed across the restart"
        );
        check_pings("after the restart");

        // StopPodSandbox (CNI DEL) after the restart releases, as without one.
        for (i, n) in nodes.iter().enumerate() {
            stop_and_remove(&mut rts[i], n, &w.host(n.host), &pods[i], &veths[i]).await;
        }
        for n in &nodes {
            assert!(n.leases().is_empty(), "h{}: {:?} left", n.host, n.leases());
        }
    });
    nodes.clear();
}

#[test]
fn ctr_run_cni_attaches_and_releases() {
    testbed::containerd::require().expect("containerd");
    let w = World::new(1, VXLAN).expect("world");
    let tmp = tempfile::Builder::new()
        .prefix("netd-ctr-")
        .tempdir()
        .expect("temp dir");
    let pause = oci::busybox_image(
        tmp.path(),
        "pause.tar",
        PAUSE,
        &["/bin/sleep", "2147483647"],
    )
    .expect("pause image");
    let busybox =
        oci::busybox_image(tmp.path(), "busybox.tar", BUSYBOX, &["/bin/sh"]).expect("image");
    let node = Node::new(&w, 1, tmp.path().join("h1"), &[&pause, &busybox]);
    let subnet = w.subnet(1).expect("subnet");
    let gateway = Ipv4Addr::from(u32::from(subnet.0) + 1);
    let script = format!(
        "ip -4 -o addr show eth0 && ping -c 1 -W 2 {gateway} >/dev/null && echo gateway-ok"
    );
    // Two containers at once, each with `--rm`. Their ids name their cgroups (`/k8s.io/<id>`),
    // which are the machine's: unique per process.
    let ids: Vec<String> = (1..=2)
        .map(|i| format!("c{i}-{}", std::process::id()))
        .collect();
    let outs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let node = &node;
                let script = &script;
                s.spawn(move || {
                    node.containerd
                        .ctr_ok(&["run", "--cni", "--rm", BUSYBOX, id, "sh", "-c", script])
                        .expect("ctr run --cni")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ctr thread"))
            .collect()
    });
    let mut ips = Vec::new();
    for out in &outs {
        println!("ctr run --cni: {}", out.trim());
        assert!(
            out.contains("gateway-ok"),
            "the container did not reach {gateway}:\n{out}"
        );
        let ip: Ipv4Addr = out
            .split_whitespace()
            .skip_while(|t| *t != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the container's output:\n{out}"));
        assert!(in_subnet(ip, subnet), "{ip} is not in {subnet:?}");
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "two containers got the same address");
    // `--rm` ran CNI DEL: no address, no cache entry, no veth left.
    assert!(
        node.leases().is_empty(),
        "left in the store: {:?}",
        node.leases()
    );
    let results = node.containerd.cni_cache().join("results");
    let cached: Vec<_> = std::fs::read_dir(&results)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "libcni's cache kept {cached:?}");
    cmd::wait_until("the veths to go", Duration::from_secs(5), || {
        cni_veths(&w.host(1)).is_empty()
    })
    .expect("no veth left");
}
