//! The network config stored at `<prefix>/config`: flannel's JSON, flannel's defaults and checks.
//!
//! [`NetworkConfig::parse`] turns the stored text into a validated value or a one-line reason;
//! nothing else in netd reads the raw JSON.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Deserialize;

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (the Linux kernel's and flannel's).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// The validated cluster network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The whole cluster network every host subnet is carved from.
    pub network: Ipv4Network,
    /// Prefix length of each host's subnet.
    pub subnet_len: u8,
    /// First subnet (network address) that may be handed out.
    pub subnet_min: Ipv4Addr,
    /// Last subnet (network address) that may be handed out.
    pub subnet_max: Ipv4Addr,
    /// Which dataplane programs routes to peers.
    pub backend: BackendConfig,
}

/// The `Backend` object of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// Overlay through a VXLAN device `flannel.<VNI>`.
    Vxlan(VxlanConfig),
    /// Plain routes via each peer's public IP (all hosts on one L2 segment).
    HostGw,
}

/// Settings of the VXLAN backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// VXLAN network identifier; also names the device `flannel.<VNI>`.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Use a direct route instead of encapsulation for peers on the same L2 segment.
    pub direct_routing: bool,
    /// Let the kernel learn FDB entries (flannel's default: off).
    pub learning: bool,
}

impl BackendConfig {
    /// The `BackendType` string written into subnet records.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::HostGw => "host-gw",
        }
    }
}

/// The JSON as flannel defines it; every field optional so defaults can be applied afterwards.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(rename = "Network")]
    network: Option<String>,
    #[serde(rename = "SubnetLen")]
    subnet_len: Option<u8>,
    #[serde(rename = "SubnetMin")]
    subnet_min: Option<String>,
    #[serde(rename = "SubnetMax")]
    subnet_max: Option<String>,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<String>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<u8>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<String>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<String>,
    #[serde(rename = "EnableNFTables")]
    enable_nftables: Option<bool>,
    #[serde(rename = "Backend")]
    backend: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    #[serde(rename = "Port")]
    port: Option<u16>,
    #[serde(rename = "DirectRouting")]
    direct_routing: Option<bool>,
    #[serde(rename = "Learning")]
    learning: Option<bool>,
}

impl NetworkConfig {
    /// Parses and validates the stored JSON. The error is a one-line reason.
    ///
    /// Unknown fields are accepted (flannel ignores them too, and a store may be shared with
    /// newer flanneld nodes); [`unknown_fields`] names them so callers can warn.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
        if raw.enable_ipv4 == Some(false) {
            return Err("EnableIPv4=false is not supported: netd requires IPv4".into());
        }
        if raw.enable_ipv6 == Some(true)
            || raw.ipv6_network.is_some()
            || raw.ipv6_subnet_len.is_some()
            || raw.ipv6_subnet_min.is_some()
            || raw.ipv6_subnet_max.is_some()
        {
            return Err("IPv6 (EnableIPv6/IPv6Network) is not supported by netd yet".into());
        }
        // EnableNFTables only selects flannel's masquerade implementation; netd always uses nftables.
        let _ = raw.enable_nftables;
        let network_text = raw.network.ok_or("Network is required")?;
        let network: Ipv4Network = network_text
            .parse()
            .map_err(|e| format!("Network {network_text:?}: {e}"))?;
        if network.ip() != network.network() {
            return Err(format!(
                "Network {network} is not aligned (did you mean {}/{}?)",
                network.network(),
                network.prefix()
            ));
        }
        if network.prefix() > 28 {
            return Err(format!(
                "Network {network} is too small: prefix must be /28 or shorter"
            ));
        }
        let subnet_len = match raw.subnet_len {
            Some(len) => len,
            None if network.prefix() <= 22 => 24,
            None => network.prefix() + 2,
        };
        if subnet_len <= network.prefix() || subnet_len > 30 {
            return Err(format!(
                "SubnetLen {subnet_len} must be longer than the network prefix /{} and at most 30",
                network.prefix()
            ));
        }
        let size = subnet_size(subnet_len);
        let first = u32::from(network.network());
        let last = u32::from(network.broadcast()) - (size - 1);
        let subnet_min = parse_bound("SubnetMin", raw.subnet_min, first + size)?;
        let subnet_max = parse_bound("SubnetMax", raw.subnet_max, last)?;
        for (name, addr) in [("SubnetMin", subnet_min), ("SubnetMax", subnet_max)] {
            if !network.contains(addr) {
                return Err(format!("{name} {addr} is outside Network {network}"));
            }
            if u32::from(addr) % size != 0 {
                return Err(format!(
                    "{name} {addr} is not aligned to SubnetLen {subnet_len}"
                ));
            }
        }
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(format!(
                "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
            ));
        }
        let backend = parse_backend(raw.backend)?;
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// How many subnets lie between SubnetMin and SubnetMax, inclusive.
    pub fn subnet_count(&self) -> u64 {
        let size = u64::from(subnet_size(self.subnet_len));
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / size + 1
    }
}

