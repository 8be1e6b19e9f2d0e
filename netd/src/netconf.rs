//! The network config stored at `<prefix>/config`: flannel's JSON, flannel's defaults and checks.
//!
//! [`NetworkConfig::parse`] turns the stored text into a validated value or a one-line reason;
//! nothing else in netd reads the raw JSON. Keys are matched as flannel's Go decoder matches
//! them: the exact name, else any spelling equal under Unicode case folding (`"network"`,
//! `"vni"`). Every field flannel reads is honoured or refused with a reason; fields flannel
//! does not read are named by [`unknown_fields`] so that netd can warn.
//!
//! Deliberate differences from flannel: a config without `Backend` gets vxlan (flannel's docs
//! say so; its code picks udp, which netd does not have); two keys naming one field (`"Network"`
//! and `"network"`) are refused rather than resolved by their order in the text.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (the Linux kernel's and flannel's).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// The validated cluster network config: an IPv4 network, an IPv6 network, or both
/// (flannel's `EnableIPv4`, on by default, and `EnableIPv6`); never neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The IPv4 network (`Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`); `None` in an
    /// IPv6-only network (`"EnableIPv4": false`).
    pub ipv4: Option<Ipv4Config>,
    /// Which dataplane programs routes to peers.
    pub backend: BackendConfig,
    /// The IPv6 network (`EnableIPv6`); `None`: IPv4 only.
    pub ipv6: Option<Ipv6Config>,
}

/// The IPv4 network of a config: `Network`, `SubnetLen`, `SubnetMin` and `SubnetMax` with
/// flannel's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    /// The whole cluster network every host subnet is carved from.
    pub network: Ipv4Network,
    /// Prefix length of each host's subnet.
    pub subnet_len: u8,
    /// First subnet (network address) that may be handed out.
    pub subnet_min: Ipv4Addr,
    /// Last subnet (network address) that may be handed out.
    pub subnet_max: Ipv4Addr,
}

impl Ipv4Config {
    /// How many subnets lie between SubnetMin and SubnetMax, inclusive.
    pub fn subnet_count(&self) -> u64 {
        let size = u64::from(subnet_size(self.subnet_len));
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / size + 1
    }
}

/// The IPv6 network of a dual-stack or IPv6-only config: `IPv6Network`, `IPv6SubnetLen`,
/// `IPv6SubnetMin` and `IPv6SubnetMax` with flannel's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    pub network: Ipv6Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// How many subnets lie between IPv6SubnetMin and IPv6SubnetMax, inclusive (saturating).
    pub fn subnet_count(&self) -> u128 {
        let size = subnet_size6(self.subnet_len);
        ((u128::from(self.subnet_max) - u128::from(self.subnet_min)) / size).saturating_add(1)
    }
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
    /// VXLAN Group Based Policy extension on the device (flannel's `GBP`).
    pub gbp: bool,
    /// The underlay MTU to assume (flannel's `MTU`); the device and containers get 50 less.
    /// `None`: the underlay interface's MTU.
    pub mtu: Option<u32>,
}

/// VXLAN's encapsulation overhead over an IPv4 underlay (outer IP, UDP, VXLAN, inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (the outer header is 20 bytes longer).
pub const VXLAN_OVERHEAD_V6: u32 = 70;

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
/// Keys reach it already matched to these names ([`match_keys`]).
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

/// The top-level fields flannel reads.
const CONFIG_FIELDS: [&str; 12] = [
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

/// The `Backend` fields flannel's vxlan backend reads.
const VXLAN_FIELDS: [&str; 7] = [
    "Type",
    "VNI",
    "Port",
    "MTU",
    "GBP",
    "Learning",
    "DirectRouting",
];

/// The `Backend` fields flannel's host-gw backend reads.
const HOST_GW_FIELDS: [&str; 1] = ["Type"];

#[derive(Debug, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    #[serde(rename = "Port")]
    port: Option<u16>,
    #[serde(rename = "MTU")]
    mtu: Option<u32>,
    #[serde(rename = "GBP")]
    gbp: Option<bool>,
    #[serde(rename = "DirectRouting")]
    direct_routing: Option<bool>,
    #[serde(rename = "Learning")]
    learning: Option<bool>,
}

