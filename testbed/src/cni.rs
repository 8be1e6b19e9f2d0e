//! Invoking `netd-cni` exactly as a container runtime does: inside the host's network namespace,
//! with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` (and optionally
//! `CNI_ARGS`) in the environment and the network configuration on stdin.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// One container's attachment: everything ADD and DEL need.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Host network namespace the plugin runs in.
    pub host_ns: String,
    pub container_id: String,
    /// `CNI_NETNS`: the container's namespace path.
    pub netns: String,
    pub ifname: String,
    /// The plugin's network configuration (one plugin of a conflist, with `cniVersion` and
    /// `name` filled in), as sent on stdin.
    pub config: String,
    /// `CNI_ARGS`, e.g. `IP=10.244.1.5`.
    pub args: String,
}

/// The network config a runtime hands netd-cni for the standalone conflist of `examples/cni/`,
/// with the subnet file and address store of one host.
pub fn netd_config(subnet_file: &Path, data_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "netd",
        "type": "netd-cni",
        "bridge": "cni0",
        "subnetFile": subnet_file,
        "dataDir": data_dir,
        "hairpinMode": true,
        "defaultRoute": true,
        // DEL removes the veth itself: no reaper process outlives the world.
        "asyncTeardown": false,
    })
    .to_string()
}

/// Runs `netd-cni COMMAND` for `a`; returns stdout (the result JSON on ADD).
pub fn exec(cni: &Path, command: &str, a: &Attachment) -> Result<String> {
    let cni_path: PathBuf = cni.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &a.host_ns])
        .arg(cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &a.container_id)
        .env("CNI_NETNS", &a.netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_PATH", cni_path)
        .env("CNI_ARGS", &a.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run netd-cni")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(a.config.as_bytes())
            .context("write the config to netd-cni")?;
    }
    let out = child.wait_with_output().context("wait for netd-cni")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "netd-cni {command} for {} failed: {} {}",
        a.container_id,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(stdout)
}

/// The first IPv4 address of an ADD result.
pub fn result_ip(result: &str) -> Result<Ipv4Addr> {
    let v: serde_json::Value =
        serde_json::from_str(result).with_context(|| format!("ADD printed no JSON: {result}"))?;
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no IPv4 address in the ADD result: {result}"))
}

/// The node subnet of a subnet file (`FLANNEL_SUBNET=10.244.5.1/24` → (10.244.5.0, 24)), read
/// through the contract netd and netd-cni share ([`hostnet::subnet_env`]).
pub fn parse_subnet(text: &str) -> Option<(Ipv4Addr, u8)> {
    let env = hostnet::subnet_env::SubnetEnv::parse(text).ok()?;
    Some((env.subnet.network(), env.subnet.prefix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_and_result_parse() {
        let s = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\n";
        assert_eq!(parse_subnet(s), Some((Ipv4Addr::new(10, 244, 5, 0), 24)));
        assert_eq!(parse_subnet("FLANNEL_SUBNET=10.244.5.1/0"), None);
        assert_eq!(parse_subnet("nothing"), None);
        let r = r#"{"ips":[{"address":"10.244.5.2/24","interface":2}]}"#;
        assert_eq!(result_ip(r).ok(), Some(Ipv4Addr::new(10, 244, 5, 2)));
        assert!(result_ip("{}").is_err());
    }
}
