//! The network configuration the runtime sends on stdin, with this plugin's keys and defaults.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Result};
use crate::version::CniVersion;

/// Default location of the subnet file netd writes.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default IPAM data directory (host-local's).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// One `{containerID, ifname}` pair of a GC request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    bridge: Option<String>,
    subnet_file: Option<String>,
    data_dir: Option<String>,
    mtu: Option<u32>,
    ip_masq: Option<bool>,
    hairpin_mode: Option<bool>,
    default_route: Option<bool>,
    async_teardown: Option<bool>,
    ipam: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

/// The validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: CniVersion,
    /// Network name; validated, so safe as a directory name.
    pub name: String,
    pub bridge: String,
    pub subnet_file: String,
    /// Root of the IPAM store; allocations live in `<data_dir>/<name>/`.
    pub data_dir: PathBuf,
    /// Overrides `FLANNEL_MTU` when set.
    pub mtu: Option<u32>,
    /// Overrides `!FLANNEL_IPMASQ` when set.
    pub ip_masq: Option<bool>,
    pub hairpin: bool,
    /// Default route via the gateway (true) or only a route to the cluster network (false).
    pub default_route: bool,
    /// DEL retires the veth and leaves its destruction to a detached reaper (see
    /// `net::retire`); false deletes it synchronously.
    pub async_teardown: bool,
    /// Name of a delegated IPAM plugin; `None` means the built-in store.
    pub ipam_plugin: Option<String>,
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep (`None` when the key is absent).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole config as received, for delegation.
    pub raw: Value,
}

/// Only the `cniVersion` of stdin, for VERSION and for error replies.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok()?.cni_version
}

impl NetConf {
    /// Decode (error 6), check the version (error 1) and validate (error 7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decode {
            what: "network config",
            reason: e.to_string(),
        })?;
        let conf: RawConf = serde_json::from_value(raw.clone()).map_err(|e| CniError::Decode {
            what: "network config",
            reason: e.to_string(),
        })?;
        let version = CniVersion::parse(
            conf.cni_version
                .as_deref()
                .ok_or_else(|| CniError::InvalidConfig("cniVersion missing".into()))?,
        )?;
        let name = conf
            .name
            .ok_or_else(|| CniError::InvalidConfig("name missing".into()))?;
        validate_network_name(&name)?;
        let bridge = conf.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        crate::env::validate_ifname(&bridge).map_err(|_| {
            CniError::InvalidConfig(format!("bridge {bridge:?} is not a valid interface name"))
        })?;
        let data_dir = PathBuf::from(conf.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        if !data_dir.is_absolute() {
            return Err(CniError::InvalidConfig(format!(
                "dataDir {} must be an absolute path",
                data_dir.display()
            )));
        }
        let subnet_file = conf
            .subnet_file
            .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into());
        if let Some(mtu) = conf.mtu
            && !(576..=65535).contains(&mtu)
        {
            return Err(CniError::InvalidConfig(format!("mtu {mtu} out of range")));
        }
        let ipam_plugin = match &conf.ipam {
            None => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(Value::Object(m)) => match m.get("type") {
                Some(Value::String(t)) if is_plugin_name(t) => Some(t.clone()),
                _ => {
                    return Err(CniError::InvalidConfig(
                        "ipam.type must name a plugin binary".into(),
                    ));
                }
            },
            Some(_) => return Err(CniError::InvalidConfig("ipam must be an object".into())),
        };
        Ok(NetConf {
            version,
            name,
            bridge,
            subnet_file,
            data_dir,
            mtu: conf.mtu,
            ip_masq: conf.ip_masq,
            hairpin: conf.hairpin_mode.unwrap_or(true),
            default_route: conf.default_route.unwrap_or(true),
            async_teardown: conf.async_teardown.unwrap_or(true),
            ipam_plugin,
            prev_result: conf.prev_result,
            valid_attachments: conf.valid_attachments.or(conf.attachments),
            raw,
        })
    }

    /// The directory holding this network's allocations.
    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// Network names follow libcni: `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`.
fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(CniError::InvalidConfig(format!(
            "network name {name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
        )));
    }
    Ok(())
}

/// A plugin `type` must be a bare file name, never a path.
fn is_plugin_name(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains('/') && !t.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"podnet","type":"netd-cni"}"#);
        let conf = conf.expect("valid config");
        assert_eq!(conf.bridge, "cni0");
        assert_eq!(conf.subnet_file, DEFAULT_SUBNET_FILE);
        assert!(conf.hairpin && conf.default_route && conf.ipam_plugin.is_none());
    }

    #[test]
    fn error_codes_for_bad_configs() {
        let code = |s: &str| NetConf::parse(s.as_bytes()).err().map(|e| e.code());
        assert_eq!(code("{not json"), Some(6));
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"n"}"#), Some(1));
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"../etc"}"#), Some(7));
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","dataDir":"rel"}"#),
            Some(7)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"../bin/sh"}}"#),
            Some(7)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#),
            Some(6)
        );
    }

    #[test]
    fn accepts_both_gc_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let text = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","{key}":[{{"containerID":"a","ifname":"eth0"}}]}}"#
            );
            let conf = NetConf::parse(text.as_bytes()).expect("valid config");
            assert_eq!(conf.valid_attachments.map(|v| v.len()), Some(1));
        }
    }
}