/// Folds one character as Go's `strings.EqualFold` compares them (simple Unicode folding:
/// `K`, `k` and the Kelvin sign are one; so are `S`, `s` and the long s).
fn fold(c: char) -> impl Iterator<Item = char> {
    c.to_uppercase().flat_map(char::to_lowercase)
}

/// Go's case-insensitive key match.
fn equal_fold(a: &str, b: &str) -> bool {
    a.chars().flat_map(fold).eq(b.chars().flat_map(fold))
}

/// Renames the keys of `obj` to the `fields` they name, as Go's JSON decoder matches them (the
/// exact name first, else a case-insensitive one). Returns the renamed object and the keys that
/// name no field; two keys naming one field are an error.
fn match_keys(
    obj: serde_json::Map<String, serde_json::Value>,
    fields: &[&str],
    context: &str,
) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<String>), String> {
    let mut out = serde_json::Map::new();
    let mut unknown = Vec::new();
    let mut seen: Vec<(&str, String)> = Vec::new();
    for (key, value) in obj {
        let field = fields
            .iter()
            .find(|f| **f == key)
            .or_else(|| fields.iter().find(|f| equal_fold(f, &key)));
        let Some(&field) = field else {
            unknown.push(key);
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(f, _)| *f == field) {
            return Err(format!(
                "{context}keys {first:?} and {key:?} both set {field}; keep one"
            ));
        }
        seen.push((field, key));
        out.insert(field.to_string(), value);
    }
    Ok((out, unknown))
}

/// The config's top-level object with flannel's field names, and its unknown keys.
fn config_object(
    text: &str,
) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<String>), String> {
    match serde_json::from_str::<serde_json::Value>(text).map_err(|e| format!("bad JSON: {e}"))? {
        serde_json::Value::Object(m) => match_keys(m, &CONFIG_FIELDS, ""),
        _ => Err("bad JSON: the config must be an object".into()),
    }
}

/// The `Backend` object with flannel's field names for its type, and its unknown keys.
fn backend_object(
    value: Option<serde_json::Value>,
) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<String>), String> {
    let obj = match value {
        None | Some(serde_json::Value::Null) => return Ok(Default::default()),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err("Backend must be an object".into()),
    };
    // The type decides which fields are read; its key is matched first on its own.
    let (typed, _) = match_keys(obj.clone(), &["Type"], "Backend: ")?;
    let fields: &[&str] = match typed.get("Type").and_then(|t| t.as_str()) {
        Some("host-gw") => &HOST_GW_FIELDS,
        _ => &VXLAN_FIELDS,
    };
    match_keys(obj, fields, "Backend: ")
}

impl NetworkConfig {
    /// Parses and validates the stored JSON. The error is a one-line reason.
    ///
    /// Fields flannel does not read are accepted (flannel ignores them too, and a store may be
    /// shared with newer flanneld nodes); [`unknown_fields`] names them so callers can warn.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (obj, _) = config_object(text)?;
        let raw: RawConfig = serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| format!("bad JSON: {e}"))?;
        // flannel reads the IPv6 fields only with EnableIPv6 (`warnings` names them otherwise).
        let ipv6 = if raw.enable_ipv6 == Some(true) {
            Some(parse_ipv6(
                raw.ipv6_network,
                raw.ipv6_subnet_len,
                raw.ipv6_subnet_min,
                raw.ipv6_subnet_max,
            )?)
        } else {
            None
        };
        // EnableNFTables only selects flannel's masquerade implementation; netd always uses
        // nftables ([`warnings`] says so when it is false).
        let _ = raw.enable_nftables;
        // flannel: EnableIPv4 defaults to true; false makes an IPv6-only network, whose IPv4
        // fields nobody reads (`warnings` names them).
        let ipv4 = if raw.enable_ipv4 != Some(false) {
            Some(parse_ipv4(
                raw.network,
                raw.subnet_len,
                raw.subnet_min,
                raw.subnet_max,
            )?)
        } else if ipv6.is_none() {
            return Err(
                "EnableIPv4 is false and EnableIPv6 is not true: the config enables no \
                 address family (an IPv6-only network needs \"EnableIPv6\": true and \
                 IPv6Network)"
                    .into(),
            );
        } else {
            None
        };
        let backend = parse_backend(raw.backend)?;
        // IPv6 needs an MTU of 1280 on the IPv6 VXLAN device, 70 below the underlay's.
        if let (Some(_), BackendConfig::Vxlan(VxlanConfig { mtu: Some(mtu), .. })) =
            (&ipv6, &backend)
            && *mtu < 1280 + VXLAN_OVERHEAD_V6
        {
            return Err(format!(
                "Backend.MTU {mtu} is too small for IPv6: the IPv6 device gets \
                 {VXLAN_OVERHEAD_V6} less and IPv6 needs 1280 (use {} or more)",
                1280 + VXLAN_OVERHEAD_V6
            ));
        }
        Ok(NetworkConfig {
            ipv4,
            backend,
            ipv6,
        })
    }

    /// The IPv4 cluster network, if the config has one.
    pub fn network4(&self) -> Option<Ipv4Network> {
        self.ipv4.as_ref().map(|c| c.network)
    }

    /// The IPv6 cluster network, if the config has one.
    pub fn network6(&self) -> Option<Ipv6Network> {
        self.ipv6.as_ref().map(|c| c.network)
    }
}

