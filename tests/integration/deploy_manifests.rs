//! The deployment files in `deploy/` are checked, not just shipped: the Kubernetes manifest
//! parses as YAML, its embedded network config is one netd accepts, its embedded conflist is the
//! shipped `examples/cni/10-netd.conflist`, every command line in it is one netd's own CLI
//! parser accepts, the DaemonSet has the shape the README describes (host network, NET_ADMIN,
//! init containers installing the plugin and the conflist into the host paths), and every
//! variable of the systemd unit's env example names a real netd flag.

use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;

const MANIFEST: &str = include_str!("../../deploy/kube-netd.yaml");
const CONFLIST: &str = include_str!("../../examples/cni/10-netd.conflist");
const ENV_EXAMPLE: &str = include_str!("../../deploy/netd.env.example");

fn documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(MANIFEST)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// An init container: its command, and its mounts as (host path, path inside).
type Install = (Vec<String>, Vec<(String, String)>);

/// Parses `command + args` of a container with netd's CLI, if it runs netd.
fn assert_netd_accepts(container: &Value) {
    let mut argv = strings(&container["command"]);
    argv.extend(strings(&container["args"]));
    if argv.first().is_some_and(|c| c.ends_with("/netd")) {
        argv[0] = "netd".into();
        if let Err(e) = netd::cli::Cli::try_parse_from(&argv) {
            panic!("netd rejects {argv:?}: {e}");
        }
    }
}

#[test]
fn kubernetes_manifest_is_valid_and_matches_the_shipped_configs() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Job",
            "DaemonSet"
        ],
        "manifest kinds"
    );
    let ns = kind(&docs, "Namespace")["metadata"]["name"]
        .as_str()
        .expect("namespace name");
    for d in &docs[1..] {
        assert_eq!(d["metadata"]["namespace"].as_str(), Some(ns), "{d:?}");
    }

    let cm = kind(&docs, "ConfigMap");
    let net_conf = cm["data"]["net-conf.json"].as_str().expect("net-conf.json");
    netd::netconf::NetworkConfig::parse(net_conf).expect("netd accepts net-conf.json");
    let cni_conf: serde_json::Value =
        serde_json::from_str(cm["data"]["cni-conf.json"].as_str().expect("cni-conf.json"))
            .expect("cni-conf.json is JSON");
    let shipped: serde_json::Value = serde_json::from_str(CONFLIST).expect("shipped conflist");
    assert_eq!(
        cni_conf, shipped,
        "cni-conf.json differs from examples/cni/10-netd.conflist"
    );
    let endpoints = cm["data"]["etcd-endpoints"]
        .as_str()
        .expect("etcd-endpoints");
    assert!(
        endpoints.split(',').all(|e| e.starts_with("http")),
        "{endpoints}"
    );

    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "host network");
    let volumes: Vec<(String, String)> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let path = v["hostPath"]["path"].as_str().unwrap_or("").to_string();
            (name, path)
        })
        .collect();
    let host_path = |mount_name: &str| {
        volumes
            .iter()
            .find(|(n, _)| n == mount_name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("volume {mount_name} is not declared"))
    };
    let inits = pod["initContainers"]
        .as_sequence()
        .expect("init containers");
    let installs: Vec<Install> = inits
        .iter()
        .map(|c| {
            let mounts = c["volumeMounts"]
                .as_sequence()
                .map(|m| {
                    m.iter()
                        .map(|m| {
                            let name = m["name"].as_str().unwrap_or_default();
                            let path = m["mountPath"].as_str().unwrap_or_default();
                            (host_path(name), path.trim_end_matches('/').to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            (strings(&c["command"]), mounts)
        })
        .collect();
    // The plugin lands in the host's /opt/cni/bin, the conflist in its /etc/cni/net.d.
    let lands = |dest_dir_on_host: &str, file: &str| {
        installs.iter().any(|(cmd, mounts)| {
            cmd.last().is_some_and(|dst| {
                mounts.iter().any(|(host, inside)| {
                    host == dest_dir_on_host && *dst == format!("{inside}/{file}")
                })
            })
        })
    };
    assert!(
        lands("/opt/cni/bin", "netd-cni"),
        "netd-cni not installed: {installs:?}"
    );
    assert!(
        lands("/etc/cni/net.d", "10-netd.conflist"),
        "conflist not installed: {installs:?}"
    );

    let containers = pod["containers"].as_sequence().expect("containers");
    let netd_c = &containers[0];
    assert_netd_accepts(netd_c);
    let caps = strings(&netd_c["securityContext"]["capabilities"]["add"]);
    assert!(caps.contains(&"NET_ADMIN".to_string()), "{caps:?}");
    let mounts: Vec<(String, String)> = netd_c["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or_default();
            (
                host_path(name),
                m["mountPath"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        mounts.contains(&("/run/flannel".into(), "/run/flannel".into())),
        "subnet.env directory not shared with the host: {mounts:?}"
    );
    // Every env var taken from the ConfigMap names one of its keys, and names a netd flag.
    let mut env_names = Vec::new();
    for c in containers.iter().chain(
        kind(&docs, "Job")["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("job containers"),
    ) {
        assert_netd_accepts(c);
        for e in c["env"].as_sequence().into_iter().flatten() {
            if let Some(key) = e["valueFrom"]["configMapKeyRef"]["key"].as_str() {
                assert!(!cm["data"][key].is_null(), "ConfigMap has no key {key}");
            }
            env_names.push(e["name"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_env_vars_are_flags(&env_names);
    // The probes hit the port netd serves health on.
    let port = netd_c["livenessProbe"]["httpGet"]["port"]
        .as_u64()
        .expect("probe port");
    assert!(strings(&netd_c["args"]).contains(&format!("--healthz-port={port}")));
    // netd does not use the Kubernetes API: no RBAC objects.
    assert!(!kinds.iter().any(|k| k.contains("Role")));
}

/// Every `NETD_*` name is the environment variable of a flag netd's CLI declares.
fn assert_env_vars_are_flags(names: &[String]) {
    use clap::CommandFactory;
    let cmd = netd::cli::Cli::command();
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for n in names {
        assert!(
            known.contains(n),
            "{n} is not an environment variable of netd ({known:?})"
        );
    }
}

#[test]
fn systemd_env_example_names_real_flags() {
    let names: Vec<String> = ENV_EXAMPLE
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .filter(|k| k.starts_with("NETD_"))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    assert_env_vars_are_flags(&names);
}
