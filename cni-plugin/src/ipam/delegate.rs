//! Delegation to an IPAM plugin named in the config (`"ipam": {"type": "host-local", …}`),
//! executed from `CNI_PATH` with the same environment and the full network config on stdin,
//! the node's subnets (both families on a dual-stack node) filled in as flannel fills them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::{Value, json};

use crate::config::NetConf;
use crate::env::{Command, Invocation};
use crate::error::{CniError, Result};
use crate::result::CniResult;
use crate::subnet_env::SubnetEnv;

/// Find `plugin` in the `CNI_PATH` directories.
fn locate(plugin: &str, inv: &Invocation) -> Result<PathBuf> {
    if inv.path.is_empty() {
        return Err(CniError::BadEnv {
            var: "CNI_PATH",
            reason: format!("needed to find IPAM plugin {plugin:?}"),
        });
    }
    inv.path
        .iter()
        .map(|dir| PathBuf::from(dir).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::InvalidConfig(format!(
                "IPAM plugin {plugin:?} not found in CNI_PATH {:?}",
                inv.path.join(":")
            ))
        })
}

/// The config handed to the delegate: ours, with the node's subnets filled into `ipam` when
/// the config names no range, as flannel's plugin does: one range set per family
/// (`"ranges": [[{"subnet": v4, …}], [{"subnet": v6, …}]]`, the IPv6 one on a dual-stack node)
/// and, unless the config has its own, a route to each cluster network.
pub fn delegate_config(conf: &NetConf, subnet: Option<&SubnetEnv>) -> Value {
    let mut raw = conf.raw.clone();
    if let (Some(env), Some(Value::Object(ipam))) = (subnet, raw.get_mut("ipam"))
        && !ipam.contains_key("ranges")
        && !ipam.contains_key("subnet")
    {
        let ranges: Vec<Value> = crate::ipam::ranges(env)
            .iter()
            .map(|r| {
                json!([{
                    "subnet": r.subnet.to_string(),
                    "gateway": r.gateway.to_string(),
                }])
            })
            .collect();
        ipam.insert("ranges".into(), Value::Array(ranges));
        if !ipam.contains_key("routes") {
            let mut routes = Vec::new();
            if let Some(v4) = &env.ipv4 {
                routes.push(json!({"dst": v4.network.to_string()}));
            }
            if let Some(v6) = &env.ipv6 {
                routes.push(json!({"dst": v6.network.to_string()}));
            }
            ipam.insert("routes".into(), Value::Array(routes));
        }
    }
    raw
}

/// Run the delegate for `command`; returns its parsed result for ADD, `None` otherwise.
pub fn run(
    plugin: &str,
    command: Command,
    inv: &Invocation,
    config: &Value,
) -> Result<Option<CniResult>> {
    let bin = locate(plugin, inv)?;
    let stdin = serde_json::to_vec(config).map_err(|e| CniError::Decode {
        what: "delegate config",
        reason: e.to_string(),
    })?;
    let mut child = Process::new(&bin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", inv.netns.as_deref().unwrap_or(""))
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", inv.path.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("run IPAM plugin {}", bin.display()), e))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(&stdin)
            .map_err(|e| CniError::io(format!("write to IPAM plugin {plugin}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("wait for IPAM plugin {plugin}"), e))?;
    if !out.status.success() {
        let reply: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        let field = |k: &str| reply.as_ref().and_then(|r| r.get(k).cloned());
        let code = field("code")
            .and_then(|c| c.as_u64())
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(crate::error::code::DELEGATE);
        let msg = field("msg")
            .and_then(|m| m.as_str().map(str::to_string))
            .unwrap_or_else(|| {
                let text = if out.stdout.is_empty() {
                    &out.stderr
                } else {
                    &out.stdout
                };
                String::from_utf8_lossy(text).trim().to_string()
            });
        return Err(CniError::Delegate {
            plugin: plugin.to_string(),
            code,
            msg,
        });
    }
    if command != Command::Add {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&out.stdout).map_err(|e| CniError::Decode {
        what: "IPAM plugin result",
        reason: e.to_string(),
    })?;
    Ok(Some(CniResult::from_value(&value, "IPAM plugin result")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(ipam: Value) -> NetConf {
        let text = json!({"cniVersion": "1.0.0", "name": "n", "ipam": ipam}).to_string();
        NetConf::parse(text.as_bytes()).expect("valid config")
    }

    fn env() -> SubnetEnv {
        SubnetEnv::new(
            "10.244.0.0/16".parse().expect("literal"),
            "10.244.3.0/24".parse().expect("literal"),
            1450,
            false,
        )
    }

    #[test]
    fn fills_one_range_set_per_family_and_a_route_per_network() {
        let c = conf(json!({"type": "host-local", "dataDir": "/x"}));
        let v4 = delegate_config(&c, Some(&env()));
        assert_eq!(
            v4["ipam"],
            json!({"type": "host-local", "dataDir": "/x",
                   "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]],
                   "routes": [{"dst": "10.244.0.0/16"}]})
        );
        let dual = env().with_ipv6(
            "fd00:10:244::/56".parse().expect("literal"),
            "fd00:10:244:3::/64".parse().expect("literal"),
        );
        let both = delegate_config(&c, Some(&dual));
        assert_eq!(
            both["ipam"]["ranges"],
            json!([[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}],
                   [{"subnet": "fd00:10:244:3::/64", "gateway": "fd00:10:244:3::1"}]])
        );
        assert_eq!(
            both["ipam"]["routes"],
            json!([{"dst": "10.244.0.0/16"}, {"dst": "fd00:10:244::/56"}])
        );
        // IPv6-only (a subnet file with the IPv6 pair alone, which flannel's cni-plugin
        // accepts too): one range set and one route, both IPv6.
        let only6 = SubnetEnv::ipv6_only(
            "fd00:10:244::/56".parse().expect("literal"),
            "fd00:10:244:3::/64".parse().expect("literal"),
            1450,
            false,
        );
        let v6 = delegate_config(&c, Some(&only6));
        assert_eq!(
            v6["ipam"]["ranges"],
            json!([[{"subnet": "fd00:10:244:3::/64", "gateway": "fd00:10:244:3::1"}]])
        );
        assert_eq!(v6["ipam"]["routes"], json!([{"dst": "fd00:10:244::/56"}]));
        // Everything else of the config goes through untouched.
        assert_eq!(both["name"], "n");
        assert_eq!(both["ipam"]["dataDir"], "/x");
    }

    #[test]
    fn own_ranges_and_routes_are_kept() {
        let own = json!({"type": "host-local",
                         "ranges": [[{"subnet": "192.168.0.0/24"}]],
                         "routes": [{"dst": "0.0.0.0/0"}]});
        assert_eq!(
            delegate_config(&conf(own.clone()), Some(&env()))["ipam"],
            own
        );
        let routes_only = json!({"type": "host-local", "routes": []});
        let filled = delegate_config(&conf(routes_only), Some(&env()));
        assert_eq!(filled["ipam"]["routes"], json!([]));
        assert!(filled["ipam"]["ranges"].is_array());
        // Without a subnet file (DEL while netd is down) nothing is filled in.
        let bare = json!({"type": "host-local"});
        assert_eq!(delegate_config(&conf(bare.clone()), None)["ipam"], bare);
    }
}
