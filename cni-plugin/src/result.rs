//! CNI results: the plugin's internal form, parsing of `prevResult` / IPAM results, and the
//! version-specific JSON shape written back to the runtime.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{CniError, Result};
use crate::version::CniVersion;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub sandbox: String,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// A CNI result independent of spec version.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Option<Value>,
}

impl CniResult {
    /// Parse a result of any supported version (`prevResult`, or a delegated IPAM plugin's).
    pub fn from_value(value: &Value, what: &'static str) -> Result<CniResult> {
        serde_json::from_value(value.clone()).map_err(|e| CniError::Decode {
            what,
            reason: e.to_string(),
        })
    }

    /// Append another result (ours after a previous plugin's), renumbering interface indexes.
    pub fn append(&mut self, mut other: CniResult) {
        let offset = self.interfaces.len();
        for ip in &mut other.ips {
            ip.interface = ip.interface.map(|i| i + offset);
        }
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips);
        self.routes.extend(other.routes);
        if other.dns.is_some() {
            self.dns = other.dns;
        }
    }

    /// The JSON the runtime receives, shaped for `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if !i.sandbox.is_empty() {
                    o.insert("sandbox".into(), json!(i.sandbox));
                }
                if let (Some(mtu), true) = (i.mtu, version.has_gc_status()) {
                    o.insert("mtu".into(), json!(mtu));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(fam));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), self.dns.clone().unwrap_or_else(|| json!({})));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: "/run/netns/x".into(),
                mtu: Some(1450),
            }],
            ips: vec![IpConfig {
                address: "10.244.3.2/24".parse().expect("literal"),
                gateway: Some("10.244.3.1".parse().expect("literal")),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("literal"),
                gw: Some("10.244.3.1".parse().expect("literal")),
            }],
            dns: None,
        }
    }

    #[test]
    fn shapes_follow_the_version() {
        let old = sample().to_json(CniVersion::V040);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.4.0");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = sample().to_json(CniVersion::V100);
        assert!(v1["ips"][0].get("version").is_none());
        let v11 = sample().to_json(CniVersion::V110);
        assert_eq!(v11["interfaces"][0]["mtu"], 1450);
    }

    #[test]
    fn round_trips_and_appends() {
        let json = sample().to_json(CniVersion::V031);
        let parsed = CniResult::from_value(&json, "result").expect("parse own output");
        let mut chained = parsed.clone();
        chained.append(parsed);
        assert_eq!(chained.interfaces.len(), 2);
        assert_eq!(chained.ips[1].interface, Some(1));
    }
}