/// Top-level fields of a config text that netd does not know (typos, or newer flannel fields).
pub fn unknown_fields(text: &str) -> Vec<String> {
    const KNOWN: [&str; 12] = [
        "Network",
        "SubnetLen",
        "SubnetMin",
        "SubnetMax",
        "EnableIPv4",
        "EnableIPv6",
        "IPv6Network",
        "IPv6SubnetLen",
        "IPv6SubnetMin",
        "IPv6SubnetMax",
        "EnableNFTables",
        "Backend",
    ];
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => m
            .keys()
            .filter(|k| !KNOWN.contains(&k.as_str()))
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// Number of addresses in a subnet of prefix length `len` (len ≤ 30, so never overflows).
pub fn subnet_size(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

fn parse_bound(name: &str, text: Option<String>, default: u32) -> Result<Ipv4Addr, String> {
    match text {
        None => Ok(Ipv4Addr::from(default)),
        Some(t) => t.parse().map_err(|e| format!("{name} {t:?}: {e}")),
    }
}

fn parse_backend(value: Option<serde_json::Value>) -> Result<BackendConfig, String> {
    let raw: RawBackend = match value {
        None => RawBackend {
            kind: None,
            vni: None,
            port: None,
            direct_routing: None,
            learning: None,
        },
        Some(v) => serde_json::from_value(v).map_err(|e| format!("Backend: {e}"))?,
    };
    // flannel's documentation says vxlan is the default backend; netd follows the documentation.
    match raw.kind.as_deref().unwrap_or("vxlan") {
        "vxlan" => {
            let vni = raw.vni.unwrap_or(DEFAULT_VNI);
            if vni == 0 || vni > 0x00ff_ffff {
                return Err(format!("Backend.VNI {vni} must be between 1 and 16777215"));
            }
            let port = match raw.port {
                None | Some(0) => DEFAULT_VXLAN_PORT,
                Some(p) => p,
            };
            Ok(BackendConfig::Vxlan(VxlanConfig {
                vni,
                port,
                direct_routing: raw.direct_routing.unwrap_or(false),
                learning: raw.learning.unwrap_or(false),
            }))
        }
        "host-gw" => Ok(BackendConfig::HostGw),
        other => Err(format!(
            "Backend.Type {other:?} is not supported (netd supports \"vxlan\" and \"host-gw\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_flannel() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.subnet_count(), 255);
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 1,
                port: 8472,
                direct_routing: false,
                learning: false
            })
        );
    }

    #[test]
    fn unknown_fields_are_accepted_and_named() {
        let text = r#"{"Network":"10.0.0.0/16","Netwrok":"x","Backend":{"Type":"vxlan"}}"#;
        assert!(NetworkConfig::parse(text).is_ok());
        assert_eq!(unknown_fields(text), vec!["Netwrok".to_string()]);
        assert!(unknown_fields(r#"{"Network":"10.0.0.0/16"}"#).is_empty());
    }

    #[test]
    fn small_network_gets_prefix_plus_two() {
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/26"}"#).unwrap();
        assert_eq!(c.subnet_len, 28);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 1, 0, 16));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 1, 0, 48));
        assert_eq!(c.subnet_count(), 3);
    }

    #[test]
    fn explicit_fields_and_host_gw() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.1.192",
               "Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_count(), 4);
        assert_eq!(c.backend, BackendConfig::HostGw);
        let c = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"DirectRouting":true}}"#,
        )
        .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 42,
                port: 4789,
                direct_routing: true,
                learning: false
            })
        );
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        let cases = [
            ("{", "bad JSON"),
            ("{}", "Network is required"),
            (r#"{"Network":"10.0.0.0/29"}"#, "too small"),
            (r#"{"Network":"10.0.0.1/16"}"#, "not aligned"),
            (r#"{"Network":"nope"}"#, "Network"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":16}"#, "SubnetLen"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#, "SubnetLen"),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.5"}"#,
                "not aligned",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"10.1.0.0"}"#,
                "outside",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.2.0"}"#,
                "above",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#,
                "not supported",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":{"VNI":0}}"#, "VNI"),
            (r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#, "IPv6"),
        ];
        for (text, want) in cases {
            let err = NetworkConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err} should mention {want}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
