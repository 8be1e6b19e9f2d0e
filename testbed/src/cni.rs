//! Invoking `netd-cni` exactly as a container runtime does: inside the host's network namespace,
//! with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` (and optionally
//! `CNI_ARGS`) in the environment and the network configuration on stdin.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// The addresses of an ADD result's `ips`, in order.
fn result_ips(result: &str) -> Result<Vec<IpAddr>> {
    let v: serde_json::Value =
        serde_json::from_str(result).with_context(|| format!("ADD printed no JSON: {result}"))?;
    Ok(v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .filter_map(|a| a.parse().ok())
        .collect())
}

/// The first IPv4 address of an ADD result.
pub fn result_ip(result: &str) -> Result<Ipv4Addr> {
    result_ips(result)?
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .with_context(|| format!("no IPv4 address in the ADD result: {result}"))
}

/// The first IPv6 address of an ADD result (a dual-stack node's container has one), if any.
pub fn result_ip6(result: &str) -> Result<Option<Ipv6Addr>> {
    Ok(result_ips(result)?.into_iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    }))
}

/// The node subnet of a subnet file (`FLANNEL_SUBNET=10.244.5.1/24` → (10.244.5.0, 24)), read
/// through the contract netd and netd-cni share ([`hostnet::subnet_env`]).
pub fn parse_subnet(text: &str) -> Option<(Ipv4Addr, u8)> {
    let env = hostnet::subnet_env::SubnetEnv::parse(text).ok()?;
    let v4 = env.ipv4?;
    Some((v4.subnet.network(), v4.subnet.prefix()))
}

/// The node's IPv6 subnet of a dual-stack subnet file (`FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64`
/// → (fd00:10:244:5::, 64)); `None` for an IPv4-only or invalid file.
pub fn parse_subnet6(text: &str) -> Option<(Ipv6Addr, u8)> {
    let v6 = hostnet::subnet_env::SubnetEnv::parse(text).ok()?.ipv6?;
    Some((v6.subnet.network(), v6.subnet.prefix()))
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
        let dual = r#"{"ips":[{"address":"fd00:10:244:5::2/64"},{"address":"10.244.5.2/24"}]}"#;
        assert_eq!(result_ip(dual).ok(), Some(Ipv4Addr::new(10, 244, 5, 2)));
        assert_eq!(
            result_ip6(dual).ok().flatten(),
            Some(Ipv6Addr::new(0xfd00, 0x10, 0x244, 5, 0, 0, 0, 2))
        );
        assert_eq!(result_ip6(r).ok(), Some(None));
        let s6 = format!(
            "{s}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n"
        );
        assert_eq!(
            parse_subnet6(&s6),
            Some((Ipv6Addr::new(0xfd00, 0x10, 0x244, 5, 0, 0, 0, 0), 64))
        );
        assert_eq!(parse_subnet(&s6), parse_subnet(s));
        assert_eq!(parse_subnet6(s), None);
    }
}
