//! The node's subnet as written by netd (flannel's `subnet.env` format).
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//! `FLANNEL_SUBNET` holds the gateway address with the subnet's prefix.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::error::{CniError, Result};

/// What the plugin needs to know about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The whole cluster network (`FLANNEL_NETWORK`).
    pub network: Ipv4Network,
    /// The node subnet, network address form (`10.244.3.0/24`).
    pub subnet: Ipv4Network,
    /// Gateway address on the bridge (`10.244.3.1`).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// True when netd masquerades itself, so the plugin must not.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Read and parse the file; a missing or unreadable file is "try again later". A file
    /// other users could have written is refused ([`crate::file_trust`]).
    pub fn load(path: &str) -> Result<SubnetEnv> {
        crate::file_trust::check_file(std::path::Path::new(path))?;
        let text = std::fs::read_to_string(path).map_err(|e| CniError::SubnetFileMissing {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        SubnetEnv::parse(&text).map_err(|reason| CniError::SubnetFileInvalid {
            path: path.to_string(),
            reason,
        })
    }

    /// Parse the file's text; the error is a human-readable reason.
    pub fn parse(text: &str) -> std::result::Result<SubnetEnv, String> {
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, None);
        for (no, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected KEY=VALUE, got {line:?}", no + 1))?;
            let value = value.trim().trim_matches('"');
            let bad = |what: &str| format!("line {}: {key} is not {what}: {value:?}", no + 1);
            match key.trim() {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        value
                            .parse::<Ipv4Network>()
                            .map_err(|_| bad("an IPv4 CIDR"))?,
                    );
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(
                        value
                            .parse::<Ipv4Network>()
                            .map_err(|_| bad("an IPv4 CIDR"))?,
                    );
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|m| (576..=65535).contains(m))
                            .ok_or_else(|| bad("an MTU between 576 and 65535"))?,
                    );
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(value.parse::<bool>().map_err(|_| bad("true or false"))?);
                }
                // IPv6 keys and anything newer are not used by this plugin.
                _ => {}
            }
        }
        let network = network.ok_or("FLANNEL_NETWORK missing")?;
        let with_gw = subnet.ok_or("FLANNEL_SUBNET missing")?;
        let mtu = mtu.ok_or("FLANNEL_MTU missing")?;
        if with_gw.prefix() > 30 {
            return Err(format!("FLANNEL_SUBNET {with_gw} is too small (max /30)"));
        }
        let subnet = Ipv4Network::new(with_gw.network(), with_gw.prefix())
            .map_err(|e| format!("FLANNEL_SUBNET {with_gw}: {e}"))?;
        let gateway = with_gw.ip();
        if gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(format!(
                "FLANNEL_SUBNET {with_gw} must name a host address (the gateway)"
            ));
        }
        if !network.contains(subnet.network()) || network.prefix() > subnet.prefix() {
            return Err(format!(
                "FLANNEL_SUBNET {with_gw} is outside FLANNEL_NETWORK {network}"
            ));
        }
        Ok(SubnetEnv {
            network,
            subnet,
            gateway,
            mtu,
            ipmasq: ipmasq.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_format() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        );
        assert_eq!(
            env,
            Ok(SubnetEnv {
                network: "10.244.0.0/16".parse().expect("literal"),
                subnet: "10.244.3.0/24".parse().expect("literal"),
                gateway: Ipv4Addr::new(10, 244, 3, 1),
                mtu: 1450,
                ipmasq: true,
            })
        );
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "garbage",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1450",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=-3",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.3.1/24\nFLANNEL_MTU=1450",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.0/24\nFLANNEL_MTU=1450",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24",
        ] {
            assert!(SubnetEnv::parse(text).is_err(), "{text:?}");
        }
    }
}
