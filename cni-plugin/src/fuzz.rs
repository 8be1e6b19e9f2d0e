//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each takes arbitrary bytes, runs
//! one parser that input from a container runtime, netd or another plugin reaches, and must
//! return without panicking. Not an API: hidden from the documentation.

use std::collections::HashMap;

use crate::config::{NetConf, peek_version};
use crate::env::{cni_arg, from_lookup};
use crate::subnet_env::SubnetEnv;

/// The network config on stdin (with its `prevResult`, as a chained plugin gets it).
pub fn stdin_config(data: &[u8]) {
    let _ = peek_version(data);
    if let Ok(conf) = NetConf::parse(data) {
        let _ = conf.network_dir();
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::result::CniResult::from_value(&value, "fuzz");
    }
}

/// The `CNI_*` environment: the input's lines are `NAME=value` pairs; `CNI_ARGS` is also
/// searched for keys as a runtime's arguments are.
pub fn cni_environment(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let _ = from_lookup(|k| vars.get(k).map(|v| v.to_string()));
    if let Some(args) = vars.get("CNI_ARGS") {
        for key in ["IP", "K8S_POD_NAME", "IgnoreUnknown", ""] {
            let _ = cni_arg(args, key);
        }
    }
}

/// netd's `subnet.env`, as the plugin reads it on every ADD.
pub fn subnet_env(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SubnetEnv::parse(text);
    }
}