/// The IPv4 half of the config, with flannel's defaults and checks (`CheckNetworkConfig`):
/// SubnetLen defaults to 24 for a Network of /22 or shorter, else prefix+2; the network must
/// hold four subnets; the first subnet is never handed out.
fn parse_ipv4(
    network: Option<String>,
    subnet_len: Option<u8>,
    min: Option<String>,
    max: Option<String>,
) -> Result<Ipv4Config, String> {
    let network_text = network.ok_or(
        "Network is required (or \"EnableIPv4\": false with EnableIPv6 for an IPv6-only \
         network)",
    )?;
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
    let subnet_len = match subnet_len {
        Some(len) => len,
        None if network.prefix() <= 22 => 24,
        None => network.prefix() + 2,
    };
    if subnet_len > 30 {
        return Err(format!("SubnetLen {subnet_len} must be at most 30"));
    }
    // flannel: the first subnet is never handed out, so the network must hold four.
    if subnet_len < network.prefix() + 2 {
        return Err(format!(
            "SubnetLen {subnet_len} leaves Network {network} fewer than four subnets \
             (it must be /{} or longer)",
            network.prefix() + 2
        ));
    }
    let size = subnet_size(subnet_len);
    let first = u32::from(network.network());
    let last = u32::from(network.broadcast()) - (size - 1);
    let subnet_min = parse_bound("SubnetMin", min, first + size)?;
    let subnet_max = parse_bound("SubnetMax", max, last)?;
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
    Ok(Ipv4Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// What an operator should know about a valid config text, one line each: fields flannel
/// does not read (ignored), and flannel settings netd meets differently.
pub fn warnings(text: &str) -> Vec<String> {
    let mut out: Vec<String> = unknown_fields(text)
        .into_iter()
        .map(|f| format!("field {f:?} is not one flannel reads; it is ignored"))
        .collect();
    if let Ok((obj, _)) = config_object(text) {
        if obj.get("Backend").is_none_or(serde_json::Value::is_null) {
            out.push(
                "no Backend: netd uses vxlan, as flannel's documentation says (flanneld's code \
                 would pick udp, which netd does not have)"
                    .into(),
            );
        }
        if obj.get("EnableIPv6") != Some(&serde_json::Value::Bool(true)) {
            let set: Vec<&str> = [
                "IPv6Network",
                "IPv6SubnetLen",
                "IPv6SubnetMin",
                "IPv6SubnetMax",
            ]
            .into_iter()
            .filter(|f| obj.get(*f).is_some_and(|v| !v.is_null()))
            .collect();
            if !set.is_empty() {
                out.push(format!(
                    "{} set but EnableIPv6 is not true: IPv6 stays off (as in flannel)",
                    set.join(", ")
                ));
            }
        }
        if obj.get("EnableNFTables") == Some(&serde_json::Value::Bool(false)) {
            out.push(
                "EnableNFTables is false: netd masquerades through nftables all the same \
                 (flannel would use iptables); the rules have the same effect"
                    .into(),
            );
        }
        if obj.get("EnableIPv4") == Some(&serde_json::Value::Bool(false)) {
            let set: Vec<&str> = ["Network", "SubnetLen", "SubnetMin", "SubnetMax"]
                .into_iter()
                .filter(|f| obj.get(*f).is_some_and(|v| !v.is_null()))
                .collect();
            if !set.is_empty() {
                out.push(format!(
                    "{} set but EnableIPv4 is false: the network is IPv6-only and they are \
                     ignored (as in flannel)",
                    set.join(", ")
                ));
            }
        }
    }
    out
}

/// Fields of a config text that flannel does not read (typos, or fields of newer flannel
/// versions): top-level keys, and `Backend.<key>` for the backend's.
pub fn unknown_fields(text: &str) -> Vec<String> {
    let Ok((mut obj, mut unknown)) = config_object(text) else {
        return Vec::new();
    };
    if let Ok((_, backend)) = backend_object(obj.remove("Backend")) {
        unknown.extend(backend.into_iter().map(|k| format!("Backend.{k}")));
    }
    unknown
}

/// Number of addresses in a subnet of prefix length `len` (len ≤ 30, so never overflows).
pub fn subnet_size(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

/// Number of addresses in an IPv6 subnet of prefix length `len` (len ≤ 126).
pub fn subnet_size6(len: u8) -> u128 {
    1u128 << (128 - u32::from(len))
}

/// The IPv6 half of the config, with flannel's defaults and checks (`CheckNetworkConfig`):
/// IPv6SubnetLen defaults to 64 for an IPv6Network of /62 or shorter, else prefix+2; the
/// network must hold four subnets; the first subnet is never handed out.
fn parse_ipv6(
    network: Option<String>,
    subnet_len: Option<u8>,
    min: Option<String>,
    max: Option<String>,
) -> Result<Ipv6Config, String> {
    let text = network.ok_or("EnableIPv6 needs IPv6Network")?;
    let network: Ipv6Network = text
        .parse()
        .map_err(|e| format!("IPv6Network {text:?}: {e}"))?;
    if network.ip() != network.network() {
        return Err(format!(
            "IPv6Network {network} is not aligned (did you mean {}/{}?)",
            network.network(),
            network.prefix()
        ));
    }
    let subnet_len = match subnet_len {
        Some(len) => {
            if len > 126 {
                return Err(format!("IPv6SubnetLen {len} must be at most 126"));
            }
            if len < network.prefix().saturating_add(2) {
                return Err(format!(
                    "IPv6SubnetLen {len} leaves IPv6Network {network} fewer than four subnets \
                     (it must be /{} or longer)",
                    network.prefix() + 2
                ));
            }
            len
        }
        None if network.prefix() > 124 => {
            return Err(format!(
                "IPv6Network {network} is too small: prefix must be /124 or shorter"
            ));
        }
        None if network.prefix() <= 62 => 64,
        None => network.prefix() + 2,
    };
    let size = subnet_size6(subnet_len);
    let first = u128::from(network.network());
    let last = first | (u128::MAX >> network.prefix()) & !(size - 1);
    let bound = |name: &str, text: Option<String>, default: u128| -> Result<Ipv6Addr, String> {
        let addr = match text {
            None => Ipv6Addr::from(default),
            Some(t) => t.parse().map_err(|e| format!("{name} {t:?}: {e}"))?,
        };
        if !network.contains(addr) {
            return Err(format!("{name} {addr} is outside IPv6Network {network}"));
        }
        if !u128::from(addr).is_multiple_of(size) {
            return Err(format!(
                "{name} {addr} is not aligned to IPv6SubnetLen {subnet_len}"
            ));
        }
        Ok(addr)
    };
    let subnet_min = bound("IPv6SubnetMin", min, first + size)?;
    let subnet_max = bound("IPv6SubnetMax", max, last)?;
    if u128::from(subnet_min) > u128::from(subnet_max) {
        return Err(format!(
            "IPv6SubnetMin {subnet_min} is above IPv6SubnetMax {subnet_max}"
        ));
    }
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn parse_bound(name: &str, text: Option<String>, default: u32) -> Result<Ipv4Addr, String> {
    match text {
        None => Ok(Ipv4Addr::from(default)),
        Some(t) => t.parse().map_err(|e| format!("{name} {t:?}: {e}")),
    }
}

fn parse_backend(value: Option<serde_json::Value>) -> Result<BackendConfig, String> {
    let (obj, _) = backend_object(value)?;
    let raw: RawBackend = serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| format!("Backend: {e}"))?;
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
            // The device must keep IPv4's minimum MTU (68) after the overhead.
            if let Some(mtu) = raw.mtu
                && !(68 + VXLAN_OVERHEAD..=65535).contains(&mtu)
            {
                return Err(format!(
                    "Backend.MTU {mtu} must be between {} and 65535 (the device gets {VXLAN_OVERHEAD} less)",
                    68 + VXLAN_OVERHEAD
                ));
            }
            Ok(BackendConfig::Vxlan(VxlanConfig {
                vni,
                port,
                direct_routing: raw.direct_routing.unwrap_or(false),
                learning: raw.learning.unwrap_or(false),
                gbp: raw.gbp.unwrap_or(false),
                mtu: raw.mtu,
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

    fn v4(c: &NetworkConfig) -> &Ipv4Config {
        c.ipv4.as_ref().expect("an IPv4 network")
    }

    #[test]
    fn defaults_follow_flannel() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 24);
        assert_eq!(v4(&c).subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(v4(&c).subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(v4(&c).subnet_count(), 255);
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 1,
                port: 8472,
                direct_routing: false,
                learning: false,
                gbp: false,
                mtu: None,
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
    fn keys_match_as_gos_decoder_matches_them() {
        let c = NetworkConfig::parse(
            r#"{"network":"10.9.0.0/16","subnetlen":25,"BACKEND":{"type":"vxlan","vni":2,"mtu":1400,"gbp":true,"directrouting":true}}"#,
        )
        .unwrap();
        assert_eq!(v4(&c).network.to_string(), "10.9.0.0/16");
        assert_eq!(v4(&c).subnet_len, 25);
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 2,
                port: 8472,
                direct_routing: true,
                learning: false,
                gbp: true,
                mtu: Some(1400),
            })
        );
        // Unicode simple folding, as Go's EqualFold: the Kelvin sign is a K, the long s an s.
        assert!(equal_fold("Backend", "bac\u{212A}end"));
        assert!(equal_fold("SubnetLen", "\u{17F}ubnetlen"));
        assert!(!equal_fold("SubnetLen", "SubnetLe"));
        let c =
            NetworkConfig::parse(r#"{"Network":"10.9.0.0/16","Bac\u212Aend":{"Type":"host-gw"}}"#)
                .unwrap();
        assert_eq!(c.backend, BackendConfig::HostGw);
    }

    #[test]
    fn warnings_name_ignored_fields_and_differences() {
        let w = warnings(r#"{"Network":"10.0.0.0/16","Netwrok":1,"EnableNFTables":false}"#);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("Netwrok"), "{w:?}");
        assert!(w[1].contains("vxlan"), "{w:?}");
        assert!(w[2].contains("nftables"), "{w:?}");
        assert!(warnings(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#).is_empty());
    }

    #[test]
    fn fields_flannel_does_not_read_are_named_per_backend() {
        let text = r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw","VNI":3,"Extra":1}}"#;
        assert!(NetworkConfig::parse(text).is_ok());
        assert_eq!(
            unknown_fields(text),
            vec!["Backend.Extra".to_string(), "Backend.VNI".to_string()]
        );
        let text = r#"{"Network":"10.0.0.0/16","backend":{"type":"vxlan","vni":3,"Colour":1}}"#;
        assert_eq!(unknown_fields(text), vec!["Backend.Colour".to_string()]);
    }

    #[test]
    fn ipv6_defaults_follow_flannel() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        )
        .unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(
            v6.subnet_min,
            "fd00:10:244:1::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.subnet_max,
            "fd00:10:244:ff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.subnet_count(), 255);
        // A small network is split in four, as for IPv4.
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","enableipv6":true,"ipv6network":"fd00::/120"}"#,
        )
        .unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 122);
        assert_eq!(v6.subnet_min, "fd00::40".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fd00::c0".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_count(), 3);
        // Without EnableIPv6 the IPv6 fields are read by nobody, and the operator is told.
        let text = r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00::/56"}"#;
        assert_eq!(NetworkConfig::parse(text).unwrap().ipv6, None);
        let w = warnings(text);
        assert!(
            w.iter()
                .any(|l| l.contains("IPv6Network set but EnableIPv6")),
            "{w:?}"
        );
    }

    #[test]
    fn ipv6_only_as_flannel_reads_it() {
        // flannel's own IPv6-only example (pkg/subnet/config_test.go), keys in any case.
        let text = r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#;
        let c = NetworkConfig::parse(text).unwrap();
        assert_eq!(c.ipv4, None);
        assert_eq!(c.network4(), None);
        let v6 = c.ipv6.clone().unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6.subnet_max,
            "fc00:0:0:ffff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(c.network6(), Some("fc00::/48".parse().unwrap()));
        assert!(warnings(text).iter().all(|w| !w.contains("EnableIPv4")));
        // IPv4 fields beside EnableIPv4=false are read by nobody, and the operator is told.
        let text = r#"{"EnableIPv4":false,"Network":"10.0.0.0/16","SubnetLen":26,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":124,"Backend":{"Type":"host-gw"}}"#;
        let c = NetworkConfig::parse(text).unwrap();
        assert_eq!(c.ipv4, None);
        assert_eq!(c.ipv6.unwrap().subnet_len, 124);
        assert_eq!(c.backend, BackendConfig::HostGw);
        let w = warnings(text);
        assert!(
            w.iter()
                .any(|l| l.contains("Network, SubnetLen set but EnableIPv4 is false")),
            "{w:?}"
        );
        // EnableIPv4 true is the default, written out.
        let c = NetworkConfig::parse(r#"{"EnableIPv4":true,"Network":"10.0.0.0/16"}"#).unwrap();
        assert_eq!(c.network4(), Some("10.0.0.0/16".parse().unwrap()));
        // The IPv6 MTU floor holds for an IPv6-only network too.
        let e = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"MTU":1300}}"#,
        )
        .unwrap_err();
        assert!(e.contains("too small for IPv6"), "{e}");
    }

    #[test]
    fn small_network_gets_prefix_plus_two() {
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/26"}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 28);
        assert_eq!(v4(&c).subnet_min, Ipv4Addr::new(10, 1, 0, 16));
        assert_eq!(v4(&c).subnet_max, Ipv4Addr::new(10, 1, 0, 48));
        assert_eq!(v4(&c).subnet_count(), 3);
    }

    #[test]
    fn explicit_fields_and_host_gw() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.1.192",
               "Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert_eq!(v4(&c).subnet_len, 26);
        assert_eq!(v4(&c).subnet_count(), 4);
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
                learning: false,
                gbp: false,
                mtu: None,
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
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
                "four subnets",
            ),
            (
                r#"{"Network":"10.0.0.0/16","network":"10.1.0.0/16"}"#,
                "keep one",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":{"MTU":100}}"#, "MTU"),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"VNI":"2"}}"#,
                "Backend",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#, "object"),
            ("[]", "object"),
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
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#,
                "no address family",
            ),
            (r#"{"EnableIPv4":false,"EnableIPv6":true}"#, "IPv6Network"),
            (
                r#"{"EnableIPv6":true,"IPv6Network":"fd00::/48"}"#,
                "EnableIPv4",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::1/48"}"#,
                "not aligned",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"MTU":1300}}"#,
                "too small for IPv6",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#,
                "too small",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/64","IPv6SubnetLen":65}"#,
                "four subnets",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#,
                "at most 126",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:1::1"}"#,
                "not aligned",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd01::"}"#,
                "outside",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:2::"}"#,
                "above",
            ),
        ];
        for (text, want) in cases {
            let err = NetworkConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err} should mention {want}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
