//! Delegation to an IPAM plugin named in the config (`"ipam": {"type": "host-local", …}`),
//! executed from `CNI_PATH` with the same environment and the full network config on stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::Value;

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

/// The config handed to the delegate: ours, with the node subnet filled into `ipam` when the
/// config names no range (as flannel's plugin does).
pub fn delegate_config(conf: &NetConf, subnet: Option<&SubnetEnv>) -> Value {
    let mut raw = conf.raw.clone();
    if let (Some(env), Some(Value::Object(ipam))) = (subnet, raw.get_mut("ipam"))
        && !ipam.contains_key("ranges")
        && !ipam.contains_key("subnet")
    {
        let range = serde_json::json!({
            "subnet": env.subnet.to_string(),
            "gateway": env.gateway.to_string(),
        });
        ipam.insert("ranges".into(), serde_json::json!([[range]]));
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
